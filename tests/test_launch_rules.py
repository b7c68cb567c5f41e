"""Pure rules of the launch path: ecsbatch's task tags, the request hash, deadlines, the rerun
decision, the advice after a lost launch and the runner registry's names."""

from __future__ import annotations

import datetime
import os

import pytest

import ecsbatch
from ecsbatch import (TAG_CLIENT_TOKEN, TAG_DEADLINE, TAG_REQUEST_HASH, deadline_text, expired_tasks,
                      parse_deadline, request_hash, rerun_decision, runner_file_name, stop_advice, tag_problems,
                      task_tags)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 12, 1, 3, 0, 0, tzinfo=UTC)


def tags(*pairs):
    return [{"key": k, "value": v} for k, v in pairs]


@pytest.mark.parametrize("user, deadline, expected", [
    (None, None, tags((TAG_CLIENT_TOKEN, "t"), (TAG_REQUEST_HASH, "h"))),
    ([], "2026-12-01T05:00:00Z", tags((TAG_CLIENT_TOKEN, "t"), (TAG_REQUEST_HASH, "h"),
                                      (TAG_DEADLINE, "2026-12-01T05:00:00Z"))),
    (tags(("team", "sales"), ("cost", "7")), None,
     tags(("team", "sales"), ("cost", "7"), (TAG_CLIENT_TOKEN, "t"), (TAG_REQUEST_HASH, "h"))),
    # a file can never put, replace or shadow one of ecsbatch's own keys, whatever its case
    (tags((TAG_CLIENT_TOKEN, "forged"), ("ECSBATCH:deadline", "x"), ("team", "a")), None,
     tags(("team", "a"), (TAG_CLIENT_TOKEN, "t"), (TAG_REQUEST_HASH, "h"))),
], ids=["none", "deadline", "file-tags-first", "ours-win"])
def test_task_tags(user, deadline, expected):
    assert task_tags(user, client_token="t", request_digest="h", deadline=deadline) == expected


def test_task_tags_never_change_the_request_they_came_from():
    user = tags(("team", "a"))
    task_tags(user, client_token="t", request_digest="h", deadline=None)
    assert user == tags(("team", "a"))


@pytest.mark.parametrize("user, fragments", [
    (None, []),
    (tags(*[(f"k{n}", "v") for n in range(47)]), []),
    (tags(*[(f"k{n}", "v") for n in range(48)]), ["48 entries", "at most 47", "50"]),
    (tags(("ecsbatch:request", "x")), ["reserved"]),
    (tags(("Ecsbatch:Anything", "x")), ["reserved"]),
    (tags(("k" * 129, "v")), ["128"]),
    (tags(("k", "v" * 256)), []),
    (tags(("k", "v" * 257)), ["257 characters", "256"]),
], ids=["none", "47", "48", "reserved", "reserved-any-case", "long-key", "value-256", "value-257"])
def test_tag_problems(user, fragments):
    problems = tag_problems(user)
    assert bool(problems) == bool(fragments), problems
    for fragment in fragments:
        assert fragment in " ".join(problems)


BASE = {"cluster": "batch", "taskDefinition": "arn:aws:ecs:r:1:task-definition/nightly:42", "startedBy": "k",
        "launchType": "FARGATE",
        "overrides": {"containerOverrides": [{"name": "app", "environment": [{"name": "D", "value": "1"}]}]}}


def variant(**changes):
    request = dict(BASE, **changes)
    return request


@pytest.mark.parametrize("other, same", [
    (variant(clientToken="another"), True),
    (variant(tags=tags((TAG_CLIENT_TOKEN, "x"), (TAG_DEADLINE, "y"), (TAG_REQUEST_HASH, "z"))), True),
    (dict(reversed(list(BASE.items()))), True),  # key order is not the job
    (variant(taskDefinition="arn:aws:ecs:r:1:task-definition/nightly:43"), False),
    (variant(overrides={"containerOverrides": [{"name": "app", "environment": [{"name": "D", "value": "2"}]}]}),
     False),
    (variant(overrides={"containerOverrides": [{"name": "app", "command": ["x"]}]}), False),
    (variant(cluster="other"), False),
    (variant(tags=tags(("team", "a"))), False),
], ids=["client-token", "ecsbatch-tags", "key-order", "revision", "env", "command", "cluster", "file-tags"])
def test_request_hash_is_the_job_not_the_launch(other, same):
    assert (request_hash(other) == request_hash(BASE)) is same


def test_request_hash_fits_a_tag_value():
    digest = request_hash(BASE)
    assert digest.startswith("sha256:") and len(digest) <= 256


