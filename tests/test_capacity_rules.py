"""When capacity runs out, the pure rules: which launch failures are transient, the backoff, what
follows a judged task (retry, rerun, done), the rerun's request and the verdict's note."""

from __future__ import annotations

import random
import re

import pytest

import ecsbatch
from conftest import REPO
from ecsbatch import (ATTEMPT_DONE, ATTEMPT_RERUN, ATTEMPT_RETRY, GAVE_UP_LAUNCH_TIMEOUT, GAVE_UP_TIMEOUT,
                      OUTCOME_FAILED, OUTCOME_INTERRUPTED, OUTCOME_SUCCEEDED, OUTCOME_TIMEOUT, TAG_REQUEST_HASH,
                      InputError, after_attempt, attempts_note, capacity_strategy, interruption_of,
                      launch_backoff, launch_gave_up_message, next_launch_wait, parse_capacity_provider,
                      request_hash, rerun_request, task_tags, transient_launch_reason, transient_run_task_failure)

CAPACITY = ("Capacity is unavailable at this time. Please try again later or in a different availability zone")
ARN = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef"


# Each row: a RunTask failure reason (or a TaskFailedToStart stoppedReason), the rule it matches
# (None: permanent, never retried).
@pytest.mark.parametrize("reason, rule", [
    ("RESOURCE:CPU", "RESOURCE:CPU"),
    ("RESOURCE:MEMORY", "RESOURCE:MEMORY"),
    ("RESOURCE:PORTS_TCP", "RESOURCE:PORTS_TCP"),
    ("RESOURCE:PORTS_UDP", "RESOURCE:PORTS_UDP"),
    ("RESOURCE:ENI", "RESOURCE:ENI"),
    ("RESOURCE:GPU", "RESOURCE:GPU"),
    ("AGENT", "AGENT"),
    (CAPACITY, "Capacity is unavailable at this time"),
    ("Capacity is unavailable at this time", "Capacity is unavailable at this time"),
    ("  RESOURCE:MEMORY\n", "RESOURCE:MEMORY"),  # what surrounds the reason does not matter
    # permanent: the request, the account or the image is wrong, and a retry gives the same answer
    ("MISSING", None),
    ("ATTRIBUTE", None),
    ("INACTIVE", None),
    ("DRAINING", None),
    ("LOCATION", None),
    ("RESOURCE:SOMETHING_NEW", None),  # unknown means permanent
    ("resource:memory", None),  # ECS's codes are upper case: anything else is not one of them
    ("AGENT disconnected", None),
    ("Capacity", None),
    ("CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref "
     "example.invalid/batch:nosuch: not found", None),
    ("ResourceInitializationError: unable to pull secrets or registry auth", None),
    ("AccessDeniedException: User is not authorized to perform ecs:RunTask", None),
    ("", None),
    (None, None),
])
def test_which_launch_failures_are_transient(reason, rule):
    assert transient_launch_reason(reason) == rule


@pytest.mark.parametrize("failures, rule", [
    ([{"reason": "RESOURCE:CPU", "arn": "arn:...:container-instance/a"}], "RESOURCE:CPU"),
    ([{"reason": "RESOURCE:CPU"}, {"reason": "RESOURCE:MEMORY"}], "RESOURCE:CPU"),
    ([{"reason": "RESOURCE:CPU"}, {"reason": "ATTRIBUTE"}], None),  # one permanent failure: permanent
    ([{"reason": CAPACITY}], "Capacity is unavailable at this time"),
    ([{"arn": "x"}], None),  # no reason
    ([], None),  # no task and no failure: unknown
])
def test_a_run_task_answer_is_retried_only_when_every_failure_is_transient(failures, rule):
    assert transient_run_task_failure(failures) == rule


def test_the_readme_prints_the_same_table():
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Which failures are retried"):]
    section = section[:section.index("\n### ", 4)]
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \|", section, re.M)
    assert rows == [(reason, how) for reason, how, _ in ecsbatch.TRANSIENT_LAUNCH_REASONS]


def stopped(stop_code, reason, *codes):
    answer = {"taskArn": ARN, "lastStatus": "STOPPED", "stoppedReason": reason,
              "containers": [{"name": name, **({} if code is None else {"exitCode": code})} for name, code in codes]}
    if stop_code is not None:
        answer["stopCode"] = stop_code
    return answer


