"""The pipeline, rehearsed: buildspec.yml's own commands, then CodeDeploy's lifecycle per appspec.yml.

The build runs the commands read from buildspec.yml, in one bash shell as CodeBuild 0.2 does, in a
copy of the repository, with `docker` and `aws` as recording shims and ECS at the local endpoint.
The deploy copies the files as appspec.yml maps them under a temporary root, runs the hooks in
lifecycle order with CodeDeploy's variables and the package index switched off, and then runs the
installed ecsbatch.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, Plan, run_cli

SHA = "abcdef1234567890abcdef1234567890abcdef12"
TAG = SHA[:7]
BUILD_VARIABLES = {
    "AWS_ACCOUNT_ID": "123456789012", "ECR_REPOSITORY": "batch-job", "STAGE": "test",
    "TASK_ROLE_NAME": "batch-task", "EXECUTION_ROLE_NAME": "ecsTaskExecutionRole", "FLUENTD_HOST": "fluentd.internal",
    # The rehearsal's "batch server" is this machine, so the wheelhouse is built for its Python.
    "BATCH_SERVER_PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}",
    "BATCH_SERVER_PLATFORM": f"manylinux2014_{platform.machine()}",
}
LIFECYCLE = ["ApplicationStop", "BeforeInstall", "Install", "AfterInstall", "ApplicationStart", "ValidateService"]
SHIM = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "$SHIM_LOG"
case "$(basename "$0") $1" in
  "aws ecr") echo fake-ecr-password ;;
  "docker login") read -r password; [ "$password" = fake-ecr-password ] || exit 1 ;;
  "docker $SHIM_FAIL") echo "shim: docker $1 failed" >&2; exit 1 ;;
esac
"""


def copy_repository(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info",
                                    "build", "release_to_batch_server*", "bench/results")
    shutil.copytree(REPO, target, ignore=ignore)
    return target


def buildspec_script(buildspec: dict) -> str:
    """The buildspec as one bash script: CodeBuild 0.2 runs every command in one shell and stops
    at the first that fails. Project variables win over the buildspec's defaults."""
    lines = [f'export {name}="${{{name}:-{value}}}"' for name, value in buildspec["env"]["variables"].items()]
    for phase in ("install", "pre_build", "build", "post_build"):
        for command in buildspec["phases"].get(phase, {}).get("commands", []):
            lines.append(command)
            lines.append(f'rc=$?; if [ $rc -ne 0 ]; then echo "[Container] {phase} command failed: "'
                         f'{shlex.quote(command)} >&2; exit $rc; fi')
    return "\n".join(lines) + "\n"


class Build:
    def __init__(self, ecs, network, root: Path, fail: str = "") -> None:
        self.source = copy_repository(root / "src")
        shims = root / "shims"
        shims.mkdir()
        for name in ("docker", "aws"):
            (shims / name).write_text(SHIM)
            (shims / name).chmod(0o755)
        self.log = root / "shim.log"
        self.family = f"pipeline-{root.name[-6:]}"
        self.env = dict(os.environ, **ecs.client_env(), **network, **BUILD_VARIABLES,
                        TASK_FAMILY=self.family, CODEBUILD_RESOLVED_SOURCE_VERSION=SHA,
                        CODEBUILD_SRC_DIR=str(self.source), SHIM_LOG=str(self.log), SHIM_FAIL=fail,
                        PATH=f"{shims}{os.pathsep}{os.environ['PATH']}")
        self.env.pop("VIRTUAL_ENV", None)
        script = buildspec_script(yaml.safe_load((self.source / "buildspec.yml").read_text()))
        done = subprocess.run(["bash", "-c", script], cwd=self.source, env=self.env, capture_output=True,
                              text=True, timeout=900)
        self.code, self.output = done.returncode, done.stdout + done.stderr
        self.release = self.source / "release_to_batch_server"

    def shim_calls(self) -> list:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture(scope="module")
def build(ecs, network, tmp_path_factory):
    return Build(ecs, network, tmp_path_factory.mktemp("build"))


def test_build_tags_builds_pushes_and_registers(build, ecs):
    assert build.code == 0, build.output
    image = f"123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/batch-job:{TAG}"
    calls = build.shim_calls()
    assert "aws ecr get-login-password --region ap-northeast-1" in calls
    assert "docker login --username AWS --password-stdin 123456789012.dkr.ecr.ap-northeast-1.amazonaws.com" in calls
    assert f"docker build --tag {image} examples/batch-job" in calls
    assert f"docker push {image}" in calls
    assert calls.index(f"docker build --tag {image} examples/batch-job") < calls.index(f"docker push {image}")
    definition = ecs.client("ecs").describe_task_definition(taskDefinition=build.family)["taskDefinition"]
    assert definition["containerDefinitions"][0]["image"] == image


