"""When capacity runs out, end to end against localecs: launch retries for transient failures,
reruns after an interruption, and --job-key's promises across attempts."""

from __future__ import annotations

import json
import re
import signal
import time

from conftest import Plan, Running, run_cli
from ecsbatch import TAG_CLIENT_TOKEN, TAG_REQUEST_HASH, job_key_started_by
from localecs import CAPACITY_UNAVAILABLE, capacity_failures, failed_to_start, host_lost, spot_interruption

FAST = ["--launch-backoff", "0.1"]  # the longest wait between two attempts: tests stay fast
QUICK = dict(provisioning=0.05, pending=0.05)


def tag(request, key):
    return next(t["value"] for t in request["tags"] if t["key"] == key)


def test_capacity_failures_then_a_task_exit_with_the_containers_code(job):
    job.ecs.plans.extend(capacity_failures(2, then=Plan(running=0.2, exit_code=3, **QUICK)))
    result = job.run(*FAST, "--json")
    assert result.code == 3, result
    requests = job.run_requests()
    assert len(requests) == 3 and len(job.tasks()) == 1
    # every attempt is a new RunTask: its own clientToken and client-token tag, the same request tag
    assert len({r["clientToken"] for r in requests}) == 3
    assert [tag(r, TAG_CLIENT_TOKEN) for r in requests] == [r["clientToken"] for r in requests]
    assert len({tag(r, TAG_REQUEST_HASH) for r in requests}) == 1
    assert len(re.findall(r"launch attempt \d failed: RunTask started no task: \S+ RESOURCE:CPU; trying again", result.stderr)) == 2
    summary = json.loads(result.stdout)
    assert summary["exitCode"] == 3 and summary["exitCodeFrom"] == "container"
    assert summary["attempts"] == [job.only_task().task_arn] and summary["launchAttempts"] == 3
    assert summary["message"].endswith("; after 3 launch attempts")


def test_quiet_says_how_many_attempts_in_the_verdict(job):
    job.ecs.plans.extend(capacity_failures(2, then=Plan(running=0.2, exit_code=3, **QUICK), reason=CAPACITY_UNAVAILABLE))
    result = job.run(*FAST, "-q")
    task = job.only_task()
    assert result.code == 3, result
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"ecsbatch: launched task {task.id}")
    assert lines[1].startswith(f"ecsbatch: exit 3 from container app, task {task.id}, after 3 launch attempts, "
                               "stopCode EssentialContainerExited: ")
    assert result.stdout.splitlines()[0] == f"ecsbatch-result: task={task.id} exit=3 from=container"


def test_the_launch_timeout_ends_the_retries_with_125(job):
    job.ecs.plans.extend(capacity_failures(500))
    result = job.run("--launch-timeout", "1", "--launch-backoff", "0.2", "-q")
    assert result.code == 125, result
    (line,) = result.stderr.splitlines()
    assert re.match(r"ecsbatch: error: RunTask started no task: \S+container-instance\S+ RESOURCE:CPU; ", line)
    match = re.search(r"gave up after (\d+) launch attempts over \d+s \(--launch-timeout 1\); nothing is running",
                      line)
    assert match and int(match.group(1)) == len(job.run_requests()) >= 3
    assert result.stdout == "ecsbatch-result: task=- exit=125 from=ecsbatch\n"
    assert job.tasks() == []


def test_a_permanent_failure_is_never_retried(job):
    job.ecs.plans.extend(capacity_failures(3, reason="ATTRIBUTE"))
    result = job.run(*FAST, "--json")
    assert result.code == 125, result
    assert len(job.run_requests()) == 1
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "launch-failed" and summary["message"] == "RunTask started no task: ATTRIBUTE"
    assert summary["attempts"] == [] and summary["launchAttempts"] == 1
    assert "trying again" not in result.stderr


def test_launch_timeout_0_turns_the_retries_off(job):
    job.ecs.plans.extend(capacity_failures(1, then=Plan()))
    result = job.run("--launch-timeout", "0")
    assert result.code == 125, result
    assert len(job.run_requests()) == 1 and "trying again" not in result.stderr
    assert re.fullmatch(r"ecsbatch: error: RunTask started no task: \S+ RESOURCE:CPU", result.error_lines[-1])


def test_a_task_that_failed_to_start_for_capacity_is_launched_again(job):
    job.ecs.plans.extend([failed_to_start(**QUICK), Plan(running=0.2, exit_code=0, **QUICK)])
    result = job.run(*FAST, "--json")
    assert result.code == 0, result
    first, second = sorted(job.tasks(), key=lambda t: t.created_at)
    assert first.stop_code == "TaskFailedToStart"
    assert f"launch attempt 1 failed: task {first.id} failed to start: Capacity is unavailable" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["attempts"] == [first.task_arn, second.task_arn] and summary["launchAttempts"] == 2
    assert summary["taskArn"] == second.task_arn and summary["outcome"] == "succeeded"


