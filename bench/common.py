"""What the benchmarks share: the small launcher process and a prepared local endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAMILY = "bench"


class Launcher:
    """The small process that starts every runner (see bench/launcher.py)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(REPO / "bench" / "launcher.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run_all(self, jobs):
        """[(command, env), ...], all started at once; one cost entry per job."""
        self.process.stdin.write(json.dumps({"jobs": [{"command": c, "env": e} for c, e in jobs]}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def run(self, command, env):
        return self.run_all([(command, env)])[0]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def prepare(ecs) -> dict:
    """A cluster, a network and a one-container task definition; returns the RunTask request."""
    network = ecs.seed_network()
    ecs.client("ecs").register_task_definition(
        family=FAMILY, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": "batch:1", "memory": 256, "essential": True}])
    return {"cluster": network["ECS_CLUSTER"], "taskDefinition": FAMILY, "launchType": "FARGATE",
            "networkConfiguration": {"awsvpcConfiguration": {
                "subnets": [network["SUBNET_ID"]], "securityGroups": [network["SECURITY_GROUP_ID"]]}}}


def ecsbatch_command() -> list:
    """The installed console script, as users run it (it imports ecsbatch from cached bytecode);
    the module file only where ecsbatch is not installed."""
    script = Path(sys.executable).with_name("ecsbatch")
    return [str(script)] if script.exists() else [sys.executable, str(REPO / "ecsbatch.py")]


def release_install(directory: Path) -> list:
    """ecsbatch installed as the batch server has it (deploy/hooks: a venv, the console script
    that after-install.sh writes, ecsbatch.py in site-packages, compiled), not as this checkout's editable install, whose import
    hook costs every start some 25 ms. Its dependencies come from this environment through a .pth
    line (a path, no code). Returns the console script's command."""
    import compileall
    import shutil
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    purelib = Path(subprocess.run([str(directory / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    shutil.copy(REPO / "ecsbatch.py", purelib / "ecsbatch.py")
    compileall.compile_file(str(purelib / "ecsbatch.py"), quiet=1)
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = directory / "bin" / "ecsbatch"  # as deploy/hooks/after-install.sh writes it
    script.write_text(f"#!{directory / 'bin' / 'python'}\n"
                      + (REPO / "deploy" / "hooks" / "console-script.py").read_text())
    script.chmod(0o755)
    return [str(script)]


def percentile(values, fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def runner_env(**extra: str) -> dict:
    """The runners' environment. Bytecode caching stays on, as on a batch server where pip
    compiled the release at install time; without it every start recompiles ecsbatch. Each runner
    waits by itself (ECSBATCH_WATCHER=off) unless `extra` says otherwise: wait_cost.py and
    concurrency.py measure that mode, watcher.py sets it per batch."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["ECSBATCH_WATCHER"] = "off"
    env.update(extra)
    return env