def test_release_holds_exactly_what_appspec_names(build):
    appspec = yaml.safe_load((build.release / "appspec.yml").read_text())
    named = {"appspec.yml"} | {hook["location"] for hooks in appspec["hooks"].values() for hook in hooks}
    for entry in appspec["files"]:
        source = build.release / entry["source"]
        assert source.exists(), entry
        named |= {str(p.relative_to(build.release)) for p in ([source] if source.is_file() else source.rglob("*"))
                  if p.is_file()}
    present = {str(p.relative_to(build.release)) for p in build.release.rglob("*") if p.is_file()}
    assert present == named
    wheels = {p.name.split("-")[0].lower() for p in (build.release / "wheelhouse").glob("*.whl")}
    assert {"ecsbatch", "boto3", "botocore", "click", "pyyaml"} <= wheels
    assert not list(build.source.glob("release_to_batch_server.partial*"))


def test_release_run_task_is_pinned_and_rendered(build, ecs, network):
    request = yaml.safe_load((build.release / "run-task.yaml").read_text())
    definition = ecs.client("ecs").describe_task_definition(taskDefinition=build.family)["taskDefinition"]
    assert request["taskDefinition"] == f"{build.family}:{definition['revision']}"
    assert request["cluster"] == network["ECS_CLUSTER"]
    assert "${" not in (build.release / "run-task.yaml").read_text()
    # The repository's copy keeps its comments; only taskDefinition changed.
    pinned = (build.source / "run-task.yaml").read_text()
    assert pinned == (REPO / "run-task.yaml").read_text().replace(
        "taskDefinition: ${TASK_FAMILY}", f"taskDefinition: {build.family}:{definition['revision']}")


def test_a_failed_push_fails_fast_and_assembles_nothing(ecs, network, tmp_path):
    failed = Build(ecs, network, tmp_path, fail="push")
    assert failed.code != 0
    assert "build command failed" in failed.output and "docker push" in failed.output
    assert not failed.release.exists()
    assert not list(failed.source.glob("release_to_batch_server*"))
    assert not ecs.client("ecs").list_task_definitions(familyPrefix=failed.family)["taskDefinitionArns"]


# --- CodeDeploy ----------------------------------------------------------------------------------


class Server:
    """A batch server under a temporary root, deployed to as CodeDeploy would."""

    def __init__(self, root: Path, ecs) -> None:
        self.root = root
        self.home = root / "opt" / "ecsbatch"
        self.ecs = ecs
        self.deployments = 0

    def deploy(self, release: Path, **extra_env: str) -> subprocess.CompletedProcess:
        self.deployments += 1
        appspec = yaml.safe_load((release / "appspec.yml").read_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(ECSBATCH_ROOT=str(self.home), ECSBATCH_PYTHON=sys.executable, PIP_NO_INDEX="1",
                   DEPLOYMENT_ID=f"d-TEST{self.deployments:05d}", APPLICATION_NAME="ecsbatch",
                   DEPLOYMENT_GROUP_NAME="batch-server-test", **extra_env)
        output = ""
        for event in LIFECYCLE:
            if event == "Install":
                self._copy_files(release, appspec["files"])
                continue
            for hook in appspec.get("hooks", {}).get(event, []):
                done = subprocess.run(["bash", str(release / hook["location"])], env=dict(env, LIFECYCLE_EVENT=event),
                                      capture_output=True, text=True, timeout=hook.get("timeout", 3600), cwd=release)
                output += done.stdout + done.stderr
                if done.returncode != 0:
                    return subprocess.CompletedProcess(event, done.returncode, output, "")
        return subprocess.CompletedProcess("deploy", 0, output, "")

    def _copy_files(self, release: Path, files: list) -> None:
        for entry in files:
            source, destination = release / entry["source"], self.root / entry["destination"].lstrip("/")
            destination.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, destination, dirs_exist_ok=True)
            else:
                shutil.copy2(source, destination / source.name)

    @property
    def ecsbatch(self) -> str:
        return str(self.home / "current" / "venv" / "bin" / "ecsbatch")

    def releases(self) -> list:
        return sorted(p.name for p in (self.home / "releases").iterdir())

    def current(self) -> str:
        return os.readlink(self.home / "current")


