"""Support for the pipeline rehearsals: a CodeBuild runner, docker/aws shims, a batch server.

The build runs the commands read from buildspec.yml, in one bash shell as CodeBuild 0.2 does (its
variables persist from command to command, and the first failing command ends the build), in a
copy of the repository, with `docker` and `aws` as recording shims and ECS at the local endpoint.
The shims give the local image id and the registry's manifest digest different values, so that a
build that registers the wrong one fails its test.

The batch server is a directory standing for `/`, deployed to by tests/codedeploy_agent.py, whose
python3 is a real interpreter of the target version (found under pyenv, or as python3.X on PATH).
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

import pytest
import yaml

from codedeploy_agent import Agent
from conftest import REPO

SHA = "abcdef1234567890abcdef1234567890abcdef12"
TAG = SHA[:7]
JOB_USER = "ecsbatch-job"
BUILD_VARIABLES = {
    "AWS_ACCOUNT_ID": "123456789012", "ECR_REPOSITORY": "batch-job", "STAGE": "test", "APPLICATION_NAME": "nightly",
    "TASK_ROLE_NAME": "batch-task", "EXECUTION_ROLE_NAME": "ecsTaskExecutionRole", "FLUENTD_HOST": "fluentd.internal",
    "BATCH_SERVER_PLATFORM": f"manylinux2014_{platform.machine()}",
}
REPOSITORY = "123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/batch-job"

SHIM = r'''#!PYTHON
import hashlib, json, os, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(" ".join([name] + args) + "\n")
path = os.environ["SHIM_STATE"]
state = json.load(open(path)) if os.path.exists(path) else {"built": {}, "pushed": {}}
def digest(kind, ref):
    return "sha256:" + hashlib.sha256(f"{kind}:{ref}".encode()).hexdigest()
def option(flag):
    return args[args.index(flag) + 1]
if name == "docker" and args[0] == os.environ.get("SHIM_FAIL"):
    sys.exit(f"shim: docker {args[0]} failed")
if args[:2] == ["ecr", "get-login-password"]:
    print("fake-ecr-password")
elif args[:2] == ["ecr", "describe-images"]:
    tag = option("--image-ids").split("=", 1)[1]
    key = option("--repository-name") + ":" + tag
    if key not in state["pushed"]:
        sys.exit("An error occurred (ImageNotFoundException) when calling the DescribeImages operation: "
                 f"The image with imageId {{imageDigest:'null', imageTag:'{tag}'}} does not exist")
    print(state["pushed"][key])
elif name == "docker" and args[0] == "login":
    if sys.stdin.readline().strip() != "fake-ecr-password":
        sys.exit(1)
elif name == "docker" and args[0] == "build":
    ref = option("--tag")
    state["built"][ref] = digest("local-image-id", ref)
    if "--iidfile" in args:
        open(option("--iidfile"), "w").write(state["built"][ref])
    print("Successfully built " + state["built"][ref][7:19])
elif name == "docker" and args[0] == "push":
    ref = args[1]
    if ref not in state["built"]:
        sys.exit("An image does not exist locally with the tag: " + ref)
    manifest = digest("registry-manifest", ref)
    state["pushed"][ref.rsplit("/", 1)[1]] = manifest
    print(ref.rsplit(":", 1)[1] + ": digest: " + manifest + " size: 1570")
elif name == "docker" and args[0] == "inspect":
    print(state["built"].get(args[-1], ""))
if name == "docker" and args[0] in ("build", "push"):
    json.dump(state, open(path + ".new", "w"))
    os.replace(path + ".new", path)
'''


def copy_repository(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", ".build-venv", ".release-build", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "*.egg-info", "build", "release_to_batch_server*", "bench/results")
    shutil.copytree(REPO, target, ignore=ignore)
    return target


def buildspec_script(buildspec: dict) -> str:
    """The buildspec as one bash script. Project variables win over the buildspec's defaults.
    runtime-versions is CodeBuild's to install: here the build runs on the test's own Python."""
    lines = [f'export {name}="${{{name}-{value}}}"' for name, value in buildspec["env"]["variables"].items()]
    for phase in ("install", "pre_build", "build", "post_build"):
        for command in buildspec["phases"].get(phase, {}).get("commands", []):
            lines.append(command)
            lines.append(f'rc=$?; if [ $rc -ne 0 ]; then echo "[Container] {phase} command failed: "'
                         f'{shlex.quote(command)} >&2; exit $rc; fi')
    return "\n".join(lines) + "\n"


class Build:
    def __init__(self, ecs, network, root: Path, target: str, fail: str = "", pushed: Optional[dict] = None,
                 edit=None, **variables: str) -> None:
        self.root = root
        self.source = copy_repository(root / "src")
        if edit:
            edit(self.source)
        shims = root / "shims"
        shims.mkdir()
        for name in ("docker", "aws"):
            (shims / name).write_text(SHIM.replace("PYTHON", sys.executable, 1))
            (shims / name).chmod(0o755)
        (shims / "python3").symlink_to(sys.executable)
        self.log, self.state = root / "shim.log", root / "shim-state.json"
        self.state.write_text(json.dumps({"built": {}, "pushed": dict(pushed or {})}))
        self.family = f"pipeline-{root.name[-8:]}"
        self.env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        self.env.update(ecs.client_env(), **network, **BUILD_VARIABLES, BATCH_SERVER_PYTHON=target,
                        TASK_FAMILY=self.family, CODEBUILD_RESOLVED_SOURCE_VERSION=SHA, CODEBUILD_SRC_DIR=str(self.source),
                        SHIM_LOG=str(self.log), SHIM_STATE=str(self.state), SHIM_FAIL=fail,
                        PATH=f"{shims}{os.pathsep}{os.environ['PATH']}")
        self.env.update(variables)
        self.run()

    def run(self) -> None:
        script = buildspec_script(yaml.safe_load((self.source / "buildspec.yml").read_text()))
        done = subprocess.run(["bash", "-c", script], cwd=self.source, env=self.env, capture_output=True, text=True,
                              timeout=900)
        self.code, self.output = done.returncode, done.stdout + done.stderr
        self.release = self.source / "release_to_batch_server"

    def assemble(self, out: str, **variables: str) -> Path:
        """The last build step again, for another application (the image and registration reused)."""
        env = dict(self.env, PATH=f"{self.source / '.build-venv' / 'bin'}{os.pathsep}{self.env['PATH']}", **variables)
        done = subprocess.run(["deploy/assemble-release.sh", out], cwd=self.source, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return self.source / out

    def shim_calls(self) -> list:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def manifest_digest(self) -> str:
        return json.loads(self.state.read_text())["pushed"][f"batch-job:{TAG}"]

    def local_image_id(self) -> str:
        return json.loads(self.state.read_text())["built"].get(f"{REPOSITORY}:{TAG}", "")


# --- the batch server --------------------------------------------------------------------------


def find_python(version: str) -> Path:
    """The installation prefix of a real CPython `version`: under pyenv, else python3.X on PATH.
    In CI a missing one fails the test instead of skipping it."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = []
    if pyenv.is_dir():
        candidates += [str(p / "bin" / f"python{version}") for p in sorted(pyenv.iterdir(), reverse=True)
                       if p.name.startswith(f"{version}.")]
    candidates.append(shutil.which(f"python{version}"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            done = subprocess.run([candidate, "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                                  text=True)
            if done.returncode == 0:
                return Path(done.stdout.strip())
    message = f"no Python {version} on this machine (python{version} on PATH, or under pyenv)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def world_readable_python(prefix: Path, into: Path) -> Path:
    """The interpreter's installation, hard-linked under `into`, so that a non-root user can run it
    (pyenv's lives under root's home). Returns its bin directory."""
    copy = into / prefix.name
    subprocess.run(["cp", "-al", str(prefix), str(copy)], check=True)
    for directory, _, _ in os.walk(copy):
        os.chmod(directory, 0o755)
    return copy / "bin"


def ensure_job_user() -> Optional[str]:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", JOB_USER],
                       capture_output=True)
    pwd.getpwnam(JOB_USER)
    return JOB_USER


class Server:
    """A batch server: `root` stands for `/`; its python3 is a real Python of the target version."""

    def __init__(self, root: Path, python_bin: Path, umask: int = 0o022, job_user: Optional[str] = None) -> None:
        self.root = root
        # python3 on PATH is the installation's own, as /usr/bin/python3 is on a server: a venv's
        # `home` must lie in the prefix that holds the standard library.
        self.bin = python_bin
        root.mkdir(parents=True, exist_ok=True)
        self.library_path = str(python_bin.parent / "lib")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "AWS_", "PYTHON"))}
        env.update(PATH=f"{self.bin}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin", PIP_NO_INDEX="1",
                   PIP_CONFIG_FILE="/dev/null", ECSBATCH_DEPLOY_PREFIX=str(root), LD_LIBRARY_PATH=self.library_path)
        self.agent = Agent(root, root / "var-codedeploy", env, umask=umask)
        self.job_user = job_user

    def configure(self, application: str, **settings: str) -> None:
        config = self.root / "etc" / "ecsbatch"
        config.mkdir(parents=True, exist_ok=True)
        (config / f"{application}.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))

    def deploy(self, release: Path, application: str = "nightly", group: str = "batch-test", deployment_id: str = ""):
        return self.agent.deploy(release, application=application, group=group, deployment_id=deployment_id)

    def home(self, application: str = "nightly") -> Path:
        return self.root / "opt" / "ecsbatch" / application

    def releases(self, application: str = "nightly") -> list:
        return sorted(p.name for p in (self.home(application) / "releases").iterdir())

    def current(self, application: str = "nightly") -> str:
        return os.readlink(self.home(application) / "current")

    def job(self, args: list, ecs, extra_env: Optional[Dict[str, str]] = None, as_user: bool = True,
            **popen) -> subprocess.Popen:
        """A Hinemos job: `args` run as the jobs' user, with a job's environment."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LD_LIBRARY_PATH": self.library_path, **ecs.client_env()}
        env.update(extra_env or {})
        runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
        prefix = [runuser, "-u", self.job_user, "--"] if as_user and self.job_user else []
        return subprocess.Popen(prefix + args, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **popen)

    def run_job(self, args: list, ecs, **kwargs) -> subprocess.CompletedProcess:
        process = self.job(args, ecs, **kwargs)
        out, err = process.communicate(timeout=120)
        return subprocess.CompletedProcess(args, process.returncode, out, err)


def server_root() -> Path:
    """A directory any user can traverse (pytest's own temporary directories are root-only)."""
    root = Path(tempfile.mkdtemp(prefix="ecsbatch-server-"))
    root.chmod(0o755)
    return root
