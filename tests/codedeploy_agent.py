"""An emulator of the CodeDeploy agent's in-place deployment on Linux, for the pipeline tests.

It follows aws-codedeploy-agent 1.8.1 (github.com/aws/aws-codedeploy-agent), file by file:
- lib/instance_agent/plugins/codedeploy/installer.rb: Install first runs the deployment group's
  `<group-id>-cleanup` file, which lists every file and directory the previous revision installed,
  and so removes them; then it makes the missing ancestors of each destination, copies
  directories entry by entry and files one by one, applies file_exists_behavior (DISALLOW,
  OVERWRITE, RETAIN), and writes the new cleanup file.
- lib/instance_agent/plugins/codedeploy/install_instruction.rb: RemoveCommand deletes symlinks
  and files, and a directory only when it is empty; parse_remove_commands runs them in reverse
  order. CopyCommand copies with FileUtils.copy(preserve: true) (mode and times kept), a symlink
  as a symlink; MakeDirectoryCommand is a plain mkdir, so the agent's umask decides its mode.
- lib/instance_agent/plugins/codedeploy/hook_executor.rb: a hook is the script at its location in
  the deployment archive, made executable if it is not; it runs with the agent's environment plus
  LIFECYCLE_EVENT, DEPLOYMENT_ID, APPLICATION_NAME, DEPLOYMENT_GROUP_NAME and DEPLOYMENT_GROUP_ID,
  in its own process group, which gets SIGTERM when the hook's timeout (default 3600 s) passes.
  ApplicationStop, BeforeBlockTraffic and AfterBlockTraffic run the last successful revision's
  scripts; the others run this revision's. The first failing script fails the deployment.
- lib/instance_agent/platform/linux_util.rb: `runas: USER` runs `su USER -c SCRIPT`; without it
  the script runs as the agent's own user.
The agent is a daemon (Process.daemon), so its hooks start in `/`, with the agent's umask.

One departure, for tests: the appspec's absolute destinations are placed under `root`, a
directory that stands for `/`, and hooks get ECSBATCH_DEPLOY_PREFIX=root to find them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import yaml

EVENTS = ["ApplicationStop", "BeforeInstall", "Install", "AfterInstall", "ApplicationStart", "ValidateService"]
LAST_SUCCESSFUL = {"ApplicationStop", "BeforeBlockTraffic", "AfterBlockTraffic"}


class Deployment:
    def __init__(self, failed_event: Optional[str], log: List[str]) -> None:
        self.failed_event, self.log = failed_event, log

    @property
    def ok(self) -> bool:
        return self.failed_event is None

    @property
    def output(self) -> str:
        return "\n".join(self.log)


class Agent:
    def __init__(self, root: Path, home: Path, env: Dict[str, str], umask: int = 0o022) -> None:
        self.root, self.home, self.env, self.umask = root, home, env, umask
        self.instructions = home / "deployment-instructions"
        self.instructions.mkdir(parents=True, exist_ok=True)
        self.last_successful: Dict[str, Path] = {}
        self.count = 0

    def deploy(self, revision: Path, application: str, group: str, deployment_id: str = "") -> Deployment:
        self.count += 1
        deployment_id = deployment_id or f"d-EMU{self.count:06d}"
        group_id = f"{group}-id"
        deployment_root = self.home / "deployment-root" / group_id / deployment_id
        archive = deployment_root / "deployment-archive"
        if deployment_root.exists():  # the same deployment again (a retry): the agent unpacks afresh
            shutil.rmtree(deployment_root)
        shutil.copytree(revision, archive, symlinks=True)  # the unpacked bundle
        spec = yaml.safe_load((archive / "appspec.yml").read_text())
        env = dict(self.env, LIFECYCLE_EVENT="", DEPLOYMENT_ID=deployment_id, APPLICATION_NAME=application,
                   DEPLOYMENT_GROUP_NAME=group, DEPLOYMENT_GROUP_ID=group_id)
        log: List[str] = []
        for event in EVENTS:
            if event == "Install":
                try:
                    self.install(group_id, archive, spec)
                except (OSError, RuntimeError) as exc:
                    log.append(f"Install failed: {exc}")
                    return Deployment(event, log)
                continue
            source = self.last_successful.get(group_id) if event in LAST_SUCCESSFUL else archive
            if source is None:
                continue
            hooks = (yaml.safe_load((source / "appspec.yml").read_text()).get("hooks") or {}).get(event) or []
            for hook in hooks:
                if not self.run_hook(source, hook, dict(env, LIFECYCLE_EVENT=event), log):
                    return Deployment(event, log)
        self.last_successful[group_id] = archive
        return Deployment(None, log)

    # --- installer.rb and install_instruction.rb --------------------------------------------

    def place(self, destination: str) -> Path:
        return self.root / destination.lstrip("/")

    def install(self, group_id: str, archive: Path, spec: dict) -> None:
        cleanup = self.instructions / f"{group_id}-cleanup"
        if cleanup.exists():
            for line in reversed(cleanup.read_text().splitlines()):
                self.remove(Path(line.strip()))
            cleanup.unlink()
        behavior = spec.get("file_exists_behavior") or "DISALLOW"
        commands: List[tuple] = []
        made: set = set()

        def mkdir(path: Path) -> None:
            if path not in made:
                commands.append(("mkdir", path))
                made.add(path)

        def ancestors(path: Path) -> None:
            missing, parent = [], path.parent
            while not parent.exists() and parent != self.root and str(parent) not in (".", "/"):
                missing.insert(0, parent)
                parent = parent.parent
            for directory in missing:
                mkdir(directory)

        def copy(source: Path, destination: Path) -> None:
            if destination.exists() or destination.is_symlink():
                if behavior == "DISALLOW":
                    raise RuntimeError(f"a specified file already exists at this location: {destination}")
                if behavior == "RETAIN":
                    return
            commands.append(("copy", source, destination))

        def copy_directory(source: Path, destination: Path) -> None:
            if not destination.is_dir():
                mkdir(destination)
            for entry in sorted(os.listdir(source)):
                if (source / entry).is_dir() and not (source / entry).is_symlink():
                    copy_directory(source / entry, destination / entry)
                else:
                    copy(source / entry, destination / entry)

        for entry in spec.get("files") or []:
            source = archive / entry["source"]
            destination = self.place(entry["destination"])
            if source.is_dir():
                ancestors(destination)
                copy_directory(source, destination)
            else:
                ancestors(destination / source.name)
                copy(source, destination / source.name)

        old_umask = os.umask(self.umask)
        try:
            with cleanup.open("w") as record:
                for command in commands:
                    if command[0] == "mkdir":
                        command[1].mkdir()
                        record.write(f"{command[1]}\n")
                    else:
                        _, source, destination = command
                        record.write(f"{destination}\n")
                        if destination.is_symlink() or destination.is_file():
                            destination.unlink()
                        if source.is_symlink():
                            os.symlink(os.readlink(source), destination)
                        else:
                            shutil.copy2(source, destination)
        finally:
            os.umask(old_umask)

    @staticmethod
    def remove(path: Path) -> None:
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.exists():
            path.unlink()

    # --- hook_executor.rb and linux_util.rb -------------------------------------------------

    def run_hook(self, archive: Path, hook: dict, env: Dict[str, str], log: List[str]) -> bool:
        script = archive / hook["location"]
        if not script.is_file():
            log.append(f"Script does not exist at specified location: {hook['location']}")
            return False
        if not os.access(script, os.X_OK):
            script.chmod(script.stat().st_mode | 0o111)
        command = ["su", hook["runas"], "-c", str(script)] if hook.get("runas") else [str(script)]
        timeout = int(hook.get("timeout") or 3600)
        log.append(f"LifecycleEvent - {env['LIFECYCLE_EVENT']}\nScript - {hook['location']}")
        process = subprocess.Popen(command, env=env, cwd="/", umask=self.umask, start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            out, err = process.communicate()
            log.append(f"Script at specified location: {hook['location']} failed to complete in {timeout} seconds")
            return False
        log += [f"[stdout]{line}" for line in out.splitlines()] + [f"[stderr]{line}" for line in err.splitlines()]
        if process.returncode != 0:
            log.append(f"Script at specified location: {hook['location']} failed with exit code {process.returncode}")
            return False
        return True
