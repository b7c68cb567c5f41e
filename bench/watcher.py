"""Many jobs waiting at once, with and without the shared watcher, in one run on one endpoint.

For each N (default 10, 50, 100) it starts N runners at once three times: today's mode
(ECSBATCH_WATCHER=off, each runner polls by itself), the watcher's mode from cold (the first
runner starts a fresh watcher, as after a quiet night) and warm (a watcher already listens and
has run one job, as on a server that runs jobs all day). The jobs name one revision, as the
released run-task.yaml does. The runners run ecsbatch installed as a release installs it
(common.release_install), not this checkout's editable install. Outcomes are mixed as in concurrency.py (a quarter each of exit 0,
exit 3, failed to start and --timeout). The task definition logs to CloudWatch Logs, so that log
reads are counted too. It reports, per mode:
  - exit codes right out of N;
  - PSS per waiting runner and in total (smaps_rollup, sampled --sample-at seconds in), the
    watcher's own PSS included in the watcher mode's total;
  - CPU seconds per job: every runner's, plus the watcher's and its launch children's;
  - launch latency (runner start to its RunTask at the proxy), p50 and p99;
  - DescribeTasks and GetLogEvents calls per second at the proxy while the tasks ran.
The machine is shared and noisy: compare the two modes of one run, as ratios.

    python bench/watcher.py                      # N = 10, 50, 100
    python bench/watcher.py --sizes 10 --running 20
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FAMILY, Launcher, percentile, prepare, release_install, runner_env
from concurrency import EXPECTED, KINDS, job_file
from localecs import LocalEcs
from localecs.proxy import FaultProxy

LOG_GROUP = "/ecs/bench"
MODES = ("today", "cold", "warm")


def prepare_with_logs(ecs) -> dict:
    """The RunTask request, naming one revision as the released run-task.yaml does (register --pin)."""
    request = prepare(ecs)
    logs = ecs.client("logs")
    logs.create_log_group(logGroupName=LOG_GROUP)
    answer = ecs.client("ecs").register_task_definition(
        family=FAMILY, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": "batch:1", "memory": 256, "essential": True,
                               "logConfiguration": {"logDriver": "awslogs", "options": {
                                   "awslogs-group": LOG_GROUP, "awslogs-region": "ap-northeast-1",
                                   "awslogs-stream-prefix": "bench"}}}])
    request["taskDefinition"] = f"{FAMILY}:{answer['taskDefinition']['revision']}"
    return request


def rate(times, since: float, until: float) -> float:
    inside = [t for t in times if since <= t <= until]
    return len(inside) / max(until - since, 1e-9)


def job_env(env: dict, mode: str, runtime: Path) -> dict:
    return dict(env, ECSBATCH_WATCHER="off" if mode == "today" else "on", XDG_RUNTIME_DIR=str(runtime),
                ECSBATCH_WATCHER_IDLE="3")


def start_watcher(ecsbatch: list, env: dict, runtime: Path, warm_up: Path = None) -> None:
    """A watcher listening before the runners start (the warm mode). With `warm_up`, a run file,
    it has also run that one job, as on a server that runs jobs all day: the revision that the
    jobs name is known to it (one DescribeTaskDefinition a revision per watcher)."""
    subprocess.run(ecsbatch + ["watcher", "--detach"], env=env, check=True)
    deadline = time.monotonic() + 60
    while not glob.glob(str(runtime / "ecsbatch" / "w*.sock")):
        if time.monotonic() > deadline:
            raise SystemExit("the warm watcher did not start")
        time.sleep(0.05)
    if warm_up is not None:
        subprocess.run(ecsbatch + ["run", "-q", "-f", str(warm_up), "--poll-interval", "1"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def batch(launcher, ecs, proxy, work: Path, request: dict, *, mode: str, size: int, poll: float, running: float,
          sample_at: float, env: dict, ecsbatch: list) -> dict:
    runtime = Path(tempfile.mkdtemp(prefix="eb", dir="/tmp"))
    jobs, keys = [], []
    for index in range(size):
        kind = KINDS[index % len(KINDS)]
        key = f"bench-{mode}-{size}-{index}"
        run_file = job_file(work, request, key, kind, running)
        command = ecsbatch + ["run", "-q", "-f", str(run_file), "--poll-interval", str(poll)]
        if kind == "timeout":
            command += ["--timeout", f"{running / 2:g}s"]
        jobs.append({"command": command, "env": job_env(env, mode, runtime)})
        keys.append((key, kind))
    if mode == "warm":
        warm_up = job_file(work, request, f"bench-{mode}-{size}-warm-up", "exit 0", 1.0)
        start_watcher(ecsbatch, job_env(env, mode, runtime), runtime, warm_up)
    marks = {op: len(proxy.entries(op)) for op in ("DescribeTasks", "GetLogEvents", "RunTask")}
    launcher.process.stdin.write(json.dumps({"jobs": jobs, "sample_at": sample_at,
                                             "extra_pid_files": str(runtime / "ecsbatch" / "w*.lock")}) + "\n")
    launcher.process.stdin.flush()
    costs = json.loads(launcher.process.stdout.readline())
    extra = costs.pop()
    shutil.rmtree(runtime, ignore_errors=True)
    launches = {e["startedBy"]: e["at"] for e in reversed(proxy.entries("RunTask")[marks["RunTask"]:])}
    latency = [launches[key] - cost["started"] for (key, _), cost in zip(keys, costs) if key in launches]
    # While every task runs: from the last launch (plus a poll) to the first end of a 60 s task.
    window = (max(launches.values(), default=0.0) + poll, min(launches.values(), default=0.0) + running * 0.9)
    describe = [e["at"] for e in proxy.entries("DescribeTasks")[marks["DescribeTasks"]:]]
    log_reads = [e["at"] for e in proxy.entries("GetLogEvents")[marks["GetLogEvents"]:]]
    job_pss = [cost.get("pss_mb") for cost in costs if cost.get("pss_mb")]
    watcher_pss = sum(p for p in extra["extra_pss_mb"] if p)
    return {
        "mode": mode, "size": size,
        "right": sum(cost["exit_code"] == EXPECTED[kind] for (_, kind), cost in zip(keys, costs)),
        "wrong": [(kind, cost["exit_code"]) for (_, kind), cost in zip(keys, costs) if cost["exit_code"] != EXPECTED[kind]],
        "pss_per_job_mb": sum(job_pss) / max(len(job_pss), 1),
        "watcher_pss_mb": watcher_pss,
        "pss_total_mb": sum(job_pss) + watcher_pss,
        "cpu_per_job_s": (sum(cost["cpu_seconds"] for cost in costs) + (extra["extra_cpu_end_s"] or 0.0)) / size,
        "launch_p50": percentile(latency, 0.5), "launch_p99": percentile(latency, 0.99),
        "describe_per_s": rate(describe, *window), "get_log_events_per_s": rate(log_reads, *window),
        "describe_ideal_per_s": size / poll,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--poll", type=float, default=6.0, help="--poll-interval of every runner (s)")
    parser.add_argument("--running", type=float, default=90.0, help="how long a task runs (s)")
    parser.add_argument("--sample-at", type=float, default=45.0, help="when PSS is read, after the start (s)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    launcher = Launcher()  # before moto is loaded, so that runners start from a small process
    results = []
    with LocalEcs() as ecs, FaultProxy(ecs.url) as proxy, tempfile.TemporaryDirectory() as work:
        ecsbatch = release_install(Path(work) / "release")
        request = prepare_with_logs(ecs)
        env = runner_env(**ecs.client_env(proxy.url))
        env["ECSBATCH_SYSLOG_SOCKET"] = ""
        for size in args.sizes:
            for mode in args.modes:
                print(f"{mode}: {size} jobs at once ...", file=sys.stderr, flush=True)
                results.append(batch(launcher, ecs, proxy, Path(work), request, mode=mode, size=size, poll=args.poll,
                                     running=args.running, sample_at=args.sample_at, env=env, ecsbatch=ecsbatch))
    launcher.close()

    print(f"\npoll interval {args.poll:g}s, tasks running {args.running:g}s, PSS read at {args.sample_at:g}s; calls counted from the last launch to the first end; "
          "outcomes mixed 0/3/125/124\n")
    print(f"{'mode':<8}{'N':>4}{'right':>8}{'PSS MB/job':>11}{'watcher MB':>11}{'PSS MB all':>11}{'CPU s/job':>10}"
          f"{'launch p50/p99 s':>18}{'Describe/s':>11}{'ideal':>7}{'GetLogEvents/s':>15}")
    for r in results:
        print(f"{r['mode']:<8}{r['size']:>4}{r['right']:>5}/{r['size']:<3}{r['pss_per_job_mb']:>10.1f}"
              f"{r['watcher_pss_mb']:>11.1f}{r['pss_total_mb']:>11.0f}{r['cpu_per_job_s']:>10.3f}"
              f"{r['launch_p50']:>10.2f}/{r['launch_p99']:<7.2f}{r['describe_per_s']:>11.2f}"
              f"{r['describe_ideal_per_s']:>7.2f}{r['get_log_events_per_s']:>15.2f}")
        if r["wrong"]:
            print(f"{'':<12}wrong: {r['wrong']}")
    print("\nwatcher / today, same N, same run:")
    for size, mode in [(size, mode) for size in args.sizes for mode in args.modes if mode != "today"]:
        today = next((r for r in results if r["size"] == size and r["mode"] == "today"), None)
        ours = next(r for r in results if r["size"] == size and r["mode"] == mode)
        if today is None:
            continue
        print(f"  N={size} {mode}: PSS total {ours['pss_total_mb'] / today['pss_total_mb']:.2f}x, CPU per job "
              f"{ours['cpu_per_job_s'] / today['cpu_per_job_s']:.2f}x, launch p50 "
              f"{ours['launch_p50'] / today['launch_p50']:.2f}x, DescribeTasks/s "
              f"{ours['describe_per_s'] / max(today['describe_per_s'], 1e-9):.3f}x, GetLogEvents/s "
              f"{ours['get_log_events_per_s'] / max(today['get_log_events_per_s'], 1e-9):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["right"] == r["size"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
