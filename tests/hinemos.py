"""A Hinemos agent, as far as a command job can tell, for running ecsbatch the way production does.

It follows the hinemos/hinemos sources (7.x):

- ``HinemosCommon/src/com/clustercontrol/util/CommandCreator.java``: a command job runs as
  ``sh -c COMMAND`` (``sudo -u USER [-i] sh -c COMMAND`` with an effective user). ``sh`` is
  whatever /bin/sh is: dash on Debian and Ubuntu, bash on Amazon Linux and RHEL. The emulator
  runs the shell it is given under the name ``sh``, as the agent does.
- ``HinemosWorkers/src_agent/com/clustercontrol/agent/job/CommandThread.java`` starts it through
  ``HinemosWorkers/src_agent/com/clustercontrol/agent/util/JobCommandExecutor.java`` (the twin of
  ``HinemosCommon/src/com/clustercontrol/util/CommandExecutor.java``): stdout and stderr are read
  concurrently until EOF, and only the FIRST ``bufferSize`` bytes of each are kept (the agent logs
  "discarding command's output" for the rest). The kept bytes are decoded with
  ``job.stream.charset``, else the JVM's ``file.encoding`` (``new String(bytes, charset)``: a
  malformed or cut sequence becomes U+FFFD). The end value is ``Process.waitFor()``: the exit
  status, or 128+N after signal N.
- ``HinemosWorkers/src_agent/com/clustercontrol/agent/job/AgentThread.java``: ``bufferSize`` is
  ``job.message.length`` from Agent.properties, ``m_limit_jobmsg = 1024`` by default.
- ``HinemosManager/src_jobmanagement/com/clustercontrol/jobmanagement/factory/JobSessionNodeImpl.java``:
  the manager stores ``"stdout=" + stdout + ", stderr=" + stderr`` behind a ``[yyyy/MM/dd HH:mm:ss] ``
  header, without one trailing newline, and cuts the whole to ``job_message_max_length``
  characters (``HinemosPropertyCommon.java``: 2,048), counted as Java chars (UTF-16 units). A job
  variable "from stdout" is ``Pattern.compile(regex).matcher(stdout).find()`` and ``group(1)``.
- ``HinemosWorkers/src_agent/com/clustercontrol/agent/job/DeleteProcessThread.java``: stop type
  プロセスの終了 is ``Process.destroy()``, SIGTERM to the direct child only (or ``kill -15`` to
  the children of sudo): never the process group, never SIGKILL.
- ``HinemosManager/src_jobmanagement/com/clustercontrol/jobmanagement/factory/OperateStopOfJob.java``:
  stop type コマンド runs the job's stop command with job variables expanded
  (``ParameterUtil.replaceAllSessionParameterValue``); nothing kills the original process, whose
  own exit status becomes the end value.

The module also holds the CloudWatch Logs helpers that the scenarios write their logs with.
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import threading
import time
from typing import Dict, List, Mapping, Optional

MESSAGE_LENGTH = 1024  # job.message.length
MESSAGE_MAX_LENGTH = 2048  # job_message_max_length
READ_CHUNK = 1024  # JobCommandExecutor reads in arrays of this size


def expand_variables(text: str, variables: Mapping[str, str]) -> str:
    """#[NAME] -> its value, as the manager does before the agent sees a command."""
    return re.sub(r"#\[([A-Z0-9_]+)\]", lambda m: variables[m.group(1)], text)


def java_string_cut(text: str, length: int) -> str:
    """String.substring(0, length): `length` UTF-16 units, not characters."""
    units = text.encode("utf-16-le")
    if len(units) <= 2 * length:
        return text
    return units[: 2 * length].decode("utf-16-le", errors="ignore")


class StreamHead:
    """One of the agent's StreamReaders: reads to EOF and keeps the first `limit` bytes."""

    def __init__(self, stream, limit: int) -> None:
        self.stream, self.limit = stream, limit
        self.head = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            chunk = self.stream.read1(READ_CHUNK) if hasattr(self.stream, "read1") else self.stream.read(READ_CHUNK)
            if not chunk:
                break
            if len(self.head) < self.limit:
                self.head += chunk[: self.limit - len(self.head)]
            self.total += len(chunk)
        self.stream.close()

    @property
    def discarded(self) -> bool:
        return self.total > self.limit


