"""The pipeline's files and build steps, checked without a batch server.

The full rehearsals (a build for one Python, deployed by an emulated CodeDeploy agent onto a real
interpreter of that version) are in test_pipeline_rehearsal_py39.py and _py311.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ecsbatch
from conftest import REPO
from pipeline_support import Build, copy_repository

sys.path.insert(0, str(REPO / "deploy"))
import release  # noqa: E402  (deploy/release.py)

# --- The files themselves ----------------------------------------------------------------------
# No maintained schema for buildspec or appspec files is published on the package registries, so
# these check the keys that CodeBuild's and CodeDeploy's references document.

BUILDSPEC_KEYS = {"version", "run-as", "env", "proxy", "batch", "phases", "reports", "artifacts", "cache"}
BUILDSPEC_ENV_KEYS = {"shell", "variables", "parameter-store", "exported-variables", "secrets-manager",
                      "git-credential-helper"}
BUILDSPEC_PHASES = {"install", "pre_build", "build", "post_build"}
BUILDSPEC_PHASE_KEYS = {"run-as", "on-failure", "runtime-versions", "commands", "finally"}
BUILDSPEC_ARTIFACT_KEYS = {"files", "name", "discard-paths", "base-directory", "exclude-paths", "enable-symlinks",
                           "s3-prefix", "secondary-artifacts"}
APPSPEC_KEYS = {"version", "os", "files", "permissions", "hooks", "file_exists_behavior"}
APPSPEC_EC2_EVENTS = {"ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService",
                      "BeforeBlockTraffic", "AfterBlockTraffic", "BeforeAllowTraffic", "AfterAllowTraffic"}


def test_buildspec_uses_only_documented_keys_and_pins_its_runtime():
    spec = yaml.safe_load((REPO / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    assert set(spec) <= BUILDSPEC_KEYS
    assert set(spec["env"]) <= BUILDSPEC_ENV_KEYS and spec["env"]["shell"] == "bash"
    assert all(isinstance(v, str) for v in spec["env"]["variables"].values())
    assert set(spec["phases"]) <= BUILDSPEC_PHASES
    for phase in spec["phases"].values():
        assert set(phase) <= BUILDSPEC_PHASE_KEYS
        assert all(isinstance(command, str) for command in phase["commands"])
    assert re.fullmatch(r"3\.\d+", spec["phases"]["install"]["runtime-versions"]["python"])
    assert spec["artifacts"]["base-directory"] == "release_to_batch_server"
    commands = [c for phase in spec["phases"].values() for c in phase["commands"]]
    preflight = next(i for i, c in enumerate(commands) if "deploy/preflight.sh" in c)
    image = next(i for i, c in enumerate(commands) if "push-image.sh" in c or "docker build" in c)
    assert preflight < image


def test_appspec_uses_only_documented_keys_one_root_per_application_and_no_runas():
    spec = yaml.safe_load((REPO / "appspec.yml").read_text())
    assert spec["version"] == 0.0 and spec["os"] == "linux"
    assert set(spec) <= APPSPEC_KEYS
    assert spec["file_exists_behavior"] in {"DISALLOW", "OVERWRITE", "RETAIN"}
    for entry in spec["files"]:
        assert set(entry) == {"source", "destination"}
        assert entry["destination"].startswith("/opt/ecsbatch/${APPLICATION_NAME}/staging")
    assert set(spec["hooks"]) <= APPSPEC_EC2_EVENTS
    for hooks in spec["hooks"].values():
        for hook in hooks:
            assert set(hook) <= {"location", "timeout"}
            assert 0 < hook["timeout"] <= 3600
            assert (REPO / hook["location"]).is_file()


def test_shell_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    scripts = sorted(str(p) for p in list((REPO / "deploy").rglob("*.sh")) + [REPO / "bench" / "start-ECS.sh"])
    done = subprocess.run([shellcheck, "--severity=style", "-x"] + scripts, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


# --- Render once -------------------------------------------------------------------------------


@pytest.mark.parametrize("rendered", [
    "${HOME}/out", "${TARGET_DATE}", "$${", "$$${X}", "$", "a$b", "${", "$}", "100$", "${A}${B}$${C}", "plain",
])
def test_the_released_run_file_renders_back_to_the_builds_rendering(rendered):
    escaped = release.escape({"value": rendered, "list": [rendered]})
    assert ecsbatch.render_template(escaped, {"HOME": "/home/hinemos", "X": "x", "A": "a"}, "t") == {
        "value": rendered, "list": [rendered]}


def test_placeholders_are_read_from_values_not_comments(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("# ${IN_COMMENT}\na: ${ONE}-$${LITERAL}\nb: [x, '${TWO}']\n")
    assert release.placeholders(str(path)) == ["ONE", "TWO"]


# --- Locks -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO)],
                   check=True, capture_output=True)
    return str(next(out.glob("ecsbatch-*.whl")))


@pytest.mark.parametrize("version", ["3.9", "3.11"])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_each_lock_matches_pyproject_and_pins_with_hashes(wheel, version, arch):
    lock = REPO / "deploy" / "locks" / f"py{version}-{arch}.txt"
    release.check_lock(wheel, str(lock))
    pins = re.findall(r"^([a-z0-9_.-]+)==(\S+) \\$", lock.read_text(), flags=re.M)
    assert {"boto3", "botocore", "click", "pyyaml", "urllib3"} <= {name for name, _ in pins}
    assert lock.read_text().count("--hash=sha256:") >= len(pins)
    urllib3 = dict(pins)["urllib3"]
    assert urllib3.startswith("1.26.") if version == "3.9" else not urllib3.startswith("1.")


def test_a_stale_lock_fails_the_build_before_anything_is_built(tmp_path):
    source = copy_repository(tmp_path / "src")
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"click>=8.0",', '"click>=8.0",\n    "requests>=2",'))
    env = dict(os.environ, TAG="abcdef1", APPLICATION_NAME="nightly", AWS_ACCOUNT_ID="1", AWS_REGION="r",
               ECR_REPOSITORY="e", BATCH_SERVER_PYTHON="3.9", BATCH_SERVER_PLATFORM="manylinux2014_x86_64",
               IMAGE_CONTEXT="c", ECS_CLUSTER="c", TASK_FAMILY="f", SUBNET_ID="s", SECURITY_GROUP_ID="g", STAGE="t",
               TASK_ROLE_NAME="r", EXECUTION_ROLE_NAME="e", FLUENTD_HOST="h", PYTHON=sys.executable,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["deploy/preflight.sh"], cwd=source, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "deploy/locks/py3.9-" in done.stderr and "run deploy/refresh-locks.sh" in done.stderr, done.stderr


# --- Failing builds ----------------------------------------------------------------------------


def test_an_empty_variable_fails_the_build_before_docker(ecs, network, tmp_path):
    failed = Build(ecs, network, tmp_path, "3.9", STAGE="", FLUENTD_HOST="")
    assert failed.code != 0
    assert "set these build variables, each non-empty: " in failed.output
    line = next(l for l in failed.output.splitlines() if "each non-empty" in l)
    assert "STAGE" in line and "FLUENTD_HOST" in line
    assert not [c for c in failed.shim_calls() if c.startswith("docker")]
    assert not failed.release.exists()


def test_a_failed_push_fails_fast_and_assembles_nothing(ecs, network, tmp_path):
    failed = Build(ecs, network, tmp_path, "3.9", fail="push")
    assert failed.code != 0
    assert "build command failed" in failed.output and "push-image.sh" in failed.output
    assert not failed.release.exists()
    assert not list(failed.source.glob("release_to_batch_server*"))
    assert not ecs.client("ecs").list_task_definitions(familyPrefix=failed.family)["taskDefinitionArns"]


def test_the_shim_says_so_when_nothing_is_installed(tmp_path):
    shim = tmp_path / "start-ECS.sh"
    shim.write_text((REPO / "deploy" / "start-ECS.sh").read_text().replace("root=/opt/ecsbatch/APPLICATION",
                                                                          f"root={tmp_path}/none"))
    done = subprocess.run(["bash", str(shim)], capture_output=True, text=True)
    assert done.returncode == 125
    assert done.stderr.count("\n") == 1 and "no ecsbatch release is installed" in done.stderr
