"""Launch retries against answers that localecs and moto do not give (access denied, a throttled or
failing endpoint, failure reasons of EC2 capacity), with botocore's Stubber and a fake clock."""

from __future__ import annotations

import random

import botocore.session
import pytest
from botocore.stub import Stubber

import ecsbatch
from ecsbatch import (TAG_CLIENT_TOKEN, AttemptLog, AwsError, KnownTask, LaunchWindow, RetryPolicy, SignalGuard,
                      launch_with_retries)

ARN = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef"
REQUEST = {"cluster": "batch", "taskDefinition": "arn:aws:ecs:ap-northeast-1:123456789012:task-definition/job:1",
           "launchType": "EC2", "startedBy": "ecsbatch"}
DEFINITION = {"family": "job", "revision": 1, "containerDefinitions": [{"name": "app", "essential": True}]}


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.waits = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.now += seconds


def failures(*reasons):
    return ("answer", {"tasks": [], "failures": [{"arn": "arn:aws:ecs:::container-instance/x", "reason": r}
                                                 for r in reasons]})


def error(code, status=400):
    return ("error", code, status)


TASK = ("answer", {"tasks": [{"taskArn": ARN, "lastStatus": "PROVISIONING"}], "failures": []})


# Each row: RunTask's answers in order -> attempts made, and the task launched or words of the error.
CASES = {
    "ENI, then an agent, then a task": ([failures("RESOURCE:ENI"), failures("AGENT"), TASK], 3, ARN),
    "GPU and UDP ports together, then a task": ([failures("RESOURCE:GPU", "RESOURCE:PORTS_UDP"), TASK], 2, ARN),
    "Fargate capacity": ([failures("Capacity is unavailable at this time. Please try again later"), TASK], 2, ARN),
    "access denied is permanent": ([error("AccessDeniedException")], 1, "AccessDeniedException"),
    "a bad parameter is permanent": ([error("InvalidParameterException")], 1, "InvalidParameterException"),
    "an inactive definition is permanent": ([error("ClientException")], 1, "ClientException"),
    "an unknown platform is permanent": ([error("PlatformUnknownException")], 1, "PlatformUnknownException"),
    "a server error after botocore's retries is not retried again": ([error("ServerException", 500)], 1,
                                                                      "ServerException"),
    "MISSING is permanent": ([failures("MISSING")], 1, "RunTask started no task: arn:aws:ecs:::container-instance/x "
                                                       "MISSING"),
    "a transient failure, then a permanent one": ([failures("RESOURCE:CPU"), failures("INACTIVE")], 2,
                                                  "INACTIVE; after 2 launch attempts"),
    "one permanent reason among transient ones": ([failures("RESOURCE:CPU", "ATTRIBUTE")], 1, "ATTRIBUTE"),
    "an answer with no task and no failure": ([("answer", {"tasks": [], "failures": []})], 1,
                                              "no task and no reason in the answer"),
}


@pytest.mark.parametrize("answers, attempts, expected", CASES.values(), ids=CASES.keys())
def test_launch_retries_against_answers_moto_cannot_give(answers, attempts, expected):
    client = botocore.session.get_session().create_client(
        "ecs", region_name="ap-northeast-1", aws_access_key_id="x", aws_secret_access_key="y")
    sent = []
    client.meta.events.register("before-parameter-build.ecs.RunTask", lambda params, **_: sent.append(dict(params)))
    stubber = Stubber(client)
    for answer in answers:
        if answer[0] == "answer":
            stubber.add_response("run_task", answer[1])
        else:
            stubber.add_client_error("run_task", service_error_code=answer[1], service_message="no",
                                     http_status_code=answer[2])
    clock = Clock()
    policy = RetryPolicy(launch_timeout=300.0, launch_timeout_text="5m", backoff_cap=30.0, reruns=0, strategy=[],
                         rng=random.Random(3), clock=clock, sleep=clock.sleep)
    window, log = LaunchWindow(policy, None, None), AttemptLog()
    guard = SignalGuard()
    try:
        with stubber, guard.hold():
            if expected == ARN:
                task, pending = launch_with_retries(client, guard, REQUEST, window, log, digest="sha256:x", key=None,
                                                    verb="launched", definition=DEFINITION, counted=["app"],
                                                    as_json=False)
                assert (task["taskArn"], pending) == (ARN, None)
            else:
                with pytest.raises(AwsError) as caught:
                    launch_with_retries(client, guard, REQUEST, window, log, digest="sha256:x", key=None,
                                        verb="launched", definition=DEFINITION, counted=["app"], as_json=False)
                assert expected in caught.value.format_message()
                assert caught.value.exit_code == ecsbatch.EXIT_ECS_FAILURE
    finally:
        KnownTask.forget()
    assert log.launches == attempts == len(sent) and len(clock.waits) == attempts - 1
    assert all(0.0 <= wait <= 2.0 * 2 ** n for n, wait in enumerate(clock.waits))
    tokens = [p["clientToken"] for p in sent]
    assert len(set(tokens)) == attempts  # a fresh clientToken for every attempt, and its tag
    assert [next(t["value"] for t in p["tags"] if t["key"] == TAG_CLIENT_TOKEN) for p in sent] == tokens


def test_retries_stop_at_the_launch_timeout_on_the_clock():
    client = botocore.session.get_session().create_client(
        "ecs", region_name="ap-northeast-1", aws_access_key_id="x", aws_secret_access_key="y")
    stubber = Stubber(client)
    for _ in range(200):
        stubber.add_response("run_task", failures("RESOURCE:MEMORY")[1])
    clock = Clock()
    policy = RetryPolicy(launch_timeout=60.0, launch_timeout_text="1m", backoff_cap=8.0, reruns=0, strategy=[],
                         rng=random.Random(5), clock=clock, sleep=clock.sleep)
    window, log = LaunchWindow(policy, None, None), AttemptLog()
    guard = SignalGuard()
    with stubber, guard.hold(), pytest.raises(AwsError) as caught:
        launch_with_retries(client, guard, REQUEST, window, log, digest="sha256:x", key=None, verb="launched",
                            definition=DEFINITION, counted=["app"], as_json=False)
    assert sum(clock.waits) == pytest.approx(60.0)  # the last wait ends at the launch deadline
    assert max(clock.waits) <= 8.0 and len(clock.waits) >= 60 / 8
    assert f"gave up after {log.launches} launch attempts over 1m00s (--launch-timeout 1m)" in \
        caught.value.format_message()
