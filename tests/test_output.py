"""Output never hurts a job, and --quiet fits what a scheduler keeps.

The budgets are pure functions, tested by tables; the Reporter is tested in-process against the
byte limits; the streams (a gone reader, a full disk, an encoding that cannot write a character,
--json) are tested end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time

import pytest

import ecsbatch
from conftest import APP, FAST_POLL, SIDECAR, Plan, Running, ecsbatch_command
from ecsbatch import DROP, KEEP, SHORTEN
from hinemos import awslogs_container, ensure_log_group, firelens_container, java_string_cut, put_log_lines

AWSLOGS_APP = awslogs_container(APP)
ARN = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch-production/5e1f0c2a9b7d4e3f8a6b1c0d2e4f6a8b"
TID = "5e1f0c2a9b7d4e3f8a6b1c0d2e4f6a8b"


# -- the budget, as pure functions ------------------------------------------------------------

@pytest.mark.parametrize("text, budget, encoding, expected", [
    ("abcdef", 10, "utf-8", "abcdef"),
    ("abcdef", 6, "utf-8", "abcdef"),
    ("abcdefghijklmnop", 9, "utf-8", "abc...nop"),
    ("abcdefghijklmnop", 10, "utf-8", "abcd...nop"),
    ("あいうえおかきく", 12, "utf-8", "あ...きく"),  # 3 bytes a character
    ("あいうえおかきく", 12, "euc_jp", "あい...きく"),  # 2 bytes a character
    ("😀" * 12, 7, "ascii", "😀😀...😀😀"),  # each one is "?", one byte, on an ASCII stream
    ("abcdefghij", 3, "utf-8", ""),
])
def test_shorten_middle(text, budget, encoding, expected):
    assert ecsbatch.shorten_middle(text, budget, encoding) == expected
    assert ecsbatch.encoded_size(expected, encoding) <= max(budget, 0)


@pytest.mark.parametrize("parts, budget, expected", [
    # everything fits
    ([(KEEP, "exit 3"), (SHORTEN, ": reason"), (DROP, "; advice")], 100, "exit 3: reason; advice"),
    # advice goes first
    ([(KEEP, "exit 3"), (SHORTEN, ": reason"), (DROP, "; advice")], 14, "exit 3: reason"),
    # then the reason is shortened in the middle
    ([(KEEP, "exit 3"), (SHORTEN, ": " + "r" * 100), (DROP, "; advice")], 40,
     "exit 3: " + "r" * 14 + "..." + "r" * 15),
    # a reason with too little left of it is left out
    ([(KEEP, "exit 3"), (SHORTEN, ": " + "r" * 100)], 16, "exit 3"),
    # the last advice goes before an earlier one
    ([(KEEP, "k"), (DROP, " a1"), (DROP, " a2")], 4, "k a1"),
    # what must be kept is never cut, even over the budget (the caller's budget prevents it)
    ([(KEEP, "exit 125 from ecsbatch"), (KEEP, ", task " + TID)], 10, "exit 125 from ecsbatch, task " + TID),
    # two reasons: the last one gives way first
    ([(KEEP, "k"), (SHORTEN, " " + "a" * 30), (SHORTEN, " " + "b" * 30)], 40, "k " + "a" * 30 + ""),
])
def test_fit_parts_cuts_by_priority(parts, budget, expected):
    assert ecsbatch.fit_parts(parts, budget) == expected


@pytest.mark.parametrize("lines, budget, encoding, expected", [
    (["a", "bb", "ccc"], 100, "utf-8", ["a", "bb", "ccc"]),
    (["a", "bb", "ccc"], 9, "utf-8", ["a", "bb", "ccc"]),
    (["a", "bb", "ccc"], 7, "utf-8", ["bb", "ccc"]),
    (["a", "bb", "ccc"], 6, "utf-8", ["ccc"]),
    (["x" * 50 + "END"], 10, "utf-8", ["...xxxEND"]),  # the end of a line too long for the budget
    (["売上"], 5, "euc_jp", ["売上"]),
    (["売上"], 5, "utf-8", []),  # 7 bytes, and no room for "..." and a character
    ([], 10, "utf-8", []),
])
def test_tail_that_fits(lines, budget, encoding, expected):
    assert ecsbatch.tail_that_fits(lines, budget, encoding) == expected


@pytest.mark.parametrize("limit, stderr_used, expected", [
    (1024, 0, 1024),
    (1024, 600, 1024),
    (1024, 1024, 986),  # 2,048 - "[yyyy/MM/dd HH:mm:ss] stdout=, stderr=" - 1,024
    (256, 256, 218),
    (4096, 4096, 4058),
])
def test_stdout_budget_keeps_both_streams_inside_the_managers_cut(limit, stderr_used, expected):
    assert ecsbatch.stdout_budget(limit, stderr_used) == expected


def stopped(stop_code="EssentialContainerExited", **codes):
    return {"lastStatus": "STOPPED", "stopCode": stop_code,
            "containers": [{"name": name, "exitCode": code} for name, code in codes.items()]}


@pytest.mark.parametrize("task, counted, exit_code, outcome, expected", [
    (stopped(app=0), ["app"], 0, "succeeded", "app"),
    (stopped(app=0, worker=0), ["app", "worker"], 0, "succeeded", "app, worker"),
    (stopped(app=3), ["app"], 3, "failed", "app"),
    (stopped(app=0, worker=4), ["app", "worker"], 4, "failed", "worker"),
    # a container that itself exits with one of ecsbatch's codes keeps it as its own
    (stopped(app=125), ["app"], 125, "failed", "app"),
    (stopped(app=143), ["app"], 143, "failed", "app"),
    (stopped(app=137), ["app"], 137, "failed", "app"),
    # ecsbatch's own codes
    (stopped("TaskFailedToStart", app=None), ["app"], 125, "failed", None),
    (stopped("UserInitiated", app=143), ["app"], 125, "failed", None),
    (stopped("UserInitiated", app=143), ["app"], 124, "timeout", None),
    (stopped("UserInitiated", app=143), ["app"], 143, "interrupted", None),
    (stopped(app=None), ["app"], 125, "failed", None),
    (stopped(app=300), ["app"], 125, "failed", None),
    ({"lastStatus": "RUNNING", "containers": [{"name": "app"}]}, ["app"], 125, "missing", None),
    (None, ["app"], 2, "usage-error", None),
])
def test_code_owner(task, counted, exit_code, outcome, expected):
    assert ecsbatch.code_owner(task, counted, exit_code, outcome) == expected


@pytest.mark.parametrize("arn, code, owner, expected", [
    (ARN, 3, "app", f"ecsbatch-result: task={TID} exit=3 from=container"),
    (ARN, 124, None, f"ecsbatch-result: task={TID} exit=124 from=ecsbatch"),
    (None, 2, None, "ecsbatch-result: task=- exit=2 from=ecsbatch"),
])
def test_result_line(arn, code, owner, expected):
    assert ecsbatch.result_line(arn, code, owner) == expected


# -- the Reporter against the limits -------------------------------------------------------------

LONG_REASON = "CannotPullContainerError: " + "pull image manifest has been retried 5 time(s) " * 100 + "END"


@pytest.mark.parametrize("limit", [256, 512, 1024, 4096])
@pytest.mark.parametrize("names", ["production", "longest"])
@pytest.mark.parametrize("notices", [0, 6])
def test_quiet_output_fits_the_limits_by_construction(capsysbinary, monkeypatch, limit, names, notices):
    reporter = ecsbatch.Reporter()
    reporter.quiet, reporter.limit = True, limit
    monkeypatch.setattr(ecsbatch, "OUTPUT", reporter)
    if names == "production":
        cluster, label, container = "batch-production", "nightly-sales-production:42", "app"
    else:  # ECS allows 255 characters for each of these
        cluster, label, container = "c" * 255, "f" * 255 + ":42", "n" * 255
    arn = ARN.replace("batch-production", cluster)
    task = {"taskArn": arn, "lastStatus": "STOPPED", "stopCode": "TaskFailedToStart", "stoppedReason": LONG_REASON,
            "containers": [{"name": container, "exitCode": None, "reason": LONG_REASON}]}
    reporter.task_line("launched", arn, label, [container], cluster)
    for attempt in range(notices):  # launch retries, a StopTask that failed: they share the budget
        ecsbatch.progress(f"attempt {attempt}: RunTask got no answer; {LONG_REASON[:300]}", kept=True)
    message = ecsbatch.judge_stopped_task(task, [container]).message
    reporter.verdict(125, None, task, arn, message, f"details: ecsbatch status --cluster {cluster} {TID}")
    reporter.quiet_stdout(125, None, [f"log line {n} " + "x" * (n % 300) for n in range(3000)] + ["FATAL: END"], None)

    out, err = capsysbinary.readouterr()
    assert len(err) <= limit and len(out) <= limit
    stored = java_string_cut(f"[2026/11/28 03:12:09] stdout={out.decode()}, stderr={err.decode()}".rstrip("\n"), 2 * limit)
    verdict = err.decode().splitlines()[-1]
    assert verdict in stored  # the manager's cut keeps the whole verdict
    assert verdict.startswith(f"ecsbatch: exit 125 from ecsbatch, task {TID}, stopCode TaskFailedToStart: ")
    assert "failed to start" in verdict and "..." in verdict  # the reason, shortened in the middle
    assert err.decode().splitlines()[0].startswith(f"ecsbatch: launched task {TID}")
    lines = out.decode().splitlines()
    assert lines[0] == f"ecsbatch-result: task={TID} exit=125 from=ecsbatch"
    assert lines[-1] == "FATAL: END"


def test_the_last_words_before_a_second_signals_exit_may_use_the_verdicts_room(capsysbinary, monkeypatch):
    reporter = ecsbatch.Reporter()
    reporter.quiet, reporter.limit = True, 256
    monkeypatch.setattr(ecsbatch, "OUTPUT", reporter)
    reporter.task_line("launched", ARN, "nightly:1", ["app"], "batch-production")
    for _ in range(3):
        ecsbatch.progress("x" * 100, kept=True)  # no room for these before the verdict's
    err = capsysbinary.readouterr().err
    err += reporter.last_words(f"second SIGTERM: exiting now; task {ARN} may still be running: "
                               f"ecsbatch stop --cluster batch-production {ARN}")
    assert len(err) <= 256
    assert err.decode().splitlines()[-1].startswith("ecsbatch: second SIGTERM: exiting now")


# -- end to end ----------------------------------------------------------------------------------

@pytest.fixture
def logs(ecs):
    client = ecs.client("logs")
    ensure_log_group(client)
    return client


def run_command(job, *args):
    return ecsbatch_command() + ["run", "-f", str(job.run_file)] + FAST_POLL + list(args)


def task_of(job, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = job.tasks()
        if tasks:
            return tasks[0]
        time.sleep(0.05)
    raise AssertionError("no task was launched")


def stop_task_calls(job, task):
    return [c for c in job.ecs.calls("StopTask") if str(c["params"].get("task", "")).endswith(task.id)]


def assert_ran_to_its_end(job, task):
    """The task ended by itself: nobody, ecsbatch included, stopped it."""
    assert stop_task_calls(job, task) == []
    assert job.only_task().stop_code == "EssentialContainerExited"


@pytest.mark.parametrize("mode", [[], ["-q"], ["--json"]])
def test_a_gone_stderr_reader_neither_stops_nor_orphans_the_task(job, mode):
    job.ecs.plans.append(Plan(running=2.0, exit_code=4))
    process = subprocess.Popen(run_command(job, *mode), env=job.env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert b"launched task" in process.stderr.readline()
    process.stderr.close()  # the agent restarted, or `2>&1 | head -1`
    assert process.wait(timeout=60) == 4
    assert_ran_to_its_end(job, task_of(job))


@pytest.mark.parametrize("full, mode", [
    ("stdout", []), ("stderr", []), ("both", []), ("stderr", ["-q"]), ("both", ["-q"]), ("both", ["--json"]),
])
def test_a_full_disk_silences_only_that_stream(job, logs, full, mode):
    job.register([AWSLOGS_APP, SIDECAR])
    job.ecs.plans.append(Plan(running=2.0, exit_code=3))
    with open("/dev/full", "wb") as disk, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(run_command(job, *mode), env=job.env, stdin=subprocess.DEVNULL,
                                   stdout=disk if full in ("stdout", "both") else out,
                                   stderr=disk if full in ("stderr", "both") else err)
        task = task_of(job)
        put_log_lines(logs, f"batch/app/{task.id}", [f"line {n}" for n in range(50)])
        assert process.wait(timeout=60) == 3
        err.seek(0)
        stderr = err.read().decode()
    assert_ran_to_its_end(job, task)
    assert "Traceback" not in stderr
    if full == "stdout":
        assert "stdout failed (No space left on device): nothing more is printed there; the job goes on" in stderr


UNENCODABLE = ["売上集計 開始 ①～", "emoji 😀 in the log", "an invalid byte \udcff from the container",
               "売上集計 完了: 1043 件"]


@pytest.mark.parametrize("encoding", ["euc_jp", "ascii", "utf-8"])
@pytest.mark.parametrize("mode", [[], ["-q"]])
def test_a_line_the_output_encoding_cannot_write_is_replaced_never_fatal(job, logs, encoding, mode):
    job.register([AWSLOGS_APP, SIDECAR])
    job.ecs.plans.append(Plan(running=2.0, exit_code=4))
    process = subprocess.Popen(run_command(job, *mode), env=dict(job.env, PYTHONIOENCODING=encoding),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    task = task_of(job)
    put_log_lines(logs, f"batch/app/{task.id}", UNENCODABLE)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 4, stderr
    assert_ran_to_its_end(job, task)
    text = stdout.decode(encoding)  # strict: every byte is the stream's own encoding
    assert "Traceback" not in stderr.decode(encoding)
    assert "emoji ? in the log" in text or "emoji 😀 in the log" in text
    assert "an invalid byte ? from the container" in text
    if encoding == "euc_jp":
        assert "売上集計 完了".encode("euc_jp") in stdout and "売上".encode("utf-8") not in stdout


@pytest.mark.parametrize("as_json", [True, False])
def test_a_closed_stdout_never_changes_the_exit_code(job, as_json):
    process = subprocess.Popen(run_command(job, *(["--json"] if as_json else [])), env=job.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job.ecs.plans.append(Plan(running=1.0, exit_code=5))
    process.stdout.close()  # `ecsbatch run --json | true`
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 5, stderr
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr


def json_object(stdout: str) -> dict:
    summary = json.loads(stdout)  # exactly one object, nothing before or after it
    assert isinstance(summary, dict)
    return summary


@pytest.mark.parametrize("case, code, outcome", [
    ("missing file", 2, "usage-error"),
    ("unknown option", 2, "usage-error"),
    ("RunTask failures", 125, "launch-failed"),
    ("no such task definition", 125, "error"),
    ("wait for a task ECS does not know", 125, "error"),
])
def test_json_prints_one_object_with_the_exit_code_and_reason_for_every_error(job, case, code, outcome):
    args = {
        "missing file": ["run", "-f", str(job.tmp_path / "nosuch.yaml"), "--json"],
        "unknown option": ["run", "-f", str(job.run_file), "--json", "--bogus"],
        "RunTask failures": ["run", "-f", str(job.run_file), "--json", "--launch-timeout", "0"],
        "no such task definition": ["run", "-f", str(job.run_file), "--json", "--task-definition", "nosuch:9"],
        "wait for a task ECS does not know": ["wait", "--cluster", job.cluster, "0" * 32, "--json"],
    }[case]
    if case == "RunTask failures":
        job.ecs.plans.append(Plan(failures=[{"arn": "arn:aws:ecs:::container-instance/x", "reason": "RESOURCE:MEMORY"}]))
    done = subprocess.run(ecsbatch_command() + args, env=job.env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == code, done.stderr
    summary = json_object(done.stdout)
    assert summary["exitCode"] == code and summary["outcome"] == outcome
    assert summary["exitCodeFrom"] == "ecsbatch" and summary["message"]
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr


def test_quiet_prints_the_result_line_for_an_error_before_launch(job, tmp_path):
    done = subprocess.run(ecsbatch_command() + ["run", "-q", "-f", str(tmp_path / "nosuch.yaml")], env=job.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stdout == "ecsbatch-result: task=- exit=2 from=ecsbatch\n"
    assert done.stderr.startswith("ecsbatch: error: request file") and done.stderr.count("\n") == 1


def test_quiet_prints_nothing_while_waiting_and_the_end_of_the_log_at_the_end(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    running = Running(["run", "-q", "-f", str(job.run_file)] + FAST_POLL, job.env)
    job.ecs.plans.append(Plan(running=3.0, exit_code=3))
    launch = running.wait_for("launched task")
    task = task_of(job)
    put_log_lines(logs, f"batch/app/{task.id}", [f"line {n:04d}" for n in range(300)] + ["FATAL: the end"])
    time.sleep(2.0)  # RUNNING, with log lines read: still nothing more on stderr, nothing on stdout
    assert running.lines == [launch] and task.last_status == "RUNNING"
    result = running.finish()
    assert result.code == 3
    stderr, stdout = result.stderr.encode(), result.stdout.encode()
    assert len(stderr) <= 1024 and len(stdout) <= 1024
    assert len(result.stderr.splitlines()) == 2
    assert result.stderr.splitlines()[1].startswith(f"ecsbatch: exit 3 from container app, task {task.id}, "
                                                    "stopCode EssentialContainerExited: failed: container app exited 3")
    lines = result.stdout.splitlines()
    assert lines[0] == f"ecsbatch-result: task={task.id} exit=3 from=container"
    assert lines[-2:] == ["line 0299", "FATAL: the end"] and len(lines) > 50


def test_quiet_shortens_a_long_stopped_reason_in_the_middle(job):
    reason = "CannotPullContainerError: " + "pull image manifest has been retried 5 time(s); " * 60 + "END"
    result = job.run("-q", plan=Plan(stop_code="TaskFailedToStart", stopped_reason=reason))
    task = job.only_task()
    assert result.code == 125
    assert len(result.stderr.encode()) <= 1024
    verdict = result.stderr.splitlines()[-1]
    assert verdict.startswith(f"ecsbatch: exit 125 from ecsbatch, task {task.id}, stopCode TaskFailedToStart: "
                              "failed to start: stoppedReason='CannotPullContainerError: pull image")
    assert "..." in verdict and verdict.endswith("END'")
    assert result.stdout.splitlines()[0] == f"ecsbatch-result: task={task.id} exit=125 from=ecsbatch"


def test_quiet_says_where_logs_went_when_they_do_not_go_to_cloudwatch(job):
    job.register([firelens_container(APP), SIDECAR])
    result = job.run("-q", plan=Plan(exit_code=137, reasons={"app": "OutOfMemoryError: Container killed due to memory usage"}))
    task = job.only_task()
    assert result.code == 137
    assert result.stdout.splitlines() == [
        f"ecsbatch-result: task={task.id} exit=137 from=container",
        f"ecsbatch: container app sends its logs through awsfirelens to fluentd.internal; ecsbatch does not stream "
        f"them: search there for task {task.id}"]
    assert "reason='OutOfMemoryError: Container killed due to memory usage'" in result.stderr.splitlines()[-1]


def test_output_limit_bounds_the_streams_and_has_a_floor(job, logs):
    too_small = job.run("-q", "--output-limit", "100")
    assert too_small.code == 2 and "--output-limit" in too_small.stderr and job.tasks() == []
    job.register([AWSLOGS_APP, SIDECAR])
    running = Running(["run", "-q", "--output-limit", "4096", "-f", str(job.run_file)] + FAST_POLL, job.env)
    job.ecs.plans.append(Plan(running=2.0, exit_code=0))
    task = task_of(job)
    put_log_lines(logs, f"batch/app/{task.id}", [f"line {n:04d}" for n in range(3000)])
    result = running.finish()
    assert result.code == 0
    assert 3000 < len(result.stdout.encode()) <= 4096 and result.stdout.splitlines()[-1] == "line 2999"


def test_quiet_json_keeps_one_object_with_the_tail_inside(job, logs):
    job.register([AWSLOGS_APP, SIDECAR])
    running = Running(["run", "-q", "--json", "-f", str(job.run_file)] + FAST_POLL, job.env)
    job.ecs.plans.append(Plan(running=2.0, exit_code=3))
    task = task_of(job)
    put_log_lines(logs, f"batch/app/{task.id}", [f"line {n:04d}" for n in range(3000)] + ["FATAL: the end"])
    result = running.finish()
    assert result.code == 3
    summary = json_object(result.stdout)
    assert len(result.stdout.encode()) <= 1024
    assert summary["exitCode"] == 3 and summary["exitCodeFrom"] == "container"
    assert summary["logTail"][-1] == "FATAL: the end" and len(summary["logTail"]) > 3


def test_wait_quiet_attaches_and_reports_in_the_same_two_lines(job):
    ecs = job.ecs.client("ecs")
    job.ecs.plans.append(Plan(running=2.0, exit_code=0))
    network = yaml_network(job)
    arn = ecs.run_task(cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE",
                       networkConfiguration=network)["tasks"][0]["taskArn"]
    done = subprocess.run(ecsbatch_command() + ["wait", "-q", "--cluster", job.cluster, arn] + FAST_POLL,
                          env=job.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    tid = arn.rsplit("/", 1)[-1]
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"ecsbatch: attached to task {tid}")
    assert lines[1].startswith(f"ecsbatch: exit 0 from container app, task {tid}")
    assert done.stdout.splitlines()[0] == f"ecsbatch-result: task={tid} exit=0 from=container"


def yaml_network(job):
    return {"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]], "securityGroups": [job.env["SECURITY_GROUP_ID"]]}}


def test_progress_goes_to_the_system_log_too(job):
    directory = tempfile.mkdtemp(prefix="ecsbatch-log-")
    path = os.path.join(directory, "log")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    try:
        result = job.run("-q", plan=Plan(exit_code=3), env=dict(job.env, ECSBATCH_SYSLOG_SOCKET=path))
        journal.setblocking(False)
        received = []
        while True:
            try:
                received.append(journal.recv(65536).decode())
            except BlockingIOError:
                break
    finally:
        journal.close()
        os.unlink(path)
        os.rmdir(directory)
    assert result.code == 3 and len(result.stderr.splitlines()) == 2
    tid = job.only_task().id
    assert any(m.startswith("<14>ecsbatch[") and m.endswith(f"task {tid} RUNNING") for m in received), received
    assert any(m.startswith("<11>ecsbatch[") and f"task {tid} failed: container app exited 3" in m for m in received)
