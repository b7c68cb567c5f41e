"""The README's Hinemos guide, run through an emulated Hinemos agent (tests/hinemos.py).

Each scenario starts the guide's own start command, as written in the README apart from the
install paths, with `sh -c` as the agent does, and asserts on what the agent keeps: the first
1,024 bytes of stdout and of stderr, the manager's 2,048-character message, the end value and the
job variables set from stdout by the guide's regular expressions.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
import uuid

import pytest

from conftest import APP, REPO, SIDECAR, Plan, ecsbatch_command
from hinemos import HinemosAgent, awslogs_container, ensure_log_group, firelens_container, put_log_lines

GUIDE = (REPO / "README.md").read_text(encoding="utf-8")
START_COMMAND = re.search(r"^\| 起動コマンド \(start command\) \| `(.+)` \|$", GUIDE, re.M).group(1)
STOP_COMMAND = re.search(r"^\| 停止コマンド \(stop command\) \| `(.+)` \|$", GUIDE, re.M).group(1)
RESULT_PATTERNS = dict(re.findall(r"^\| (?:the )?(task id|exit code|whose code it is) \| `(.+)` \|$", GUIDE, re.M))
INSTALLED_ECSBATCH = "/opt/ecsbatch/nightly-sales/current/venv/bin/ecsbatch"
INSTALLED_RUN_FILE = "/opt/ecsbatch/nightly-sales/current/run-task.yaml"
FATAL = "FATAL: sales total mismatch for 2026-11-27: expected 1043, got 1041"


def test_the_guide_states_the_commands_these_tests_run():
    assert START_COMMAND.startswith(f"exec {INSTALLED_ECSBATCH} run -q -f {INSTALLED_RUN_FILE} ")
    assert '--job-key "#[SESSION_ID]/#[JOBUNIT_ID]/#[JOB_ID]"' in START_COMMAND
    assert STOP_COMMAND == f'{INSTALLED_ECSBATCH} stop --cluster batch-production --job-key "#[SESSION_ID]/#[JOBUNIT_ID]/#[JOB_ID]"'
    assert set(RESULT_PATTERNS) == {"task id", "exit code", "whose code it is"}


def find_shell(name: str) -> str:
    """dash or bash, where Debian and RHEL put them. Missing in CI is a failure, not a skip."""
    for directory in ("/bin", "/usr/bin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed: the Hinemos tests need it (apt-get install {name})")
    pytest.skip(f"{name} is not installed")


def localised(command: str, job, *, poll_interval: str = "0.2", replace: dict = None) -> str:
    """The guide's command on this machine: only the install paths and the cluster differ, and
    the poll interval is shortened unless poll_interval is None (then it is the exact command)."""
    command = command.replace(INSTALLED_ECSBATCH, " ".join(shlex.quote(part) for part in ecsbatch_command()))
    command = command.replace(INSTALLED_RUN_FILE, shlex.quote(str(job.run_file)))
    command = command.replace("--cluster batch-production", f"--cluster {job.cluster}")
    if poll_interval is not None:
        command = command.replace(" run -q ", f" run -q --poll-interval {poll_interval} ", 1)
    for old, new in (replace or {}).items():
        assert old in command
        command = command.replace(old, new)
    return command


def agent_for(job, *, shell: str = "dash", charset: str = "utf-8", **env: str) -> HinemosAgent:
    variables = {"SESSION_ID": f"20261128031200-{uuid.uuid4().hex[:8]}", "JOBUNIT_ID": "SALES",
                 "JOB_ID": "NIGHTLY", "TARGET_DATE": "2026-11-27"}
    return HinemosAgent(env=dict(job.env, **env), variables=variables, shell=find_shell(shell), charset=charset,
                        cwd=str(job.tmp_path))


def task_of(job, status: str = None, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = job.tasks()
        if tasks and (status is None or tasks[0].last_status == status):
            return tasks[0]
        time.sleep(0.05)
    raise AssertionError(f"no task {status or ''} in time")


def stop_task_calls(job, task):
    return [c for c in job.ecs.calls("StopTask") if str(c["params"].get("task", "")).endswith(task.id)]


def assert_kept_whole(result) -> str:
    """ecsbatch wrote no more than the agent keeps, and the manager's cut kept the verdict."""
    assert result.totals["stdout"] <= 1024 and result.totals["stderr"] <= 1024, result
    verdict = result.stderr.splitlines()[-1]
    assert verdict in result.message, result.message
    return verdict


