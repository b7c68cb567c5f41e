"""Attacks on "When capacity runs out": the moments and inputs where launch retries, reruns after
an interruption and --job-key's promises across attempts could hurt a job, each pinned by a test."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from conftest import Plan, run_cli
from test_capacity import wait_in_backoff
from localecs import capacity_failures, spot_interruption
from localecs.proxy import Fault

import ecsbatch

FAST = ["--launch-backoff", "0.1"]
QUICK = dict(provisioning=0.05, pending=0.05)


# --- --rerun-capacity-provider: a bad value is a usage error before anything is sent ----------

@pytest.mark.parametrize("texts, words", [
    (("FARGATE:\u00b2",), "NAME[:WEIGHT[:BASE]]"),  # str.isdigit() says yes, int() says no
    (("FARGATE:1:\u00b9",), "NAME[:WEIGHT[:BASE]]"),
    (("FARGATE SPOT",), "letters, digits, _ and -"),
    (("F" * 256,), "letters, digits, _ and -"),
    (tuple(f"P{i}" for i in range(21)), "at most 20"),
])
def test_a_capacity_provider_that_ecs_would_refuse_at_the_rerun_is_refused_at_the_start(texts, words):
    with pytest.raises(ecsbatch.InputError) as refused:
        ecsbatch.capacity_strategy(texts)
    assert words in refused.value.format_message()



def own_runtime(job, tmp_path):
    """The job's environment with a runner registry of this test's own (XDG_RUNTIME_DIR, 0700)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return dict(job.env, XDG_RUNTIME_DIR=str(runtime))

def test_twenty_providers_and_a_long_name_are_fine():
    assert len(ecsbatch.capacity_strategy(tuple(f"P{i}" for i in range(20)))) == 20
    assert ecsbatch.parse_capacity_provider("a-B_9" * 51)["capacityProvider"] == "a-B_9" * 51


def test_a_superscript_weight_is_exit_2_not_an_internal_error(job):
    result = job.run("--rerun-on-interruption", "1", "--rerun-capacity-provider", "FARGATE:\u00b2")
    assert result.code == 2, result
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert job.run_requests() == []


# --- a second run of the job that started first but registered last -------------------------

def test_a_runner_that_started_first_but_registered_last_waits_for_the_one_launching(job, proxy, tmp_path):
    """Order is registration order, not process start: B starts first, but its first AWS call is
    slow, so A registers, finds no other runner and is launching (between capacity attempts) by
    the time B registers. B must wait for A's task, not launch a second one."""
    env = own_runtime(job, tmp_path)
    key = f"{job.family}/registered-last"
    job.ecs.plans.extend(capacity_failures(500))
    proxy.add(Fault("delay", "DescribeTaskDefinition", times=1, seconds=4.0))
    second = job.start("--job-key", key, "--launch-backoff", "8", env=dict(env, AWS_ENDPOINT_URL=proxy.url))
    time.sleep(0.3)  # B's process starts ticks before A's
    first = job.start("--job-key", key, "--launch-backoff", "8", env=env)
    wait_in_backoff(first)
    try:
        second.wait_for(rf"runner pid {first.process.pid} of this job \(key \S+\) is still launching its task: "
                        "waiting", timeout=30)
        assert not any("launch attempt" in line for line in second.lines), second.lines
    finally:
        stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--timeout", "30s"], env)
        first.finish(), second.finish()
    assert stopped.code == 0, stopped
    assert job.tasks() == []


# --- a signal while RunTask of a later attempt is on the wire ---------------------------------

def test_sigterm_during_a_later_attempts_run_task_keeps_the_json_shape(job, proxy):
    """RunTask of attempt 2 is slow and answers with a capacity failure; SIGTERM arrives meanwhile.
    Nothing runs, no attempt follows, and --json still lists the attempts as every other end does."""
    job.ecs.plans.extend(capacity_failures(500))
    running = job.start("--launch-backoff", "0.1", "--json", env=dict(job.env, AWS_ENDPOINT_URL=proxy.url))
    running.wait_for("launch attempt 1 failed")
    proxy.add(Fault("delay", "RunTask", times=1, seconds=3.0))
    while proxy.count("RunTask") < 2:
        time.sleep(0.02)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "interrupted" and summary["exitCode"] == 143
    assert summary["attempts"] == [] and summary["launchAttempts"] == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"SIGTERM received during launch attempt 2: RunTask started no task; nothing is running",
                     result.error_lines[-1]), result
    time.sleep(0.5)
    assert proxy.count("RunTask") == 2 and job.tasks() == []