HOST = "Host EC2 (instance i-0123456789abcdef0) terminated."


@pytest.mark.parametrize("task, why", [
    (stopped("SpotInterruption", "Your Spot Task was interrupted.", ("app", 143)), "SpotInterruption"),
    (stopped("SpotInterruption", "Your Spot Task was interrupted.", ("app", None)), "SpotInterruption"),
    (stopped("TerminationNotice", "Task stopped due to a termination notice", ("app", 143)), "TerminationNotice"),
    (stopped(None, HOST, ("app", None)), "host lost"),
    (stopped("EssentialContainerExited", "Host EC2 (instance i-0abc) stopped.", ("app", None)), "host lost"),
    (stopped(None, "Instance i-0abc was terminated", ("app", None)), "host lost"),
    # the counted container's own exit code is there: it judges the job, whatever happened after
    (stopped(None, HOST, ("app", 3)), None),
    (stopped(None, HOST, ("app", 0)), None),
    # no exit code, but nothing says the host went away: an ECS failure, not an interruption
    (stopped(None, "Essential container in task exited", ("app", None)), None),
    (stopped("TaskFailedToStart", HOST, ("app", None)), None),
    (stopped("UserInitiated", HOST, ("app", None)), None),  # someone asked for that stop
    (stopped("UserInitiated", "ecsbatch stop: maintenance", ("app", 143)), None),
    (stopped("ServiceSchedulerInitiated", "Scaling activity", ("app", 143)), None),
    (stopped("EssentialContainerExited", "Essential container in task exited", ("app", 137)), None),
])
def test_which_stops_are_interruptions(task, why):
    assert interruption_of(task, ["app"]) == why


SPOT = stopped("SpotInterruption", "Your Spot Task was interrupted.", ("app", 143))
FAILED_TO_START = stopped("TaskFailedToStart", CAPACITY, ("app", None))
PULL_FAILED = stopped("TaskFailedToStart", "CannotPullContainerError: not found", ("app", None))


# Each row: the outcome's kind, the task, reruns done, reruns allowed -> action, words of why.
@pytest.mark.parametrize("kind, task, done, allowed, action, words", [
    (OUTCOME_FAILED, FAILED_TO_START, 0, 0, ATTEMPT_RETRY, ["failed to start", "Capacity is unavailable"]),
    (OUTCOME_FAILED, FAILED_TO_START, 3, 3, ATTEMPT_RETRY, []),  # a launch retry, not a rerun
    (OUTCOME_FAILED, PULL_FAILED, 0, 2, ATTEMPT_DONE, []),
    (OUTCOME_FAILED, SPOT, 0, 0, ATTEMPT_DONE, ["interrupted (SpotInterruption)", "no rerun was asked for"]),
    (OUTCOME_FAILED, SPOT, 0, 1, ATTEMPT_RERUN, ["rerun 1 of 1", "SpotInterruption"]),
    (OUTCOME_FAILED, SPOT, 1, 2, ATTEMPT_RERUN, ["rerun 2 of 2"]),
    (OUTCOME_FAILED, SPOT, 2, 2, ATTEMPT_DONE, ["no rerun is left of --rerun-on-interruption 2"]),
    (OUTCOME_FAILED, stopped(None, HOST, ("app", None)), 0, 1, ATTEMPT_RERUN, ["host lost"]),
    (OUTCOME_FAILED, stopped("EssentialContainerExited", "x", ("app", 3)), 0, 5, ATTEMPT_DONE, []),
    (OUTCOME_SUCCEEDED, stopped("EssentialContainerExited", "x", ("app", 0)), 0, 5, ATTEMPT_DONE, []),
    # a stop that ecsbatch or an operator asked for is never rerun, whatever ECS recorded
    (OUTCOME_INTERRUPTED, SPOT, 0, 5, ATTEMPT_DONE, []),
    (OUTCOME_TIMEOUT, SPOT, 0, 5, ATTEMPT_DONE, []),
    (OUTCOME_TIMEOUT, FAILED_TO_START, 0, 5, ATTEMPT_DONE, []),
    (OUTCOME_FAILED, None, 0, 5, ATTEMPT_DONE, []),
    (OUTCOME_FAILED, dict(SPOT, lastStatus="DEACTIVATING"), 0, 5, ATTEMPT_DONE, []),
])
def test_what_follows_a_judged_task(kind, task, done, allowed, action, words):
    decision = after_attempt(kind, task, ["app"], reruns_done=done, reruns_allowed=allowed)
    assert decision.action == action
    for word in words:
        assert word in decision.why


