"""The launch path end to end: ecsbatch's tags on every task, no window between RunTask's answer
and the wait where a signal orphans the task, RunTask answers lost on every re-send, and the
advice a second signal gives."""

from __future__ import annotations

import re
import signal
import time

from conftest import APP, SIDECAR, Plan, assert_one_line_error, run_cli
from localecs.proxy import Fault

from ecsbatch import TAG_CLIENT_TOKEN, TAG_DEADLINE, TAG_REQUEST_HASH, parse_deadline

AWSLOGS_APP = dict(APP, logConfiguration={"logDriver": "awslogs", "options": {
    "awslogs-group": "/ecs/launch-test", "awslogs-region": "ap-northeast-1", "awslogs-stream-prefix": "batch"}})


def through(job, proxy, **extra):
    return dict(job.env, AWS_ENDPOINT_URL=proxy.url, **extra)


def tags_of(task):
    return {t["key"]: t["value"] for t in task.tags}


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_every_task_carries_ecsbatchs_tags_and_the_files(job):
    request = dict(__import__("yaml").safe_load(job.run_file.read_text()), tags=[{"key": "team", "value": "sales"}])
    job.write_run_file(request)
    before = time.time()
    result = job.run("--timeout", "1h", plan=Plan(exit_code=0))
    assert result.code == 0, result
    tags = tags_of(job.only_task())
    assert tags["team"] == "sales"
    assert tags[TAG_CLIENT_TOKEN] == job.run_requests()[0]["clientToken"]
    assert tags[TAG_REQUEST_HASH].startswith("sha256:")
    deadline = parse_deadline(tags[TAG_DEADLINE]).timestamp()
    assert before + 3600 <= deadline <= time.time() + 3601


def test_without_timeout_there_is_no_deadline_tag(job):
    assert job.run(plan=Plan(exit_code=0)).code == 0
    assert TAG_DEADLINE not in tags_of(job.only_task())


def test_a_file_tag_with_ecsbatchs_prefix_is_refused_before_any_call(job, tripwire):
    request = dict(__import__("yaml").safe_load(job.run_file.read_text()),
                   tags=[{"key": TAG_CLIENT_TOKEN, "value": "forged"}])
    job.write_run_file(request)
    result = job.run(env=dict(job.env, AWS_ENDPOINT_URL=tripwire.url))
    assert_one_line_error(result, 2, "reserved")
    assert tripwire.connections == 0


def test_sigterm_while_the_first_describe_is_held_stops_the_task(job, proxy):
    proxy.add(Fault("delay", "DescribeTasks", times=1, seconds=3.0))
    running = job.start(plan=Plan(running=60), env=through(job, proxy))
    running.wait_for("launched task")
    wait_until(lambda: proxy.count("DescribeTasks") >= 1)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    assert "nothing was started" not in result.stderr
    wait_until(lambda: job.only_task().last_status == "STOPPED")
    assert "SIGTERM" in job.only_task().stopped_reason


def test_sigterm_right_after_the_launched_line_stops_the_task(job):
    job.register([AWSLOGS_APP, SIDECAR])  # the logs client is built after the line
    running = job.start(plan=Plan(running=60))
    running.wait_for("launched task", timeout=30)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    assert "nothing was started" not in result.stderr
    wait_until(lambda: job.only_task().last_status == "STOPPED")


def test_answers_lost_on_every_resend_are_adopted_by_client_token(job, proxy):
    proxy.add(Fault("lose-answer", "RunTask"))  # every RunTask: ECS acts, the answer never comes back
    result = job.run(plan=Plan(exit_code=3, running=0.5), env=through(job, proxy, AWS_MAX_ATTEMPTS="1"))
    assert result.code == 3, result
    assert "found the task it started by its client token" in result.stderr
    assert len(job.tasks()) == 1
    assert len({r["clientToken"] for r in job.run_requests()}) == 1


def test_a_task_under_the_shared_key_with_another_token_is_never_adopted(job, proxy):
    other = job.ecs.client("ecs").run_task(
        cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE", startedBy="ecsbatch",
        tags=[{"key": TAG_CLIENT_TOKEN, "value": "someone-elses"}],
        networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]],
                                                      "securityGroups": [job.env["SECURITY_GROUP_ID"]]}})
    proxy.add(Fault("drop", "RunTask"))  # nothing reaches ECS, no answer comes back
    result = job.run(env=through(job, proxy, AWS_MAX_ATTEMPTS="1"))
    assert result.code == 125, result
    assert "Traceback" not in result.stderr
    line = result.error_lines[-1]
    assert line.startswith("ecsbatch: error: ") and "no task carries tag" in line and "--client-token" in line
    assert all("re-sending it with the same clientToken" in earlier for earlier in result.error_lines[:-1])
    assert other["tasks"][0]["taskArn"] not in result.stderr
    assert "--started-by ecsbatch " not in line
    assert len(job.tasks()) == 1  # only the other one


def test_sigterm_during_lost_answers_stops_the_task_and_exits_143(job, proxy):
    proxy.add(Fault("lose-answer", "RunTask"))
    running = job.start(plan=Plan(running=60), env=through(job, proxy))  # botocore's 10 attempts, backing off
    wait_until(lambda: proxy.count("RunTask") >= 2)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    assert proxy.count("RunTask") < 6, "no attempt after the signal"
    task = job.only_task()
    wait_until(lambda: task.last_status == "STOPPED")
    assert "SIGTERM" in task.stopped_reason


def test_sigterm_during_lost_launch_with_no_task_found_exits_143_with_token_advice(job, proxy):
    proxy.add(Fault("drop", "RunTask"))
    running = job.start("--job-key", "lost/launch", env=through(job, proxy))
    wait_until(lambda: proxy.count("RunTask") >= 2)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    last = result.stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM" in last and "--started-by ecsbatch-" in last
    assert "--started-by ecsbatch " not in result.stderr
    assert job.tasks() == []


def test_second_signal_during_launch_advises_only_this_job(job, proxy):
    proxy.add(Fault("delay", "RunTask", times=1, seconds=5.0))
    running = job.start(plan=Plan(running=60), env=through(job, proxy))
    wait_until(lambda: proxy.count("RunTask") >= 1)
    running.signal(signal.SIGTERM)
    time.sleep(0.3)
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    advice = next(line for line in result.stderr.splitlines() if "second SIGTERM" in line)
    assert re.search(r"ecsbatch stop --cluster batch --client-token [0-9a-f-]{36}$", advice), advice
    assert "--started-by ecsbatch" not in result.stderr
    token = advice.rsplit(" ", 1)[-1]
    wait_until(lambda: len(job.tasks()) == 1)  # the held RunTask reaches ECS after the runner is gone
    stopped = run_cli(["stop", "--cluster", job.cluster, "--client-token", token, "--poll-interval", "0.1"], job.env)
    assert stopped.code == 0, stopped
    assert job.only_task().last_status == "STOPPED"