def test_sigterm_during_a_reruns_run_task_that_starts_no_task_lists_the_interrupted_task(job, proxy):
    job.ecs.plans.extend([spot_interruption(running=0.2, **QUICK)] + capacity_failures(500))
    running = job.start(*FAST, "--json", "--rerun-on-interruption", "1",
                        env=dict(job.env, AWS_ENDPOINT_URL=proxy.url))
    running.wait_for(r"was interrupted \(SpotInterruption\): rerun 1 of 1")
    proxy.add(Fault("delay", "RunTask", times=1, seconds=3.0))
    running.wait_for("launch attempt 2 failed")  # the rerun's first RunTask: no capacity
    while proxy.count("RunTask") < 3:
        time.sleep(0.02)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    summary = json.loads(result.stdout)
    (interrupted,) = job.tasks()
    assert summary["attempts"] == [interrupted.task_arn] and summary["launchAttempts"] == 3
    assert result.error_lines[-1].startswith("ecsbatch: error: rerun 1 of 1 after task "), result
    assert "nothing is running" in result.error_lines[-1]


# --- held: `stop --job-key` and --timeout at the moments between attempts ---------------------

def test_stop_by_key_during_a_reruns_run_task_stops_the_rerun(job, proxy, tmp_path):
    env = own_runtime(job, tmp_path)
    key = f"{job.family}/rerun-launch"
    job.ecs.plans.extend([spot_interruption(running=0.2, **QUICK), Plan(running=60, **QUICK)])
    running = job.start(*FAST, "--job-key", key, "--rerun-on-interruption", "1",
                        env=dict(env, AWS_ENDPOINT_URL=proxy.url))
    running.wait_for(r"was interrupted \(SpotInterruption\): rerun 1 of 1")
    proxy.add(Fault("delay", "RunTask", times=1, seconds=3.0))
    while proxy.count("RunTask") < 2:
        time.sleep(0.02)
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--timeout", "30s"], env)
    assert stopped.code == 0, stopped
    result = running.finish()
    assert result.code == 143, result
    assert [t.last_status for t in job.tasks()] == ["STOPPED", "STOPPED"]
    assert len(job.run_requests()) == 2


def test_stop_by_key_while_waiting_after_a_task_failed_to_start_ends_the_retries(job, tmp_path):
    from localecs import failed_to_start

    env = own_runtime(job, tmp_path)
    key = f"{job.family}/failed-to-start"
    job.ecs.plans.extend([failed_to_start(**QUICK) for _ in range(50)])
    running = job.start("--launch-backoff", "8", "--job-key", key, env=env)
    wait_in_backoff(running)
    sent = len(job.run_requests())
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--timeout", "30s"], env)
    assert stopped.code == 0, stopped
    result = running.finish()
    assert result.code == 143, result
    assert "no task is running, and no further attempt is made" in result.error_lines[-1]
    time.sleep(0.5)
    assert len(job.run_requests()) == sent
    assert all(t.last_status == "STOPPED" for t in job.tasks())


def test_the_timeout_ends_the_retries_after_tasks_that_failed_to_start(job):
    from localecs import failed_to_start

    job.ecs.plans.extend([failed_to_start(**QUICK) for _ in range(50)])
    result = job.run("--timeout", "2", "--launch-backoff", "0.3", "--json")
    summary = json.loads(result.stdout)
    assert all(t.last_status == "STOPPED" for t in job.tasks())
    if result.code == 124:  # a busy machine: the timeout came while an attempt was starting, and stopped it
        assert summary["outcome"] == "timeout" and "was stopped (STOPPED)" in summary["message"], result
        return
    assert result.code == 125, result
    assert summary["outcome"] == "failed" and summary["stopCode"] == "TaskFailedToStart"
    # the timeout came between two attempts, or as an attempt failed to start on its own
    assert ("--timeout 2 would expire before the next; nothing is running" in summary["message"]
            or "failed to start" in summary["message"] and "--timeout 2 expired" in summary["message"]), summary


