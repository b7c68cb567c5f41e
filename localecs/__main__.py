"""The local demo: register and run the shipped YAML files against a local ECS endpoint.

    python -m localecs                      # the task runs a few seconds and exits 0
    python -m localecs -- exit 3            # ... and exits 3, so ecsbatch exits 3
    python -m localecs --timeout 2 -- sleep 30
    python -m localecs -- fail-to-start     # exit 125, with the reason on one line

Everything before `--` and after it is passed to `ecsbatch run`. No AWS account is used: the
endpoint is moto's server on 127.0.0.1 with a scripted task lifecycle (see localecs/__init__.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from localecs import ACCOUNT_ID, LocalEcs, Plan

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


def ecsbatch_command() -> list:
    return [sys.executable, os.path.join(REPO, "ecsbatch.py")]


def main(argv: list) -> int:
    demo_plan = Plan(provisioning=1.0, pending=1.0, running=3.0)
    with LocalEcs(default_plan=demo_plan) as ecs, tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, **ecs.client_env(), **DEMO_VARIABLES, **ecs.seed_network())
        run_file = os.path.join(work, "run-task.yaml")
        shutil.copy(os.path.join(REPO, "run-task.yaml"), run_file)
        print(f"localecs: ECS endpoint at {ecs.url}; registering and pinning the task definition", file=sys.stderr)
        register = subprocess.run(ecsbatch_command() + [
            "register", "-f", os.path.join(REPO, "register-task.yaml"), "--tag", "demo001", "--pin", run_file],
            env=env)
        if register.returncode != 0:
            return register.returncode
        args = list(argv)
        if "--poll-interval" not in args:
            args[:0] = ["--poll-interval", "1"]
        print(f"localecs: ecsbatch run {' '.join(args)}", file=sys.stderr)
        result = subprocess.run(ecsbatch_command() + ["run", "-f", run_file] + args, env=env)
        print(f"localecs: ecsbatch exited {result.returncode}", file=sys.stderr)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
