"""The shared watcher (ECSBATCH_WATCHER=on): the contract through it, and each failure path with
real processes: a watcher killed, stopped or gone stale, a socket of another user, another release.

The whole contract suite also runs through the watcher with `ECSBATCH_WATCHER=on pytest ...`
(README, Development); this file runs in every suite."""

from __future__ import annotations

import datetime
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import ecsbatch
from conftest import APP, FAST_POLL, SIDECAR, Plan, Running, run_cli
from hinemos import awslogs_container, ensure_log_group, put_log_lines
from localecs.lifecycle import failed_to_start
from test_capacity import wait_in_backoff

AWSLOGS_APP = awslogs_container(APP)


def watcher_pids(runtime: Path):
    """The live watchers of a runtime directory: each writes its pid into its lock file."""
    pids = []
    for path in glob.glob(str(runtime / "ecsbatch" / "w*.lock")):
        text = Path(path).read_text().strip()
        if text.isdigit() and ecsbatch.process_start_time(int(text)) is not None:
            pids.append(int(text))
    return pids


def is_thin(pid: int) -> bool:
    """Is the runner `pid` waiting thin now? The thin wait alone holds a pipe beyond the standard
    streams: its signals' wake-up pipe (ThinRunner.install_signals), which an exec into the full
    ecsbatch closes."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        return any(int(fd) > 2 and os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:") for fd in fds)
    except OSError:
        return False


def wait_until(predicate, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")


@pytest.fixture
def wjob(job):
    """A job whose runs use a watcher of their own (a runtime directory of their own)."""
    runtime = Path(tempfile.mkdtemp(prefix="ew", dir="/tmp"))  # a Unix socket path holds 108 bytes
    job.env.update(ECSBATCH_WATCHER="on", XDG_RUNTIME_DIR=str(runtime), ECSBATCH_WATCHER_IDLE="10")
    job.runtime = runtime
    yield job
    for pid in watcher_pids(runtime):
        with Path(f"/proc/{pid}/stat").open() as handle:
            if handle.read().split(")")[1].split()[0] == "T":
                os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def logs(ecs):
    client = ecs.client("logs")
    ensure_log_group(client)
    return client


def start_thin(job, *args, plan=None, env=None) -> Running:
    """A runner that has handed its task's AWS work to the watcher and become thin."""
    running = job.start(*args, plan=plan, env=env)
    wait_until(lambda: is_thin(running.process.pid), what="the runner turning thin")
    return running


# --- the contract, through the watcher ---------------------------------------------------------


@pytest.mark.parametrize("plan, expected, verdict", [
    (Plan(running=0.5, exit_code=0), 0, "succeeded: app exited 0"),
    (Plan(running=0.5, exit_code=3), 3, "failed: container app exited 3"),
])
def test_exit_codes_through_the_watcher(wjob, plan, expected, verdict):
    running = start_thin(wjob, plan=Plan(running=1.5, exit_code=plan.exit_code))
    result = running.finish()
    assert result.code == expected, result
    assert verdict in result.error_lines[-1]
    assert len(watcher_pids(wjob.runtime)) == 1
    assert "Traceback" not in result.stderr


def test_a_task_that_fails_to_start_is_launched_again_by_the_judge_of_its_end(wjob):
    """The runner waits thin from the launch on. A task that fails to start for lack of capacity
    is launched again by the watcher's child that judges its end, within the same launch window,
    and handed to the same runner, which waits thin again; a permanent reason is not retried."""
    wjob.ecs.plans.extend([failed_to_start(provisioning=2.0), Plan(running=2.0, exit_code=4)])
    running = start_thin(wjob)
    wait_until(lambda: len(wjob.tasks()) == 2, what="the second launch")
    wait_until(lambda: is_thin(running.process.pid), what="the runner thin again")
    result = running.finish()
    assert result.code == 4, result
    assert len(wjob.tasks()) == 2 and "after 2 launch attempts" in result.error_lines[-1]
    result = wjob.run(plan=Plan(stop_code="TaskFailedToStart", stopped_reason="CannotPullContainerError: not found"))
    assert result.code == 125 and "failed to start" in result.error_lines[-1], result
    assert len(wjob.tasks()) == 3