def test_deploy_installs_offline_and_runs_exactly_the_pinned_revision(build, ecs, tmp_path):
    server = Server(tmp_path, ecs)
    deployed = server.deploy(build.release)
    assert deployed.returncode == 0, deployed.stdout
    assert "ValidateService" not in deployed.args
    definition = ecs.client("ecs").describe_task_definition(taskDefinition=build.family)["taskDefinition"]
    env = dict(os.environ, **ecs.client_env())
    result = subprocess.run([server.ecsbatch, "run", "-f", str(server.home / "current" / "run-task.yaml"),
                             "--poll-interval", "0.2", "--", "exit", "4"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 4, result.stderr
    launched = [t for t in ecs.tasks() if t.task_definition_arn == definition["taskDefinitionArn"]]
    assert len(launched) == 1


def test_redeploy_switches_atomically_and_a_running_job_finishes(build, ecs, tmp_path):
    server = Server(tmp_path, ecs)
    assert server.deploy(build.release).returncode == 0
    first = server.current()
    env = dict(os.environ, **ecs.client_env())
    ecs.plans.append(Plan(running=30, exit_code=6))
    old_job = subprocess.Popen([server.ecsbatch, "run", "-f", str(server.home / "current" / "run-task.yaml"),
                                "--poll-interval", "0.2", "--", "exit", "6"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)

    seen, watching = set(), True

    def watch_current() -> None:
        while watching:
            target = server.home / "current"
            assert (target / "venv" / "bin" / "ecsbatch").exists(), "current pointed at an incomplete release"
            seen.add(os.readlink(target))

    watcher = threading.Thread(target=watch_current)
    watcher.start()
    try:
        assert server.deploy(build.release).returncode == 0
    finally:
        watching = False
        watcher.join()
    second = server.current()
    assert first != second and seen <= {first, second}
    assert len(server.releases()) == 2, "the previous release stays for rollback"
    out, err = old_job.communicate(timeout=120)
    assert old_job.returncode == 6, err


def test_a_failed_install_leaves_current_untouched(build, ecs, tmp_path):
    server = Server(tmp_path, ecs)
    assert server.deploy(build.release).returncode == 0
    before, releases = server.current(), server.releases()
    broken = tmp_path / "broken-release"
    shutil.copytree(build.release, broken)
    for wheel in (broken / "wheelhouse").glob("ecsbatch-*.whl"):
        wheel.unlink()
    failed = server.deploy(broken)
    assert failed.returncode != 0 and failed.args == "AfterInstall"
    assert "current is unchanged" in failed.stdout
    assert server.current() == before and server.releases() == releases


def test_old_releases_are_pruned_to_the_last_n(build, ecs, tmp_path):
    server = Server(tmp_path, ecs)
    for _ in range(3):
        assert server.deploy(build.release, ECSBATCH_KEEP_RELEASES="2").returncode == 0
    assert len(server.releases()) == 2
    assert server.current() == f"releases/{server.releases()[-1]}"


def test_validate_service_fails_a_bad_deploy(build, ecs, tmp_path):
    server = Server(tmp_path, ecs)
    bad = tmp_path / "bad-release"
    shutil.copytree(build.release, bad)
    (bad / "run-task.yaml").write_text("clustr: batch\ntaskDefinition: x\n")
    failed = server.deploy(bad)
    assert failed.returncode != 0
    assert "unknown key 'clustr'" in failed.stdout
    assert not (server.home / "current").exists()


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


def test_buildspec_uses_only_documented_keys():
    spec = yaml.safe_load((REPO / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    assert set(spec) <= BUILDSPEC_KEYS
    assert set(spec["env"]) <= BUILDSPEC_ENV_KEYS and spec["env"]["shell"] == "bash"
    assert all(isinstance(v, str) for v in spec["env"]["variables"].values())
    assert set(spec["phases"]) <= BUILDSPEC_PHASES
    for phase in spec["phases"].values():
        assert set(phase) <= BUILDSPEC_PHASE_KEYS
        assert all(isinstance(command, str) for command in phase["commands"])
    assert set(spec["artifacts"]) <= BUILDSPEC_ARTIFACT_KEYS
    assert spec["artifacts"]["base-directory"] == "release_to_batch_server"


def test_appspec_uses_only_documented_keys():
    spec = yaml.safe_load((REPO / "appspec.yml").read_text())
    assert spec["version"] == 0.0 and spec["os"] == "linux"
    assert set(spec) <= APPSPEC_KEYS
    assert spec["file_exists_behavior"] in {"DISALLOW", "OVERWRITE", "RETAIN"}
    for entry in spec["files"]:
        assert set(entry) == {"source", "destination"} and entry["destination"].startswith("/")
    assert set(spec["hooks"]) <= APPSPEC_EC2_EVENTS
    for hooks in spec["hooks"].values():
        for hook in hooks:
            assert set(hook) <= {"location", "timeout", "runas"}
            assert 0 < hook["timeout"] <= 3600
            assert (REPO / hook["location"]).is_file()


def test_shell_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    scripts = sorted(str(p) for p in list((REPO / "deploy").rglob("*.sh")) + [REPO / "bench" / "start-ECS.sh"])
    done = subprocess.run([shellcheck, "--severity=style"] + scripts, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_installed_ecsbatch_version(build, ecs, tmp_path):
    server = Server(tmp_path, ecs)
    assert server.deploy(build.release).returncode == 0
    result = run_cli(["--version"], dict(os.environ))
    installed = subprocess.run([server.ecsbatch, "--version"], capture_output=True, text=True)
    assert installed.stdout == result.stdout
