"""Starts benchmark runners from a small process and reports what each one cost.

A child forked from the benchmark itself would inherit the RSS high-water mark of moto's server,
so the benchmark starts this launcher first, while it is still small. It reads one JSON line per
batch, {"jobs": [{"command": [...], "env": {...}}, ...]}, starts every job of the batch at once
and answers one JSON line: for each job, its exit code, CPU seconds and peak RSS (from wait4), and
the monotonic times it started and exited (Linux's monotonic clock is shared by all processes).
"""

import json
import os
import subprocess
import sys
import time


def run_batch(jobs):
    started = {}
    for index, job in enumerate(jobs):
        at = time.monotonic()
        process = subprocess.Popen(job["command"], env=job["env"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        started[process.pid] = (index, at)
    results = [None] * len(jobs)
    while started:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in started:
            continue
        index, at = started.pop(pid)
        results[index] = {"exit_code": os.waitstatus_to_exitcode(status), "started": at,
                          "exited": time.monotonic(), "cpu_seconds": usage.ru_utime + usage.ru_stime,
                          "peak_rss_mb": usage.ru_maxrss / 1024}
    return results


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(run_batch(json.loads(line)["jobs"])), flush=True)


if __name__ == "__main__":
    main()
