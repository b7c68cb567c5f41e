"""The waiting half: how a wait ends and what the verdict says.

An operator's `ecsbatch stop` reads as a stop (143); a task that stopped on its own is judged as it
stopped even when the timeout fired in the same moment; one odd DescribeTasks answer is not proof
that the task is gone; a StopTask that failed is never reported as a stop; and a release pruned
under a running job never breaks its stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

import ecsbatch
from conftest import APP, REPO, SIDECAR, Plan, Running, run_cli
from ecsbatch import (EXIT_ECS_FAILURE, EXIT_SIGTERM, EXIT_TIMEOUT, Outcome, StopAttempt, TaskMissing, Watch,
                      judge_after_stop, judge_missing, judge_stopped_task, missing_is_final, operator_stop_reason,
                      stop_reason_text)
from localecs.proxy import Fault

ARN = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef"


def task(stop_code="EssentialContainerExited", reason="Essential container in task exited", code=None,
         status="STOPPED", desired="STOPPED"):
    container = {"name": "app", "lastStatus": "STOPPED" if code is not None else "RUNNING"}
    if code is not None:
        container["exitCode"] = code
    answer = {"taskArn": ARN, "lastStatus": status, "desiredStatus": desired, "containers": [container]}
    if stop_code is not None:
        answer["stopCode"], answer["stoppedReason"] = stop_code, reason
    return answer


RUNNING_TASK = task(None, None, status="RUNNING", desired="RUNNING")

# --- judge_stopped_task: whose stop was it -----------------------------------------------------

OPERATOR_CASES = {
    "ecsbatch stop after SIGTERM's 143": (
        task("UserInitiated", operator_stop_reason("rerun tonight"), 143), 143,
        ["stopped by an operator with ecsbatch stop", "rerun tonight", "0123456789abcdef"]),
    "ecsbatch stop, the job exited 0 on SIGTERM": (
        task("UserInitiated", operator_stop_reason("stopped by an operator with ecsbatch stop"), 0), 143,
        ["stopped by an operator"]),
    "ecsbatch stop before the container started": (
        task("UserInitiated", operator_stop_reason("wrong day"), None), 143, ["wrong day"]),
    "a stop from the console stays 125": (
        task("UserInitiated", "Task stopped by user", 143), 125, ["stopped before its job finished"]),
    "another runner's own stop is not an operator's": (
        task("UserInitiated", stop_reason_text("--timeout 5m expired"), 143), 125, ["stopped before"]),
    "the marker counts only at the start": (
        task("UserInitiated", "by hand, not ecsbatch stop: x", 143), 125, ["stopped before"]),
    "the marker without UserInitiated is not a stop": (
        task("ServiceSchedulerInitiated", operator_stop_reason("x"), 0), 125, ["stopped before"]),
    "failed to start stays failed to start": (
        task("TaskFailedToStart", operator_stop_reason("x"), None), 125, ["failed to start"]),
}


@pytest.mark.parametrize("answer, expected, fragments", OPERATOR_CASES.values(), ids=OPERATOR_CASES.keys())
def test_judge_stopped_task_knows_an_operators_stop(answer, expected, fragments):
    verdict = judge_stopped_task(answer, ["app"])
    assert verdict.exit_code == expected, verdict
    for fragment in fragments:
        assert fragment in verdict.message


# --- judge_after_stop: the wait ended by a timeout or a signal ----------------------------------

TIMEOUT = Outcome(EXIT_TIMEOUT, ecsbatch.OUTCOME_TIMEOUT, "--timeout 2s expired")
SIGTERM = Outcome(EXIT_SIGTERM, ecsbatch.OUTCOME_INTERRUPTED, "SIGTERM received by the job runner")
# How the task ended, as the outcome's kind shows it.
JUDGED_KINDS = (ecsbatch.OUTCOME_SUCCEEDED, ecsbatch.OUTCOME_FAILED, ecsbatch.OUTCOME_INTERRUPTED)


def ended_as(how, ending, kind):
    """Does `kind` say the task ended `how` ("stopped" and "stopping" keep the ending's own kind)?"""
    if how == "judged":
        return kind in JUDGED_KINDS
    if how == "not-stopped":
        return kind == ecsbatch.OUTCOME_NOT_STOPPED
    return kind == ending.kind
OURS = stop_reason_text(TIMEOUT.message)
DENIED = "StopTask: AccessDeniedException: not authorized to perform: ecs:StopTask"


def accepted(final, before=RUNNING_TASK, at_stop=None, reason=OURS):
    return StopAttempt(reason, True, None, before, at_stop if at_stop is not None else dict(RUNNING_TASK,
                                                                                              desiredStatus="STOPPED"),
                       final)


def refused(final, error=DENIED):
    return StopAttempt(OURS, False, error, RUNNING_TASK, None, final)


# Each row: the ending, the stop attempt, the exit code, how it ended, words the verdict must hold and must not.
AFTER_STOP_CASES = {
    "our stop ended it: 124": (
        TIMEOUT, accepted(task("UserInitiated", OURS, 143)), 124, "stopped",
        ["--timeout 2s expired", "was stopped (STOPPED)"], []),
    "it stopped on its own with 0 as the timeout fired": (
        TIMEOUT, accepted(task(code=0), at_stop=task(code=0)), 0, "judged", ["succeeded", "took effect"], ["124"]),
    "it stopped on its own with 3 as the timeout fired": (
        TIMEOUT, accepted(task(code=3), at_stop=task(code=3)), 3, "judged", ["exited 3"], []),
    "ECS recorded our stop, but StopTask's answer shows the exit code already": (
        TIMEOUT, accepted(task("UserInitiated", OURS, 0),
                          at_stop=task(None, None, 0, status="RUNNING", desired="STOPPED")), 0, "judged",
        ["succeeded"], []),
    "ECS recorded our stop, but the last poll had seen the exit code": (
        TIMEOUT, accepted(task("UserInitiated", OURS, 3), before=task(None, None, 3, status="DEACTIVATING")), 3,
        "judged", ["exited 3"], []),
    "a signal as it finished: judged as it stopped": (
        SIGTERM, accepted(task(code=0), at_stop=task(code=0), reason=stop_reason_text(SIGTERM.message)), 0,
        "judged", ["succeeded"], []),
    "our stop after a signal: 143": (
        SIGTERM, accepted(task("UserInitiated", stop_reason_text(SIGTERM.message), 143),
                          reason=stop_reason_text(SIGTERM.message)), 143, "stopped", ["was stopped (STOPPED)"], []),
    "an operator's stop in the same moment: 143": (
        TIMEOUT, accepted(task("UserInitiated", operator_stop_reason("rerun"), 143)), 143, "judged",
        ["stopped by an operator"], []),
    "the console's stop in the same moment: 125": (
        TIMEOUT, accepted(task("UserInitiated", "Task stopped by user", 143)), 125, "judged",
        ["stopped before its job finished"], []),
    "accepted, not STOPPED yet": (
        TIMEOUT, accepted(dict(RUNNING_TASK, lastStatus="DEACTIVATING", desiredStatus="STOPPED")), 124, "stopping",
        ["ECS is stopping task 0123456789abcdef (DEACTIVATING)"], ["was stopped"]),
    "StopTask refused, task RUNNING: not stopped, with the command": (
        TIMEOUT, refused(RUNNING_TASK), 125, "not-stopped",
        ["was NOT stopped", "may still be RUNNING", "AccessDeniedException",
         f"stop it with: ecsbatch stop --cluster batch {ARN}"], ["was stopped", "--started-by", "--job-key"]),
    "StopTask refused after a signal: not 143": (
        SIGTERM, refused(RUNNING_TASK, "StopTask: ExpiredTokenException: expired"), 125, "not-stopped",
        ["SIGTERM", "was NOT stopped", "ExpiredTokenException"], ["was stopped"]),
    "StopTask failed and DescribeTasks too": (
        TIMEOUT, refused(None, "StopTask: ServerException: internal error"), 125, "not-stopped",
        ["may still be state unknown", "ServerException"], []),
    "StopTask's answer was lost but ECS is stopping it": (
        TIMEOUT, refused(dict(RUNNING_TASK, lastStatus="DEACTIVATING", desiredStatus="STOPPED")), 124, "stopping",
        ["ECS is stopping"], ["NOT"]),
    "StopTask's answer was lost but our stop ended it": (
        TIMEOUT, refused(task("UserInitiated", OURS, 143)), 124, "stopped", ["was stopped (STOPPED)"], []),
    "StopTask refused because the task had stopped on its own": (
        TIMEOUT, refused(task(code=3)), 3, "judged", ["exited 3"], []),
}


@pytest.mark.parametrize("ending, attempt, expected, how, present, absent", AFTER_STOP_CASES.values(),
                         ids=AFTER_STOP_CASES.keys())
def test_judge_after_stop(ending, attempt, expected, how, present, absent):
    verdict = judge_after_stop(ending, attempt, ["app"], cluster="batch", task_arn=ARN)
    assert verdict.exit_code == expected and ended_as(how, ending, verdict.kind), verdict
    assert "\n" not in verdict.message
    for fragment in present:
        assert fragment in verdict.message
    for fragment in absent:
        assert fragment not in verdict.message


def test_judge_after_stop_names_only_this_task_without_a_cluster():
    verdict = judge_after_stop(TIMEOUT, refused(RUNNING_TASK), ["app"], cluster=None, task_arn=ARN)
    assert verdict.message.endswith(f"stop it with: ecsbatch stop {ARN}")


@pytest.mark.parametrize("attempt, fragments", [
    (StopAttempt("r", True, None, RUNNING_TASK, RUNNING_TASK, None), ["StopTask was accepted"]),
    (StopAttempt("r", False, "StopTask: InvalidParameterException: The referenced task was not found.", None, None,
                 None), ["StopTask failed", "not found", f"stop it with: ecsbatch stop --cluster batch {ARN}"]),
])
def test_judge_missing(attempt, fragments):
    verdict = judge_missing("task 0123 is unknown to ECS (MISSING)", attempt, cluster="batch", task_arn=ARN)
    assert (verdict.exit_code, verdict.kind) == (EXIT_ECS_FAILURE, ecsbatch.OUTCOME_MISSING)
    for fragment in fragments:
        assert fragment in verdict.message


# --- when is MISSING final ----------------------------------------------------------------------

# Each row: seen before, MISSING answers in a row, seconds since the first, seconds since the wait began.
MISSING_CASES = {
    "one answer after RUNNING is not proof": (True, 1, 0.0, 100.0, False),
    "two answers, a minute apart": (True, 2, 60.0, 100.0, False),
    "three answers within seconds": (True, 3, 1.0, 100.0, False),
    "three answers just short of the confirmation time": (True, 3, 29.9, 100.0, False),
    "three answers over the confirmation time": (True, 3, 30.0, 100.0, True),
    "many answers over a long time": (True, 20, 120.0, 300.0, True),
    "never seen, inside the launch grace": (False, 10, 45.0, 45.0, False),
    "never seen, past the launch grace": (False, 12, 60.0, 60.0, True),
    "never seen, past the grace but one answer": (False, 1, 0.0, 600.0, False),
}


@pytest.mark.parametrize("seen, answers, since_first, since_start, final", MISSING_CASES.values(),
                         ids=MISSING_CASES.keys())
def test_missing_is_final(seen, answers, since_first, since_start, final):
    now = 1000.0
    assert missing_is_final(seen=seen, answers=answers, first_missing_at=now - since_first, now=now,
                            started_at=now - since_start, launch_grace=60.0) is final


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedEcs:
    """DescribeTasks answers from a script: a task, "missing", or "empty" (an HTML page parses so)."""

    def __init__(self, script) -> None:
        self.script = list(script)

    def describe_tasks(self, **kwargs):
        what = self.script.pop(0)
        if what == "missing":
            return {"tasks": [], "failures": [{"arn": ARN, "reason": "MISSING"}]}
        if what == "empty":
            return {}
        return {"tasks": [what], "failures": []}


def watch_over(script, clock):
    return Watch(ScriptedEcs(script), "batch", ARN, poll_interval=6.0, clock=clock, sleep=clock.sleep,
                 missing_grace=60.0)


def test_watch_rides_out_missing_answers_that_do_not_last():
    clock = FakeClock()
    watch = watch_over([RUNNING_TASK, "missing", "missing", "empty", "missing", RUNNING_TASK, "missing",
                        task(code=3)], clock)
    assert watch.until_stopped(None)["containers"][0]["exitCode"] == 3


def test_watch_gives_up_on_a_task_missing_over_several_polls_and_the_grace(capsys):
    clock = FakeClock()
    watch = watch_over([RUNNING_TASK] + ["missing"] * 20, clock)
    with pytest.raises(TaskMissing) as missing:
        watch.until_stopped(None)
    assert watch.missing_answers >= ecsbatch.MISSING_CONFIRM_ANSWERS
    assert clock.now - watch.missing_since >= ecsbatch.MISSING_CONFIRM_SECONDS
    assert "unknown to ECS (MISSING)" in str(missing.value) and "after it was seen RUNNING" in str(missing.value)
    assert "one answer is not proof" in capsys.readouterr().err


def test_answers_without_word_on_the_task_never_count_as_missing():
    clock = FakeClock()
    watch = watch_over([RUNNING_TASK] + ["empty"] * 50 + [task(code=0)], clock)
    assert watch.until_stopped(None)["lastStatus"] == "STOPPED"
    assert clock.now - watch.started > 200  # far past the confirmation time, and still waiting


# --- end to end ---------------------------------------------------------------------------------


def through(job, proxy, **extra):
    return dict(job.env, AWS_ENDPOINT_URL=proxy.url, **extra)


def last_line(result) -> str:
    return result.error_lines[-1]


def test_ecsbatch_stop_from_another_machine_makes_the_runner_exit_143(job):
    # By task, as from another machine: no runner of this machine is signalled, only ECS is told.
    running = job.start("--job-key", "nightly/42", plan=Plan(running=60))
    running.wait_for("RUNNING")
    stop = run_cli(["stop", "--cluster", job.cluster, job.only_task().task_arn, "--reason", "rerun after the fix"],
                   job.env)
    assert stop.code == 0, stop
    result = running.finish()
    assert result.code == 143, result
    assert "stopped by an operator with ecsbatch stop" in last_line(result)
    assert "rerun after the fix" in last_line(result)
    assert job.ecs.calls("StopTask")[-1]["params"]["reason"].startswith("ecsbatch stop:")


def test_ecsbatch_stop_by_job_key_makes_the_runner_exit_143(job):
    # stop --job-key also signals this machine's runner of the key: whichever stop ECS records
    # first, the runner's own or the operator's, the end is 143 and the task is STOPPED.
    running = job.start("--job-key", "nightly/43", plan=Plan(running=60))
    running.wait_for("RUNNING")
    stop = run_cli(["stop", "--cluster", job.cluster, "--job-key", "nightly/43"], job.env)
    assert stop.code == 0, stop
    result = running.finish()
    assert result.code == 143, result
    assert job.only_task().last_status == "STOPPED"
    assert "ecsbatch stop" in last_line(result) or "SIGTERM received by the job runner" in last_line(result)


def test_a_stop_from_elsewhere_stays_125(job):
    running = job.start(plan=Plan(running=60))
    running.wait_for("RUNNING")
    job.ecs.client("ecs").stop_task(cluster=job.cluster, task=job.only_task().task_arn, reason="Task stopped by user")
    result = running.finish()
    assert result.code == 125, result
    assert "stopped before its job finished" in last_line(result)


@pytest.mark.parametrize("code", [0, 3])
def test_a_job_that_finished_in_the_last_poll_interval_before_the_timeout_keeps_its_code(job, code):
    # The task stops about 1 s after launch; the first poll comes 3-30 s after it, and the
    # timeout fires at 2.5 s, in between: ecsbatch sends StopTask to a task that has stopped.
    result = job.run("--poll-interval", "30", "--timeout", "2.5", plan=Plan(running=0.5, exit_code=code))
    assert result.code == code, result
    assert [c for c in job.ecs.calls("StopTask") if job.only_task().task_arn.endswith(c["params"]["task"].rsplit(
        "/", 1)[-1])], "the timeout fired before the stop was seen, as in the race"
    assert "before ecsbatch's StopTask took effect: --timeout 2.5 expired" in last_line(result)
    assert "was stopped" not in last_line(result)


@pytest.mark.parametrize("fault", ["deny", "error500", "expired-token", "html"])
def test_a_stop_that_keeps_failing_is_never_called_a_stop(job, proxy, fault):
    running = job.start(plan=Plan(running=60), env=through(job, proxy, AWS_MAX_ATTEMPTS="2"))
    running.wait_for("RUNNING")
    proxy.add(Fault(fault, "StopTask"))
    running.signal(signal.SIGTERM)
    result = running.finish()
    task = job.only_task()
    try:
        assert result.code == 125, result
        assert task.last_status == "RUNNING"
        line = last_line(result)
        assert "was NOT stopped and may still be RUNNING" in line
        assert f"stop it with: ecsbatch stop --cluster {job.cluster} {task.task_arn}" in line
        assert "was stopped" not in line and "Traceback" not in result.stderr
    finally:
        job.ecs.client("ecs").stop_task(cluster=job.cluster, task=task.task_arn)


def test_a_timeout_whose_stop_fails_is_not_124(job, proxy):
    proxy.add(Fault("deny", "StopTask"))
    result = job.run("--timeout", "1", plan=Plan(running=60), env=through(job, proxy, AWS_MAX_ATTEMPTS="1"))
    task = job.only_task()
    job.ecs.client("ecs").stop_task(cluster=job.cluster, task=task.task_arn)
    assert result.code == 125, result
    assert "--timeout 1 expired; task" in last_line(result) and "was NOT stopped" in last_line(result)


@pytest.mark.parametrize("fault, window, said", [
    ("omit-task", None, "one answer is not proof"),
    ("html", 1.5, "names neither the task nor a failure"),
])
def test_odd_answers_for_a_while_do_not_end_the_wait(job, proxy, fault, window, said):
    running = job.start(plan=Plan(running=4.0, exit_code=3), env=through(job, proxy))
    running.wait_for("RUNNING")
    proxy.add(Fault(fault, "DescribeTasks", times=None if window else 2, window=window))
    result = running.finish()
    assert result.code == 3, result
    assert said in result.stderr
    assert job.ecs.calls("StopTask") == [] or all(job.only_task().task_arn.rsplit("/", 1)[-1] not in
                                                  c["params"]["task"] for c in job.ecs.calls("StopTask"))


def test_a_task_missing_for_good_ends_the_wait_and_is_stopped_just_in_case(job, proxy):
    running = job.start(plan=Plan(running=120), env=through(job, proxy))
    running.wait_for("RUNNING")
    proxy.add(Fault("omit-task", "DescribeTasks"))
    result = running.finish(timeout=90)
    assert result.code == 125, result
    line = last_line(result)
    assert "unknown to ECS (MISSING) in" in line and "after it was seen RUNNING" in line
    assert "StopTask was accepted" in line
    assert job.only_task().desired_status == "STOPPED", "a task that may be alive is stopped"


# --- a release pruned under a running job -------------------------------------------------------


def test_the_rehearsal_sends_nothing_and_leaves_every_real_call_alone(tripwire):
    import botocore.config
    import botocore.exceptions
    import botocore.session

    def client(service):
        return botocore.session.get_session().create_client(
            service, region_name="ap-northeast-1", endpoint_url=tripwire.url, aws_access_key_id="testing",
            aws_secret_access_key="testing", config=botocore.config.Config(retries={"total_max_attempts": 1}))

    ecs = client("ecs")
    ecsbatch.rehearse_stop(ecs, "batch", client("logs"))
    assert tripwire.connections == 0
    with pytest.raises(botocore.exceptions.BotoCoreError):  # the tripwire hangs up: the call went out
        ecs.stop_task(cluster="batch", task="0123456789abcdef", reason="real")
    assert tripwire.connections >= 1


AWSLOGS_APP = dict(APP, logConfiguration={"logDriver": "awslogs", "options": {
    "awslogs-group": "/ecs/pruned", "awslogs-region": "ap-northeast-1", "awslogs-stream-prefix": "batch"}})


class Pruned(Running):
    """ecsbatch run from a release whose packages vanish while it waits: the base interpreter
    without its site (-S), its packages as links in a directory that the test empties."""

    def __init__(self, args, env, lib: Path) -> None:
        self.process = subprocess.Popen(
            [os.path.realpath(sys.executable), "-S", str(lib / "ecsbatch.py")] + args,
            env=dict(env, PYTHONPATH=str(lib), PYTHONNOUSERSITE="1"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.lines, self.stdout = [], ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def release(tmp_path: Path):
    lib = tmp_path / "release"
    lib.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    links = []
    for entry in site.iterdir():
        if entry.name.startswith(("__editable__", "ecsbatch", "__pycache__")) or entry.suffix == ".pth":
            continue
        links.append(lib / entry.name)
        links[-1].symlink_to(entry)
    (lib / "ecsbatch.py").write_bytes((REPO / "ecsbatch.py").read_bytes())
    return lib, links + [lib / "ecsbatch.py"]


@pytest.mark.parametrize("fault, expected, said", [
    (None, 143, "was stopped (STOPPED)"),
    ("deny", 125, "was NOT stopped"),
])
def test_a_release_pruned_under_a_running_job_never_breaks_its_stop(job, proxy, tmp_path, fault, expected, said):
    job.register([AWSLOGS_APP, SIDECAR])
    lib, files = release(tmp_path)
    job.ecs.plans.append(Plan(running=60))
    running = Pruned(["run", "-f", str(job.run_file), "--poll-interval", "0.2"],
                     through(job, proxy, AWS_MAX_ATTEMPTS="1"), lib)
    running.wait_for("RUNNING")
    for path in files:
        path.unlink()  # the links only: the packages they point to stay
    lib.rmdir()
    if fault:
        proxy.add(Fault(fault, "StopTask"))
    running.signal(signal.SIGTERM)
    result = running.finish()
    task = job.only_task()
    if fault:
        job.ecs.client("ecs").stop_task(cluster=job.cluster, task=task.task_arn)
    assert result.code == expected, result
    assert said in last_line(result)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if not fault:
        assert task.last_status == "STOPPED" and "SIGTERM" in task.stopped_reason


# --- the rules of a wait, as pure functions -----------------------------------------------------

STATUS_LINE_CASES = {
    "the first look says the state": ("RUNNING", None, 0.0, 0.0, "task 0123 RUNNING"),
    "each change of state is said": ("STOPPED", "RUNNING", 1.0, 90.0, "task 0123 STOPPED"),
    "the same state again is quiet": ("RUNNING", "RUNNING", 299.0, 4000.0, None),
    "a heartbeat after five quiet minutes": ("RUNNING", "RUNNING", 300.0, 3725.0, "task 0123 still RUNNING after 1h02m"),
}


@pytest.mark.parametrize("status, last, since_line, waited, expected", STATUS_LINE_CASES.values(),
                         ids=STATUS_LINE_CASES.keys())
def test_status_line(status, last, since_line, waited, expected):
    assert ecsbatch.status_line("0123", status, last, since_line=since_line, waited=waited) == expected


ENDING_CASES = {
    "SIGTERM": (ecsbatch.Interrupted(15), False, 143, "interrupted", "SIGTERM received by the job runner"),
    "SIGHUP during launch": (ecsbatch.Interrupted(1), True, 129, "interrupted", "SIGHUP received by the job runner "
                                                                               "during launch"),
    "SIGQUIT": (ecsbatch.Interrupted(3), False, 131, "interrupted", "SIGQUIT"),
    "SIGINT": (ecsbatch.Interrupted(2), False, 130, "interrupted", "SIGINT"),
    "--timeout": (ecsbatch.TimeoutExpired(), False, 124, "timeout", "--timeout 2h expired"),
    "a bug of ours": (KeyError("containers"), False, 125, "error", "internal error while waiting (KeyError"),
}


@pytest.mark.parametrize("exc, during_launch, code, kind, fragment", ENDING_CASES.values(), ids=ENDING_CASES.keys())
def test_ending_for(exc, during_launch, code, kind, fragment):
    ending = ecsbatch.ending_for(exc, timeout_text="2h", during_launch=during_launch)
    assert (ending.exit_code, ending.kind) == (code, kind) and fragment in ending.message, ending


class StoppingEcs:
    """StopTask and DescribeTasks for stop_and_confirm: the task reaches STOPPED after `looks` looks."""

    def __init__(self, looks=2, refuse=False):
        self.looks, self.refuse, self.calls = looks, refuse, []

    def stop_task(self, **kwargs):
        self.calls.append("StopTask")
        if self.refuse:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "StopTask")
        return {"task": dict(RUNNING_TASK, desiredStatus="STOPPED")}

    def describe_tasks(self, **kwargs):
        self.calls.append("DescribeTasks")
        self.looks -= 1
        return {"tasks": [task("UserInitiated", "ecsbatch: x", 143) if self.looks <= 0 else RUNNING_TASK],
                "failures": []}


def test_stop_and_confirm_is_the_runners_stop_and_the_operators():
    """One path: the runner's Watch.stop and `ecsbatch stop` both go through stop_and_confirm."""
    clock = FakeClock()
    ecs = StoppingEcs(looks=3)
    watch = Watch(ecs, "batch", ARN, poll_interval=6.0, clock=clock, sleep=clock.sleep)
    attempt = watch.stop("--timeout 2s expired")
    assert attempt.accepted and attempt.task["lastStatus"] == "STOPPED" and watch.stop_sent
    assert ecs.calls == ["StopTask", "DescribeTasks", "DescribeTasks", "DescribeTasks"]
    assert clock.now - 500.0 == 2 * ecsbatch.STOP_CONFIRM_POLL  # polls at the confirmation pace, not every 6 s

    refused_ecs = StoppingEcs(refuse=True)
    report = ecsbatch.stop_and_confirm(refused_ecs, "batch", [ARN], "r", deadline=clock.now + 40, poll_interval=2,
                                       clock=clock, sleep=clock.sleep, tolerate_errors=True)
    assert not report.stops[ecsbatch.task_id(ARN)].accepted and "AccessDenied" in report.stops[ecsbatch.task_id(ARN)].error
    with pytest.raises(ecsbatch.AwsError):
        ecsbatch.stop_and_confirm(StoppingEcs(refuse=True), "batch", [ARN], "r", deadline=clock.now + 40,
                                  poll_interval=2, clock=clock, sleep=clock.sleep)


def test_stop_and_confirm_looks_once_more_at_the_deadline():
    """A task that reaches STOPPED in the last interval is confirmed, not reported as still running."""
    clock = FakeClock()
    ecs = StoppingEcs(looks=3)
    report = ecsbatch.stop_and_confirm(ecs, "batch", [ARN], "r", deadline=clock.now + 3.0, poll_interval=2.0,
                                       clock=clock, sleep=clock.sleep)
    assert report.pending == [] and ecs.calls == ["StopTask"] + ["DescribeTasks"] * 3


class BrokenDescribe(StoppingEcs):
    def describe_tasks(self, **kwargs):
        self.calls.append("DescribeTasks")
        raise KeyError("tasks")


def test_the_runners_stop_never_raises_even_when_describe_breaks(capsys):
    """Whatever breaks while confirming, a job ended by --timeout keeps its 124 and its sentence."""
    clock = FakeClock()
    watch = Watch(BrokenDescribe(), "batch", ARN, poll_interval=6.0, clock=clock, sleep=clock.sleep)
    attempt = watch.stop("--timeout 2s expired")
    assert attempt.accepted and watch.stop_sent
    outcome = judge_after_stop(TIMEOUT, attempt, ["app"], cluster="batch", task_arn=ARN)
    assert (outcome.exit_code, outcome.kind) == (124, "timeout") and "ECS is stopping" in outcome.message
    assert capsys.readouterr().err.count("DescribeTasks failed, looking again: KeyError") == 1
