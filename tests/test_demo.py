"""The README's demo, tried as a new user would: `python -m localecs ...` from the repository root."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List

from conftest import REPO, run_cli


class Demo:
    """`python -m localecs ARGS` in its own process group, as a terminal runs it."""

    def __init__(self, args: List[str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "localecs"] + args, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        self.lines: List[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert time.monotonic() < deadline and self.process.poll() is None, "".join(self.lines)
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)  # what a terminal does: the whole foreground group

    def finish(self, timeout: float = 90):
        stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self.reader.join(5)
        return code, stdout, "".join(self.lines)


def test_demo_json_is_pure_json_and_shows_log_lines():
    code, stdout, stderr = Demo(["--json", "--", "exit", "2"]).finish()
    assert code == 2, stderr
    summary = json.loads(stdout)  # the register step's ARN is not on stdout any more
    assert summary["exitCode"] == 2 and summary["outcome"] == "failed"
    assert "app: exiting with code 2" in summary["logTail"]
    assert any(line.startswith("app: working") for line in summary["logTail"])
    assert "localecs: registered arn:aws:ecs:" in stderr
    assert "app: working, step 1" in stderr  # with --json the log lines stream on stderr
    assert "Traceback" not in stderr


def test_ctrl_c_during_the_demo_is_ecsbatchs_stop_and_130():
    demo = Demo(["--", "sleep", "60"])
    demo.wait_for("RUNNING")
    demo.ctrl_c()
    code, stdout, stderr = demo.finish()
    assert code == 130, stderr
    assert "SIGINT received by the job runner" in stderr and "was stopped (STOPPED)" in stderr
    assert "localecs: ecsbatch exited 130" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "app: received SIGTERM, exiting with code 143" in stdout


def test_serve_keeps_the_endpoint_up_for_the_operators_commands():
    demo = Demo(["serve"])
    env: Dict[str, str] = dict(os.environ)
    try:
        while "ECSBATCH_DEMO_RUN_FILE" not in env or "SUBNET_ID" not in env:
            line = demo.process.stdout.readline()
            assert line.startswith("export "), (line, "".join(demo.lines))
            name, value = line[len("export "):].rstrip("\n").split("=", 1)
            env[name] = shlex.split(value)[0] if value else ""
        demo.wait_for("serving until Ctrl-C")
        started = run_cli(["run", "-f", env["ECSBATCH_DEMO_RUN_FILE"], "--poll-interval", "0.3", "--no-logs",
                           "--job-key", "nightly", "--", "exit", "4"], env)
        assert started.code == 4, started
        task = started.stderr.split("launched task ", 1)[1].split()[0]
        status = run_cli(["status", "--cluster", "batch"], env)
        assert status.code == 0 and task.rsplit("/", 1)[1] in status.stdout, status
        logs = run_cli(["logs", "--cluster", "batch", task], env)
        assert logs.code == 0 and "app: exiting with code 4" in logs.stdout, logs
        stopped = run_cli(["stop", "--cluster", "batch", "--job-key", "nightly"], env)
        assert stopped.code == 0 and "nothing to stop" in stopped.stderr, stopped
    finally:
        demo.ctrl_c()
        code, _, stderr = demo.finish()
    assert code == 0, stderr
    assert "stopping the endpoint" in stderr and "Traceback" not in stderr