def job_variables(result) -> dict:
    return {name: result.job_variable(pattern) for name, pattern in RESULT_PATTERNS.items()}


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_the_guides_exact_command_is_stopped_by_process_stop_under_dash_and_bash(job, shell):
    agent = agent_for(job, shell=shell)
    job.ecs.plans.append(Plan(running=60.0))
    running = agent.start(localised(START_COMMAND, job, poll_interval=None))
    task = task_of(job, "RUNNING")
    with open(f"/proc/{running.pid}/cmdline", "rb") as cmdline:  # `exec`: the agent's child is ecsbatch
        assert b"ecsbatch\0run\0-q" in cmdline.read()
    assert os.path.basename(os.readlink(f"/proc/{running.pid}/exe")) not in ("dash", "bash")
    running.stop_by_process()
    result = running.wait(timeout=90)
    assert result.end_value == 143, result
    stopped = job.only_task()
    assert stopped.last_status == "STOPPED" and stopped.stopped_reason.startswith("ecsbatch: SIGTERM")
    verdict = assert_kept_whole(result)
    assert verdict.startswith(f"ecsbatch: exit 143 from ecsbatch, task {task.id}")
    assert job_variables(result) == {"task id": task.id, "exit code": "143", "whose code it is": "ecsbatch"}


def test_without_exec_dash_keeps_the_agents_signal_from_ecsbatch(job):
    """Why the guide's command starts with `exec`: dash stays the parent of its one command."""
    agent = agent_for(job, shell="dash")
    job.ecs.plans.append(Plan(running=4.0, exit_code=0))
    running = agent.start(localised(START_COMMAND, job).replace("exec ", "", 1))
    task = task_of(job, "RUNNING")
    running.stop_by_process()
    assert running.process.wait(timeout=30) == -signal.SIGTERM  # the shell is gone ...
    assert task.last_status == "RUNNING" and stop_task_calls(job, task) == []  # ... the task runs on
    result = running.wait(timeout=60)  # the agent waits for EOF: ecsbatch still holds the streams
    assert result.end_value == 143 and job.only_task().stop_code == "EssentialContainerExited"


def test_a_job_that_succeeds(job):
    job.ecs.plans.append(Plan(exit_code=0))
    result = agent_for(job).run(localised(START_COMMAND, job), timeout=60)
    task = job.only_task()
    assert result.end_value == 0, result
    verdict = assert_kept_whole(result)
    assert verdict.startswith(f"ecsbatch: exit 0 from container app, task {task.id}")
    assert job_variables(result) == {"task id": task.id, "exit code": "0", "whose code it is": "container"}
    assert result.stderr.splitlines()[0].startswith(f"ecsbatch: launched task {task.id} (")


def test_a_job_that_logs_3000_lines_then_fails_keeps_the_error_and_the_verdict(job, ecs):
    logs = ecs.client("logs")
    ensure_log_group(logs)
    job.register([awslogs_container(APP), SIDECAR])
    job.ecs.plans.append(Plan(running=3.0, exit_code=3))
    running = agent_for(job).start(localised(START_COMMAND, job))
    task = task_of(job)
    lines = [f"2026-11-28 03:{n // 60 % 60:02d}:{n % 60:02d} processing batch {n}" for n in range(3000)]
    put_log_lines(logs, f"batch/app/{task.id}", lines + [FATAL])
    result = running.wait(timeout=90)
    assert result.end_value == 3, result
    verdict = assert_kept_whole(result)
    assert "exited 3" in verdict and verdict.startswith(f"ecsbatch: exit 3 from container app, task {task.id}")
    assert result.stdout.splitlines()[-1] == FATAL and "processing batch 2999" in result.stdout
    assert FATAL in result.message and "exited 3" in result.message
    assert job_variables(result)["exit code"] == "3"


def test_a_task_that_fails_to_start_says_why_in_the_head(job):
    reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s): not found"
    job.ecs.plans.append(Plan(stop_code="TaskFailedToStart", stopped_reason=reason))
    result = agent_for(job).run(localised(START_COMMAND, job), timeout=60)
    task = job.only_task()
    assert result.end_value == 125, result
    verdict = assert_kept_whole(result)
    assert verdict.startswith(f"ecsbatch: exit 125 from ecsbatch, task {task.id}, stopCode TaskFailedToStart: ")
    assert reason in verdict
    assert job_variables(result)["whose code it is"] == "ecsbatch"


