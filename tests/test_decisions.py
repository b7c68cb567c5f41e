"""The pure decisions, as tables of cases."""

from __future__ import annotations

import random

import pytest
import yaml

import ecsbatch
from ecsbatch import InputError, judge_stopped_task

ARN = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef"


def task(stop_code="EssentialContainerExited", reason="Essential container in task exited", containers=()):
    answer = {"taskArn": ARN, "lastStatus": "STOPPED", "stoppedReason": reason, "containers": list(containers)}
    if stop_code is not None:
        answer["stopCode"] = stop_code
    return answer


def container(name, exit_code=None, reason=None):
    entry = {"name": name, "lastStatus": "STOPPED"}
    if exit_code is not None:
        entry["exitCode"] = exit_code
    if reason is not None:
        entry["reason"] = reason
    return entry


# Each row: what ECS answered, which containers count, the exit code, words the line must hold.
JUDGMENT_CASES = {
    "success": (task(containers=[container("app", 0)]), ["app"], 0, ["succeeded"]),
    "failure passes the code through": (
        task(containers=[container("app", 3, "bad row")]), ["app"], 3,
        ["0123456789abcdef", "exited 3", "stopCode=EssentialContainerExited", "reason='bad row'"]),
    "OOM kill keeps 137 and says why": (
        task(containers=[container("app", 137, "OutOfMemoryError: Container killed due to memory usage")]),
        ["app"], 137, ["OutOfMemoryError"]),
    # Airflow #... and many runners: a task that never started was reported as a success.
    "failed to start, no containers": (
        task("TaskFailedToStart", "CannotPullContainerError: pull access denied", []), ["app"], 125,
        ["failed to start", "CannotPullContainerError"]),
    "failed to start though exit code 0 is reported": (
        task("TaskFailedToStart", "ResourceInitializationError: unable to pull secrets",
             [container("app", 0)]), ["app"], 125, ["ResourceInitializationError"]),
    # A sidecar (log router) must never decide the result, either way.
    "sidecar failed, job succeeded": (
        task(containers=[container("log-router", 1), container("app", 0)]), ["app"], 0, ["succeeded"]),
    "sidecar succeeded, job failed": (
        task(containers=[container("log-router", 0), container("app", 2)]), ["app"], 2, ["exited 2"]),
    "sidecar without exit code": (
        task(containers=[container("log-router"), container("app", 0)]), ["app"], 0, ["succeeded"]),
    # A missing exitCode crashed other runners with KeyError.
    "counted container without exit code": (
        task(containers=[container("app", None, "Task stopped")]), ["app"], 125, ["has no exit code"]),
    "counted container absent from the answer": (task(containers=[]), ["app"], 125, ["has no exit code"]),
    # A terminated host was taken for a success.
    "host terminated, no stop code, no exit code": (
        task(None, "Host EC2 (instance i-0abc) terminated.", [container("app")]), ["app"], 125,
        ["Host EC2", "has no exit code"]),
    "spot interruption with a graceful exit 0": (
        task("SpotInterruption", "Your Spot Task was interrupted.", [container("app", 0)]), ["app"], 125,
        ["stopped before its job finished", "SpotInterruption"]),
    "termination notice": (task("TerminationNotice", "Host draining", [container("app", 0)]), ["app"], 125,
                           ["TerminationNotice"]),
    "stopped by someone else with exit 0": (
        task("UserInitiated", "Task stopped by user", [container("app", 0)]), ["app"], 125, ["UserInitiated"]),
    "stopped by a service scheduler": (
        task("ServiceSchedulerInitiated", "Scaling activity", [container("app", 143)]), ["app"], 125, []),
    "first non-zero essential in definition order": (
        task(containers=[container("load", 4), container("extract", 5)]), ["extract", "load"], 5,
        ["container extract exited 5"]),
    "all essentials exit 0": (
        task(containers=[container("a", 0), container("b", 0)]), ["a", "b"], 0, ["a, b exited 0"]),
    "one essential lacks an exit code": (
        task(containers=[container("a", 1), container("b")]), ["a", "b"], 125, ["container b has no exit code"]),
    "exit code outside 0-255 is never masked to success": (
        task(containers=[container("app", 256)]), ["app"], 125, ["outside 0-255"]),
    "negative exit code": (task(containers=[container("app", -1)]), ["app"], 125, ["outside 0-255"]),
    "boolean is not an exit code": (task(containers=[container("app", False)]), ["app"], 125, []),
    "nothing to count": (task(containers=[container("app", 0)]), [], 125, ["no container to judge"]),
    "reasons with newlines stay on one line": (
        task(reason="line one\nline two", containers=[container("app", 1, "a\nb")]), ["app"], 1,
        ["'line one line two'", "reason='a b'"]),
}


