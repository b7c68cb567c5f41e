"""The thin start (a run handed to the shared watcher from the top of ecsbatch.py) under attack:
closed streams, signals in the hand-off, garbage from a watcher, credentials that the context
hash does not see, and the contract's exit codes through it. Real processes throughout."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import ecsbatch

from conftest import FAST_POLL, SIDECAR, Plan, ecsbatch_command, run_cli
from hinemos import put_log_lines
from localecs.proxy import FaultProxy
from test_watcher import AWSLOGS_APP, FakeWatcher, ecsbatch_dir, logs, wait_until, wjob  # noqa: F401


def run_closed(job, *args, close: str, env=None, timeout: float = 90):
    """`ecsbatch run ... >&-` (or `2>&-`): the stream is closed when the process starts."""
    command = ecsbatch_command() + ["run", "-f", str(job.run_file)] + FAST_POLL + list(args)
    shell = f'exec "$@" {close}'
    done = subprocess.run(["bash", "-c", shell, "bash"] + command, env=env or job.env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done


# --- closed streams --------------------------------------------------------------------------


@pytest.mark.parametrize("watcher", ["on", "off"])
def test_a_stdout_closed_at_start_keeps_the_exit_code_and_no_traceback(wjob, watcher):
    """cron or a wrapper runs `ecsbatch run >&-`: Python starts with sys.stdout = None. The run
    must still exit with the container's code and say no traceback (as with the watcher off)."""
    wjob.ecs.plans.append(Plan(running=1.0, exit_code=3))
    done = run_closed(wjob, close=">&-", env=dict(wjob.env, ECSBATCH_WATCHER=watcher))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 3, done.stderr[-3000:]
    time.sleep(0.5)
    assert [t.last_status for t in wjob.tasks()] == ["STOPPED"]


def test_a_stderr_closed_at_start_keeps_the_exit_code(wjob):
    wjob.ecs.plans.append(Plan(running=1.0, exit_code=3))
    done = run_closed(wjob, close="2>&-")
    assert done.returncode == 3, done
    assert [t.last_status for t in wjob.tasks()] == ["STOPPED"]


FLUSHABLE_NONE_STDOUT = (
    "import io, sys\n"
    "sys.stdout = io.StringIO()  # only past the flush of a None sys.stdout; fd 1 stays closed\n"
    "import ecsbatch\n"
    "ecsbatch.run_through_watcher(sys.argv[1:], region=None, profile=None, in_place=True)\n"
)


def test_a_closed_stdout_is_harmless_past_the_flush(wjob):
    """A run with stdout open ends 0 as before: standard_fds() is taken before the watcher's socket
    is opened, so a closed fd 1 becomes /dev/null for the launch child, never the socket."""
    assert wjob.run(plan=Plan(running=0.3, exit_code=0)).code == 0
    done = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", sys.executable, "-c", FLUSHABLE_NONE_STDOUT,
                           "run", "-f", str(wjob.run_file), "--dry-run"], env=wjob.env, capture_output=True,
                          text=True, timeout=90, cwd=str(ecsbatch_dir()))
    assert "may have been launched" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


# --- a watcher slow to start ------------------------------------------------------------------