class Fixed(random.Random):
    """uniform(a, b) gives the fraction `at` of the way from a to b."""

    def __init__(self, at):
        super().__init__(0)
        self.at = at

    def uniform(self, a, b):
        return a + (b - a) * self.at


@pytest.mark.parametrize("attempt, at, cap, expected", [
    (1, 1.0, 30.0, 2.0),
    (2, 1.0, 30.0, 4.0),
    (4, 1.0, 30.0, 16.0),
    (5, 1.0, 30.0, 30.0),  # capped
    (60, 1.0, 30.0, 30.0),  # no overflow however many attempts
    (3, 0.5, 30.0, 4.0),
    (3, 0.0, 30.0, 0.0),  # full jitter: from zero
    (1, 1.0, 0.2, 0.2),  # a small cap (tests) caps the first wait too
])
def test_backoff_is_exponential_with_full_jitter_and_a_cap(attempt, at, cap, expected):
    assert launch_backoff(attempt, Fixed(at), cap=cap) == pytest.approx(expected)


def test_backoff_spreads_over_its_whole_range():
    rng = random.Random(7)
    waits = [launch_backoff(3, rng, cap=30.0) for _ in range(2000)]
    assert 0.0 <= min(waits) < 0.5 and 7.5 < max(waits) <= 8.0


# Each row: attempt, jitter, now, launch deadline, job deadline -> wait, why not.
@pytest.mark.parametrize("attempt, at, now, launch_deadline, job_deadline, wait, why_not", [
    (1, 1.0, 0.0, 300.0, None, 2.0, ""),
    (3, 0.5, 100.0, 300.0, 1000.0, 4.0, ""),
    (5, 1.0, 290.0, 300.0, None, 10.0, ""),  # cut to end at the launch deadline: one last attempt there
    (5, 1.0, 300.0, 300.0, None, None, GAVE_UP_LAUNCH_TIMEOUT),
    (1, 1.0, 0.0, 0.0, None, None, GAVE_UP_LAUNCH_TIMEOUT),  # --launch-timeout 0
    (2, 1.0, 50.0, 300.0, 53.0, None, GAVE_UP_TIMEOUT),  # --timeout would expire before the next
    (2, 1.0, 50.0, 300.0, 54.5, 4.0, ""),
])
def test_when_the_next_launch_attempt_comes(attempt, at, now, launch_deadline, job_deadline, wait, why_not):
    planned = next_launch_wait(attempt, Fixed(at), now=now, launch_deadline=launch_deadline,
                               job_deadline=job_deadline, cap=30.0)
    assert planned.why_not == why_not
    assert planned.wait == (None if wait is None else pytest.approx(wait))


@pytest.mark.parametrize("launches, reruns, note", [
    (1, 0, None),
    (2, 0, "after 2 launch attempts"),
    (2, 1, "after 2 launch attempts (1 rerun)"),
    (5, 2, "after 5 launch attempts (2 reruns)"),
])
def test_the_verdict_says_how_many_attempts_compactly(launches, reruns, note):
    assert attempts_note(launches, reruns) == note
    assert note is None or len(note) <= 40


@pytest.mark.parametrize("attempts, why_not, words", [
    (1, GAVE_UP_LAUNCH_TIMEOUT, []),  # --launch-timeout 0, or a permanent failure: the failure alone
    (4, GAVE_UP_LAUNCH_TIMEOUT, ["gave up after 4 launch attempts over 1m05s (--launch-timeout 5m)",
                                 "nothing is running"]),
    (2, GAVE_UP_TIMEOUT, ["gave up after 2 launch attempts", "--timeout 1m would expire before the next"]),
])
def test_the_line_when_no_launch_started_the_task(attempts, why_not, words):
    last = "RunTask started no task: RESOURCE:MEMORY"
    message = launch_gave_up_message(last, attempts=attempts, elapsed=65.0, why_not=why_not, launch_timeout="5m",
                                     timeout="1m")
    assert message.startswith(last)
    assert message == last if not words else all(word in message for word in words)


