"""`ecsbatch run` end to end: a subprocess against the local ECS endpoint over HTTP."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from conftest import APP, SIDECAR, Plan, assert_one_line_error


@pytest.mark.parametrize("plan, expected, fragments", [
    (Plan(exit_code=0), 0, ["succeeded", "app exited 0"]),
    (Plan(exit_code=3, reasons={"app": "job failed"}), 3, ["exited 3", "stopCode=EssentialContainerExited",
                                                            "reason='job failed'"]),
    (Plan(exit_code=255), 255, ["exited 255"]),
    # The log router is killed (137) when the job ends; a non-essential sidecar never decides.
    (Plan(exit_code=0, sidecar_exit_code=1), 0, ["succeeded"]),
    (Plan(exit_code=0, sidecar_exit_code=None), 0, ["succeeded"]),
], ids=["success", "failure", "exit-255", "sidecar-failed", "sidecar-no-exit-code"])
def test_exit_code_is_the_essential_containers(job, plan, expected, fragments):
    result = job.run(plan=plan)
    assert result.code == expected, result
    last = result.error_lines[-1]
    for fragment in fragments:
        assert fragment in last
    assert result.stdout == ""


def test_failed_to_start_is_never_a_success(job):
    result = job.run("--", "fail-to-start")
    assert result.code == 125, result
    last = result.error_lines[-1]
    assert "failed to start" in last and "stopCode=TaskFailedToStart" in last
    assert "CannotPullContainerError" in last
    assert job.only_task().last_status == "STOPPED"


def test_host_terminated_without_exit_code_is_125(job):
    result = job.run("--", "host-terminated")
    assert result.code == 125, result
    assert "has no exit code" in result.error_lines[-1]
    assert "Host EC2" in result.error_lines[-1]


def test_task_stopped_by_someone_else_is_125_even_if_the_container_exits_0(job):
    running = job.start(plan=Plan(running=30, sigterm_exit_code=0))
    running.wait_for("RUNNING")
    job.ecs.client("ecs").stop_task(cluster=job.cluster, task=job.only_task().task_arn, reason="operator cleanup")
    result = running.finish()
    assert result.code == 125, result
    last = result.stderr.splitlines()[-1]
    assert "stopped before its job finished" in last and "UserInitiated" in last and "operator cleanup" in last


def test_run_task_failures_are_125_with_the_reason(job):
    plan = Plan(failures=[{"arn": "arn:aws:ecs:ap-northeast-1:123456789012:container-instance/x",
                           "reason": "RESOURCE:MEMORY"}])
    result = job.run("--launch-timeout", "0", plan=plan)  # transient: retried by default (test_capacity.py)
    assert_one_line_error(result, 125, "RunTask started no task", "RESOURCE:MEMORY")


def test_every_essential_container_counts_in_definition_order(job):
    job.register([dict(APP, name="extract"), dict(APP, name="load"), SIDECAR])
    result = job.run(plan=Plan(exit_codes={"extract": 0, "load": 4}))
    assert result.code == 4, result
    assert "container load exited 4" in result.error_lines[-1]


def test_container_option_chooses_the_container_that_counts(job):
    result = job.run("--container", "log-router", plan=Plan(exit_code=0, sidecar_exit_code=137))
    assert result.code == 137, result


def test_unknown_container_is_bad_usage_and_launches_nothing(job):
    result = job.run("--container", "nosuch")
    assert_one_line_error(result, 2, "--container 'nosuch'", "app, log-router")
    assert job.tasks() == []


@pytest.mark.parametrize("args, fragment", [
    (["--task-definition", "no-such-family"], "DescribeTaskDefinition"),
    (["--cluster", "no-such-cluster"], "RunTask"),
])
def test_aws_refusals_are_125_in_one_line(job, args, fragment):
    result = job.run(*args)
    assert_one_line_error(result, 125, fragment)


def test_overrides_reach_the_task_and_the_command_line_wins(job):
    request = yaml.safe_load(job.run_file.read_text())
    request["overrides"] = {"containerOverrides": [
        {"name": "app", "environment": [{"name": "A", "value": "from-file"}, {"name": "C", "value": "3"}]}]}
    job.write_run_file(request)
    result = job.run("-e", "A=from-cli", "-e", "B=x=y", "--", "python", "job.py", "--date", "2026-11-28")
    assert result.code == 0, result
    (sent,) = job.run_requests()
    (override,) = sent["overrides"]["containerOverrides"]
    assert override["name"] == "app"
    assert {e["name"]: e["value"] for e in override["environment"]} == {"A": "from-cli", "C": "3", "B": "x=y"}
    assert override["command"] == ["python", "job.py", "--date", "2026-11-28"]
    assert job.only_task().overrides["containerOverrides"][0]["command"][0] == "python"
    assert sent["startedBy"] == "ecsbatch"
    assert sent["taskDefinition"] == job.definition_arn  # exactly the revision that was judged
    assert len(sent["clientToken"]) == 36


def test_started_by_and_cluster_and_task_definition_options(job):
    other = job.register([APP])
    result = job.run("--started-by", "nightly-sales", "--cluster", job.cluster, "--task-definition", other)
    assert result.code == 0, result
    task = job.only_task()
    assert task.started_by == "nightly-sales"
    assert task.task_definition_arn == other


def test_json_summary_is_one_object_on_stdout(job):
    result = job.run("--json", plan=Plan(exit_code=3, reasons={"app": "bad row 17"}))
    assert result.code == 3
    summary = json.loads(result.stdout)
    assert summary["exitCode"] == 3 and summary["outcome"] == "failed"
    assert summary["lastStatus"] == "STOPPED" and summary["stopCode"] == "EssentialContainerExited"
    assert summary["taskArn"] == job.only_task().task_arn
    containers = {c["name"]: c for c in summary["containers"]}
    assert containers["app"] == {"name": "app", "exitCode": 3, "reason": "bad row 17", "counted": True}
    assert containers["log-router"]["counted"] is False
    assert summary["timings"]["startedAt"] and summary["timings"]["stoppedAt"]
    assert summary["timings"]["waitedSeconds"] > 0


def test_progress_is_one_timestamped_line_per_state_change(job):
    result = job.run(plan=Plan(exit_code=0, provisioning=1.0, pending=1.0))  # each phase outlasts a late poll
    states = [line.split()[-1] for line in result.error_lines if line.split()[-1] in
              ("PROVISIONING", "PENDING", "RUNNING", "STOPPED")]
    assert states == ["PROVISIONING", "PENDING", "RUNNING", "STOPPED"]
    assert any("to reattach: ecsbatch wait" in line for line in result.error_lines)
    assert all(line[:4].isdigit() for line in result.error_lines)


def test_exactly_one_run_task_and_at_most_one_describe_per_poll(job):
    before = len(job.ecs.calls("DescribeTasks"))
    result = job.run("--poll-interval", "0.3", plan=Plan(running=1.5))
    assert result.code == 0
    assert len(job.run_requests()) == 1
    polls = len(job.ecs.calls("DescribeTasks")) - before
    elapsed = 0.2 + 0.2 + 1.5
    assert polls <= elapsed / (0.3 * 0.75) + 2


def test_timeout_stops_the_task_and_exits_124(job):
    started = time.monotonic()
    result = job.run("--timeout", "1s", plan=Plan(running=60))
    assert result.code == 124, result
    assert time.monotonic() - started < 20
    task = job.only_task()
    assert task.last_status == "STOPPED"
    assert "--timeout 1s expired" in task.stopped_reason
    assert "--timeout 1s expired" in result.error_lines[-1]


def signal_while_held(job, proxy, operation: str, signum: int, plan=None):
    """Hold `operation` at the proxy for a few seconds and signal the runner while it waits."""
    from localecs.proxy import Fault

    proxy.add(Fault("delay", operation, times=1, seconds=3.0))
    running = job.start(plan=plan, env=dict(job.env, AWS_ENDPOINT_URL=proxy.url))
    deadline = time.monotonic() + 20
    while proxy.count(operation) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    running.signal(signum)
    return running.finish()


def test_signal_during_launch_stops_the_task_it_launched(job, proxy):
    result = signal_while_held(job, proxy, "RunTask", signal.SIGTERM, plan=Plan(running=60))
    assert result.code == 143, result
    task = job.only_task()
    assert task.last_status == "STOPPED" and "during launch" in task.stopped_reason


def test_signal_before_launch_starts_nothing(job, proxy):
    result = signal_while_held(job, proxy, "DescribeTaskDefinition", signal.SIGINT)
    assert result.code == 130, result
    assert "nothing was started" in result.stderr
    assert job.tasks() == []


def test_task_that_vanishes_after_being_seen_is_125(job):
    running = job.start(plan=Plan(running=60))
    running.wait_for("RUNNING")
    task = job.only_task()
    job.ecs.forget(task.task_arn)
    result = running.finish()
    assert result.code == 125, result
    assert "unknown to ECS (MISSING)" in result.stderr.splitlines()[-1]