def test_a_signal_while_the_judge_waits_to_launch_again_ends_the_attempts(wjob):
    """SIGTERM while the judging child waits out the backoff before launching again: the runner
    forwards it there, no further task is launched, and the job exits 143 with one line."""
    wjob.ecs.plans.extend([failed_to_start() for _ in range(30)])
    running = start_thin(wjob, "--launch-backoff", "8s")
    wait_in_backoff(running)  # a wait of a second or more has begun
    launched = len(wjob.tasks())
    running.signal(signal.SIGTERM)
    result = running.finish()
    assert result.code == 143, result
    assert "no task is running" in result.error_lines[-1], result
    assert len(wjob.tasks()) == launched


@pytest.mark.parametrize("signum, expected", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_a_thin_runner_stops_the_task_first(wjob, signum, expected):
    """Hinemos's process stop (SIGTERM) or Ctrl-C: the watcher stops the task and says so."""
    running = start_thin(wjob, plan=Plan(running=60))
    running.wait_for("RUNNING")
    running.signal(signum)
    result = running.finish()
    assert result.code == expected, result
    task = wjob.only_task()
    assert task.last_status == "STOPPED"
    assert f"ecsbatch: {signum.name} received by the job runner" == task.stopped_reason
    assert f"{signum.name} received by the job runner; task" in result.error_lines[-1]
    assert "was stopped (STOPPED)" in result.error_lines[-1]


def test_a_timeout_through_the_watcher_is_124(wjob):
    result = wjob.run("--timeout", "2", plan=Plan(running=60))
    assert result.code == 124, result
    assert "--timeout 2 expired; task" in result.error_lines[-1] and "was stopped (STOPPED)" in result.stderr
    assert wjob.only_task().stopped_reason == "ecsbatch: --timeout 2 expired"


def test_quiet_output_through_the_watcher_fits_and_ends_with_the_log(wjob, logs):
    """Hinemos keeps the first 1 KB of each stream: -q writes the same through the watcher."""
    wjob.register([AWSLOGS_APP, SIDECAR])
    running = start_thin(wjob, "-q", plan=Plan(running=3.0, exit_code=3))
    task = wait_until(wjob.tasks)[0]
    lines = [f"processing batch {n}" for n in range(300)] + ["FATAL: totals differ"]
    put_log_lines(logs, f"batch/app/{task.id}", lines)
    result = running.finish()
    assert result.code == 3, result
    assert len(result.stderr.encode()) <= 1024 and len(result.stdout.encode()) <= 1024
    assert result.stdout.splitlines()[0] == f"ecsbatch-result: task={task.id} exit=3 from=container"
    assert result.stdout.splitlines()[-1] == "FATAL: totals differ"
    assert result.stderr.startswith("ecsbatch: launched task") and "exit 3 from container app" in result.stderr


def test_log_lines_are_printed_once_through_the_watcher(wjob, logs):
    wjob.register([AWSLOGS_APP, SIDECAR])
    running = start_thin(wjob, plan=Plan(running=3.0, exit_code=0))
    task = wait_until(wjob.tasks)[0]
    lines = [f"line {n}" for n in range(500)]
    put_log_lines(logs, f"batch/app/{task.id}", lines[:200])
    time.sleep(1.0)
    logs.put_log_events(logGroupName="/ecs/hinemos-scenarios", logStreamName=f"batch/app/{task.id}",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": m} for m in lines[200:]])
    result = running.finish()
    assert result.code == 0, result
    assert result.stdout.splitlines() == lines


def test_json_through_the_watcher(wjob):
    result = wjob.run("--json", plan=Plan(running=0.5, exit_code=4))
    assert result.code == 4, result
    summary = json.loads(result.stdout)
    assert summary["exitCode"] == 4 and summary["outcome"] == "failed"
    assert summary["taskArn"] == wjob.only_task().task_arn


def test_stop_by_job_key_reaches_a_thin_runner(wjob):
    running = start_thin(wjob, "--job-key", "nightly/sales", plan=Plan(running=60))
    running.wait_for("RUNNING")
    stopped = run_cli(["stop", "--cluster", wjob.cluster, "--job-key", "nightly/sales", "--poll-interval", "0.2"],
                      wjob.env)
    assert stopped.code == 0, stopped
    result = running.finish()
    assert result.code == 143, result
    assert wjob.only_task().last_status == "STOPPED"
    assert not glob.glob(str(wjob.runtime / "ecsbatch" / "*.json")), "the runner's registry entry is gone"


def test_one_describe_tasks_a_cycle_covers_every_task_even_one_being_stopped(wjob):
    """Five runners of one interval, one of them timing out meanwhile: while they all wait, the
    watcher asks about all of them in one DescribeTasks per interval, the task being stopped
    included (it looks for STOPPED in the same cycle), where five runners of their own would
    make five calls per interval."""
    interval = 1.0
    runners = [start_thin(wjob, "--poll-interval", str(interval), plan=Plan(running=8.0, exit_code=0))
               for _ in range(4)]
    runners.append(start_thin(wjob, "--poll-interval", str(interval), "--timeout", "5",
                              plan=Plan(running=60, exit_code=0, stop_delay=2.0)))
    wait_until(lambda: sum(t.last_status == "RUNNING" for t in wjob.tasks()) == 5, what="five tasks running")
    since = time.monotonic()
    time.sleep(6.0)
    until = time.monotonic()
    arns = {t.task_arn for t in wjob.tasks()}
    calls = [c for c in wjob.ecs.calls("DescribeTasks") if since <= c["at"] <= until
             and set(c["params"].get("tasks", [])) & arns]
    assert len(calls) <= (until - since) / interval + 2, [sorted(c["params"]["tasks"]) for c in calls]
    assert max(len(c["params"]["tasks"]) for c in calls) == 5
    codes = [runner.finish().code for runner in runners]
    assert codes == [0, 0, 0, 0, 124], codes


def test_a_killed_runner_leaves_its_task_and_a_rerun_attaches(wjob):
    """kill -9 of a thin runner: as without the watcher, the task runs on (the watcher cannot
    tell a killed runner from one that re-execs to wait by itself), and a rerun of the job key
    attaches to it."""
    running = start_thin(wjob, "--job-key", "nightly/attach", plan=Plan(running=4.0, exit_code=5))
    running.wait_for("RUNNING")
    running.signal(signal.SIGKILL)
    running.finish()
    time.sleep(1.0)
    assert wjob.only_task().last_status == "RUNNING"
    result = wjob.run("--job-key", "nightly/attach")
    assert result.code == 5, result
    assert "attach" in result.stderr and len(wjob.tasks()) == 1


# --- when the watcher fails --------------------------------------------------------------------


def test_a_watcher_killed_mid_wait_is_replaced_and_the_runner_exits_right(wjob):
    """The watcher is OOM-killed (SIGKILL) while runners wait: each re-adopts its task through a
    new watcher; the exit code is still the container's."""
    running = start_thin(wjob, plan=Plan(running=4.0, exit_code=3))
    running.wait_for("RUNNING")
    [first] = watcher_pids(wjob.runtime)
    os.kill(first, signal.SIGKILL)
    replaced = False
    while running.process.poll() is None and not replaced:  # look while the job runs, not after
        replaced = any(pid != first for pid in watcher_pids(wjob.runtime))
        time.sleep(0.05)
    result = running.finish()
    assert result.code == 3, result
    assert "failed: container app exited 3" in result.error_lines[-1]
    if not replaced:  # a busy machine: the runner may have waited by itself instead, as the issue allows
        assert "waits on its task by itself" in result.stderr, result


def test_a_hung_watcher_makes_the_runner_wait_by_itself(wjob):
    """The watcher is stopped (SIGSTOP): it holds its socket and lock but says nothing. The runner
    notices within one poll interval, loads botocore and waits by itself; its code is right."""
    running = start_thin(wjob, plan=Plan(running=5.0, exit_code=3))
    running.wait_for("RUNNING")
    time.sleep(1.0)  # the thin runner has handed its task to the watcher
    [watcher] = watcher_pids(wjob.runtime)
    os.kill(watcher, signal.SIGSTOP)
    try:
        running.wait_for("said nothing for", timeout=15)
        result = running.finish()
    finally:
        os.kill(watcher, signal.SIGCONT)
    assert result.code == 3, result
    assert "failed: container app exited 3" in result.error_lines[-1]
    assert len(wjob.tasks()) == 1


def test_a_signal_to_a_runner_whose_watcher_hangs_still_stops_the_task(wjob):
    running = start_thin(wjob, plan=Plan(running=60))
    running.wait_for("RUNNING")
    [watcher] = watcher_pids(wjob.runtime)
    os.kill(watcher, signal.SIGSTOP)
    try:
        running.signal(signal.SIGTERM)
        result = running.finish()
    finally:
        os.kill(watcher, signal.SIGCONT)
    assert result.code == 143, result
    assert wjob.only_task().stopped_reason == "ecsbatch: SIGTERM received by the job runner"


def test_a_stale_socket_file_is_replaced(wjob):
    """A watcher that died without cleaning up (power loss, kill -9) left its socket file."""
    context = ecsbatch.credential_context(wjob.env, None, None)
    directory = wjob.runtime / "ecsbatch"
    directory.mkdir(mode=0o700)
    old_environ = dict(os.environ)
    os.environ["XDG_RUNTIME_DIR"] = str(wjob.runtime)
    try:
        paths = ecsbatch.watcher_paths(context, ecsbatch.release_id(ecsbatch.ECSBATCH_FILE))
    finally:
        os.environ.clear()
        os.environ.update(old_environ)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(paths["socket"])
    stale.close()  # the file stays, nobody listens
    running = start_thin(wjob, plan=Plan(running=1.0, exit_code=7))
    assert running.finish().code == 7
    assert watcher_pids(wjob.runtime)


def test_a_runtime_directory_of_another_user_is_never_used(wjob):
    """Someone else made the directory first (squatting): the run goes on without a watcher."""
    nobody = pwd.getpwnam("nobody")
    directory = wjob.runtime / "ecsbatch"
    directory.mkdir(mode=0o700)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    running = wjob.start(plan=Plan(running=1.0, exit_code=3))
    result = running.finish()
    assert result.code == 3, result
    assert not watcher_pids(wjob.runtime) and not list(directory.iterdir())


def serve_as_nobody(path: str, answer: bytes, seen: list) -> subprocess.Popen:
    """A listener on `path` run by the user nobody: it records what it is sent."""
    nobody = pwd.getpwnam("nobody")
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen(5)\n"
            "print('ready',flush=True)\n"
            "while True:\n"
            "    c,_=s.accept();d=c.recv(65536);print(repr(d[:40]),flush=True);c.sendall(sys.argv[2].encode());c.close()\n")

    def become_nobody():
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    directory = os.path.dirname(path)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable  # nobody may run it
    process = subprocess.Popen([python, "-c", code, path, answer.decode()], preexec_fn=become_nobody,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    threading.Thread(target=lambda: seen.extend(process.stdout), daemon=True).start()
    return process


def test_a_socket_served_by_another_user_is_refused(wjob):
    """ECSBATCH_WATCHER_SOCKET names a socket whose listener runs as another user (SO_PEERCRED):
    nothing is sent to it, and the job runs by itself."""
    directory = Path(tempfile.mkdtemp(prefix="en", dir="/tmp"))
    path = str(directory / "w.sock")
    seen: list = []
    server = serve_as_nobody(path, '{"op": "hello", "v": 1}\n'.encode(), seen)
    try:
        os.chown(path, 0, 0)  # even a socket file that looks like ours: the peer's uid decides
        result = wjob.run(plan=Plan(running=0.5, exit_code=3), env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=path))
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
    assert result.code == 3, result
    assert seen == [] or all("launch" not in line for line in seen)


def test_a_watcher_of_another_protocol_is_not_used(wjob):
    """Two releases side by side: a watcher that speaks another protocol answers; the runner
    launches nothing through it and runs by itself."""
    directory = Path(tempfile.mkdtemp(prefix="ep", dir="/tmp"))
    path = str(directory / "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(5)
    got: list = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            got.append(conn.recv(65536))
            conn.sendall(b'{"op": "hello", "v": 2}\n')
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        result = wjob.run(plan=Plan(running=0.5, exit_code=6), env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=path))
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert result.code == 6, result
    assert got and all(b'"launch"' not in data for data in got)
    assert "cannot be used" in result.stderr and len(wjob.tasks()) == 1


def test_a_runner_of_another_release_gets_a_watcher_of_its_own(wjob, tmp_path):
    """Releases sit side by side on a batch server: each release's runners get their own watcher."""
    other = tmp_path / "other-release"
    other.mkdir()
    shutil.copy(ecsbatch.ECSBATCH_FILE, other / "ecsbatch.py")
    (other / "ecsbatch.py").write_text((other / "ecsbatch.py").read_text() + "\n# another release\n")
    first = start_thin(wjob, plan=Plan(running=3.0, exit_code=3))
    wjob.ecs.plans.append(Plan(running=3.0, exit_code=4))
    second = Running.__new__(Running)
    second.process = subprocess.Popen([sys.executable, str(other / "ecsbatch.py"), "run", "-f", str(wjob.run_file)]
                                      + FAST_POLL, env=wjob.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, stdin=subprocess.DEVNULL)
    second.lines, second.stdout = [], ""
    second._reader = threading.Thread(target=second._read, daemon=True)
    second._reader.start()
    wait_until(lambda: is_thin(second.process.pid), what="the other release's runner turning thin")
    assert first.finish().code == 3 and second.finish().code == 4
    assert len(watcher_pids(wjob.runtime)) == 2


def test_a_stopped_runner_does_not_delay_the_others(wjob, logs):
    """One runner is SIGSTOPped (and its socket fills up): the other's job ends on time."""
    wjob.register([AWSLOGS_APP, SIDECAR])
    stuck = start_thin(wjob, "--job-key", "stuck", plan=Plan(running=8.0, exit_code=0))
    stuck_task = wait_until(wjob.tasks)[0]
    put_log_lines(logs, f"batch/app/{stuck_task.id}", ["x" * 200] * 6000)
    os.kill(stuck.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = wjob.run("--job-key", "free", plan=Plan(running=1.0, exit_code=2))
        took = time.monotonic() - started
    finally:
        os.kill(stuck.process.pid, signal.SIGCONT)
    assert result.code == 2, result
    assert took < 20, took
    stuck_result = stuck.finish()
    assert stuck_result.code == 0, stuck_result.stderr[-2000:]


def test_a_runner_may_only_ask_about_its_own_task(wjob):
    """A process of the same user that did not launch the task cannot watch or stop it."""
    running = start_thin(wjob, plan=Plan(running=60))
    running.wait_for("RUNNING")
    task = wjob.only_task()
    [path] = glob.glob(str(wjob.runtime / "ecsbatch" / "w*.sock"))
    context = ecsbatch.credential_context(wjob.env, None, None)
    intruder = ecsbatch.LineChannel(ecsbatch.connect_watcher(path, 5.0))
    intruder.send({"op": "watch", "context": context, "task_arn": task.task_arn, "cluster": wjob.cluster,
                   "ticket": "0" * 129, "poll_interval": 0.2, "missing_grace": 0, "started": time.monotonic(),
                   "log_source": None})
    assert intruder.receive(10)["op"] == "refused"
    intruder.send({"op": "stop", "signal": 15})
    time.sleep(1.0)
    assert wjob.only_task().last_status == "RUNNING"
    running.signal(signal.SIGTERM)
    assert running.finish().code == 143


def test_off_runs_as_before(job, tmp_path):
    runtime = Path(tempfile.mkdtemp(prefix="eo", dir="/tmp"))
    try:
        result = job.run(plan=Plan(running=0.5, exit_code=3),
                         env=dict(job.env, ECSBATCH_WATCHER="off", XDG_RUNTIME_DIR=str(runtime)))
        assert result.code == 3
        assert not glob.glob(str(runtime / "ecsbatch" / "w*"))
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


# --- the thin start: a run handed to the watcher before the rest of ecsbatch loads -------------


def test_the_watcher_is_the_default_and_a_runner_never_loads_click_yaml_or_botocore(wjob):
    """With ECSBATCH_WATCHER unset, `ecsbatch run` (the console script, as Hinemos starts it) starts
    the watcher and hands itself over from the top of the file. PYTHONPROFILEIMPORTTIME makes the
    runner write each of its imports to its stderr, from its start to its exit (it waits thin in
    the same process): click, PyYAML and botocore are never among them (the launch and the verdict
    run in the watcher's children, which have them loaded), nor json, typing or datetime."""
    env = dict(wjob.env, PYTHONPROFILEIMPORTTIME="1")
    env.pop("ECSBATCH_WATCHER")
    result = wjob.run(plan=Plan(running=0.5, exit_code=3), env=env)
    assert result.code == 3, result
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "site" in imported
    assert not {name for name in imported if name.split(".")[0] in ("click", "yaml", "botocore", "boto3", "json",
                                                                      "typing", "datetime")}, result.stderr
    assert len(watcher_pids(wjob.runtime)) == 1
    assert "failed: container app exited 3" in result.stderr


def test_a_region_on_the_command_line_gets_the_watcher_of_its_own_context(wjob):
    """--region is part of the credential context: such a run is not handed to the environment's
    watcher from the top of the file; the full run starts the watcher of its own context."""
    region = wjob.env.get("AWS_REGION") or wjob.env["AWS_DEFAULT_REGION"]
    assert wjob.run(plan=Plan(running=0.5, exit_code=3)).code == 3
    second = start_thin(wjob, "--region", region, plan=Plan(running=0.5, exit_code=4))
    assert second.finish().code == 4
    assert len(watcher_pids(wjob.runtime)) == 2


def test_a_launch_child_declines_a_run_of_another_context_and_launches_nothing(wjob):
    """The launch child checks the context of what it parsed: arguments that name another region,
    sent to the environment's watcher anyway, come back declined before any AWS call, and the
    runner goes on by itself (here: the function returns)."""
    region = "us-west-2"
    code = ("import ecsbatch, sys\n"
            "print('returned', ecsbatch.run_through_watcher(sys.argv[1:], region=None, profile=None, in_place=True), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code, "run", "-f", str(wjob.run_file), "--region", region]
                          + FAST_POLL, env=wjob.env, capture_output=True, text=True, timeout=60, cwd=str(ecsbatch_dir()))
    assert done.returncode == 0, done
    assert "returned None" in done.stdout
    assert wjob.tasks() == [] and wjob.run_requests() == []
    assert len(watcher_pids(wjob.runtime)) == 1


@pytest.mark.parametrize("args, code, fragment", [
    (["--no-such-option"], 2, "No such option"),
    (["-f", "/nonexistent/run-task.yaml"], 2, "not found"),
    (["--timeout", "soon"], 2, "--timeout"),
    (["--help"], 0, None),
])
def test_bad_input_through_the_watcher_is_the_same_one_line(wjob, args, code, fragment):
    """The launch child parses with the one parser and writes to the runner's own streams: a usage
    error is one line and exit 2, as without the watcher, and nothing is launched."""
    env = dict(wjob.env)
    env.pop("ECSBATCH_WATCHER")
    result = run_cli(["run"] + args, env)
    assert result.code == code, result
    if fragment is None:
        assert "Example:" in result.stdout and result.stderr == ""
    else:
        [line] = result.error_lines
        assert line.startswith("ecsbatch: error: ") and fragment in line, result
    assert wjob.run_requests() == []
    assert len(watcher_pids(wjob.runtime)) == 1


def ecsbatch_dir() -> Path:
    return Path(ecsbatch.ECSBATCH_FILE).parent


class FakeWatcher:
    """A listener on ECSBATCH_WATCHER_SOCKET that speaks the protocol up to the launch and then
    does what the test says: answer "launching" when told, and end the connection after "go"."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ef", dir="/tmp"))
        self.path = str(self.directory / "w.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(5)
        self.launch_seen, self.answer_now, self.done = threading.Event(), threading.Event(), threading.Event()
        self.received: list = []
        self.child = subprocess.Popen(["sleep", "60"])  # the pid that "launching" names
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        channel = ecsbatch.LineChannel(conn)
        try:
            while True:
                message = channel.receive(30)
                if message is None:
                    break
                self.received.append(message["op"])
                if message["op"] == "hello":
                    channel.send({"op": "hello", "release": ecsbatch.__version__})
                elif message["op"] == "launch":
                    self.launch_seen.set()
                    self.on_launch(channel)
                elif message["op"] == "go":
                    self.on_go(channel)
                    break
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            self.done.set()

    def on_launch(self, channel) -> None:
        self.answer_now.wait(30)
        channel.send({"op": "launching", "pid": self.child.pid})

    def on_go(self, channel) -> None:
        """Then the launch child is lost without a word."""

    def close(self) -> None:
        self.listener.close()
        self.child.kill()
        self.child.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def test_a_signal_before_the_launch_is_let_go_launches_nothing_and_says_so(wjob):
    """SIGTERM while the watcher is still setting the launch up: the runner never sends "go", so
    nothing is launched, and it exits 143 with one line, as a run interrupted before its launch."""
    fake = FakeWatcher()
    try:
        running = wjob.start(env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=fake.path))
        assert fake.launch_seen.wait(30)
        running.signal(signal.SIGTERM)
        time.sleep(0.3)
        fake.answer_now.set()
        result = running.finish()
        assert fake.done.wait(10)
    finally:
        fake.close()
    assert result.code == 143, result
    assert "go" not in fake.received
    assert result.error_lines[-1] == "ecsbatch: interrupted by SIGTERM; nothing was started", result
    assert wjob.tasks() == []


def test_a_launch_child_lost_without_a_word_is_125_and_says_where_to_look(wjob):
    """The launch child ends after "go" without a word (killed with the watcher): a task may have
    been launched, so the runner neither waits by itself (it could launch twice) nor says success."""
    fake = FakeWatcher()
    fake.answer_now.set()
    try:
        result = wjob.run(env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=fake.path))
    finally:
        fake.close()
    assert result.code == 125, result
    assert "go" in fake.received
    [line] = result.error_lines
    assert "ended without a word" in line and "ecsbatch status" in line


# --- pure parts --------------------------------------------------------------------------------

BASE_ENV = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "ap-northeast-1",
            "HOME": "/nonexistent", "PATH": "/usr/bin"}


@pytest.mark.parametrize("change, same", [
    ({"AWS_ACCESS_KEY_ID": "AKIA2"}, False),
    ({"AWS_SESSION_TOKEN": "t"}, False),
    ({"AWS_ROLE_ARN": "arn:aws:iam::1:role/x"}, False),
    ({"AWS_WEB_IDENTITY_TOKEN_FILE": "/tmp/token"}, False),
    ({"AWS_PROFILE": "batch"}, False),
    ({"AWS_CONFIG_FILE": "/etc/aws.conf"}, False),
    ({"AWS_SHARED_CREDENTIALS_FILE": "/etc/aws.creds"}, False),
    ({"AWS_REGION": "us-east-1"}, False),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, False),
    ({"HTTPS_PROXY": "http://proxy:3128"}, False),
    ({"PATH": "/bin"}, True),
    ({"TARGET_DATE": "2026-11-28"}, True),
])
def test_the_credential_context_is_everything_that_selects_credentials(change, same):
    assert (ecsbatch.credential_context(dict(BASE_ENV, **change), None, None)
            == ecsbatch.credential_context(BASE_ENV, None, None)) is same


@pytest.mark.parametrize("region, profile", [("us-east-1", None), (None, "batch")])
def test_region_and_profile_options_are_part_of_the_context(region, profile):
    assert ecsbatch.credential_context(BASE_ENV, region, profile) != ecsbatch.credential_context(BASE_ENV, None, None)


def test_messages_keep_datetimes_and_refuse_another_protocol():
    when = datetime.datetime(2026, 11, 28, 3, 0, tzinfo=datetime.timezone.utc)
    line = ecsbatch.encode_message({"op": "final", "task": {"createdAt": when}})
    assert ecsbatch.decode_message(line.rstrip(b"\n"))["task"]["createdAt"] == when
    with pytest.raises(ValueError):
        ecsbatch.decode_message(json.dumps({"op": "final", "v": ecsbatch.WATCHER_PROTOCOL + 1}).encode())


@pytest.mark.parametrize("arn, pid, start", [("arn:other", 10, "5"), ("arn:task", 11, "5"), ("arn:task", 10, "6")])
def test_a_ticket_binds_the_task_the_runner_and_its_start(arn, pid, start):
    key = b"k" * 32
    assert ecsbatch.task_ticket(key, "arn:task", 10, "5") != ecsbatch.task_ticket(key, arn, pid, start)


def test_a_revision_is_described_once_per_watcher_and_a_bare_family_at_every_launch(wjob):
    """The released run-task.yaml names one revision (family:N). The watcher's launcher keeps what
    its first launch described, and later launches reuse it, since a revision never changes. A
    bare family names the latest revision, which a register can change at any moment, so every
    launch describes it again. Each run is judged by the definition it launched."""
    def describes():
        return [c for c in wjob.ecs.calls("DescribeTaskDefinition") if wjob.family in str(c["params"])]

    revision = f"{wjob.family}:1"
    for code in (3, 4):
        result = wjob.run("--task-definition", revision, plan=Plan(running=0.3, exit_code=code))
        assert result.code == code and f"container app exited {code}" in result.error_lines[-1], result
    assert len(describes()) == 1
    wjob.register([dict(APP, name="main")])  # revision 2: the latest, with another container
    result = wjob.run(plan=Plan(running=0.3, exit_code=5))
    assert result.code == 5 and "container main exited 5" in result.error_lines[-1], result
    result = wjob.run("--task-definition", revision, plan=Plan(running=0.3, exit_code=6))
    assert result.code == 6 and "container app exited 6" in result.error_lines[-1], result
    assert len(describes()) == 2
    assert [r["taskDefinition"].rsplit(":", 1)[-1] for r in wjob.run_requests()] == ["1", "1", "2", "1"]
    assert len(watcher_pids(wjob.runtime)) == 1