def test_a_timeout_stops_the_task_and_ends_124(job):
    job.ecs.plans.append(Plan(running=60.0))
    result = agent_for(job).run(localised(START_COMMAND, job, replace={"--timeout 3h": "--timeout 2"}), timeout=90)
    task = job.only_task()
    assert result.end_value == 124, result
    assert task.last_status == "STOPPED" and task.stop_code == "UserInitiated"
    verdict = assert_kept_whole(result)
    assert verdict.startswith(f"ecsbatch: exit 124 from ecsbatch, task {task.id}") and "--timeout 2 expired" in verdict


def test_a_stop_by_command_ends_the_job_with_143(job):
    agent = agent_for(job)
    job.ecs.plans.append(Plan(running=60.0))
    running = agent.start(localised(START_COMMAND, job))
    task = task_of(job, "RUNNING")
    stopper = running.stop_by_command(localised(STOP_COMMAND, job, poll_interval=None))
    assert stopper.returncode == 0, stopper.stderr
    result = running.wait(timeout=90)
    assert job.only_task().last_status == "STOPPED"
    assert result.end_value == 143, result
    verdict = assert_kept_whole(result)
    assert verdict.startswith(f"ecsbatch: exit 143 from ecsbatch, task {task.id}")


def test_a_rerun_after_the_runner_was_killed_attaches_and_ecs_has_one_task(job):
    agent = agent_for(job)
    job.ecs.plans.append(Plan(running=8.0, exit_code=0))
    first = agent.start(localised(START_COMMAND, job))
    task = task_of(job, "RUNNING")
    os.kill(first.pid, signal.SIGKILL)  # `exec`: the agent's child is ecsbatch itself
    assert first.wait(timeout=30).end_value == 137
    result = agent.run(localised(START_COMMAND, job), timeout=90)  # the same session: the same key
    assert len(job.tasks()) == 1, "a rerun started a second copy of the job"
    assert result.end_value == 0, result
    assert f"task {task.id} of this job" in result.stderr and "attaching to it" in result.stderr
    assert_kept_whole(result)


def test_euc_jp_output_with_emoji_and_invalid_bytes_gives_the_containers_code(job, ecs):
    logs = ecs.client("logs")
    ensure_log_group(logs)
    job.register([awslogs_container(APP), SIDECAR])
    job.ecs.plans.append(Plan(running=2.0, exit_code=4))
    agent = agent_for(job, charset="euc_jp", PYTHONIOENCODING="euc_jp")  # no ja_JP.eucJP locale here
    running = agent.start(localised(START_COMMAND, job))
    task = task_of(job)
    put_log_lines(logs, f"batch/app/{task.id}", ["売上集計 開始 ①～", "絵文字 😀 もログに出る", "不正なバイト \udcff が来た",
                                                 "売上集計 異常終了: 件数 1041"])
    result = running.wait(timeout=90)
    assert result.end_value == 4, result
    assert stop_task_calls(job, task) == [] and job.only_task().stop_code == "EssentialContainerExited"
    # The child really wrote EUC-JP: its bytes are EUC-JP's, not UTF-8's.
    assert "売上集計 異常終了".encode("euc_jp") in result.stdout_bytes
    assert "売上".encode("utf-8") not in result.stdout_bytes
    assert "\ufffd" not in result.stdout  # every kept byte decoded as EUC-JP
    assert "絵文字 ? もログに出る" in result.stdout and "不正なバイト ? が来た" in result.stdout
    assert_kept_whole(result)
    assert job_variables(result)["exit code"] == "4"


def test_a_container_logging_through_firelens_says_where_its_logs_went(job):
    job.register([firelens_container(APP), SIDECAR])
    job.ecs.plans.append(Plan(exit_code=137, reasons={"app": "OutOfMemoryError: Container killed due to memory usage"}))
    result = agent_for(job).run(localised(START_COMMAND, job), timeout=60)
    task = job.only_task()
    assert result.end_value == 137, result
    assert f"through awsfirelens to fluentd.internal; ecsbatch does not stream them: search there for task {task.id}" \
        in result.stdout
    verdict = assert_kept_whole(result)
    assert "OutOfMemoryError: Container killed due to memory usage" in verdict
    assert job_variables(result) == {"task id": task.id, "exit code": "137", "whose code it is": "container"}
