"""`ecsbatch stop` reaches a job whose launch is still in flight, and `stop --expired` ends the
tasks that a lost batch server left behind."""

from __future__ import annotations

import datetime
import signal
import time

import pytest

from conftest import Plan, Running, run_cli
from localecs.proxy import Fault

from ecsbatch import TAG_CLIENT_TOKEN, TAG_DEADLINE


@pytest.fixture
def runtime_env(job, tmp_path):
    """The runner and the stop command share a per-user runtime directory, as on a batch server."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return dict(job.env, XDG_RUNTIME_DIR=str(runtime))


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_stop_by_key_during_a_slow_launch_stops_the_runner_and_its_task(job, proxy, runtime_env):
    key = f"{job.family}/slow-launch"
    proxy.add(Fault("delay", "RunTask", times=1, seconds=4.0))
    running = job.start("--job-key", key, plan=Plan(running=60), env=dict(runtime_env, AWS_ENDPOINT_URL=proxy.url))
    wait_until(lambda: proxy.count("RunTask") >= 1)
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--poll-interval", "0.2"], runtime_env)
    assert stopped.code == 0, stopped
    assert "sent SIGTERM to the runner" in stopped.stderr
    assert "nothing to stop" not in stopped.stderr
    result = running.finish()
    assert result.code == 143, result
    assert [t.last_status for t in job.tasks()] == ["STOPPED"]
    assert running.process.poll() is not None, "stop waited for the runner to exit"


def test_stop_by_key_while_the_runner_waits_exits_the_runner_143(job, runtime_env):
    key = f"{job.family}/waiting"
    running = job.start("--job-key", key, plan=Plan(running=60), env=runtime_env)
    running.wait_for("RUNNING")
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--poll-interval", "0.2"], runtime_env)
    assert stopped.code == 0, stopped
    assert running.finish().code == 143
    assert job.only_task().last_status == "STOPPED"


def test_a_runner_killed_outright_leaves_an_entry_that_stop_ignores(job, runtime_env):
    key = f"{job.family}/killed"
    running = job.start("--job-key", key, plan=Plan(running=60), env=runtime_env)
    running.wait_for("RUNNING")
    running.signal(signal.SIGKILL)
    running.process.wait(timeout=10)
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--poll-interval", "0.1"], runtime_env)
    assert stopped.code == 0, stopped
    assert "sent SIGTERM" not in stopped.stderr
    assert job.only_task().last_status == "STOPPED"


def run_elsewhere(job, tags, started_by="ecsbatch"):
    job.ecs.plans.append(Plan(running=60))
    answer = job.ecs.client("ecs").run_task(
        cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE", startedBy=started_by,
        tags=[{"key": k, "value": v} for k, v in tags.items()],
        networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]],
                                                      "securityGroups": [job.env["SECURITY_GROUP_ID"]]}})
    return job.ecs.task(answer["tasks"][0]["taskArn"])


def stamp(minutes):
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_stop_expired_stops_only_ecsbatchs_tasks_past_their_deadline(job):
    expired = run_elsewhere(job, {TAG_CLIENT_TOKEN: "a", TAG_DEADLINE: stamp(-30)})
    keyed = run_elsewhere(job, {TAG_CLIENT_TOKEN: "b", TAG_DEADLINE: stamp(-30)}, started_by="ecsbatch-0123456789")
    within_grace = run_elsewhere(job, {TAG_CLIENT_TOKEN: "c", TAG_DEADLINE: stamp(-1)})
    future = run_elsewhere(job, {TAG_CLIENT_TOKEN: "d", TAG_DEADLINE: stamp(30)})
    no_deadline = run_elsewhere(job, {TAG_CLIENT_TOKEN: "e"})
    foreign = run_elsewhere(job, {TAG_DEADLINE: stamp(-30)}, started_by="console")
    wait_until(lambda: all(t.last_status == "RUNNING" for t in job.tasks()))
    result = run_cli(["stop", "--cluster", job.cluster, "--expired", "--poll-interval", "0.1"], job.env)
    assert result.code == 0, result
    assert expired.last_status == keyed.last_status == "STOPPED"
    assert "past its deadline" in expired.stopped_reason and expired.stopped_reason.startswith("ecsbatch stop:")
    for untouched in (within_grace, future, no_deadline, foreign):
        assert untouched.last_status == "RUNNING"
    again = run_cli(["stop", "--cluster", job.cluster, "--expired"], job.env)
    assert again.code == 0 and "nothing to stop" in again.stderr
    for task in job.tasks():
        run_cli(["stop", "--cluster", job.cluster, "--poll-interval", "0.1", task.task_arn], job.env)


def test_stop_needs_exactly_one_kind_of_target(job):
    for args in (["--expired", "--job-key", "k"], ["--client-token", "t", "x"], []):
        result = run_cli(["stop", "--cluster", job.cluster] + args, job.env)
        assert result.code == 2, result
