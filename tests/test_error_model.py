"""One error model: every AWS wrapper raises AwsError, which carries what callers ask about."""

from __future__ import annotations

import botocore.exceptions
import pytest

import ecsbatch
from ecsbatch import AwsError, aws_errors_as


def client_error(code):
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "no"}}, "DescribeTasks")


@pytest.mark.parametrize("error, code, no_answer", [
    (client_error("ClientException"), "ClientException", False),
    (client_error("ResourceNotFoundException"), "ResourceNotFoundException", False),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), None, True),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), None, True),
    (botocore.exceptions.NoCredentialsError(), None, False),
])
def test_aws_errors_carry_the_code_and_whether_no_answer_came(error, code, no_answer):
    with pytest.raises(AwsError) as caught:
        with aws_errors_as():
            raise error
    assert (caught.value.code, caught.value.no_answer) == (code, no_answer)
    assert caught.value.exit_code == ecsbatch.EXIT_ECS_FAILURE


class Refusing:
    def describe_tasks(self, **kwargs):
        raise client_error("AccessDeniedException")

    def stop_task(self, **kwargs):
        raise client_error("AccessDeniedException")

    def get_log_events(self, **kwargs):
        raise client_error("ResourceNotFoundException")


@pytest.mark.parametrize("call", [
    lambda c: ecsbatch.task_or_why_missing(c, None, "arn:aws:ecs:r:1:task/c/abc"),
    lambda c: ecsbatch.require_task(c, None, "abc"),
    lambda c: ecsbatch.tasks_ecs_knows(c, None, ["abc"]),
    lambda c: ecsbatch.stop_task(c, None, "abc", "why"),
    lambda c: ecsbatch.read_log_page(c, ecsbatch.LogSource("g", "s", None), None),
])
def test_every_wrapper_raises_aws_error(call):
    with pytest.raises(AwsError):
        call(Refusing())


def test_outcome_kinds_are_the_documented_ones():
    assert ecsbatch.OUTCOME_KINDS == ("succeeded", "failed", "timeout", "interrupted", "missing", "not-stopped",
                                      "launch-failed", "error", "usage-error")