@pytest.mark.parametrize("timeout, expected", [
    (None, None),
    (3600.0, "2026-12-01T04:00:00Z"),
    (0.5, "2026-12-01T03:00:01Z"),  # rounded up: never earlier than the runner's own deadline
    (90.0, "2026-12-01T03:01:30Z"),
])
def test_deadline_text(timeout, expected):
    assert deadline_text(NOW, timeout) == expected
    # A launch in the middle of a second: the tag's second is the one after, never the one before.
    later = NOW + datetime.timedelta(microseconds=250_000)
    if expected:
        assert parse_deadline(deadline_text(later, timeout)).timestamp() >= later.timestamp() + timeout
    local = NOW.astimezone(datetime.timezone(datetime.timedelta(hours=9)))
    assert deadline_text(local, timeout) == expected  # always UTC
    if expected:
        assert parse_deadline(expected) == NOW + datetime.timedelta(seconds=int(-(-timeout // 1)))


@pytest.mark.parametrize("text", [None, "", "tomorrow", "2026-12-01T04:00:00", "2026-12-01 04:00:00Z", 7])
def test_parse_deadline_refuses_what_ecsbatch_did_not_write(text):
    assert parse_deadline(text) is None


def task(tid, status="RUNNING", started_by="ecsbatch", digest="h1", token="t", deadline=None, created=None):
    pairs = [(TAG_CLIENT_TOKEN, token)] if token else []
    pairs += [(TAG_REQUEST_HASH, digest)] if digest else []
    pairs += [(TAG_DEADLINE, deadline)] if deadline else []
    return {"taskArn": f"arn:aws:ecs:r:1:task/batch/{tid}", "lastStatus": status, "startedBy": started_by,
            "tags": tags(*pairs), "createdAt": created or NOW}


@pytest.mark.parametrize("candidate, grace, expired", [
    (task("a", deadline="2026-12-01T02:00:00Z"), 120, True),
    (task("b", deadline="2026-12-01T02:59:00Z"), 120, False),  # within the grace: its runner may be at it
    (task("c", deadline="2026-12-01T02:58:00Z"), 120, True),
    (task("d", deadline="2026-12-01T04:00:00Z"), 0, False),
    (task("e"), 0, False),  # no --timeout, no deadline: never expires
    (task("f", deadline="2026-12-01T02:00:00Z", status="STOPPED"), 0, False),
    (task("g", deadline="2026-12-01T02:00:00Z", token=None), 0, False),  # not ecsbatch's tags
    (task("h", deadline="garbage"), 0, False),
    (task("i", deadline="2026-12-01T02:00:00Z", started_by="nightly"), 0, True),  # the file's startedBy
])
def test_expired_tasks(candidate, grace, expired):
    assert bool(expired_tasks([candidate], NOW, grace)) is expired


@pytest.mark.parametrize("live, if_running, action, fragments", [
    ([], "attach", "launch", []),
    ([task("a", status="STOPPED")], "attach", "launch", []),
    ([task("a")], "launch", "launch", []),
    ([task("a")], "attach", "attach", ["task a", "already RUNNING", "attaching"]),
    ([task("a", status="PENDING")], "fail", "fail", ["task a", "still PENDING", "--if-running fail"]),
    ([task("a", digest="h2")], "attach", "refuse", ["another job", "task a", "different request", "--job-key"]),
    ([task("a", digest="h2")], "fail", "refuse", ["another job"]),
    ([task("a", digest=None)], "attach", "refuse", ["another job", "no ecsbatch:request tag"]),  # not known to be this job
    ([task("a", created=NOW), task("b", created=NOW - datetime.timedelta(1))], "attach", "refuse",
     ["2 live tasks", "a", "b"]),
], ids=["none", "stopped", "launch-anyway", "attach", "fail", "other-job", "other-job-fail", "untagged", "two"])
def test_rerun_decision(live, if_running, action, fragments):
    decision = rerun_decision(live, "h1", "KEY", if_running)
    assert decision.action == action
    for fragment in fragments:
        assert fragment in decision.message


@pytest.mark.parametrize("cluster, key, expected", [
    ("batch", "ecsbatch-0123", "ecsbatch stop --cluster batch --started-by ecsbatch-0123"),
    ("batch", None, "ecsbatch stop --cluster batch --client-token tok"),
    (None, None, "ecsbatch stop --client-token tok"),
])
def test_stop_advice_names_only_this_job(cluster, key, expected):
    advice = stop_advice(cluster, key, "tok")
    assert advice == expected
    assert "--started-by ecsbatch " not in advice + " "


@pytest.mark.parametrize("key", ["ecsbatch-abc", "a/b/c", "../../etc/passwd", "x" * 36])
def test_runner_file_names_are_plain_and_per_key(key):
    name = runner_file_name(key, 123)
    assert "/" not in name and not name.startswith(".") and name.endswith(".123.json")
    assert runner_file_name(key, 4).split(".")[0] == name.split(".")[0]
    assert runner_file_name(key + "x", 123) != name


def test_a_runtime_directory_that_others_can_use_or_a_link_is_refused(tmp_path):
    good = tmp_path / "good"
    assert ecsbatch.private_dir(str(good), create=True)
    assert os.stat(good).st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    assert not ecsbatch.private_dir(str(shared), create=True)
    link = tmp_path / "link"
    link.symlink_to(good)
    assert not ecsbatch.private_dir(str(link), create=True)


def test_registry_finds_a_live_runner_and_drops_stale_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    path = ecsbatch.register_runner("ecsbatch-key")
    assert path is not None and path.startswith(str(tmp_path / "ecsbatch"))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert ecsbatch.registered_runners("ecsbatch-key") == [(os.getpid(), ecsbatch.process_start_time(os.getpid()))]
    assert ecsbatch.registered_runners("ecsbatch-other") == []
    # a reused pid: same pid, another start time
    stale = os.path.join(os.path.dirname(path), runner_file_name("ecsbatch-key", 999999))
    with open(stale, "w") as handle:
        handle.write('{"pid": %d, "start": "1", "key": "ecsbatch-key"}' % os.getpid())
    assert len(ecsbatch.registered_runners("ecsbatch-key")) == 1
    assert not os.path.exists(stale)
    # registered in both runtime directories, for a stop command that runs with another environment
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert [pid for pid, _ in ecsbatch.registered_runners("ecsbatch-key")] == [os.getpid()]
    for directory in (tmp_path / "ecsbatch", tmp_path / "tmp" / f"ecsbatch-{os.getuid()}"):
        for entry in directory.iterdir():
            ecsbatch.unregister_runner(str(entry))
    assert ecsbatch.registered_runners("ecsbatch-key") == []