# --- a second run of the job attached to an attempt that ECS took away -------------------------

def test_a_rerun_attached_to_an_interrupted_attempt_follows_the_jobs_next_attempt(job, tmp_path):
    """B attaches to A's task; Spot takes it; A reruns. B must not report the interruption (125)
    while the job goes on: it attaches to A's rerun and exits with the job's real code."""
    env = own_runtime(job, tmp_path)
    key = f"{job.family}/attached-interrupted"
    job.ecs.plans.extend([spot_interruption(running=2.5, **QUICK), Plan(running=1.5, exit_code=3, **QUICK)])
    first = job.start(*FAST, "--job-key", key, "--rerun-on-interruption", "1", env=env)
    first.wait_for("launched task")
    second = job.start("--job-key", key, env=env)
    second.wait_for("attaching to it instead of launching another")
    assert first.finish().code == 3
    result = second.finish()
    interrupted, rerun = sorted(job.tasks(), key=lambda t: t.created_at)
    assert result.code == 3, result
    assert f"task {rerun.id} of this job" in result.stderr
    assert len(job.run_requests()) == 2


def test_a_rerun_attached_to_a_task_that_failed_to_start_follows_the_next_attempt(job, tmp_path):
    from localecs import failed_to_start

    env = own_runtime(job, tmp_path)
    key = f"{job.family}/attached-failed-start"
    job.ecs.plans.extend([failed_to_start(provisioning=2.5, pending=0.05), Plan(running=1.5, exit_code=0, **QUICK)])
    first = job.start("--launch-backoff", "0.5", "--job-key", key, env=env)
    first.wait_for("launched task")
    second = job.start("--job-key", key, env=env)
    second.wait_for("attaching to it instead of launching another")
    assert first.finish().code == 0
    result = second.finish()
    assert result.code == 0, result
    assert len(job.tasks()) == 2 and len(job.run_requests()) == 2


def test_an_attached_interrupted_task_whose_runner_is_gone_is_125(job, tmp_path):
    """Nobody will launch the job again (its runner was killed): the interruption is the verdict."""
    env = own_runtime(job, tmp_path)
    key = f"{job.family}/attached-orphan"
    # Time enough for the second run to attach before Spot takes the task, on a busy machine too.
    job.ecs.plans.extend([spot_interruption(running=8.0, **QUICK), Plan(running=60, **QUICK)])
    first = job.start(*FAST, "--job-key", key, "--rerun-on-interruption", "1", env=env)
    first.wait_for("launched task")
    first.process.kill()
    first.finish()
    result = job.run("--job-key", key, env=env)
    assert result.code == 125, result
    assert "attaching to it instead of launching another" in result.stderr
    assert "stopped before its job finished" in result.error_lines[-1]
    assert len(job.tasks()) == 1


# --- --launch-timeout 0, however it is written ---------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0), ("0s", 0.0), ("0.0", 0.0), ("00", 0.0), ("0m", 0.0), ("0h0m", 0.0), (" 0 ", 0.0),
    ("90", 90.0), ("5m", 300.0), ("0.5", 0.5), ("1h0m", 3600.0),
])
def test_launch_timeout_zero_in_any_spelling_turns_retries_off(text, seconds):
    assert ecsbatch.parse_launch_timeout(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "0x", "5 m", "1e3"])
def test_a_bad_launch_timeout_is_a_usage_error(text):
    with pytest.raises(ecsbatch.InputError):
        ecsbatch.parse_launch_timeout(text)


def test_launch_timeout_0_0_launches_once(job):
    job.ecs.plans.extend(capacity_failures(1, then=Plan()))
    result = job.run("--launch-timeout", "0.0")
    assert result.code == 125, result
    assert len(job.run_requests()) == 1 and "trying again" not in result.stderr
