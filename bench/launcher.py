"""Starts benchmark runners from a small process and reports what each one cost.

A child forked from the benchmark itself would inherit the RSS high-water mark of moto's server,
so the benchmark starts this launcher first, while it is still small. It reads one JSON line per
batch, {"jobs": [{"command": [...], "env": {...}}, ...]}, starts every job of the batch at once
and answers one JSON line: for each job, its exit code, CPU seconds and peak RSS (from wait4), and
the monotonic times it started and exited (Linux's monotonic clock is shared by all processes).

With "sample_at": S in the batch, it also reads each live job's PSS (/proc/PID/smaps_rollup) S
seconds after the start, and the PSS and CPU of the processes whose pids are written in the
files matching "extra_pid_files" (the shared watcher) and of their children.
"""

import glob
import json
import os
import subprocess
import sys
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def pss_mb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """utime + stime + reaped children's, of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def extra_processes(pattern):
    pids = []
    for path in glob.glob(pattern or ""):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and os.path.exists(f"/proc/{text}"):
            pids.append(int(text))
            for task in glob.glob(f"/proc/{text}/task/*/children"):
                pids += [int(p) for p in open(task).read().split()]
    return pids


def sample(started, at, pattern, out):
    time.sleep(at)
    out["job_pss_mb"] = [pss_mb(pid) for pid in started]
    extra = extra_processes(pattern)
    out["extra_pss_mb"] = [pss_mb(pid) for pid in extra]
    out["extra_cpu_s"] = sum(cpu_seconds(pid) for pid in extra)


def run_batch(jobs, sample_at=None, extra_pid_files=None):
    started = {}
    for index, job in enumerate(jobs):
        at = time.monotonic()
        process = subprocess.Popen(job["command"], env=job["env"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        started[process.pid] = (index, at)
    sampled = {}
    sampler = None
    if sample_at is not None:
        sampler = threading.Thread(target=sample, args=(list(started), sample_at, extra_pid_files, sampled))
        sampler.start()
    results = [None] * len(jobs)
    while started:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in started:
            continue
        index, at = started.pop(pid)
        results[index] = {"exit_code": os.waitstatus_to_exitcode(status), "started": at,
                          "exited": time.monotonic(), "cpu_seconds": usage.ru_utime + usage.ru_stime,
                          "peak_rss_mb": usage.ru_maxrss / 1024}
    if sampler is not None:
        sampler.join()
        for result, pss in zip(results, sampled.get("job_pss_mb", [])):
            result["pss_mb"] = pss
        results.append({"extra_pss_mb": sampled.get("extra_pss_mb", []), "extra_cpu_s": sampled.get("extra_cpu_s"),
                        "extra_cpu_end_s": sum(cpu_seconds(pid) for pid in extra_processes(extra_pid_files))})
    return results


def main() -> None:
    for line in sys.stdin:
        batch = json.loads(line)
        print(json.dumps(run_batch(batch["jobs"], batch.get("sample_at"), batch.get("extra_pid_files"))),
              flush=True)


if __name__ == "__main__":
    main()
