"""Many jobs waiting at once on one small batch server: ecsbatch at N = 10, 50, 100, and the shell
loop at N = 10, against one local ECS endpoint behind a counting proxy, in one run.

Each batch starts N runners at the same moment with mixed outcomes: a quarter exit 0, a quarter
exit 3, a quarter fail to start (125) and a quarter run past --timeout (124). It reports:
  - whether every runner returned its expected exit code;
  - CPU seconds per waiting job-minute (all CPU of all runners / all the minutes they waited);
  - peak RSS per runner, and the sum over runners (all were alive at once);
  - DescribeTasks calls per second at the proxy, mean and peak over any 1-second window,
    against the ideal N / poll interval;
  - launch latency (runner start to its RunTask at the proxy) and detection latency (task
    STOPPED to runner exit), p50 and p99.

    python bench/concurrency.py                       # needs `aws` and jq for the shell loop
    python bench/concurrency.py --sizes 10 --no-baseline --running 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from common import REPO, Launcher, ecsbatch_command, percentile, prepare, runner_env
from localecs import LocalEcs
from localecs.proxy import FaultProxy

KINDS = ("exit 0", "exit 3", "fail-to-start", "timeout")
EXPECTED = {"exit 0": 0, "exit 3": 3, "fail-to-start": 125, "timeout": 124}


def job_command(kind: str, running: float) -> list:
    """The container command that localecs turns into the task's fate."""
    if kind == "fail-to-start":
        return ["fail-to-start"]
    if kind == "timeout":
        return ["sleep", f"{running * 2:g}"]
    return ["sleep", f"{running:g};", *kind.split()]


def job_file(work: Path, request: dict, key: str, kind: str, running: float) -> Path:
    """The run file of one benchmark job: `request` with its key and the command of its kind."""
    run_file = work / f"{key}.yaml"
    run_file.write_text(json.dumps(dict(request, startedBy=key, overrides={"containerOverrides": [
        {"name": "app", "command": job_command(kind, running)}]})))
    return run_file


def batch(launcher, ecs, proxy, work: Path, request: dict, *, runner: str, size: int, poll: float,
          running: float, env: dict) -> dict:
    jobs, keys = [], []
    for index in range(size):
        kind = KINDS[index % len(KINDS)]
        key = f"bench-{runner[:5]}-{size}-{index}"
        run_file = job_file(work, request, key, kind, running)
        if runner == "ecsbatch":
            command = ecsbatch_command() + ["run", "-f", str(run_file), "--poll-interval", str(poll)]
            if kind == "timeout":
                command += ["--timeout", f"{running / 2:g}s"]
        else:
            command = ["bash", str(REPO / "bench" / "start-ECS.sh"), str(run_file)]
        jobs.append((command, env))
        keys.append((key, kind))

    first_describe = len(proxy.entries("DescribeTasks"))
    costs = launcher.run_all(jobs)
    launches = {e["startedBy"]: e["at"] for e in reversed(proxy.entries("RunTask"))}  # the first one counts
    stopped = {s.task.started_by: s.stopped_monotonic for s in ecs.states.values()}
    describe_times = [e["at"] for e in proxy.entries("DescribeTasks")[first_describe:]]

    launch_latency = [launches[key] - cost["started"] for (key, _), cost in zip(keys, costs) if key in launches]
    detection = [cost["exited"] - stopped[key] for (key, kind), cost in zip(keys, costs)
                 if kind != "timeout" and stopped.get(key) is not None]
    waited_minutes = sum(cost["exited"] - cost["started"] for cost in costs) / 60
    span = (max(describe_times) - min(describe_times)) if len(describe_times) > 1 else 1.0
    return {
        "runner": runner,
        "size": size,
        "right": sum(cost["exit_code"] == EXPECTED[kind] for (_, kind), cost in zip(keys, costs)),
        "wrong": [(kind, cost["exit_code"]) for (_, kind), cost in zip(keys, costs)
                  if cost["exit_code"] != EXPECTED[kind]],
        "cpu_per_job_minute": sum(cost["cpu_seconds"] for cost in costs) / waited_minutes,
        "peak_rss_mb": max(cost["peak_rss_mb"] for cost in costs),
        "total_rss_mb": sum(cost["peak_rss_mb"] for cost in costs),
        "describe_mean_per_s": len(describe_times) / span,
        "describe_peak_per_s": peak_per_second(describe_times),
        "describe_ideal_per_s": size / poll,
        "launch_p50": percentile(launch_latency, 0.5), "launch_p99": percentile(launch_latency, 0.99),
        "detect_p50": percentile(detection, 0.5), "detect_p99": percentile(detection, 0.99),
    }


