"""The operators' toolkit end to end: container logs, wait, status, stop and logs."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from conftest import APP, SIDECAR, Plan, Running, assert_one_line_error, run_cli

LOG_GROUP = "/ecs/batch-test"
AWSLOGS_APP = dict(APP, logConfiguration={"logDriver": "awslogs", "options": {
    "awslogs-group": LOG_GROUP, "awslogs-region": "ap-northeast-1", "awslogs-stream-prefix": "batch"}})
FIRELENS_APP = dict(APP, logConfiguration={"logDriver": "awsfirelens", "options": {
    "Name": "forward", "Host": "fluentd.internal", "Port": "24224"}})


@pytest.fixture
def logs(ecs):
    client = ecs.client("logs")
    if not client.describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]:
        client.create_log_group(logGroupName=LOG_GROUP)
    return client


def launched_task_id(running: Running) -> str:
    line = running.wait_for(r"launched task arn:")
    return re.search(r"task/[^/\s]+/([0-9a-f-]+)", line).group(1)


def put_lines(logs, stream: str, lines) -> None:
    for start in range(0, len(lines), 10000):
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": now, "message": m} for m in lines[start:start + 10000]])


def test_logs_are_complete_across_the_stop_with_no_line_twice(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    expected = [f"line {n:05d}" for n in range(25000)]
    running = job.start(plan=Plan(running=3.0, exit_code=3))
    tid = launched_task_id(running)
    stream = f"batch/app/{tid}"

    def write() -> None:
        time.sleep(0.6)  # the stream appears late, while the container is still PENDING
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        put_lines(logs, stream, expected[:12000])  # before and while RUNNING, over two pages
        state = next(s for s in job.ecs.states.values() if s.task.task_arn.endswith(tid))
        while not state.done:
            time.sleep(0.01)
        put_lines(logs, stream, expected[12000:])  # after STOPPED: the log driver's last flush

    writer = threading.Thread(target=write)
    writer.start()
    result = running.finish()
    writer.join()
    assert result.code == 3, result.stderr[-2000:]
    assert result.stdout.splitlines() == expected
    tail = result.stderr.splitlines()[-10:]
    assert tail == [f"  | {line}" for line in expected[-10:]]
    assert "last 10 log lines of app:" in result.stderr


def test_a_closed_stdout_does_not_end_the_job(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    running = job.start(plan=Plan(running=3.0, exit_code=4))
    stream = f"batch/app/{launched_task_id(running)}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    put_lines(logs, stream, [f"line {n}" for n in range(20000)])
    assert running.process.stdout.readline() == "line 0\n"
    running.process.stdout.close()  # as `ecsbatch run | head -1` does
    code = running.process.wait(timeout=60)
    running._reader.join(timeout=5)
    stderr = "".join(running.lines)
    assert code == 4, stderr
    assert "stdout was closed" in stderr and "Traceback" not in stderr
    assert job.only_task().stop_code == "EssentialContainerExited"  # it ran to its end, nobody stopped it


def test_with_json_the_log_lines_go_to_stderr(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    running = job.start("--json", plan=Plan(running=1.5, exit_code=0))
    tid = launched_task_id(running)
    stream = f"batch/app/{tid}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    put_lines(logs, stream, ["hello from the job"])
    result = running.finish()
    assert result.code == 0
    summary = json.loads(result.stdout)
    assert summary["logTail"] == ["hello from the job"]
    assert "hello from the job" in result.stderr


def test_no_logs_turns_streaming_off(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    running = job.start("--no-logs", plan=Plan(running=1.5, exit_code=0))
    stream = f"batch/app/{launched_task_id(running)}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    put_lines(logs, stream, ["not to be printed"])
    result = running.finish()
    assert result.code == 0 and result.stdout == ""
    assert "streaming" not in result.stderr and "not to be printed" not in result.stderr


def test_another_log_driver_gets_one_line_and_the_job_carries_on(job):
    job.register([FIRELENS_APP, SIDECAR])
    result = job.run(plan=Plan(exit_code=0))
    assert result.code == 0
    assert "sends its logs through awsfirelens to fluentd.internal" in result.stderr


@pytest.mark.parametrize("plan, expected", [
    (Plan(running=1.0, exit_code=0), 0),
    (Plan(running=1.0, exit_code=3), 3),
    (Plan(running=0.5, exit_code=None, stop_code="TaskFailedToStart", stopped_reason="CannotPullContainerError: x"),
     125),
], ids=["success", "failure", "failed-to-start"])
def test_wait_on_a_task_launched_elsewhere_gives_the_same_exit_code_as_run(job, plan, expected):
    job.ecs.plans.append(plan)
    task = launch_elsewhere(job)
    result = run_cli(["wait", "--poll-interval", "0.2", task["taskArn"]], job.env)
    assert result.code == expected, result
    assert f"attached to task {task['taskArn']}" in result.stderr


def test_wait_on_a_stopped_task_judges_it_at_once(job):
    job.ecs.plans.append(Plan(running=0.2, exit_code=7))
    task = launch_elsewhere(job)
    while not job.ecs.states[task["taskArn"]].done:
        time.sleep(0.05)
    tid = task["taskArn"].rsplit("/", 1)[-1]
    result = run_cli(["wait", "--cluster", job.cluster, "--poll-interval", "0.2", tid], job.env)
    assert result.code == 7, result


def test_wait_on_an_unknown_task_is_125(job):
    result = run_cli(["wait", "--cluster", job.cluster, "0" * 32], job.env)
    assert_one_line_error(result, 125, "unknown to ECS (MISSING)")


def test_wait_stops_the_task_on_sigterm(job):
    job.ecs.plans.append(Plan(running=60))
    task = launch_elsewhere(job)
    running = Running(["wait", "--poll-interval", "0.2", task["taskArn"]], job.env)
    running.wait_for("RUNNING")
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    assert job.ecs.task(task["taskArn"]).last_status == "STOPPED"


def test_stop_really_stops(job):
    job.ecs.plans.append(Plan(running=60))
    task = launch_elsewhere(job)
    result = run_cli(["stop", "--poll-interval", "0.1", "--reason", "bad input file", task["taskArn"]], job.env)
    assert result.code == 0, result
    stopped = job.ecs.task(task["taskArn"])
    assert stopped.last_status == "STOPPED" and stopped.stopped_reason == "ecsbatch stop: bad input file"


def test_stop_by_job_key_after_the_runner_was_killed_outright(job):
    key = "20261128031500-000/nightly/SALES_AGG"
    running = job.start("--job-key", key, plan=Plan(running=60))
    running.wait_for("RUNNING")
    running.signal(signal.SIGKILL)  # as JP1/AJS3 or Systemwalker kill a job's process group
    running.process.wait(timeout=10)
    task = job.only_task()
    assert task.last_status == "RUNNING", "SIGKILL leaves the task running: this is why the stop command exists"
    assert task.started_by.startswith("ecsbatch-") and len(task.started_by) == 36
    result = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--poll-interval", "0.1"], job.env)
    assert result.code == 0, result
    assert task.last_status == "STOPPED"
    again = run_cli(["stop", "--cluster", job.cluster, "--job-key", key], job.env)
    assert again.code == 0 and "nothing to stop" in again.stderr


def test_stop_needs_exactly_one_target(job):
    assert_one_line_error(run_cli(["stop", "--cluster", job.cluster], job.env), 2, "name a TASK")
    assert_one_line_error(run_cli(["stop", "x", "--job-key", "k", "--cluster", job.cluster], job.env), 2)
    assert_one_line_error(run_cli(["stop", "--job-key", "k", "--started-by", "s"], job.env), 2, "not both")


def test_stop_an_unknown_task_is_125(job):
    result = run_cli(["stop", "--cluster", job.cluster, "0" * 32], job.env)
    assert_one_line_error(result, 125, "StopTask", "not found")


def test_status_lists_only_ecsbatchs_tasks(job):
    job.ecs.plans.append(Plan(running=60))
    foreign = launch_elsewhere(job, started_by="someone-else")
    ours = job.start("--job-key", "status-test", plan=Plan(running=60))
    ours.wait_for("RUNNING")
    mine = [t for t in job.tasks() if t.started_by.startswith("ecsbatch-")][0]
    result = run_cli(["status", "--cluster", job.cluster, "--json"], job.env)
    assert result.code == 0, result
    listed = {t["taskArn"] for t in json.loads(result.stdout)}
    assert mine.task_arn in listed and foreign["taskArn"] not in listed
    table = run_cli(["status", "--cluster", job.cluster], job.env)
    assert table.stdout.splitlines()[0].split()[:2] == ["TASK", "STATUS"]
    assert mine.id in table.stdout and foreign["taskArn"].rsplit("/", 1)[-1] not in table.stdout
    exact = run_cli(["status", "--cluster", job.cluster, "--started-by", "someone-else", "--json"], job.env)
    assert {t["taskArn"] for t in json.loads(exact.stdout)} == {foreign["taskArn"]}
    ours.signal(signal.SIGTERM)
    assert ours.finish().code == 143


def test_status_of_one_task_shows_its_containers(job):
    job.ecs.plans.append(Plan(running=0.2, exit_code=3, reasons={"app": "bad row 17"}))
    task = launch_elsewhere(job)
    while not job.ecs.states[task["taskArn"]].done:
        time.sleep(0.05)
    result = run_cli(["status", task["taskArn"]], job.env)
    assert result.code == 0, result
    assert "container     app: STOPPED, exitCode=3, reason=bad row 17" in result.stdout
    assert "stop code     EssentialContainerExited" in result.stdout


def test_logs_command_prints_and_follows(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    job.ecs.plans.append(Plan(running=2.0))
    task = launch_elsewhere(job)
    stream = f"batch/app/{task['taskArn'].rsplit('/', 1)[-1]}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    put_lines(logs, stream, ["first", "second"])
    printed = run_cli(["logs", task["taskArn"]], job.env)
    assert printed.code == 0 and printed.stdout.splitlines() == ["first", "second"]
    following = Running(["logs", "--follow", "--poll-interval", "0.2", task["taskArn"]], job.env)
    time.sleep(0.5)
    put_lines(logs, stream, ["third"])
    result = following.finish()
    assert result.code == 0 and result.stdout.splitlines() == ["first", "second", "third"]


def test_logs_without_awslogs_says_where_they_go(job):
    job.register([FIRELENS_APP])
    job.ecs.plans.append(Plan(running=0.2))
    task = launch_elsewhere(job)
    assert_one_line_error(run_cli(["logs", task["taskArn"]], job.env), 2, "awsfirelens")


def launch_elsewhere(job, started_by: str = "console"):
    """A task started by someone else (the console, another tool), not by ecsbatch."""
    answer = job.ecs.client("ecs").run_task(
        cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE", startedBy=started_by,
        networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]],
                                                      "securityGroups": [job.env["SECURITY_GROUP_ID"]]}})
    return answer["tasks"][0]