@pytest.mark.parametrize("answer, counted, expected, fragments", JUDGMENT_CASES.values(), ids=JUDGMENT_CASES.keys())
def test_judge_stopped_task(answer, counted, expected, fragments):
    verdict = judge_stopped_task(answer, counted)
    assert verdict.exit_code == expected
    assert "\n" not in verdict.message
    for fragment in fragments:
        assert fragment in verdict.message


@pytest.mark.parametrize("definition, container, expected", [
    ({"containerDefinitions": [{"name": "app", "essential": True}, {"name": "log", "essential": False}]}, None, ["app"]),
    ({"containerDefinitions": [{"name": "log", "essential": False}, {"name": "app"}]}, None, ["app"]),
    ({"containerDefinitions": [{"name": "a"}, {"name": "b", "essential": True}]}, None, ["a", "b"]),
    ({"containerDefinitions": [{"name": "a", "essential": False}]}, None, ["a"]),
    ({"containerDefinitions": [{"name": "app"}, {"name": "log", "essential": False}]}, "log", ["log"]),
])
def test_counted_container_names(definition, container, expected):
    assert ecsbatch.counted_container_names(definition, container) == expected


def test_counted_container_names_rejects_an_unknown_container():
    with pytest.raises(InputError, match="not in task definition f:3"):
        ecsbatch.counted_container_names({"family": "f", "revision": 3, "containerDefinitions": [{"name": "a"}]}, "b")


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("0.5", 0.5), (" 10M ", 600),
])
def test_parse_duration(text, seconds):
    assert ecsbatch.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "0", "0s", "1h30", "5d", "m", "1.2.3"])
def test_parse_duration_rejects(text):
    with pytest.raises(InputError):
        ecsbatch.parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m"), (5430, "1h30m")])
def test_format_duration(seconds, text):
    assert ecsbatch.format_duration(seconds) == text


RENDER_CASES = {
    "plain": ("a-${X}-b", {"X": "1"}, "a-1-b"),
    "twice": ("${X}${X}", {"X": "ab"}, "abab"),
    "escape": ("$${X}", {}, "${X}"),
    "escape then placeholder": ("$${X}${X}", {"X": "v"}, "${X}v"),
    "a lone dollar stays": ("cost $5 and $X", {}, "cost $5 and $X"),
    "value is not rescanned": ("${X}", {"X": "${Y}"}, "${Y}"),
    "value with YAML syntax": ("${X}", {"X": "a: [b, {c: d}]\n- e"}, "a: [b, {c: d}]\n- e"),
    "empty value": ("x${X}y", {"X": ""}, "xy"),
}


@pytest.mark.parametrize("text, variables, expected", RENDER_CASES.values(), ids=RENDER_CASES.keys())
def test_render_template_strings(text, variables, expected):
    assert ecsbatch.render_template({"k": text}, variables, "f.yaml") == {"k": expected}


def test_render_template_leaves_keys_and_non_strings_alone():
    data = {"${X}": 1, "list": [True, None, 2.5, {"n": "${X}"}]}
    assert ecsbatch.render_template(data, {"X": "v"}, "f") == {"${X}": 1, "list": [True, None, 2.5, {"n": "v"}]}


def test_render_template_reports_every_unresolved_name_with_its_places():
    with pytest.raises(InputError) as raised:
        ecsbatch.render_template({"a": "${A}", "b": ["${B}", "${A}"], "c": "${oops"}, {}, "f.yaml")
    message = raised.value.format_message()
    assert "${A} (at a, b[1])" in message and "${B} (at b[0])" in message
    assert "malformed placeholder at c" in message


@pytest.mark.parametrize("pairs, identifier, expected", [
    (("A=1", "B=x=y", "A=2"), True, {"A": "2", "B": "x=y"}),
    (("EMPTY=",), True, {"EMPTY": ""}),
    (("lower.dotted=1",), False, {"lower.dotted": "1"}),
])
def test_parse_assignments(pairs, identifier, expected):
    assert ecsbatch.parse_assignments(pairs, "--var", identifier=identifier) == expected


