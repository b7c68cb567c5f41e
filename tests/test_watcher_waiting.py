"""The shared watcher's waiting side under stress: a signal while the full ecsbatch starts after a
fallback, every fallback slot held, a stop racing a queued poll, a burst of log lines."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import ecsbatch
from conftest import Plan
from hinemos import put_log_lines
from conftest import SIDECAR
from test_watcher import AWSLOGS_APP, is_thin, logs, start_thin, wait_until, watcher_pids, wjob  # noqa: F401


def blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    return 0


def test_a_signal_while_the_full_ecsbatch_starts_after_a_fallback_still_stops_the_task(wjob):
    """The watcher hangs; the runner falls back and execs into the full ecsbatch with the four
    signals blocked. A SIGTERM that lands during that start-up (~0.3 s of imports) stays pending
    until resume_job knows the task and holds the signals: it stops the task (143), and the job
    never says "nothing was started" of a task that runs."""
    running = start_thin(wjob, plan=Plan(running=60))
    running.wait_for("RUNNING")
    [watcher] = watcher_pids(wjob.runtime)
    os.kill(watcher, signal.SIGSTOP)
    pid = running.process.pid
    try:
        # the exec into the full ecsbatch: no longer thin, SIGTERM still blocked
        wait_until(lambda: not is_thin(pid) and blocked_signals(pid) & (1 << (signal.SIGTERM - 1)),
                   timeout=30, what="the fallback exec")
        running.signal(signal.SIGTERM)
        result = running.finish()
    finally:
        os.kill(watcher, signal.SIGCONT)
    time.sleep(1.0)
    task = wjob.only_task()
    assert result.code == 143, result
    assert (task.desired_status, "nothing was started" in result.stderr) == ("STOPPED", False), result.stderr


def hold_fallback_slots(runtime: Path):
    """What FALLBACK_SLOTS runners already waiting by themselves (jobs of hours) hold."""
    fds = []
    for number in range(ecsbatch.FALLBACK_SLOTS):
        fd = os.open(str(runtime / "ecsbatch" / f"fallback.{number}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)
    return fds


@pytest.mark.parametrize("args, plan, expected", [
    ((), Plan(running=3.0, exit_code=3), 3),  # the task ends by itself
    (("--timeout", "4"), Plan(running=600), 124),  # --timeout expires
])
def test_a_runner_waiting_for_a_fallback_slot_still_ends_its_job(wjob, args, plan, expected):
    """The watcher hangs while every fallback slot is held (processes stuck in their start). The
    runner waits for a slot at most FALLBACK_SLOT_WAIT, and never past its --timeout: its job ends
    right while the slots are still held."""
    running = start_thin(wjob, *args, plan=plan)
    running.wait_for("RUNNING")
    slots = hold_fallback_slots(wjob.runtime)
    [watcher] = watcher_pids(wjob.runtime)
    os.kill(watcher, signal.SIGSTOP)
    try:
        running.wait_for("waits on its task by itself", timeout=20)
        ended = wait_until(lambda: running.process.poll() is not None or None, timeout=40, what="the job's end")
    except AssertionError:
        ended = None
    finally:
        status = wjob.only_task().last_status  # before the watcher wakes up and the slots are free
        os.kill(watcher, signal.SIGCONT)
        for fd in slots:
            os.close(fd)
    result = running.finish()
    assert ended, f"still waiting for a slot 40 s on; task {status}: {result.stderr}"
    assert result.code == expected, result


class EndPolling(BaseException):
    pass


class FakeEcs:
    """DescribeTasks and StopTask for a watcher in this process: a stopped task is STOPPED at once."""

    def __init__(self) -> None:
        self.stopped = set()
        self.describes = 0
        self.done = False

    def describe_tasks(self, cluster=None, tasks=()):
        if self.done:
            raise EndPolling()
        self.describes += 1
        return {"tasks": [{"taskArn": arn, "lastStatus": "STOPPED" if arn in self.stopped else "RUNNING",
                           "desiredStatus": "STOPPED" if arn in self.stopped else "RUNNING",
                           "containers": [{"name": "app"}]} for arn in tasks], "failures": []}

    def stop_task(self, cluster=None, task=None, reason=None):
        self.stopped.add(task)
        return {"task": {"taskArn": task, "lastStatus": "RUNNING", "desiredStatus": "STOPPED",
                         "containers": [{"name": "app"}]}}


class SlowFollower:
    """A log read that takes a while (a big page, a slow CloudWatch Logs answer)."""

    def __init__(self, started: threading.Event) -> None:
        self.started, self.outbox, self.token = started, [], None

    def poll(self):
        self.started.set()
        time.sleep(1.5)
        return 0

    def drain(self):
        pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # EndPolling ends it
def test_a_stop_racing_a_queued_poll_never_stalls_the_cycle(monkeypatch):
    """The poll loop submits poll_one(B) to the log readers; before a reader gets to it, B's runner
    asks for a stop. The finish thread takes B.lock, sends StopTask and waits in next_answer for the
    next DescribeTasks cycle, which comes only once poll_one(B) is done: so poll_one skips a task
    whose ending holds its lock, every task is polled on time, and the stop sees STOPPED."""
    monkeypatch.setenv("AWS_REGION", "ap-northeast-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    monkeypatch.setattr(ecsbatch, "WATCHER_LOG_READERS", 1)
    monkeypatch.setattr(ecsbatch, "STOP_CONFIRM_SECONDS", 8.0)
    monkeypatch.setattr(ecsbatch, "AWS_READ_TIMEOUT", 2)
    watcher = ecsbatch.Watcher(None, None, "ctx", b"k" * 32, 10.0, None, None)
    fake = watcher.ecs = FakeEcs()
    reading = threading.Event()
    tasks = {}
    for name in ("A", "B"):
        task = ecsbatch.WatchedTask(name, {"task_arn": f"arn:aws:ecs:r:1:task/c/{name}", "cluster": "c",
                                           "poll_interval": 0.2, "started": time.monotonic(), "missing_grace": 60})
        task.watch = watcher.batch_watch(task)
        tasks[name] = task
    tasks["A"].follower = SlowFollower(reading)
    watcher.tasks = dict(tasks)
    thread = threading.Thread(target=watcher.poll_loop, daemon=True)
    thread.start()
    try:
        assert reading.wait(10)  # poll_one(A) reads its log; poll_one(B) waits for the one reader
        ending = ecsbatch.ending_for(ecsbatch.Interrupted(signal.SIGTERM), timeout_text="")
        watcher.finish(tasks["B"], watcher.stop_task, ending)
        final = None
        deadline = time.monotonic() + 30
        while final is None and time.monotonic() < deadline:
            conn, message = watcher.outbox.get(timeout=30)
            if conn == "B" and message["op"] == "final":
                final = message
        described = fake.describes
    finally:
        fake.done = True
        thread.join(10)  # it ends on EndPolling here, where the warning filter holds
    assert final is not None
    said = [line for line in final.get("lines", [])]
    assert (final["attempt"]["task"] or {}).get("lastStatus") == "STOPPED", (final, said, described)


def test_a_burst_of_log_lines_does_not_cut_a_healthy_runner_off(wjob, logs):
    """A job that logs a little over 1 MiB between two polls: the watcher relays it a page per
    message and sends before it counts what is queued, so a runner that reads promptly is never
    cut off (nor does it fall back to botocore), and every line is printed once."""
    wjob.register([AWSLOGS_APP, SIDECAR])
    running = start_thin(wjob, plan=Plan(running=6.0, exit_code=0))
    task = wait_until(wjob.tasks)[0]
    put_log_lines(logs, f"batch/app/{task.id}", ["x" * 200] * 6000)
    result = running.finish()
    assert result.code == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 6000
    assert "waits on its task by itself" not in result.stderr, [l for l in result.stderr.splitlines() if "ecsbatch" in l]
