"""The pipeline rehearsed for a Python 3.9 batch server, built on the test's own (newer) Python.

The release is built by buildspec.yml's own commands (tests/pipeline_support.py) and deployed by
an emulation of the CodeDeploy agent (tests/codedeploy_agent.py) onto a server whose python3 is a
real Python 3.9 with no package index. Jobs run as a separate non-root user, as Hinemos runs them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import tempfile

import pytest
import yaml

from conftest import REPO
from pipeline_support import REPOSITORY, TAG, Build, Server, ensure_job_user, find_python, server_root, \
    world_readable_python

TARGET = "3.9"


def literal_placeholders(source: Path) -> None:
    """run-task.yaml with a `$${HOME}` and a `$${TARGET_DATE}`: both must reach ECS as written."""
    path = source / "run-task.yaml"
    path.write_text(path.read_text().replace("# overrides:\n", (
        "overrides:\n  containerOverrides:\n    - name: app\n      environment:\n"
        "        - name: OUTPUT\n          value: $${HOME}/out\n"
        "        - name: DATE\n          value: $${TARGET_DATE}\n# overrides:\n"), 1))


@pytest.fixture(scope="module")
def build(ecs, network, tmp_path_factory):
    return Build(ecs, network, tmp_path_factory.mktemp("build39"), TARGET, edit=literal_placeholders)


@pytest.fixture(scope="module")
def machine():
    root = server_root()
    yield {"root": root, "python": world_readable_python(find_python(TARGET), root), "user": ensure_job_user()}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(machine):
    servers = []

    def make(umask: int = 0o022, python=None) -> Server:
        # short: the release's shebang must fit in 127 bytes for ecsbatch's own console script
        root = Path(tempfile.mkdtemp(prefix="s", dir=machine["root"]))
        root.chmod(0o755)
        made = Server(root, python or machine["python"], umask=umask, job_user=machine["user"])
        if machine["user"]:
            made.configure("nightly", ECSBATCH_JOB_USER=machine["user"])
        servers.append(root)
        return made

    yield make
    for root in servers:
        shutil.rmtree(root, ignore_errors=True)


def registered_image(ecs, family: str) -> str:
    definition = ecs.client("ecs").describe_task_definition(taskDefinition=family, include=["TAGS"])
    return definition["taskDefinition"]["containerDefinitions"][0]["image"], definition["tags"]


def test_the_build_resolves_for_the_target_and_registers_the_manifest_digest(build, ecs):
    assert build.code == 0, build.output
    wheels = sorted(p.name for p in (build.release / "wheelhouse").glob("*.whl"))
    assert any(w.startswith("urllib3-1.26.") for w in wheels), wheels  # botocore's pin for Python < 3.10
    assert any(w.startswith("PyYAML-") and "-cp39-cp39-" in w or w.startswith("pyyaml-") and "-cp39-" in w
               for w in wheels), wheels
    image, tags = registered_image(ecs, build.family)
    assert image == f"{REPOSITORY}@{build.manifest_digest()}"
    assert build.local_image_id() and build.local_image_id() not in image
    assert {"key": "image-tag", "value": TAG} in tags
    calls = build.shim_calls()
    assert calls.index(f"docker build --tag {REPOSITORY}:{TAG} examples/batch-job") < calls.index(
        f"docker push {REPOSITORY}:{TAG}")
    appspec = yaml.safe_load((build.release / "appspec.yml").read_text())
    assert {f["destination"] for f in appspec["files"]} == {"/opt/ecsbatch/nightly/staging",
                                                             "/opt/ecsbatch/nightly/staging/wheelhouse"}
    release = yaml.safe_load((build.release / "release.json").read_text())
    assert release["python"] == TARGET and release["image"] == image and release["application"] == "nightly"


def test_it_installs_offline_under_umask_077_and_the_job_runs_as_another_user(build, ecs, server):
    batch = server(umask=0o077)
    deployed = batch.deploy(build.release)
    assert deployed.ok, deployed.output
    home = batch.home()
    release = home / "releases" / batch.releases()[0]
    for path in [home, home / "releases", release] + list(release.rglob("*")):
        if not path.is_symlink():
            mode = path.stat().st_mode
            assert mode & stat.S_IROTH and not mode & stat.S_IWOTH, (path, oct(mode))
    assert "checked as " + (batch.job_user or "nobody") in deployed.output
    definition = ecs.client("ecs").describe_task_definition(taskDefinition=build.family)["taskDefinition"]
    done = batch.run_job([str(home / "current/venv/bin/ecsbatch"), "run", "-f", str(home / "current/run-task.yaml"),
                          "--poll-interval", "0.2", "--", "exit", "4"], ecs)
    assert done.returncode == 4, done.stderr
    request = [c["params"] for c in ecs.calls("RunTask") if build.family in str(c["params"].get("taskDefinition"))][-1]
    assert request["taskDefinition"] == definition["taskDefinitionArn"]
    environment = {e["name"]: e["value"] for e in request["overrides"]["containerOverrides"][0]["environment"]}
    assert environment["OUTPUT"] == "${HOME}/out" and environment["DATE"] == "${TARGET_DATE}"
    version = subprocess.run([str(home / "current/venv/bin/python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, env={"LD_LIBRARY_PATH": batch.library_path})
    assert version.stdout.strip() == "(3, 9)"
    # ecsbatch's own console script, not pip's, which imports re at every job's start; where a
    # shebang cannot name the venv's python (over 127 bytes, as under this test's deep root), pip's
    # /bin/sh wrapper stays, and the job above ran through it
    script = (release / "venv/bin/ecsbatch").read_text()
    shebang = f"#!{release}/venv/bin/python"
    if len(shebang) <= 127:
        assert script == shebang + "\n" + (REPO / "deploy/hooks/console-script.py").read_text()
    else:
        assert script.startswith("#!/bin/sh\n"), script[:300]


def test_the_cutover_keeps_start_ecs_sh_working_through_the_first_deploy(build, ecs, server, tmp_path):
    batch = server()
    seed = tmp_path / "seed-release"
    seed.mkdir()
    (seed / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles:\n"
                                      "  - source: start-ECS.sh\n    destination: /opt/batch\n"
                                      "  - source: run-task.yaml\n    destination: /opt/batch\n")
    (seed / "start-ECS.sh").write_text("#!/usr/bin/env bash\naws ecs run-task --cli-input-yaml \"file://$1\"\n")
    (seed / "run-task.yaml").write_text("cluster: old\ntaskDefinition: old:1\n")
    assert batch.deploy(seed, group="batch-test").ok
    assert (batch.root / "opt/batch/run-task.yaml").exists()
    batch.configure("nightly", ECSBATCH_JOB_USER=batch.job_user or "nobody", ECSBATCH_SHIM_PATH="/opt/batch/start-ECS.sh")

    deployed = batch.deploy(build.release, group="batch-test")
    assert deployed.ok, deployed.output
    assert not (batch.root / "opt/batch/run-task.yaml").exists(), "the agent removes the seed's files"
    shim = batch.root / "opt/batch/start-ECS.sh"
    assert "ecsbatch" in shim.read_text() and os.access(shim, os.X_OK)
    for args in ([str(shim), "/opt/batch/run-task.yaml"], [str(shim)]):
        done = batch.run_job(args + ["--poll-interval", "0.2", "--", "exit", "5"], ecs)
        assert done.returncode == 5, done.stderr
    other = batch.home() / "current" / "run-task.yaml"
    done = batch.run_job([str(shim), str(other), "--dry-run"], ecs)
    assert done.returncode == 0 and build.family in done.stdout, done.stderr
    missing = batch.run_job([str(shim), "/opt/batch/nightly.yaml"], ecs)
    assert missing.returncode == 2 and "nightly.yaml" in missing.stderr


def test_a_release_for_another_python_is_refused_in_one_line(build, machine, server):
    place = machine["root"] / "other-python"
    place.mkdir(mode=0o755)
    batch = server(python=world_readable_python(find_python("3.11"), place))
    deployed = batch.deploy(build.release)
    assert deployed.failed_event == "AfterInstall"
    lines = [line for line in deployed.log if "error:" in line]
    assert len(lines) == 1 and "built for Python 3.9" in lines[0] and "is Python 3.11." in lines[0], deployed.output
    assert batch.releases() == [] and not (batch.home() / "current").exists()


def test_two_applications_on_one_server_never_touch_each_other(build, ecs, network, server):
    batch = server()
    other_family = f"{build.family}-weekly"
    registered = ecs.client("ecs").register_task_definition(
        family=other_family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": "example/batch:1", "memory": 256, "essential": True}])
    revision = f"{other_family}:{registered['taskDefinition']['revision']}"
    run_file = build.source / "run-task.yaml"
    pinned = run_file.read_text()
    run_file.write_text("\n".join(f"taskDefinition: {revision}" if line.startswith("taskDefinition:") else line
                                  for line in pinned.splitlines()) + "\n")
    try:
        weekly = build.assemble("release_weekly", APPLICATION_NAME="weekly")
    finally:
        run_file.write_text(pinned)
    if batch.job_user:
        batch.configure("weekly", ECSBATCH_JOB_USER=batch.job_user)

    def tree(application: str) -> dict:
        home = batch.home(application)
        return {str(p): (p.lstat().st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
                for p in [home] + list(home.rglob("*"))}

    assert batch.deploy(build.release, application="nightly", group="nightly-prod").ok
    nightly = tree("nightly")
    deployed = batch.deploy(weekly, application="weekly", group="weekly-prod")
    assert deployed.ok, deployed.output
    assert tree("nightly") == nightly, "deploying weekly touched nightly's install root"
    assert len(batch.releases("weekly")) == 1 and len(batch.releases("nightly")) == 1
    for application, family in (("nightly", build.family), ("weekly", other_family)):
        home = batch.home(application)
        done = batch.run_job([str(home / "current/venv/bin/ecsbatch"), "run", "-f", str(home / "current/run-task.yaml"),
                              "--poll-interval", "0.2", "--", "exit", "3"], ecs)
        assert done.returncode == 3, done.stderr
        launched = ecs.calls("RunTask")[-1]["params"]["taskDefinition"]
        assert f"/{family}:" in launched, (application, launched)