@pytest.mark.parametrize("pair, identifier", [("NOEQ", True), ("=v", False), ("1A=v", True), ("A-B=v", True),
                                              ("A\n=v", True)])
def test_parse_assignments_rejects(pair, identifier):
    with pytest.raises(InputError):
        ecsbatch.parse_assignments((pair,), "--var", identifier=identifier)


BASE = {"taskDefinition": "t", "overrides": {"containerOverrides": [
    {"name": "app", "environment": [{"name": "A", "value": "file"}, {"name": "C", "value": "3"}], "cpu": 256},
    {"name": "other", "command": ["x"]}]}}


@pytest.mark.parametrize("env, command, target, expected_entry", [
    ({}, (), "app", BASE["overrides"]["containerOverrides"][0]),
    ({"A": "cli", "B": "2"}, (), "app",
     {"name": "app", "environment": [{"name": "C", "value": "3"}, {"name": "A", "value": "cli"},
                                     {"name": "B", "value": "2"}], "cpu": 256}),
    ({}, ("run", "--x"), "app", dict(BASE["overrides"]["containerOverrides"][0], command=["run", "--x"])),
    ({"N": "1"}, ("go",), "new", {"name": "new", "environment": [{"name": "N", "value": "1"}], "command": ["go"]}),
])
def test_build_run_request_merges_and_the_command_line_wins(env, command, target, expected_entry):
    request = ecsbatch.build_run_request(BASE, target_container=target, env=env, command=command)
    entries = {e["name"]: e for e in request["overrides"]["containerOverrides"]}
    assert entries[target] == expected_entry
    assert entries["other"] == {"name": "other", "command": ["x"]}
    assert BASE["overrides"]["containerOverrides"][0]["environment"][0]["value"] == "file"  # input untouched


def test_build_run_request_without_overrides_adds_nothing():
    assert ecsbatch.build_run_request({"taskDefinition": "t"}, target_container="a", env={}, command=()) == \
        {"taskDefinition": "t"}


def test_poll_delays_never_exceed_the_interval_and_spread_out():
    rng = random.Random(7)
    delays = [ecsbatch.next_poll_delay(6.0, rng) for _ in range(1000)]
    assert max(delays) <= 6.0 and min(delays) >= 6.0 * ecsbatch.POLL_JITTER_FLOOR
    assert len({round(d, 2) for d in delays}) > 100
    first = [ecsbatch.next_poll_delay(6.0, rng, first=True) for _ in range(1000)]
    assert min(first) < 1.5 and max(first) <= 6.0


PIN_CASES = {
    "plain value, comment kept": ("# head\ntaskDefinition: ${F}  # note\ncluster: c\n", "fam:7",
                                  "# head\ntaskDefinition: fam:7  # note\ncluster: c\n"),
    "quoted value": ('taskDefinition: "old:1"\n', "fam:2", "taskDefinition: fam:2\n"),
    "key absent": ("cluster: c\n", "fam:2", "cluster: c\ntaskDefinition: fam:2\n"),
    "key absent, no final newline": ("cluster: c", "fam:2", "cluster: c\ntaskDefinition: fam:2\n"),
    "nested taskDefinition untouched": ("overrides:\n  taskDefinition: x\ntaskDefinition: a:1\n", "b:2",
                                        "overrides:\n  taskDefinition: x\ntaskDefinition: b:2\n"),
    "ARN value": ("taskDefinition: a\n", "arn:aws:ecs:r:1:task-definition/f:3",
                  "taskDefinition: arn:aws:ecs:r:1:task-definition/f:3\n"),
}


@pytest.mark.parametrize("text, value, expected", PIN_CASES.values(), ids=PIN_CASES.keys())
def test_pin_task_definition(text, value, expected):
    assert ecsbatch.pin_task_definition(text, value, "run-task.yaml") == expected
    assert yaml.safe_load(expected)["taskDefinition"] == value


@pytest.mark.parametrize("text", ["taskDefinition:\n  a: 1\n", "- a\n", "taskDefinition: [a\n"])
def test_pin_task_definition_refuses(text):
    with pytest.raises(InputError, match="cannot pin"):
        ecsbatch.pin_task_definition(text, "f:1", "run-task.yaml")