def test_a_task_that_failed_to_start_for_another_reason_is_not(job):
    job.ecs.plans.extend([failed_to_start("CannotPullContainerError: ref not found", **QUICK), Plan()])
    result = job.run(*FAST)
    assert result.code == 125, result
    assert len(job.tasks()) == 1 and "failed to start" in result.error_lines[-1]


def test_a_spot_interruption_is_125_without_reruns(job):
    job.ecs.plans.extend([spot_interruption(running=0.3, **QUICK), Plan()])
    result = job.run(*FAST)
    assert result.code == 125, result
    assert len(job.tasks()) == 1
    assert "stopped before its job finished" in result.error_lines[-1]
    assert "rerun" not in result.error_lines[-1]


def test_a_spot_interruption_is_rerun_and_the_last_attempt_decides(job):
    job.ecs.plans.extend([spot_interruption(running=0.3, **QUICK), Plan(running=0.2, exit_code=4, **QUICK)])
    result = job.run(*FAST, "--rerun-on-interruption", "2", "--json")
    assert result.code == 4, result
    first, second = sorted(job.tasks(), key=lambda t: t.created_at)
    assert first.stop_code == "SpotInterruption"
    assert f"task {first.id} was interrupted (SpotInterruption): rerun 1 of 2" in result.stderr
    assert re.search(rf"rerun 1 of 2 after SpotInterruption: launched task {second.task_arn}", result.stderr)
    summary = json.loads(result.stdout)
    assert summary["attempts"] == [first.task_arn, second.task_arn]
    assert summary["message"].endswith("after 2 launch attempts (1 rerun)")


def test_reruns_run_out(job):
    job.ecs.plans.extend([spot_interruption(running=0.2, **QUICK) for _ in range(3)])
    result = job.run(*FAST, "--rerun-on-interruption", "1", "-q")
    assert result.code == 125, result
    assert len(job.tasks()) == 2
    verdict = result.stderr.splitlines()[-1]
    assert "after 2 launch attempts (1 rerun), stopCode SpotInterruption" in verdict
    assert "; no rerun is left of --rerun-on-interruption 1" in verdict


def test_a_lost_host_is_rerun(job):
    job.ecs.plans.extend([host_lost(running=0.3, **QUICK), Plan(running=0.2, **QUICK)])
    result = job.run(*FAST, "--rerun-on-interruption", "1")
    assert result.code == 0, result
    lost = sorted(job.tasks(), key=lambda t: t.created_at)[0]
    assert lost.stop_code is None and all(c.exit_code is None for c in lost.containers)
    assert "was interrupted (host lost): rerun 1 of 1" in result.stderr


def test_a_rerun_moves_to_the_rerun_capacity_provider_and_keeps_the_jobs_request_tag(job):
    job.ecs.plans.extend([spot_interruption(running=0.3, **QUICK), Plan(running=0.2, **QUICK)])
    result = job.run(*FAST, "--rerun-on-interruption", "1", "--rerun-capacity-provider", "FARGATE:1:1")
    assert result.code == 0, result
    first, second = job.run_requests()
    assert first["launchType"] == "FARGATE" and "capacityProviderStrategy" not in first
    assert "launchType" not in second
    assert second["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE", "weight": 1, "base": 1}]
    assert tag(second, TAG_REQUEST_HASH) == tag(first, TAG_REQUEST_HASH)
    assert tag(second, TAG_CLIENT_TOKEN) != tag(first, TAG_CLIENT_TOKEN)
    assert sorted(job.tasks(), key=lambda t: t.created_at)[1].capacity_provider_name == "FARGATE"


def test_rerun_options_are_checked_before_anything_is_sent(job):
    result = job.run("--rerun-capacity-provider", "FARGATE")
    assert result.code == 2 and "needs --rerun-on-interruption" in result.stderr
    result = job.run("--rerun-on-interruption", "1", "--rerun-capacity-provider", "FARGATE:x")
    assert result.code == 2 and "NAME[:WEIGHT[:BASE]]" in result.stderr
    assert job.run_requests() == []


