"""The cost of waiting: ecsbatch against the shell loop it replaces, in one run, on one endpoint.

Both runners wait for the same scripted tasks on the local ECS endpoint, behind a counting proxy.
Each runner waits for a short and a long task; the difference between the two isolates the cost
of one poll from the fixed cost of starting up. Reported per runner:
  - CPU seconds (user + system, children included) for the whole job, and per extra poll;
  - peak RSS of the largest process;
  - the delay from the task reaching STOPPED to the runner's exit;
  - the API calls the job made.

    python bench/wait_cost.py                 # needs `aws` (pip install awscli) and jq for the baseline
    python bench/wait_cost.py --no-baseline   # ecsbatch alone
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from common import REPO, Launcher, ecsbatch_command, prepare, runner_env  # noqa: E402
from localecs import LocalEcs, Plan  # noqa: E402
from localecs.proxy import FaultProxy  # noqa: E402

OPERATIONS = ("DescribeTaskDefinition", "RunTask", "DescribeTasks", "StopTask")


def measure(launcher, command, env, ecs, proxy, running, exit_code):
    """Run one job to its end; return what it cost."""
    ecs.plans.append(Plan(provisioning=0.5, pending=0.5, running=running, exit_code=exit_code))
    before = {op: proxy.count(op) for op in OPERATIONS}
    known = set(ecs.states)
    cost = launcher.run(command, env)
    launched_at = proxy.entries("RunTask")[before["RunTask"]]["at"]
    (new_task,) = [ecs.states[arn] for arn in ecs.states if arn not in known]
    return dict(cost, expected_exit_code=exit_code, wall_seconds=cost["exited"] - cost["started"],
                launch_seconds=launched_at - cost["started"],
                detection_seconds=cost["exited"] - new_task.stopped_monotonic,
                calls={op: proxy.count(op) - before[op] for op in OPERATIONS})


def median_wall(launcher, command, env, times: int = 5) -> float:
    walls = sorted(c["exited"] - c["started"] for c in (launcher.run(command, env) for _ in range(times)))
    return walls[len(walls) // 2]


def compare(name, short, long, polling):
    extra_polls = polling["calls"]["DescribeTasks"] - short["calls"]["DescribeTasks"]
    runs = (short, long, polling)
    return {
        "runner": name,
        "exit_codes_right": all(r["exit_code"] == r["expected_exit_code"] for r in runs),
        "cpu_per_job_s": long["cpu_seconds"],
        "cpu_per_poll_s": (polling["cpu_seconds"] - short["cpu_seconds"]) / max(extra_polls, 1),
        "extra_polls": extra_polls,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "detection_s": max(short["detection_seconds"], long["detection_seconds"]),
        "launch_s": min(r["launch_seconds"] for r in runs),
        "calls_per_job": long["calls"],
        "runs": {"short": short, "long": long, "polling": polling},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poll", type=float, default=2.0, help="poll interval of both runners (s)")
    parser.add_argument("--short", type=float, default=6.0, help="running time of the short task (s)")
    parser.add_argument("--long", type=float, default=30.0, help="running time of the long task (s)")
    parser.add_argument("--fast-poll", type=float, default=0.1,
                        help="ecsbatch's poll interval in the run that measures the cost of one poll (s)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the shell loop")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    baseline = not args.no_baseline
    if baseline and not (shutil.which("aws") and shutil.which("jq")):
        print("the baseline needs `aws` (pip install awscli) and jq on PATH; or pass --no-baseline", file=sys.stderr)
        return 2

    launcher = Launcher()  # before moto is loaded, so that runners start from a small process
    with LocalEcs() as ecs, FaultProxy(ecs.url) as proxy, tempfile.TemporaryDirectory() as work:
        request = prepare(ecs)
        run_file = Path(work) / "run-task.yaml"
        run_file.write_text(json.dumps(request))  # JSON is YAML, and both runners read it
        env = runner_env(**ecs.client_env(proxy.url), POLL=str(args.poll))
        ecsbatch = ecsbatch_command() + ["run", "-f", str(run_file)]
        shell = ["bash", str(REPO / "bench" / "start-ECS.sh"), str(run_file)]

        results = []
        # The cost of a poll does not depend on the interval (sleeping is free), so each runner's
        # third run polls as often as it sensibly can to make that cost stand out of start-up noise.
        runners = [("ecsbatch", ecsbatch + ["--poll-interval", str(args.poll)],
                    ecsbatch + ["--poll-interval", str(args.fast_poll)])]
        if baseline:
            runners.append(("shell loop", shell, shell))
        for name, command, polling_command in runners:
            short = measure(launcher, command, env, ecs, proxy, args.short, 3)
            long = measure(launcher, command, env, ecs, proxy, args.long, 0)
            polling = measure(launcher, polling_command, env, ecs, proxy, args.long, 0)
            results.append(compare(name, short, long, polling))
        startup = {name: median_wall(launcher, command, env) for name, command in [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("ecsbatch --version", ecsbatch_command() + ["--version"]),
            ("ecsbatch --help", ecsbatch_command() + ["--help"]),
        ] + ([("aws --version", ["aws", "--version"])] if baseline else [])}
    launcher.close()

    print(f"poll interval {args.poll}s; tasks running {args.short}s and {args.long}s; CPU per poll from a run "
          f"polling every {args.fast_poll}s (ecsbatch) or {args.poll}s (shell loop)\n")
    print(f"{'runner':<12}{'codes':>7}{'CPU/job s':>11}{'CPU/poll s':>12}{'peak RSS MB':>13}"
          f"{'STOPPED->exit s':>17}  calls per job")
    for r in results:
        calls = ", ".join(f"{op} {n}" for op, n in r["calls_per_job"].items() if n)
        print(f"{r['runner']:<12}{'right' if r['exit_codes_right'] else 'WRONG':>7}{r['cpu_per_job_s']:>11.3f}"
              f"{r['cpu_per_poll_s']:>12.4f}{r['peak_rss_mb']:>13.1f}{r['detection_s']:>17.2f}  {calls}")
    if baseline:
        ours, theirs = results
        print(f"\nshell loop / ecsbatch: CPU per poll {theirs['cpu_per_poll_s'] / max(ours['cpu_per_poll_s'], 1e-6):.0f}x, "
              f"CPU per job {theirs['cpu_per_job_s'] / ours['cpu_per_job_s']:.1f}x, "
              f"peak RSS {theirs['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x")
    print("\nstart-up, median wall of 5: " + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in startup.items()))
    for r in results:
        print(f"{r['runner']}: launch latency (process start to RunTask) {r['launch_s']:.2f}s")
    print(f"ecsbatch detection {results[0]['detection_s']:.2f}s against a bound of {args.poll + 0.5:.1f}s; "
          f"RunTask per job: {results[0]['calls_per_job']['RunTask']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runners": results, "startup": startup}, indent=2))
    return 0 if all(r["exit_codes_right"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
