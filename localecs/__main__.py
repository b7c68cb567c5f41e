"""The local demo: register and run the shipped YAML files against a local ECS endpoint.

    python -m localecs                      # the task runs a few seconds and exits 0
    python -m localecs -- exit 3            # ... and exits 3, so ecsbatch exits 3
    python -m localecs --timeout 2 -- sleep 30
    python -m localecs -- fail-to-start     # exit 125, with the reason on one line
    python -m localecs --json -- exit 2     # stdout is exactly one JSON object
    python -m localecs serve                # keep the endpoint up; try status, stop, wait, logs

Everything before `--` and after it is passed to `ecsbatch run`. No AWS account is used: the
endpoint is localecs on 127.0.0.1, a scripted task lifecycle in front of moto's server (see
localecs/__init__.py).

The demo registers a variant of the shipped register-task.yaml whose app container logs through
the awslogs driver instead of FireLens, so that ecsbatch can stream its log lines; the local
endpoint writes a line every half second while the task runs, then the exit line.

Ctrl-C goes to ecsbatch, which stops the task and exits 130; the demo then stops the endpoint
and exits with ecsbatch's code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional

from localecs import ACCOUNT_ID, REGION, LocalEcs, Plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VARIABLES = {
    "TASK_FAMILY": "ecsbatch-demo",
    "AWS_ACCOUNT_ID": ACCOUNT_ID,
    "TASK_ROLE_NAME": "ecsbatch-demo-task",
    "EXECUTION_ROLE_NAME": "ecsTaskExecutionRole",
    "ECR_REPOSITORY": "batch-job",
    "STAGE": "demo",
    "FLUENTD_HOST": "fluentd.internal",
}
DEMO_LOG_GROUP = "/ecsbatch/demo"
EXIT_SIGINT = 130


def ecsbatch_command() -> List[str]:
    return [sys.executable, os.path.join(REPO, "ecsbatch.py")]


def say(message: str) -> None:
    print(f"localecs: {message}", file=sys.stderr, flush=True)


class Interrupts:
    """The demo's own SIGINT/SIGTERM handling: remember the signal and let the child handle it.

    A terminal's Ctrl-C reaches the whole foreground process group, ecsbatch included, and
    ecsbatch answers it by stopping the task and exiting 130. The demo must neither die of it
    (a KeyboardInterrupt traceback) nor ignore it with SIG_IGN, which the child would inherit:
    a Python handler is reset to the default in the child by exec."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.event = threading.Event()
        self.child: Optional[subprocess.Popen] = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        self.event.set()
        if signum == signal.SIGTERM and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)  # a SIGTERM is sent to the demo alone; Ctrl-C reaches both

    def run(self, command: List[str], env: Dict[str, str], **kwargs: object) -> subprocess.CompletedProcess:
        child = self.child = subprocess.Popen(command, env=env, **kwargs)  # type: ignore[call-overload]
        try:
            stdout, _ = child.communicate()
        finally:
            if child.poll() is None:  # only if the demo itself failed: never leave ecsbatch behind
                child.terminate()
                child.wait()
        return subprocess.CompletedProcess(command, child.returncode, stdout)


def demo_register_file(work: str) -> str:
    """register-task.yaml with the app container logging through awslogs, for the demo."""
    import yaml

    with open(os.path.join(REPO, "register-task.yaml"), encoding="utf-8") as handle:
        request = yaml.safe_load(handle)
    for container in request["containerDefinitions"]:
        if container["name"] == "app":
            container["logConfiguration"] = {"logDriver": "awslogs", "options": {
                "awslogs-group": DEMO_LOG_GROUP, "awslogs-region": REGION, "awslogs-stream-prefix": "demo"}}
    path = os.path.join(work, "register-task.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# register-task.yaml of the repository, with awslogs for the demo's log lines\n")
        yaml.safe_dump(request, handle, sort_keys=False)
    return path