def peak_per_second(times) -> int:
    """The most calls in any window of one second."""
    ordered, best, start = sorted(times), 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] > 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--baseline-size", type=int, default=10)
    parser.add_argument("--poll", type=float, default=6.0, help="poll interval of both runners (s)")
    parser.add_argument("--running", type=float, default=60.0, help="how long a task runs (s)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not args.no_baseline and not (shutil.which("aws") and shutil.which("jq")):
        print("the shell loop needs `aws` (pip install awscli) and jq on PATH; or pass --no-baseline", file=sys.stderr)
        return 2

    launcher = Launcher()  # before moto is loaded, so that runners start from a small process
    results = []
    with LocalEcs() as ecs, FaultProxy(ecs.url) as proxy, tempfile.TemporaryDirectory() as work:
        request = prepare(ecs)
        env = runner_env(**ecs.client_env(proxy.url), POLL=str(args.poll))
        plans = [("ecsbatch", size) for size in args.sizes]
        if not args.no_baseline:
            plans.append(("shell loop", args.baseline_size))
        for runner, size in plans:
            print(f"{runner}: {size} jobs at once ...", file=sys.stderr, flush=True)
            results.append(batch(launcher, ecs, proxy, Path(work), request, runner=runner, size=size,
                                 poll=args.poll, running=args.running, env=env))
    launcher.close()

    print(f"\npoll interval {args.poll:g}s, tasks running {args.running:g}s; outcomes mixed 0/3/125/124\n")
    header = (f"{'runner':<11}{'N':>4}{'codes right':>12}{'CPU s/job-min':>14}{'RSS MB/job':>11}{'RSS MB all':>11}"
              f"{'Describe/s mean':>16}{'peak':>6}{'ideal':>7}{'launch p50/p99 s':>18}{'detect p50/p99 s':>18}")
    print(header)
    for r in results:
        print(f"{r['runner']:<11}{r['size']:>4}{r['right']:>8}/{r['size']:<3}{r['cpu_per_job_minute']:>14.3f}"
              f"{r['peak_rss_mb']:>11.1f}{r['total_rss_mb']:>11.0f}{r['describe_mean_per_s']:>16.2f}"
              f"{r['describe_peak_per_s']:>6}{r['describe_ideal_per_s']:>7.2f}"
              f"{r['launch_p50']:>10.2f}/{r['launch_p99']:<7.2f}{r['detect_p50']:>10.2f}/{r['detect_p99']:<7.2f}")
        if r["wrong"]:
            print(f"{'':<15}wrong: {r['wrong']}")
    ours = next((r for r in results if r["runner"] == "ecsbatch" and r["size"] == args.baseline_size), None)
    theirs = next((r for r in results if r["runner"] == "shell loop"), None)
    if ours and theirs:
        print(f"\nat N={args.baseline_size}, shell loop / ecsbatch: CPU per job-minute "
              f"{theirs['cpu_per_job_minute'] / ours['cpu_per_job_minute']:.0f}x, launch p50 "
              f"{theirs['launch_p50'] / ours['launch_p50']:.2f}x, peak RSS per job "
              f"{theirs['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["right"] == r["size"] for r in results if r["runner"] == "ecsbatch") else 1


if __name__ == "__main__":
    sys.exit(main())