class JobResult:
    """What the agent sends the manager, and what the manager keeps."""

    def __init__(self, end_value: int, stdout_bytes: bytes, stderr_bytes: bytes, charset: str,
                 discarded: Dict[str, bool], totals: Dict[str, int], max_length: int) -> None:
        self.end_value = end_value
        self.stdout_bytes, self.stderr_bytes = stdout_bytes, stderr_bytes
        self.stdout = stdout_bytes.decode(charset, errors="replace")
        self.stderr = stderr_bytes.decode(charset, errors="replace")
        self.discarded, self.totals = discarded, totals
        header = "[" + datetime.datetime.now().strftime("%Y/%m/%d %H:%M:%S") + "] "
        new_message = re.sub(r"\r?\n$", "", f"stdout={self.stdout}, stderr={self.stderr}")
        self.message = java_string_cut(header + new_message, max_length)

    def job_variable(self, regex: str) -> Optional[str]:
        """A job variable set from stdout by a regular expression: group 1 of the first match."""
        match = re.search(regex, self.stdout)
        return match.group(1) if match else None

    def __repr__(self) -> str:
        return (f"JobResult(end_value={self.end_value}, stdout={self.stdout!r}, stderr={self.stderr!r}, "
                f"totals={self.totals})")


class CommandJob:
    """One running command job."""

    def __init__(self, agent: "HinemosAgent", command: str) -> None:
        self.agent, self.command = agent, command
        self.process = subprocess.Popen(
            ["sh", "-c", command], executable=agent.shell, env=agent.env, cwd=agent.cwd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.heads = {"stdout": StreamHead(self.process.stdout, agent.message_length),
                      "stderr": StreamHead(self.process.stderr, agent.message_length)}
        self.stop_commands: List[subprocess.CompletedProcess] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop_by_process(self) -> None:
        """プロセスの終了: Process.destroy(), SIGTERM to the direct child and nothing else."""
        self.process.send_signal(signal.SIGTERM)

    def stop_by_command(self, stop_command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """コマンド: run the stop command through sh -c with job variables expanded; the job itself
        is left alone and ends with whatever its process exits with."""
        done = subprocess.run(["sh", "-c", expand_variables(stop_command, self.agent.variables)],
                              executable=self.agent.shell, env=self.agent.env, cwd=self.agent.cwd,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        self.stop_commands.append(done)
        return done

    def wait(self, timeout: float = 120) -> JobResult:
        """process.waitFor(), then both readers to EOF, as JobCommandExecutor does."""
        code = self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        for head in self.heads.values():
            head.thread.join(timeout=max(0.0, deadline - time.monotonic()))
            assert not head.thread.is_alive(), "a stream stayed open after the command exited"
        self.process.stdin.close()
        end_value = 128 - code if code < 0 else code  # Java reports 128+N for a signal N
        return JobResult(end_value, bytes(self.heads["stdout"].head), bytes(self.heads["stderr"].head),
                         self.agent.charset, {k: h.discarded for k, h in self.heads.items()},
                         {k: h.total for k, h in self.heads.items()}, self.agent.message_max_length)


class HinemosAgent:
    """Runs command jobs as the Hinemos agent does; see the module's docstring for the sources."""

    def __init__(self, *, env: Mapping[str, str], variables: Mapping[str, str], shell: str = "/bin/sh",
                 charset: str = "utf-8", message_length: int = MESSAGE_LENGTH,
                 message_max_length: int = MESSAGE_MAX_LENGTH, cwd: Optional[str] = None) -> None:
        self.env, self.variables, self.shell, self.charset = dict(env), dict(variables), shell, charset
        self.message_length, self.message_max_length, self.cwd = message_length, message_max_length, cwd

    def start(self, command: str) -> CommandJob:
        return CommandJob(self, expand_variables(command, self.variables))

    def run(self, command: str, timeout: float = 120) -> JobResult:
        return self.start(command).wait(timeout=timeout)


# -- CloudWatch Logs, as the awslogs driver writes it -----------------------------------------------

LOG_GROUP = "/ecs/hinemos-scenarios"


def awslogs_container(container: dict) -> dict:
    return dict(container, logConfiguration={"logDriver": "awslogs", "options": {
        "awslogs-group": LOG_GROUP, "awslogs-region": "ap-northeast-1", "awslogs-stream-prefix": "batch"}})


def firelens_container(container: dict) -> dict:
    """As the shipped register-task.yaml logs: through FireLens to a Fluentd host."""
    return dict(container, logConfiguration={"logDriver": "awsfirelens", "options": {
        "Name": "forward", "Host": "fluentd.internal", "Port": "24224"}})


def ensure_log_group(logs) -> None:
    if not logs.describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]:
        logs.create_log_group(logGroupName=LOG_GROUP)


def put_log_lines(logs, stream: str, lines: List[str]) -> None:
    """Create the stream `batch/app/TASK_ID` and write the lines, in batches as the driver does."""
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    for start in range(0, len(lines), 5000):
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": now, "message": m} for m in lines[start:start + 5000]])