@pytest.mark.parametrize("text, item", [
    ("FARGATE", {"capacityProvider": "FARGATE", "weight": 1}),
    ("FARGATE:3", {"capacityProvider": "FARGATE", "weight": 3}),
    ("FARGATE:0:1", {"capacityProvider": "FARGATE", "weight": 0, "base": 1}),
    ("my-asg-provider:1:0", {"capacityProvider": "my-asg-provider", "weight": 1, "base": 0}),
])
def test_a_rerun_capacity_provider(text, item):
    assert parse_capacity_provider(text) == item


@pytest.mark.parametrize("texts, words", [
    (("",), "NAME[:WEIGHT[:BASE]]"),
    ((":1",), "NAME[:WEIGHT[:BASE]]"),
    (("FARGATE:x",), "NAME[:WEIGHT[:BASE]]"),
    (("FARGATE:1:2:3",), "NAME[:WEIGHT[:BASE]]"),
    (("FARGATE:-1",), "NAME[:WEIGHT[:BASE]]"),
    (("FARGATE:1001",), "WEIGHT is 0-1000"),
    (("FARGATE", "FARGATE:2"), "names a provider twice"),
    (("FARGATE:1:1", "FARGATE_SPOT:1:1"), "only one provider may have a BASE"),
    (("FARGATE:0", "FARGATE_SPOT:0"), "at least one provider needs a WEIGHT above 0"),
])
def test_a_bad_rerun_capacity_provider_is_a_usage_error(texts, words):
    with pytest.raises(InputError, match=re.escape(words)):
        capacity_strategy(texts)


REQUEST = {"cluster": "batch", "taskDefinition": "arn:aws:ecs:ap-northeast-1:123456789012:task-definition/job:3",
           "launchType": "FARGATE", "startedBy": "ecsbatch-0123", "tags": [{"key": "team", "value": "sales"}]}


@pytest.mark.parametrize("strategy, expected", [
    ([], REQUEST),
    ([{"capacityProvider": "FARGATE", "weight": 1}],
     {k: v for k, v in dict(REQUEST, capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}]).items()
      if k != "launchType"}),
])
def test_a_rerun_moves_to_the_strategy_and_drops_the_launch_type(strategy, expected):
    rerun = rerun_request(REQUEST, strategy)
    assert rerun == expected
    assert "launchType" not in rerun or "capacityProviderStrategy" not in rerun
    assert REQUEST["launchType"] == "FARGATE"  # the job's own request is left as it was


def test_a_rerun_on_another_provider_still_carries_the_jobs_request_hash():
    digest = request_hash(REQUEST)
    rerun = rerun_request(REQUEST, [{"capacityProvider": "FARGATE", "weight": 1}])
    tags = task_tags(rerun.get("tags"), client_token="t2", request_digest=digest, deadline=None)
    assert {"key": TAG_REQUEST_HASH, "value": digest} in tags
    assert request_hash(rerun) != digest  # which is why the job's hash is the one that is tagged


def test_under_quiet_the_attempts_outlast_the_reason():
    from ecsbatch import fit_parts, verdict_parts

    reason = "task 0123456789abcdef was stopped before its job finished: stoppedReason='" + "x" * 400 + "'"
    parts = verdict_parts(125, None, ARN, "SpotInterruption", reason, "details: ecsbatch status 0123456789abcdef",
                          note="after 4 launch attempts (2 reruns)")
    line = fit_parts(parts, 200)
    assert len(line) <= 200
    assert line.startswith("ecsbatch: exit 125 from ecsbatch, task 0123456789abcdef, after 4 launch attempts "
                           "(2 reruns), stopCode SpotInterruption: ")
    assert "..." in line and "details" not in line


RUNNERS_BEFORE_CASES = {
    "alone": ([(100, "500")], (100, "500"), []),
    "an older runner": ([(100, "500"), (90, "400")], (100, "500"), [90]),
    "a younger runner is not waited for": ([(100, "500"), (110, "600")], (100, "500"), []),
    "the same tick: the lower pid first": ([(100, "500"), (99, "500"), (101, "500")], (100, "500"), [99]),
    "pids wrapped around: start time decides": ([(100, "500"), (50000, "450")], (100, "500"), [50000]),
}


@pytest.mark.parametrize("runners, me, expected", RUNNERS_BEFORE_CASES.values(), ids=RUNNERS_BEFORE_CASES.keys())
def test_runners_before(runners, me, expected):
    assert ecsbatch.runners_before(runners, me) == expected