def wait_in_backoff(running: Running, at_least: float = 1.0) -> None:
    """Until the runner announces a wait of `at_least` seconds: it is asleep in it now."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in list(running.lines):
            match = re.search(r"trying again in (\d+\.\d)s", line)
            if match and float(match.group(1)) >= at_least:
                return
        time.sleep(0.02)
    raise AssertionError("".join(running.lines))


def test_sigterm_during_a_backoff_wait_exits_143_and_launches_nothing_more(job):
    job.ecs.plans.extend(capacity_failures(500))
    running = job.start("--launch-backoff", "8", "--json")
    wait_in_backoff(running)
    sent = len(job.run_requests())
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "interrupted" and summary["exitCode"] == 143
    assert summary["attempts"] == [] and summary["launchAttempts"] == sent
    assert "SIGTERM received while waiting to launch again" in result.stderr
    assert "no task is running, and no further attempt is made" in result.error_lines[-1]
    time.sleep(0.5)
    assert len(job.run_requests()) == sent and job.tasks() == []


def test_stop_by_job_key_during_a_backoff_wait_ends_the_retries(job):
    key = "nightly/backoff"
    job.ecs.plans.extend(capacity_failures(500))
    running = job.start("--launch-backoff", "8", "--job-key", key)
    wait_in_backoff(running)
    sent = len(job.run_requests())
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--timeout", "30s"], job.env)
    assert stopped.code == 0, stopped
    result = running.finish()
    assert result.code == 143, result
    time.sleep(0.5)
    assert len(job.run_requests()) == sent and job.tasks() == []
    assert all(r["startedBy"] == job_key_started_by(key) for r in job.run_requests())


def test_a_rerun_of_the_job_attaches_to_the_live_attempt_and_stop_ends_both(job):
    key = "nightly/rerun"
    job.ecs.plans.extend([spot_interruption(running=0.3, **QUICK), Plan(running=60, **QUICK)])
    first = job.start(*FAST, "--job-key", key, "--rerun-on-interruption", "1", "--rerun-capacity-provider", "FARGATE")
    first.wait_for(r"rerun 1 of 1 after SpotInterruption: launched task")
    live = [t for t in job.tasks() if t.last_status != "STOPPED"]
    assert len(live) == 1 and live[0].capacity_provider_name == "FARGATE"
    second = job.start("--job-key", key)
    second.wait_for(rf"task {live[0].id} of this job \(key \S+\) is already \w+: attaching to it")
    stopped = run_cli(["stop", "--cluster", job.cluster, "--job-key", key, "--timeout", "60s"], job.env)
    assert stopped.code == 0, stopped
    assert first.finish().code == 143 and second.finish().code == 143
    assert len(job.tasks()) == 2 and len(job.run_requests()) == 2  # the rerun of the job launched nothing


def test_the_timeout_bounds_the_retries_too(job):
    job.ecs.plans.extend(capacity_failures(500))
    result = job.run("--timeout", "2", "--launch-backoff", "0.3", "-q")
    assert result.code == 125, result
    assert "--timeout 2 would expire before the next; nothing is running" in result.stderr
    assert job.tasks() == []


def test_a_rerun_that_ecs_refuses_says_it_was_the_rerun(job):
    job.ecs.plans.extend([spot_interruption(running=0.3, **QUICK), Plan()])
    result = job.run(*FAST, "--rerun-on-interruption", "1", "--rerun-capacity-provider", "NOSUCH")
    assert result.code == 125, result
    first = job.only_task()
    line = result.error_lines[-1]
    assert line.startswith(f"ecsbatch: error: rerun 1 of 1 after task {first.id} was interrupted (SpotInterruption): ")
    assert "capacity provider" in line and "NOSUCH" in line


def test_the_guides_capacity_start_command_through_the_hinemos_agent(job):
    """The start command of README's "When capacity runs out", as the emulated agent runs it."""
    from test_hinemos import GUIDE, agent_for, localised

    section = GUIDE[GUIDE.index("## When capacity runs out"):GUIDE.index("## Exit codes")]
    command = re.search(r"^(exec \S+ run -q .*--rerun-on-interruption.*)$", section, re.M).group(1)
    job.ecs.plans.extend([spot_interruption(running=0.3, **QUICK), Plan(running=0.2, exit_code=3, **QUICK)])
    result = agent_for(job).run(localised(command, job), timeout=90)
    first, second = sorted(job.tasks(), key=lambda t: t.created_at)
    assert result.end_value == 3, result
    assert second.capacity_provider_name == "FARGATE"
    assert len(result.stderr_bytes) <= 1024 and not any(result.discarded.values())
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"ecsbatch: launched task {first.id}")
    assert lines[1].startswith(f"ecsbatch: rerun 1 of 1 after SpotInterruption: launched task {second.id}")
    assert lines[2].startswith(f"ecsbatch: exit 3 from container app, task {second.id}, after 2 launch attempts "
                               "(1 rerun), stopCode EssentialContainerExited: ")
    assert result.job_variable(r"ecsbatch-result: task=(\S+)") == second.id