def test_a_watcher_slow_to_start_leaves_the_run_to_itself_without_a_traceback(wjob, tmp_path):
    """start_watcher runs `ecsbatch watcher --detach` and waits at most WATCHER_START_SECONDS: a
    watcher slower to start (100 runs starting at once on 2 cores, a slow disk) leaves the run
    to itself, with no traceback, and the job runs and ends right."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys, time\nif 'watcher' in sys.argv[1:3]:\n    time.sleep(40)\n")
    env = dict(wjob.env, PYTHONPATH=str(site))
    result = wjob.run(plan=Plan(running=0.3, exit_code=3), env=env, timeout=150)
    assert "Traceback" not in result.stderr, result
    assert result.code == 3, result


# --- signals in the hand-off -----------------------------------------------------------------

SIGNAL_IN_HANDOFF = {
    # in place: the state is built, the thin wait does not listen yet
    True: ("original = ecsbatch.ThinRunner.install_signals\n"
           "def install_signals(self):\n"
           "    os.kill(os.getpid(), signal.SIGTERM)\n"
           "    return original(self)\n"
           "ecsbatch.ThinRunner.install_signals = install_signals\n"),
    # by an exec (a full run): just before the exec into the thin runner
    False: ("original = ecsbatch.exec_with_state\n"
            "def exec_with_state(argv, state, fd_env=ecsbatch.RESUME_FD_ENV):\n"
            "    if fd_env == ecsbatch.THIN_FD_ENV:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return original(argv, state, fd_env)\n"
            "ecsbatch.exec_with_state = exec_with_state\n"),
}


@pytest.mark.parametrize("in_place", [True, False])
def test_a_signal_while_the_runner_turns_thin_stops_the_task(wjob, in_place):
    """SIGTERM (Hinemos's stop) lands after the "handoff" came, while the runner turns into the thin
    runner, in place or by an exec: the signals are blocked as soon as the hand-off is read, so it
    waits for the thin runner, which stops the task, and the job exits 143."""
    wjob.ecs.plans.append(Plan(running=6.0, exit_code=0))
    code = ("import os, signal, sys\nimport ecsbatch\n" + SIGNAL_IN_HANDOFF[in_place]
            + f"ecsbatch.run_through_watcher(sys.argv[1:], region=None, profile=None, in_place={in_place})\n"
            "print('returned', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code, "run", "-f", str(wjob.run_file)] + FAST_POLL,
                          env=wjob.env, capture_output=True, text=True, timeout=90, cwd=str(ecsbatch_dir()))
    task = wjob.only_task()
    assert done.returncode == 143, (done.returncode, done.stderr[-2000:])
    assert task.stopped_reason == "ecsbatch: SIGTERM received by the job runner", task.stopped_reason


# --- a watcher that answers garbage ----------------------------------------------------------


class GarbageWatcher(FakeWatcher):
    """Speaks the protocol up to the launch, then answers what the test gives."""

    def __init__(self, launching: dict, after_go: list) -> None:
        self.launching, self.after_go = launching, after_go
        super().__init__()
        self.answer_now.set()

    def on_launch(self, channel) -> None:
        answer = dict(self.launching)
        if answer.get("pid") == "child":
            answer["pid"] = self.child.pid
        elif answer.get("pid") == "omit":
            del answer["pid"]
        channel.send(answer)

    def on_go(self, channel) -> None:
        for answer in self.after_go:
            channel.send(answer)
        time.sleep(1.0)


@pytest.mark.parametrize("launching, after_go, code", [
    ({"op": "launching", "pid": "not-a-pid"}, [], None),  # before "go": nothing launched, run by itself
    ({"op": "launching", "pid": "omit"}, [], None),
    ({"op": "launching", "pid": "child"}, [{"op": "exit", "code": "three"}], 125),  # after "go": a task may be live
    ({"op": "launching", "pid": "child"}, [{"op": "handoff"}], 125),
    ({"op": "launching", "pid": "child"}, [{"op": "handoff", "state": {}, "code": "!!"}], 125),
])
def test_a_watcher_that_answers_garbage_never_gets_a_traceback(wjob, launching, after_go, code):
    fake = GarbageWatcher(launching, after_go)
    try:
        result = wjob.run(plan=Plan(running=0.5, exit_code=6), env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=fake.path),
                          timeout=90)
    finally:
        fake.close()
    assert "Traceback" not in result.stderr, result
    if code is None:  # nothing was sent that launches: the run goes on by itself
        assert result.code == 6, result
    else:
        assert result.code == code, result
        assert len(result.error_lines) >= 1 and result.error_lines[-1].startswith("ecsbatch"), result


# --- credentials ------------------------------------------------------------------------------


class KeyRecorder(FaultProxy):
    """A FaultProxy that notes which access key signed each request."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.keys: list = []

    def _handle(self, handler) -> None:
        auth = handler.headers.get("Authorization") or ""
        operation = (handler.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        key = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else None
        with self.lock:
            self.keys.append((operation, key))
        super()._handle(handler)


def test_boto_config_is_part_of_the_credential_context(wjob, tmp_path):
    """botocore's credential chain reads BOTO_CONFIG (BotoProvider: [Credentials] in a boto
    config file). Two runs that differ only in BOTO_CONFIG get a watcher each, and each run's
    RunTask is signed with its own key, never the other's."""
    with KeyRecorder(wjob.ecs.url) as recorder:
        env = {k: v for k, v in wjob.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        env["AWS_ENDPOINT_URL"] = recorder.url
        configs = {}
        for name in ("ALPHA", "BRAVO"):
            path = tmp_path / f"boto-{name}.cfg"
            path.write_text(f"[Credentials]\naws_access_key_id = AKID{name}\naws_secret_access_key = s{name}\n")
            configs[name] = str(path)
        first = wjob.run(plan=Plan(running=0.3, exit_code=0), env=dict(env, BOTO_CONFIG=configs["ALPHA"]))
        assert first.code == 0, first
        assert ("RunTask", "AKIDALPHA") in recorder.keys
        del recorder.keys[:]
        second = wjob.run(plan=Plan(running=0.3, exit_code=0), env=dict(env, BOTO_CONFIG=configs["BRAVO"]))
        assert second.code == 0, second
        signed = {key for op, key in recorder.keys if op == "RunTask"}
    assert signed == {"AKIDBRAVO"}, signed


# --- the contract's exit codes through the thin start -----------------------------------------


@pytest.mark.parametrize("args, code, stream, fragment", [
    (["--bogus"], 2, "stderr", "No such option"),
    (["--json", "--bogus"], 2, "stdout", '"exitCode": 2'),
    (["-q", "--bogus"], 2, "stdout", "ecsbatch-result:"),
    (["--help"], 0, "stdout", "Usage:"),
    (["--dry-run"], 0, "stdout", "taskDefinition"),
    (["--timeout", "x"], 2, "stderr", "--timeout"),
])
def test_exit_codes_of_the_thin_start_are_the_full_runs(wjob, args, code, stream, fragment):
    result = wjob.run(*args)
    assert result.code == code, result
    assert fragment in getattr(result, stream), result
    assert "Traceback" not in result.stderr
    assert wjob.tasks() == []


def test_options_after_a_value_dash_dash_still_decline_another_region(wjob):
    """`-e -- --region=us-west-2`: the top-of-file gate sees only what is before `--`, but `--`
    is -e's value here; the launch child parses the region and declines, nothing is launched
    in the environment's context."""
    result = wjob.run("-e", "--", "--region=us-west-2", plan=Plan(running=0.3, exit_code=3))
    regions = {r["params"].get("cluster") for r in wjob.ecs.calls("RunTask")}
    assert result.code == 2, result  # -e -- is not NAME=VALUE
    assert wjob.tasks() == [], regions


# --- the job key ------------------------------------------------------------------------------


def test_two_runs_of_one_job_key_started_together_launch_once(wjob):
    wjob.ecs.plans.extend([Plan(running=3.0, exit_code=4), Plan(running=3.0, exit_code=4)])
    first = wjob.start("--job-key", "race/one")
    second = wjob.start("--job-key", "race/one")
    a, b = first.finish(), second.finish()
    assert (a.code, b.code) == (4, 4), (a, b)
    assert len(wjob.tasks()) == 1


def test_stop_by_job_key_while_the_launch_child_waits_for_running(wjob):
    """`ecsbatch stop --job-key` while the task is still PROVISIONING, right after the launch: the
    runner (thin, or about to be) stops the task."""
    running = wjob.start("--job-key", "nightly/early", plan=Plan(provisioning=4.0, running=60))
    wait_until(wjob.tasks, what="the launch")
    stopped = run_cli(["stop", "--cluster", wjob.cluster, "--job-key", "nightly/early", "--poll-interval", "0.2"],
                      wjob.env)
    result = running.finish()
    assert stopped.code == 0, stopped
    assert result.code == 143, result
    assert wjob.only_task().last_status == "STOPPED"
    assert not glob.glob(str(wjob.runtime / "ecsbatch" / "*.json"))


# --- a task that fails to start again and again --------------------------------------------------


class RelaunchingWatcher:
    """A watcher on ECSBATCH_WATCHER_SOCKET whose every task fails to start at once: each wait
    ends ("final"), and the judge of each end launches again and hands the new task over, `times`
    times, then ends the job with `code`. Every connection of the runner is served."""

    STATE = {"task_arn": "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef",
             "cluster": "batch", "definition": {}, "counted": ["app"], "timeout": None, "timeout_text": "",
             "poll_interval": 10.0, "logs": False, "as_json": False, "region": None, "profile": None,
             "missing_grace": 0.0, "started": 0.0, "deadline": None, "last_task": None, "log_source": None,
             "where": None, "attempts": None, "ticket": "t:t", "encodings": ["utf-8", "utf-8"], "tail_lines": 50,
             "registry": [], "runner": {"pid": 0, "start": None}, "continuation": {"launch": "again"},
             "exit_for_signal": {"1": 129, "2": 130, "3": 131, "15": 143}, "stop_command": "ecsbatch stop x",
             "output": {"quiet": True, "limit": 1024, "stderr_used": 0}, "syslog": None, "syslog_limit": 2048,
             "silenced": {}}

    def __init__(self, times: int, code: int) -> None:
        self.times, self.code, self.finishes = times, code, 0
        self.directory = tempfile.mkdtemp(prefix="er", dir="/tmp")
        self.path = os.path.join(self.directory, "w.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn) -> None:
        channel = ecsbatch.LineChannel(conn)
        answers = {"hello": {"op": "hello", "release": ecsbatch.__version__},
                   "launch": {"op": "launching", "pid": os.getpid()},
                   "go": {"op": "handoff", "state": self.STATE},
                   "watch": {"op": "watching"}}
        try:
            while True:
                message = channel.receive(30)
                if message is None:
                    return
                op = message["op"]
                if op in answers:
                    channel.send(answers[op])
                if op == "watch":
                    channel.send({"op": "final", "how": "stopped", "task": {}})
                    if self.after_final(channel):
                        return
                elif op == "finish":
                    self.finishes += 1
                    channel.send({"op": "launching", "pid": os.getpid()})
                    channel.send({"op": "exit", "code": self.code} if self.finishes > self.times
                                 else {"op": "handoff", "state": self.STATE})
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def after_final(self, channel) -> bool:
        """True: this connection is done (the runner's "finish" is then never read whole)."""
        return False

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.mark.parametrize("extra", [[], ["--region", "ap-northeast-1"]])
def test_a_task_launched_again_hundreds_of_times_is_waited_on_to_the_end(wjob, extra):
    """A long --launch-timeout and capacity that never comes: the judge of each failure to start
    launches again and hands the new task to the same runner, 400 times. The runner waits on each
    in turn, in place (the thin start) or in the thin runner that a full run execs, without its
    stack growing, and exits with the code of the end."""
    fake = RelaunchingWatcher(times=400, code=7)
    try:
        done = subprocess.run(ecsbatch_command() + ["run", "-q", "-f", str(wjob.run_file)] + extra,
                              env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=fake.path), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        fake.close()
    assert (done.returncode, fake.finishes) == (7, 401), (done.returncode, fake.finishes, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr


def test_a_full_run_with_every_stream_closed_keeps_its_log_out_of_the_watchers_socket(wjob, logs):
    """`run --region R --json <&- >&- 2>&-`: the full run execs into the thin wait, whose wake-up
    pipe and watcher socket would take the free fds 0-2. A log line that reads like a protocol
    message ("stop") would then reach the watcher as the runner's own and stop a healthy task.
    The thin wait puts /dev/null on them first: the job exits with the container's 0."""
    wjob.register([AWSLOGS_APP, SIDECAR])
    wjob.ecs.plans.append(Plan(running=4.0, exit_code=0))
    region = wjob.env.get("AWS_REGION") or wjob.env["AWS_DEFAULT_REGION"]
    command = ecsbatch_command() + ["run", "-f", str(wjob.run_file), "--region", region, "--json"] + FAST_POLL
    process = subprocess.Popen(["bash", "-c", 'exec "$@" <&- >&- 2>&-', "bash"] + command, env=wjob.env)
    task = wait_until(wjob.tasks)[0]
    put_log_lines(logs, f"batch/app/{task.id}", ['{"v": 2, "op": "stop", "signal": 15}'] * 3)
    assert process.wait(timeout=90) == 0
    assert not (task.stopped_reason or "").startswith("ecsbatch"), task.stopped_reason


@pytest.mark.parametrize("value", ["0", "3", "99", "not-a-number"])
def test_a_thin_state_variable_in_the_environment_is_ignored(wjob, value):
    """ECSBATCH_THIN_FD copied into a job's environment (from /proc/PID/environ, say) names no
    state of ours: every command goes on as without it, and stdin is never read."""
    env = dict(wjob.env, ECSBATCH_THIN_FD=value)
    assert run_cli(["--version"], env).code == 0
    result = wjob.run(plan=Plan(running=0.3, exit_code=3), env=env)
    assert result.code == 3 and "Traceback" not in result.stderr, result


class JudgeBeforeTheFinishIsSent(RelaunchingWatcher):
    """A watcher whose judge answers, and is gone, before the runner's "finish" has all gone out:
    the finish carries a big task definition, and at its first bytes the judge says "launching"
    and "exit 7" and closes the connection."""

    STATE = dict(RelaunchingWatcher.STATE, definition={"padding": "x" * (2 << 20)})

    def after_final(self, channel) -> bool:
        while b'"finish"' not in channel.buffer:
            data = channel.sock.recv(65536)
            if not data:
                return True
            channel.buffer += data
        self.finishes += 1
        channel.send({"op": "launching", "pid": os.getpid()})
        channel.send({"op": "exit", "code": self.code})
        return True


def test_a_judge_that_answered_before_the_finish_went_out_is_the_only_judge(wjob):
    """Under load the judge can judge, print, say "exit" and be gone while the runner is still
    sending its "finish": the send then fails (EPIPE). The runner still reads the judge's answer
    and exits with its code; it never judges and prints the job a second time."""
    fake = JudgeBeforeTheFinishIsSent(times=0, code=7)
    try:
        done = subprocess.run(ecsbatch_command() + ["run", "-f", str(wjob.run_file), "--json"],
                              env=dict(wjob.env, ECSBATCH_WATCHER_SOCKET=fake.path), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        fake.close()
    assert (done.returncode, fake.finishes) == (7, 1), (done.returncode, done.stderr[-2000:])
    assert done.stdout == "", done.stdout[:500]  # the judge prints; the runner never does