@pytest.mark.parametrize("name, one", [
    ("nightly:3", True),
    ("nightly-sales_production:12", True),
    ("arn:aws:ecs:ap-northeast-1:123456789012:task-definition/nightly:3", True),
    ("arn:aws-cn:ecs:cn-north-1:123456789012:task-definition/nightly:3", True),
    ("nightly", False),  # the latest revision: a register changes it
    ("arn:aws:ecs:ap-northeast-1:123456789012:task-definition/nightly", False),
    ("nightly:0", False),
    ("nightly:latest", False),
    ("nightly:3 ", False),
    ("night/ly:3", False),
    ("", False),
])
def test_names_one_revision(name, one):
    assert ecsbatch.names_one_revision(name) is one


FIELDS = ["family", "containerDefinitions", "cpu", "memory", "networkMode", "tags", "volumes"]
REQUEST = {"family": "f", "cpu": "256", "containerDefinitions": [
    {"name": "app", "image": "i:1", "portMappings": [{"containerPort": 80}]}]}
REGISTERED = {"family": "f", "revision": 3, "status": "ACTIVE", "cpu": "256", "volumes": [],
              "taskDefinitionArn": "arn", "compatibilities": ["EC2", "FARGATE"], "containerDefinitions": [
                  {"name": "app", "image": "i:1", "cpu": 0, "essential": True, "environment": [], "mountPoints": [],
                   "volumesFrom": [], "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}]}]}


@pytest.mark.parametrize("change, registered_tags, matches", [
    ({}, [], True),
    ({"cpu": "512"}, [], False),
    ({"containerDefinitions": [dict(REQUEST["containerDefinitions"][0], image="i:2")]}, [], False),
    ({"containerDefinitions": [dict(REQUEST["containerDefinitions"][0], essential=True, cpu=0)]}, [], True),
    ({"memory": "512"}, [], False),
    ({"tags": [{"key": "stage", "value": "prod"}]}, [{"key": "stage", "value": "prod"}], True),
    ({"tags": [{"key": "stage", "value": "prod"}]}, [{"key": "stage", "value": "test"}], False),
    ({}, [{"key": "stage", "value": "test"}], False),
])
def test_definition_matches_ignores_what_ecs_adds_and_nothing_else(change, registered_tags, matches):
    assert ecsbatch.definition_matches(dict(REQUEST, **change), REGISTERED, registered_tags, FIELDS) is matches


def test_definition_matches_sees_a_removed_setting():
    registered = dict(REGISTERED, containerDefinitions=[dict(REGISTERED["containerDefinitions"][0],
                                                             environment=[{"name": "A", "value": "1"}])])
    assert not ecsbatch.definition_matches(REQUEST, registered, [], FIELDS)


@pytest.mark.parametrize("request_, problems", [
    ({"taskDefinition": "t"}, []),
    ({"taskDefinition": "t", "count": 1}, []),
    ({"taskDefinition": "t", "count": 2}, ["count must be 1"]),
    ({"taskDefinition": "t", "clientToken": "x"}, ["remove clientToken"]),
    ({"taskDefinition": "t", "startedBy": "x" * 37}, ["startedBy"]),
    ({"taskDefinition": "t", "startedBy": "nightly\n"}, ["startedBy"]),
    ({"taskDefinition": 5}, ["taskDefinition must be str, not int 5"]),
    ({"taskDefintion": "t"}, ["unknown key 'taskDefintion': did you mean 'taskDefinition'?",
                              "missing required key 'taskDefinition'"]),
])
def test_run_request_problems(request_, problems):
    found = ecsbatch.run_request_problems(request_)
    assert len(found) == len(problems)
    for fragment, line in zip(sorted(problems), sorted(found)):
        assert fragment in line


@pytest.mark.parametrize("request_, kind", [
    ({"taskDefinition": "t"}, "RunTask"),
    ({"family": "f"}, "RegisterTaskDefinition"),
    ({"containerDefinitions": []}, "RegisterTaskDefinition"),
])
def test_request_kind(request_, kind):
    assert ecsbatch.request_kind(request_) == kind


@pytest.mark.parametrize("signum", sorted(ecsbatch.EXIT_FOR_SIGNAL))
def test_the_thin_runner_exits_for_a_signal_as_the_contract_says(signum):
    """Section 1 cannot import section 2's table, so it computes 128+N: the two must agree."""
    assert ecsbatch.exit_for_signal(signum) == ecsbatch.EXIT_FOR_SIGNAL[signum]