def test_tasks_that_keep_failing_to_start_end_at_the_launch_timeout(job):
    job.ecs.plans.extend([failed_to_start(**QUICK) for _ in range(50)])
    result = job.run("--launch-timeout", "1", "--launch-backoff", "0.2", "--json")
    assert result.code == 125, result
    tasks = job.tasks()
    assert len(tasks) >= 2 and all(t.stop_code == "TaskFailedToStart" for t in tasks)
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "failed" and summary["stopCode"] == "TaskFailedToStart"
    assert summary["launchAttempts"] == len(tasks) == len(summary["attempts"])
    assert re.search(rf"failed to start: .*; gave up after {len(tasks)} launch attempts over \d+s "
                     r"\(--launch-timeout 1\); nothing is running$", summary["message"])
    assert summary["message"].count("launch attempts") == 1


def test_a_rerun_while_the_first_runner_waits_to_launch_again_launches_nothing(job):
    """The first runner is between launch attempts: no task of the job is live, but it will
    launch one. A second run of the job waits for that task and attaches to it."""
    key = "nightly/between-attempts"
    job.ecs.plans.extend(capacity_failures(500))
    first = job.start("--launch-backoff", "1", "--job-key", key)
    wait_in_backoff(first, at_least=0.0)
    second = job.start("--job-key", key, "--if-running", "attach")
    second.wait_for(rf"runner pid {first.process.pid} of this job \(key \S+\) is still launching its task: waiting")
    job.ecs.plans.clear()  # capacity is back: the first runner's next attempt starts the task
    job.ecs.plans.append(Plan(running=1.0, exit_code=3, **QUICK))
    assert first.finish().code == 3
    result = second.finish()
    assert result.code == 3, result
    assert "attaching to it instead of launching another" in result.stderr
    assert len(job.tasks()) == 1
    assert all(r["startedBy"] == job_key_started_by(key) for r in job.run_requests())
    assert len({tag(r, TAG_CLIENT_TOKEN) for r in job.run_requests()}) == len(job.run_requests())


def test_if_running_fail_while_the_first_runner_waits_to_launch_again_is_120(job):
    key = "nightly/between-attempts-fail"
    job.ecs.plans.extend(capacity_failures(500))
    first = job.start("--launch-backoff", "8", "--job-key", key)
    wait_in_backoff(first)
    first.signal(signal.SIGSTOP)  # frozen in its backoff wait: every RunTask from now on would be the second run's
    sent = len(job.run_requests())
    result = job.run("--job-key", key, "--if-running", "fail")
    assert result.code == 120 and "is still launching its task" in result.error_lines[-1], result
    assert len(job.run_requests()) == sent
    first.signal(signal.SIGCONT)
    first.signal(signal.SIGTERM)
    assert first.finish().code == 143


def test_a_rerun_waiting_for_the_first_runner_finds_its_task_in_the_registry_between_looks_at_ecs(job):
    """The first runner's short task starts and stops within the second run's poll interval (30 s
    here): the task that runner wrote into its registry entry is what the second run reports."""
    key = "nightly/short-task"
    job.ecs.plans.extend(capacity_failures(500))
    first = job.start("--launch-backoff", "1", "--job-key", key, "--no-logs", "--poll-interval", "0.2")
    wait_in_backoff(first, at_least=0.0)
    second = job.start("--job-key", key, "--poll-interval", "30", "--no-logs")
    second.wait_for(r"is still launching its task: waiting")
    job.ecs.plans.clear()
    job.ecs.plans.append(Plan(running=1.5, exit_code=3, provisioning=0.01, pending=0.01))
    assert first.finish().code == 3
    result = second.finish(timeout=60)
    assert result.code == 3, result
    assert len(job.tasks()) == 1
    assert re.search(r"launched by runner pid \d+, is \w+: attaching to it instead of launching another", result.stderr)


def test_a_stopped_task_of_an_earlier_run_is_not_this_runs(job):
    """A runner that is still reporting an earlier run's task (STOPPED) is not launching: the
    second run waits for it to exit, then launches its own task."""
    key = "nightly/earlier-run"
    job.ecs.plans.append(Plan(running=0.3, exit_code=143, **QUICK))
    job.ecs.plans.append(Plan(running=0.3, exit_code=0, **QUICK))
    first = job.start("--job-key", key, "--poll-interval", "0.2")
    first.wait_for(r"STOPPED")
    second = job.start("--job-key", key, "--poll-interval", "0.5")
    assert first.finish().code == 143
    result = second.finish(timeout=60)
    assert result.code == 0, result
    assert len(job.tasks()) == 2
