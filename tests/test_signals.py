"""Signals: SIGHUP and SIGQUIT stop the task like SIGTERM does, `nohup` keeps SIGHUP ignored, and
the SignalGuard's hold, deferred and interruptible blocks do what they say."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from conftest import FAST_POLL, Plan, Running, ecsbatch_command
from ecsbatch import EXIT_FOR_SIGNAL, Interrupted, SignalGuard


@pytest.mark.parametrize("signum, expected", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129),
                                              (signal.SIGQUIT, 131)])
def test_each_signal_stops_the_task_first(job, signum, expected):
    running = job.start(plan=Plan(running=60))
    running.wait_for("RUNNING")
    running.signal(signum)
    result = running.finish()
    assert result.code == expected == EXIT_FOR_SIGNAL[signum], result
    task = job.only_task()
    assert task.last_status == "STOPPED"
    name = signal.Signals(signum).name
    assert f"{name} received by the job runner" in task.stopped_reason
    assert f"{name} received by the job runner; task" in result.error_lines[-1]
    assert "was stopped (STOPPED)" in result.error_lines[-1]


@pytest.mark.parametrize("first, second, expected", [(signal.SIGTERM, signal.SIGTERM, 143),
                                                      (signal.SIGHUP, signal.SIGQUIT, 129)])
def test_a_second_signal_exits_at_once_with_the_first_ones_code(job, first, second, expected):
    running = job.start(plan=Plan(running=60, stop_delay=30))
    running.wait_for("RUNNING")
    running.signal(first)
    running.wait_for("stopping task")
    time.sleep(0.3)
    started = time.monotonic()
    running.signal(second)
    result = running.finish(timeout=10)
    assert result.code == expected, result
    assert time.monotonic() - started < 3
    assert f"second {second.name}: exiting now; StopTask was sent for task" in result.stderr
    assert job.only_task().desired_status == "STOPPED"  # the StopTask went out before


class Nohup(Running):
    """`nohup ecsbatch run …`: nohup ignores SIGHUP, then execs ecsbatch in the same process."""

    def __init__(self, args, env) -> None:
        self.process = subprocess.Popen(["nohup"] + ecsbatch_command() + args, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.lines, self.stdout = [], ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def test_under_nohup_sighup_stays_ignored(job):
    job.ecs.plans.append(Plan(running=3.0, exit_code=3))
    running = Nohup(["run", "-f", str(job.run_file)] + FAST_POLL, job.env)
    running.wait_for("RUNNING")
    running.signal(signal.SIGHUP)
    time.sleep(0.5)
    running.signal(signal.SIGHUP)
    result = running.finish()
    assert result.code == 3, result
    assert "SIGHUP" not in result.stderr
    assert job.only_task().stop_code == "EssentialContainerExited", "nothing stopped the job"


def test_under_nohup_sigterm_still_stops_the_task(job):
    job.ecs.plans.append(Plan(running=60))
    running = Nohup(["run", "-f", str(job.run_file)] + FAST_POLL, job.env)
    running.wait_for("RUNNING")
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    assert job.only_task().last_status == "STOPPED"


# --- the guard itself, with real signals to this process -------------------------------------


@pytest.fixture
def guard():
    saved = {signum: signal.getsignal(signum) for signum in EXIT_FOR_SIGNAL}
    guard = SignalGuard()
    yield guard
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def deliver(signum: int) -> None:
    signal.raise_signal(signum)  # runs the handler before the next line


def test_a_signal_raises_where_the_main_thread_is(guard):
    guard.install()
    with pytest.raises(Interrupted) as interrupt:
        deliver(signal.SIGQUIT)
    assert interrupt.value.signum == signal.SIGQUIT and guard.received == signal.SIGQUIT


def test_hold_records_a_signal_and_raises_nothing(guard):
    guard.install()
    with guard.hold():
        deliver(signal.SIGHUP)
        assert guard.holding
    assert guard.received == signal.SIGHUP and not guard.holding


def test_deferred_raises_the_held_signal_when_the_block_ends(guard):
    guard.install()
    reached = False
    with pytest.raises(Interrupted):
        with guard.deferred():
            deliver(signal.SIGTERM)
            reached = True
    assert reached


def test_interruptible_raises_a_held_signal_at_once_and_new_ones_inside(guard):
    guard.install()
    with guard.hold():
        deliver(signal.SIGINT)
        with pytest.raises(Interrupted):
            with guard.interruptible():
                pytest.fail("a held signal must end the wait before it begins")
        assert guard.holding, "back to holding after the interruptible block"
    fresh = SignalGuard()
    fresh.install()
    with fresh.hold():
        with pytest.raises(Interrupted):
            with fresh.interruptible():
                deliver(signal.SIGTERM)
        assert fresh.holding


def test_a_sighup_ignored_at_start_stays_ignored(guard):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    guard.install()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    assert guard.ignored == [signal.SIGHUP]
    assert signal.getsignal(signal.SIGQUIT) == guard._handle


class StubEcs:
    """Just enough of an ECS client for supervise: StopTask is recorded, and the task then reads
    STOPPED with the reason that was sent."""

    ARN = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef"

    def __init__(self) -> None:
        self.stops = []

    def describe_tasks(self, **kwargs):
        task = {"taskArn": self.ARN, "lastStatus": "RUNNING", "desiredStatus": "RUNNING",
                "containers": [{"name": "app", "lastStatus": "RUNNING"}]}
        if self.stops:
            task.update(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode="UserInitiated",
                        stoppedReason=self.stops[-1]["reason"],
                        containers=[{"name": "app", "lastStatus": "STOPPED", "exitCode": 143}])
        return {"tasks": [task], "failures": []}

    def stop_task(self, **kwargs):
        self.stops.append(kwargs)
        return {"task": {"taskArn": self.ARN, "lastStatus": "RUNNING", "desiredStatus": "STOPPED"}}


def test_a_signal_held_before_the_wait_ends_it_at_once_and_stops_the_task(guard):
    from ecsbatch import Watch, supervise

    ecs = StubEcs()
    guard.install()
    with guard.hold():  # as while `run` builds the logs client after the launch line
        deliver(signal.SIGTERM)
        watch = Watch(ecs, "batch", StubEcs.ARN, poll_interval=0.05)
        outcome = supervise(watch, guard, counted_names=["app"], deadline=None, timeout_text="")
    assert outcome.exit_code == 143 and outcome.kind == "interrupted", outcome
    assert [stop["reason"] for stop in ecs.stops] == ["ecsbatch: SIGTERM received by the job runner"]
    assert outcome.message.endswith("was stopped (STOPPED)")
