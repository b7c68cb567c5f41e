"""Starts benchmark runners from a small process and reports what each one cost.

A child forked from the benchmark itself would inherit the RSS high-water mark of moto's server,
so the benchmark starts this launcher first, while it is still small, and sends it one JSON line
per job: {"command": [...], "env": {...}}. It answers one JSON line per job with the exit code,
CPU seconds and peak RSS of the job's process tree, and the monotonic time it exited (Linux's
monotonic clock is shared by all processes).
"""

import json
import os
import subprocess
import sys
import time


def main() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        started = time.monotonic()
        process = subprocess.Popen(job["command"], env=job["env"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        print(json.dumps({"exit_code": os.waitstatus_to_exitcode(status), "started": started,
                          "exited": time.monotonic(), "cpu_seconds": usage.ru_utime + usage.ru_stime,
                          "peak_rss_mb": usage.ru_maxrss / 1024}), flush=True)


if __name__ == "__main__":
    main()