def prepare(ecs: LocalEcs, work: str, interrupts: Interrupts) -> Optional[Dict[str, str]]:
    """Seed the endpoint, register the demo definition and pin a copy of run-task.yaml to it.
    Returns the environment for ecsbatch, or None when registering failed or was interrupted."""
    env = dict(os.environ, **ecs.client_env(), **DEMO_VARIABLES, **ecs.seed_network())
    run_file = os.path.join(work, "run-task.yaml")
    with open(os.path.join(REPO, "run-task.yaml"), encoding="utf-8") as source, \
            open(run_file, "w", encoding="utf-8") as copy:
        copy.write(source.read())
    if interrupts.received is not None:  # Ctrl-C while the endpoint was starting
        return None
    say(f"ECS endpoint at {ecs.url}; registering and pinning the task definition")
    register = interrupts.run(ecsbatch_command() + [
        "register", "-f", demo_register_file(work), "--tag", "demo001", "--pin", run_file],
        env, stdout=subprocess.PIPE, text=True)
    if register.returncode != 0 or interrupts.received is not None:
        say(f"ecsbatch register exited {register.returncode}")
        return None
    say(f"registered {register.stdout.strip()}")  # stdout stays for `run`: one JSON object with --json
    env["ECSBATCH_DEMO_RUN_FILE"] = run_file
    return env


def demo(argv: List[str], interrupts: Interrupts) -> int:
    demo_plan = Plan(provisioning=1.0, pending=1.0, running=3.0)
    with LocalEcs(default_plan=demo_plan, container_logs=True) as ecs, tempfile.TemporaryDirectory() as work:
        env = prepare(ecs, work, interrupts)
        if env is None:
            return EXIT_SIGINT if interrupts.received is not None else 1
        args = list(argv)
        if "--poll-interval" not in args:
            args[:0] = ["--poll-interval", "1"]
        say(f"ecsbatch run {' '.join(args)}")
        result = interrupts.run(ecsbatch_command() + ["run", "-f", env["ECSBATCH_DEMO_RUN_FILE"]] + args, env)
        say(f"ecsbatch exited {result.returncode}; stopping the endpoint")
        return result.returncode


def serve(argv: List[str], interrupts: Interrupts) -> int:
    """Keep the endpoint up, print the environment for another shell, wait for Ctrl-C."""
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    demo_plan = Plan(provisioning=1.0, pending=1.0, running=3.0)
    with LocalEcs(port=port, default_plan=demo_plan, container_logs=True) as ecs, \
            tempfile.TemporaryDirectory() as work:
        env = prepare(ecs, work, interrupts)
        if env is None:
            return EXIT_SIGINT if interrupts.received is not None else 1
        exported = {k: v for k, v in env.items() if os.environ.get(k) != v}
        for name in sorted(exported):
            print(f"export {name}={quote(exported[name])}", flush=True)
        script = os.path.join(os.path.dirname(sys.executable), "ecsbatch")
        ecsbatch = script if os.path.exists(script) else " ".join(ecsbatch_command())
        run_file = env["ECSBATCH_DEMO_RUN_FILE"]
        say(f"""serving until Ctrl-C. In another shell, paste the export lines above, then try:
    {ecsbatch} run -f {run_file} --job-key nightly -- sleep 60 &
    {ecsbatch} status --cluster batch
    {ecsbatch} logs --cluster batch --follow TASK_ID
    {ecsbatch} wait --cluster batch TASK_ID
    {ecsbatch} stop --cluster batch --job-key nightly
  The task's fate follows its command: `-- exit 3`, `-- sleep 20`, `-- fail-to-start`.""")
        while not interrupts.event.wait(0.5):
            pass
        say(f"{signal.Signals(interrupts.received or signal.SIGINT).name}: stopping the endpoint")
    return 0


def quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def main(argv: List[str]) -> int:
    interrupts = Interrupts()
    interrupts.install()
    if argv[:1] == ["serve"]:
        return serve(argv[1:], interrupts)
    return demo(argv, interrupts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
