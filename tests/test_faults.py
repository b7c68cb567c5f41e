"""Faults between ecsbatch and ECS: throttling, an outage, a lost RunTask answer, a refusal."""

from __future__ import annotations

from conftest import Plan, assert_one_line_error
from localecs.proxy import Fault


def through(job, proxy, **extra):
    return dict(job.env, AWS_ENDPOINT_URL=proxy.url, **extra)


def test_throttling_bursts_are_absorbed(job, proxy):
    proxy.add(Fault("throttle", "RunTask", times=2))
    proxy.add(Fault("throttle", "DescribeTasks", times=3))
    result = job.run(plan=Plan(exit_code=3, running=1.0), env=through(job, proxy))
    assert result.code == 3, result
    assert len(job.tasks()) == 1


def test_an_outage_longer_than_the_retries_is_logged_and_survived(job, proxy):
    running = job.start(plan=Plan(exit_code=5, running=6.0), env=through(job, proxy, AWS_MAX_ATTEMPTS="2"))
    running.wait_for("RUNNING")
    proxy.add(Fault("drop", window=3.0))
    result = running.finish()
    assert result.code == 5, result
    assert "DescribeTasks failed after retries, polling again" in result.stderr
    assert len(job.tasks()) == 1


def test_a_lost_run_task_answer_is_resent_with_the_same_client_token(job, proxy):
    proxy.add(Fault("lose-answer", "RunTask", times=1))
    result = job.run(plan=Plan(exit_code=0), env=through(job, proxy))
    assert result.code == 0, result
    sent = job.run_requests()
    assert len(sent) == 2, "the first answer was lost, so botocore sent RunTask again"
    assert sent[0]["clientToken"] == sent[1]["clientToken"]
    assert len(job.tasks()) == 1, "one job, one task"


def test_access_denied_is_125_with_aws_message(job, proxy):
    proxy.add(Fault("deny", "RunTask", times=1))
    result = job.run(env=through(job, proxy))
    assert_one_line_error(result, 125, "RunTask: AccessDeniedException", "not authorized to perform: ecs:RunTask",
                          "grant this action")
    assert job.tasks() == []


def test_unreachable_endpoint_before_launch_is_125(job, tripwire):
    result = job.run(env=dict(job.env, AWS_ENDPOINT_URL=tripwire.url, AWS_MAX_ATTEMPTS="1"))
    assert_one_line_error(result, 125, tripwire.url)
    assert job.tasks() == []
