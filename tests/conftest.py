"""Shared fixtures: one local ECS endpoint per session, one task definition and run file per test.

Every CLI test runs ecsbatch as a subprocess, the way Hinemos and CodeBuild do, and talks HTTP to
localecs on loopback (in front of moto's server). The test scripts each task's fate with a localecs.Plan.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from localecs import LocalEcs, Plan
from localecs.proxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent
FAST_POLL = ["--poll-interval", "0.2"]


def ecsbatch_command() -> List[str]:
    """The installed console script when there is one, else the module file itself."""
    script = Path(sys.executable).with_name("ecsbatch")
    return [str(script)] if script.exists() else [sys.executable, str(REPO / "ecsbatch.py")]


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout!r}, stderr={self.stderr!r})"

    @property
    def error_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(args: List[str], env: Dict[str, str], cwd: Optional[Path] = None, timeout: float = 120) -> Result:
    done = subprocess.run(ecsbatch_command() + args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)


class Running:
    """An ecsbatch process whose stderr is read as it comes, for tests that send signals."""

    def __init__(self, args: List[str], env: Dict[str, str]) -> None:
        self.process = subprocess.Popen(ecsbatch_command() + args, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.lines: List[str] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 60) -> Result:
        self.stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return Result(code, self.stdout, "".join(self.lines))


@pytest.fixture(scope="session")
def ecs():
    with LocalEcs() as local:
        yield local


@pytest.fixture(scope="session")
def network(ecs):
    return ecs.seed_network()


APP = {"name": "app", "image": "example/batch:1", "memory": 256, "essential": True}
SIDECAR = {"name": "log-router", "image": "fluent/fluent-bit", "memory": 64, "essential": False}


class Job:
    """One test's task definition, run-task.yaml and environment."""

    def __init__(self, ecs: LocalEcs, network: Dict[str, str], tmp_path: Path) -> None:
        self.ecs = ecs
        self.tmp_path = tmp_path
        self.family = f"job-{uuid.uuid4().hex[:8]}"
        self.cluster = network["ECS_CLUSTER"]
        self.env = dict(os.environ, **ecs.client_env(), **network, TASK_FAMILY=self.family)
        self.env.pop("AWS_PROFILE", None)
        self.env["ECSBATCH_SYSLOG_SOCKET"] = ""  # tests never write to this machine's system log
        # The watcher is on, as users get it: one per endpoint (a module's), gone soon after its tests.
        self.env.setdefault("ECSBATCH_WATCHER_IDLE", "10")
        self.run_file = tmp_path / "run-task.yaml"
        self.write_run_file({
            "cluster": "${ECS_CLUSTER}",
            "taskDefinition": "${TASK_FAMILY}",
            "launchType": "FARGATE",
            "networkConfiguration": {"awsvpcConfiguration": {
                "subnets": ["${SUBNET_ID}"], "securityGroups": ["${SECURITY_GROUP_ID}"]}},
        })
        self.definition_arn = self.register([APP, SIDECAR])

    def register(self, containers: List[dict]) -> str:
        answer = self.ecs.client("ecs").register_task_definition(
            family=self.family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256",
            memory="512", containerDefinitions=containers)
        return answer["taskDefinition"]["taskDefinitionArn"]

    def write_run_file(self, request: dict) -> Path:
        self.run_file.write_text(yaml.safe_dump(request, sort_keys=False))
        return self.run_file

    def run(self, *args: str, plan: Optional[Plan] = None, env: Optional[Dict[str, str]] = None,
            timeout: float = 120) -> Result:
        if plan is not None:
            self.ecs.plans.append(plan)
        return run_cli(["run", "-f", str(self.run_file)] + FAST_POLL + list(args), env or self.env, timeout=timeout)

    def start(self, *args: str, plan: Optional[Plan] = None, env: Optional[Dict[str, str]] = None) -> Running:
        if plan is not None:
            self.ecs.plans.append(plan)
        return Running(["run", "-f", str(self.run_file)] + FAST_POLL + list(args), env or self.env)

    def tasks(self) -> List[object]:
        return [t for t in self.ecs.tasks() if f"/{self.family}:" in t.task_definition_arn]

    def only_task(self):
        tasks = self.tasks()
        assert len(tasks) == 1, f"expected exactly one task, found {len(tasks)}"
        return tasks[0]

    def run_requests(self) -> List[dict]:
        return [r["params"] for r in self.ecs.calls("RunTask")
                if self.family in str(r["params"].get("taskDefinition"))]


@pytest.fixture
def job(ecs, network, tmp_path):
    ecs.plans.clear()
    return Job(ecs, network, tmp_path)


@pytest.fixture
def proxy(ecs):
    with FaultProxy(ecs.url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def tripwire():
    """An endpoint that answers nothing and counts every connection: for proving 'no AWS call'."""
    with FaultProxy(None) as wire:
        yield wire


def offline_env(tripwire: FaultProxy, **extra: str) -> Dict[str, str]:
    """No credentials anywhere, and every AWS endpoint, metadata included, on the tripwire. No
    watcher either: starting one resolves credentials (its launch children share its clients),
    which the tripwire would count; test_watcher.py shows bad input through the watcher."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["ECSBATCH_WATCHER"] = "off"
    env.update({"AWS_ENDPOINT_URL": tripwire.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": tripwire.url,
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": tripwire.url + "/creds",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_REGION": "ap-northeast-1", "AWS_MAX_ATTEMPTS": "1"})
    env.update(extra)
    return env


def assert_one_line_error(result: Result, code: int, *fragments: str) -> str:
    assert result.code == code, result
    assert "Traceback" not in result.stderr, result
    assert len(result.error_lines) == 1, result
    line = result.error_lines[0]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The modules that share a module-scoped fixture (the pipeline rehearsals: a build each) take
    the longest, so they go first: with `--dist loadfile --no-loadscope-reorder` each starts at once
    on a worker of its own while the other workers share the rest."""
    def shares_a_module_fixture(item) -> bool:
        definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}) or {}
        return any(d and d[-1].scope == "module" for d in definitions.values())

    heavy = {item.module.__name__ for item in items if shares_a_module_fixture(item)}
    items.sort(key=lambda item: item.module.__name__ not in heavy)  # stable: the order within stays


__all__ = ["Plan", "Running", "signal", "assert_one_line_error", "offline_env", "run_cli", "Job", "Result", "REPO", "APP", "SIDECAR"]
