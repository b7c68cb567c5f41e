"""A rerun never runs twice: with a key of its own, `run` attaches to the job's live task,
refuses a different job that shares the key, and launches afresh once the task has stopped."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from conftest import Plan, assert_one_line_error, run_cli



def key_of(job):
    """One key per test: the tests share one cluster."""
    return f"20261201031500-000/{job.family}/SALES_AGG"


def killed_runner(job, *args, plan):
    """A runner killed outright (SIGKILL), its task left RUNNING."""
    running = job.start("--job-key", key_of(job), *args, plan=plan)
    running.wait_for("RUNNING")
    running.signal(signal.SIGKILL)
    running.process.wait(timeout=10)
    task = job.only_task()
    assert task.last_status == "RUNNING"
    return task


def test_a_rerun_after_sigkill_attaches_and_exits_with_the_tasks_code(job):
    task = killed_runner(job, "-e", "TARGET_DATE=2026-11-30", plan=Plan(running=4.0, exit_code=3))
    result = job.run("--job-key", key_of(job), "-e", "TARGET_DATE=2026-11-30")
    assert result.code == 3, result
    assert len(job.tasks()) == 1, "ECS has one task, not two"
    assert "attaching to it instead of launching another" in result.stderr
    assert job.only_task().task_arn == task.task_arn and task.last_status == "STOPPED"
    assert len(job.run_requests()) == 1


def test_a_different_job_sharing_the_key_is_refused(job, proxy):
    killed_runner(job, "-e", "TARGET_DATE=2026-11-30", plan=Plan(running=60))
    result = job.run("--job-key", key_of(job), "-e", "TARGET_DATE=2026-12-01", env=dict(job.env, AWS_ENDPOINT_URL=proxy.url))
    assert_one_line_error(result, 2, "another job", "different request")
    assert proxy.count("RunTask") == 0
    assert len(job.tasks()) == 1
    assert job.only_task().last_status == "RUNNING"  # the other job is left alone


def test_if_running_fail_exits_120(job):
    killed_runner(job, plan=Plan(running=60))
    result = job.run("--job-key", key_of(job), "--if-running", "fail", "--json")
    line = assert_one_line_error(result, 120, "still RUNNING", "--if-running fail")
    assert "ecsbatch: error:" in line
    assert json.loads(result.stdout)["exitCode"] == 120
    assert len(job.tasks()) == 1


def test_if_running_launch_launches_anyway(job):
    killed_runner(job, plan=Plan(running=60))
    result = job.run("--job-key", key_of(job), "--if-running", "launch", plan=Plan(exit_code=0))
    assert result.code == 0, result
    assert len(job.tasks()) == 2


def test_after_the_keys_task_stopped_a_rerun_launches_afresh(job):
    assert job.run("--job-key", key_of(job), plan=Plan(exit_code=4)).code == 4
    result = job.run("--job-key", key_of(job), plan=Plan(exit_code=0))
    assert result.code == 0, result
    assert len(job.tasks()) == 2


def kill_after_running(running):
    running.wait_for("RUNNING")
    running.signal(signal.SIGKILL)
    running.process.wait(timeout=10)


@pytest.mark.parametrize("args, started_by", [
    ((), None),  # startedBy "ecsbatch", shared by every job
    (("--started-by", "ecsbatch"), None),  # the default, even when written out
    ((), "nightly"),  # the file's startedBy is the job's template, not a key of this run
], ids=["default", "explicit-default", "files"])
def test_a_shared_or_file_started_by_never_attaches(job, args, started_by):
    if started_by:
        job.write_run_file(dict(yaml.safe_load(job.run_file.read_text()), startedBy=started_by))
    kill_after_running(job.start(*args, plan=Plan(running=60)))
    assert job.run(*args, plan=Plan(exit_code=0)).code == 0
    assert len(job.tasks()) == 2
    for task in job.tasks():
        run_cli(["stop", "--cluster", job.cluster, "--poll-interval", "0.1", task.task_arn], job.env)


def test_after_an_attach_the_timeout_counts_from_the_tasks_creation(job, proxy):
    killed_runner(job, plan=Plan(running=60))
    time.sleep(2.5)
    result = job.run("--job-key", key_of(job), "--timeout", "2s", env=dict(job.env, AWS_ENDPOINT_URL=proxy.url))
    assert result.code == 124, result
    # Past its deadline already: stopped at once, before a single poll of the wait (the one
    # DescribeTasks before the stop is the rerun's look for live tasks of its key).
    assert proxy.count("StopTask") == 1
    stop_at = proxy.entries("StopTask")[0]["at"]
    assert len([e for e in proxy.entries("DescribeTasks") if e["at"] < stop_at]) == 1
    assert "--timeout 2s" in job.only_task().stopped_reason
