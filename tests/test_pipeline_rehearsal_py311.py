"""The pipeline rehearsed for a Python 3.11 batch server: a build that reuses the image ECR already
holds for its tag, then redeploys under a running job (see test_pipeline_rehearsal_py39.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Plan
from pipeline_support import REPOSITORY, TAG, Build, Server, ensure_job_user, find_python, server_root, \
    world_readable_python

TARGET = "3.11"
EARLIER_DIGEST = "sha256:" + "e" * 64


@pytest.fixture(scope="module")
def build(ecs, network, tmp_path_factory):
    return Build(ecs, network, tmp_path_factory.mktemp("build311"), TARGET, pushed={f"batch-job:{TAG}": EARLIER_DIGEST})


@pytest.fixture(scope="module")
def batch():
    root = server_root()
    python = world_readable_python(find_python(TARGET), root)
    (root / "srv").mkdir(mode=0o755)
    server = Server(root / "srv", python, job_user=ensure_job_user())
    if server.job_user:
        server.configure("nightly", ECSBATCH_JOB_USER=server.job_user, ECSBATCH_KEEP_RELEASES="1")
    yield server
    shutil.rmtree(root, ignore_errors=True)


def test_a_tag_already_in_ecr_is_reused_not_rebuilt(build, ecs):
    assert build.code == 0, build.output
    calls = build.shim_calls()
    assert not [c for c in calls if c.startswith(("docker build", "docker push"))], calls
    image = ecs.client("ecs").describe_task_definition(taskDefinition=build.family)["taskDefinition"][
        "containerDefinitions"][0]["image"]
    assert image == f"{REPOSITORY}@{EARLIER_DIGEST}"


def test_redeploys_keep_the_release_a_running_job_uses(build, ecs, batch):
    first = batch.deploy(build.release)
    assert first.ok, first.output
    home = batch.home()
    job_release = batch.current()
    ecs.plans.append(Plan(running=150, exit_code=6))
    job = batch.job([str(home / "current/venv/bin/ecsbatch"), "run", "-f", str(home / "current/run-task.yaml"),
                     "--poll-interval", "0.2", "--", "exit", "6"], ecs, extra_env={"ECSBATCH_WATCHER_IDLE": "2"})
    time.sleep(3)
    for _ in range(2):
        deployed = batch.deploy(build.release)
        assert deployed.ok, deployed.output
    assert job_release.split("/")[-1] in batch.releases(), "pruned under a running job"
    assert "a running process uses it" in deployed.output
    (job_task,) = [arn for arn, state in ecs.states.items() if not state.done and state.plan.exit_code == 6]
    ecs.finish(job_task)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 6, err
    # The job's shared watcher runs from its release too, until it has been idle for a while
    # (ECSBATCH_WATCHER_IDLE, 2 s here): the release is pruned once nothing runs from it.
    wait_until_nothing_runs_from(job_release)
    deployed = batch.deploy(build.release)
    assert deployed.ok and job_release.split("/")[-1] not in batch.releases(), deployed.output
    assert len(batch.releases()) == 2  # current and the previous one, with ECSBATCH_KEEP_RELEASES=1


def test_the_same_deployment_in_the_same_second_never_collides(build, batch, tmp_path):
    fixed = batch.bin / "date"
    fixed.write_text("#!/bin/sh\necho 20261201T000000Z\n")
    fixed.chmod(0o755)
    try:
        before = set(batch.releases())
        assert batch.deploy(build.release, deployment_id="d-SAME").ok
        assert batch.deploy(build.release, deployment_id="d-SAME").ok
    finally:
        fixed.unlink()
    made = [r for r in batch.releases() if r not in before and r.startswith("20261201T000000Z-d-SAME.")]
    assert len(made) == 2
    current = batch.home() / "current"
    assert (current / "venv" / "bin" / "ecsbatch").exists()
    version = subprocess.run([str(current / "venv/bin/ecsbatch"), "--version"], capture_output=True, text=True,
                             env={"LD_LIBRARY_PATH": batch.library_path})
    assert version.returncode == 0 and version.stdout.startswith("ecsbatch ")


def test_a_failed_install_removes_only_its_own_directory(build, batch, tmp_path):
    before, current = batch.releases(), batch.current()
    broken = tmp_path / "broken"
    shutil.copytree(build.release, broken)
    for wheel in (broken / "wheelhouse").glob("ecsbatch-*.whl"):
        wheel.unlink()
    failed = batch.deploy(broken)
    assert failed.failed_event == "AfterInstall" and "current is unchanged" in failed.output
    assert batch.releases() == before and batch.current() == current


def wait_until_nothing_runs_from(release: str, timeout: float = 60.0) -> None:
    """Until no process runs a program or script from `release` (a watcher idling out)."""
    deadline = time.monotonic() + timeout
    running: list = []
    while time.monotonic() < deadline:
        running = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if release in command:
                running.append(command)
        if not running:
            return
        time.sleep(0.2)
    raise AssertionError(f"still running from {release}: {running}")
