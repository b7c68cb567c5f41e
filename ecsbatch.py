"""ecsbatch: run one Amazon ECS task as a batch job and exit with the exit code it deserves.

`ecsbatch run` launches the RunTask request in run-task.yaml, waits until the task stops and
exits with the exit code of the container that counts. `wait`, `status`, `stop` and `logs` are
for operators; `register` registers a task definition per image tag, and `validate` checks both
request files offline.

The file is cut by subject, like bottle.py; inside each section pure functions come first and
the ones that do I/O after them:
  1. the thin runner: the watcher's protocol, a `run` handed to the shared watcher before the
     rest of this file loads, and the stdlib-only wait that the runner goes on with;
  2. the contract: exit codes, constants, exception types;
  3. request files: reading, YAML loading, templating, validation, pinning;
  4. the verdict: judgment of a stopped task, summaries, failure context;
  5. AWS: clients, thin wrappers, errors, redaction;
  6. waiting: the signal guard, the poller, the supervisor, the log follower;
  7. output: progress, the quiet budget, the result line, safe streams, the system log;
  8. commands: shared options, then the click commands, thin shells over the rest;
  9. the shared watcher: the launch children, the resumed ending and the watcher itself.
"""

from __future__ import annotations

import os
import sys
import time

__version__ = "0.1.0"

# ---------------------------------------------------------------------------------------------
# 1. The thin runner: the watcher protocol, a run handed to the watcher, the wait
# ---------------------------------------------------------------------------------------------
# One watcher per user and credential context does the AWS work of every `run` of that user
# (unless ECSBATCH_WATCHER=off): it launches (in a child forked from a warm process, with the
# runner's own stdin/stdout/stderr, cwd, environment and arguments, so the launch is `run`'s
# own code and its own parsing), polls every watched task with one DescribeTasks per interval,
# reads the logs on the same clock and, when asked, stops a task. The first `run` starts it.
#
# This section comes first because it runs before the rest of the file exists: a `run` hands
# its arguments to the watcher from here (run_through_watcher, at the end of this section),
# before click, PyYAML or botocore is imported. Once its task is launched, the runner waits in
# the stdlib-only loop below, in the same process (the rest of the file never loads), and at
# the end the watcher's warm launcher judges and prints with the same code as a run without
# the watcher. If the watcher is gone or hangs,
# the runner re-adopts its task through a new watcher or, staggered and a few at a time, waits
# by itself with the full ecsbatch. When the watcher cannot take the run, nothing was sent and
# the run goes on below as it always has.
#
# So this section uses only the standard library, and at the top level only os, sys and time.

WATCHER_PROTOCOL = 2  # bump on any change to the messages; a mismatch falls back, never misjudges
WATCHER_ENV = "ECSBATCH_WATCHER"  # "on" uses the watcher; unset or "off" runs as before
WATCHER_IDLE_ENV = "ECSBATCH_WATCHER_IDLE"  # seconds a watcher with nothing to do lives on
WATCHER_SOCKET_ENV = "ECSBATCH_WATCHER_SOCKET"  # a socket of systemd's, instead of one per context
RESUME_FD_ENV = "ECSBATCH_RESUME_FD"  # full ecsbatch: finish or adopt the job in this state
THIN_FD_ENV = "ECSBATCH_THIN_FD"  # the thin runner, from the top of the file: wait on this task
DEFAULT_WATCHER_IDLE = 120.0
WATCHER_HEARTBEAT = 1.0  # the watcher says "alive" to every runner this often
WATCHER_SILENCE_FLOOR = 5.0  # a runner gives up on a watcher silent for max(this, --poll-interval)
WATCHER_START_SECONDS = 20.0  # how long a runner waits for a watcher it started
WATCHER_ANSWER_SECONDS = 15.0  # how long a runner waits for a watcher's first answer
# Bytes queued for, or from, one runner before it is cut off: room for a page of log (1 MB of
# text, escaped) and then some.
WATCHER_BUFFER_LIMIT = 8 << 20
WATCHER_STALL_SECONDS = 600.0  # a poll cycle stuck this long: stop saying "alive", runners fall back
WATCHER_LOG_READERS = 8
SOCKET_PATH_LIMIT = 104  # sun_path holds 108 bytes on Linux  # GetLogEvents calls in flight at once
FALLBACK_SLOTS = 4  # runners that may load botocore at once to wait by themselves
# A slot is held only while the full ecsbatch loads; slots held longer than this (a process stuck
# in its start) do not keep a runner from its job.
FALLBACK_SLOT_WAIT = 15.0
FALLBACK_STAGGER = 2.0  # a falling-back runner first waits a random part of this (or the interval)
THIN_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM")
# Everything that selects credentials or where calls go: one watcher per distinct set.
CONTEXT_ENV_PREFIXES = ("AWS_", "BOTO")  # AWS_*, BOTO_CONFIG (botocore's BotoProvider), BOTOCORE_*
CONTEXT_ENV_SUFFIXES = ("_proxy",)  # matched without case: urllib reads HTTPS_PROXY and Https_Proxy alike
CONTEXT_ENV_NAMES = ("HOME", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
# Files whose identity is part of the context: a variable's value names one, else a path.
CONTEXT_FILES = ("AWS_CONFIG_FILE", "~/.aws/config", "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "BOTO_CONFIG", "/etc/boto.cfg", "~/.boto")


def peer_credentials(sock: Any) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    import _socket

    data = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return tuple(int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in (0, 4, 8))  # type: ignore


class _WireScanner:
    """What _json's C scanner reads of json.JSONDecoder: the json package imports re, a megabyte
    that a thin runner does without."""

    strict = True
    object_pairs_hook = None
    parse_float, parse_int = float, int

    def __init__(self, object_hook: Any) -> None:
        self.object_hook = object_hook

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


def _wire_default(value: Any) -> Any:
    datetime_module = sys.modules.get("datetime")
    if datetime_module is not None and isinstance(value, datetime_module.datetime):
        return {"$dt": value.isoformat()}
    return str(value)


def _wire_hook(value: Dict[str, Any]) -> Any:
    """{"$dt": ISO 8601} back to a datetime, where datetime is loaded (not in the thin runner,
    which passes such values on as they came)."""
    datetime_module = sys.modules.get("datetime")
    if datetime_module is not None and len(value) == 1 and "$dt" in value:
        try:
            return datetime_module.datetime.fromisoformat(value["$dt"])
        except (ValueError, TypeError):
            return value
    return value


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One protocol message: a JSON object on one line, datetimes as {"$dt": ISO 8601}."""
    import _json

    encoder = _json.make_encoder({}, _wire_default, _json.encode_basestring_ascii, None, ": ", ", ", False,
                                 False, True)
    return ("".join(encoder(dict(message, v=WATCHER_PROTOCOL), 0)) + "\n").encode("ascii")


def decode_message(line: bytes) -> Dict[str, Any]:
    """A protocol message back, datetimes restored; a message of another version is refused."""
    import _json

    text = line.decode("utf-8").strip()
    try:
        message, end = _json.make_scanner(_WireScanner(_wire_hook))(text, 0)
    except StopIteration:
        raise ValueError("not a JSON message") from None
    if end != len(text):
        raise ValueError("not one JSON message")
    if not isinstance(message, dict) or message.get("v") != WATCHER_PROTOCOL:
        raise ValueError(f"protocol {message.get('v') if isinstance(message, dict) else '?'}, "
                         f"not {WATCHER_PROTOCOL}")
    return message


class LineChannel:
    """Messages over a blocking Unix stream socket, one JSON line each, with a deadline per read."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.buffer = sock, b""

    def send(self, message: Mapping[str, Any], fds: Optional[List[int]] = None) -> None:
        import _socket

        data = encode_message(message)
        if fds:  # SCM_RIGHTS, as socket.send_fds sends them
            rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
            sent = self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            data = data[sent:]
        if data:  # an empty send to a peer gone meanwhile fails, though the message went whole
            self.sock.sendall(data)

    def receive(self, timeout: Optional[float]) -> Optional[Dict[str, Any]]:
        """The next message; None at EOF. Raises TimeoutError (socket.timeout) when none came in time,
        ValueError for a message of another protocol."""
        import select

        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if len(self.buffer) > WATCHER_BUFFER_LIMIT:
                raise ValueError("message too long")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no answer")
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return decode_message(line)


def connect_watcher(path: str, timeout: float) -> Optional[Any]:
    """A connection to the watcher listening at `path`, checked to run as this user; None if none."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        if peer_credentials(sock)[1] != os.getuid():
            raise OSError("the watcher's socket belongs to another user")
    except OSError:
        sock.close()
        return None
    sock.settimeout(None)
    return sock


def socket_owned_by_me(path: str) -> bool:
    """Is `path` a socket of this user (lstat: a link is not)? Checked before it is used."""
    import stat

    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()


def lock_held(path: str) -> bool:
    """Does a live process hold the flock on `path` (a watcher on its lock file)?"""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def start_watcher(command: List[str], paths: Mapping[str, str], wait: float) -> Optional[Any]:
    """Connect to the watcher of this context, starting it when none listens. One runner starts
    it (a lock); the others wait for its socket. Returns the connection, or None."""
    import fcntl

    deadline = time.monotonic() + wait
    started = False
    while True:
        if socket_owned_by_me(paths["socket"]):
            sock = connect_watcher(paths["socket"], min(5.0, max(0.1, deadline - time.monotonic())))
            if sock is not None:
                return sock
        if os.environ.get(WATCHER_SOCKET_ENV):
            return None  # a socket of systemd's: never start one of ours in its place
        if not started:
            try:
                fd = os.open(paths["start"], os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another runner is starting it
                os.close(fd)
            else:
                try:
                    started = True
                    import subprocess  # here only: with locale and re, 10 ms of every runner's start

                    try:
                        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, close_fds=True, timeout=wait)
                    except (OSError, subprocess.SubprocessError):
                        return None
                    if done.returncode != 0:  # it could not work (say, no credentials): it said so by exiting
                        return None
                    spawned = time.monotonic()
                    while time.monotonic() < deadline and not socket_owned_by_me(paths["socket"]):
                        if time.monotonic() - spawned > 10.0 and not lock_held(paths["lock"]):
                            return None  # it did not get as far as its lock: it failed to start
                        time.sleep(0.02)
                finally:
                    os.close(fd)
                continue
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


# --- the thin runner: stdlib only ---------------------------------------------------------------


def last_line(text: str) -> None:
    """One line on stderr before an exit, straight to fd 2: a stderr closed, full or broken, or a
    character it cannot take, never keeps the exit code from being the one meant."""
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def thin_signal_numbers() -> List[int]:
    """The numbers of THIN_SIGNALS (_signal: the signal module imports enum, half a megabyte)."""
    import _signal

    return [getattr(_signal, name) for name in THIN_SIGNALS]


def still_running(state: Mapping[str, Any]) -> str:
    """What a runner that ends without knowing its task's end says of that task."""
    arn = str(state.get("task_arn") or "")
    return f"task {arn.rsplit('/', 1)[-1]} may still be running: stop it with: {state.get('stop_command')}"


class HandedOver(BaseException):
    """The judge of a task that failed to start launched again and handed the new task over: the
    thin runner waits on that one (become_thin_runner), with the signal that came meanwhile."""

    def __init__(self, handoff: Dict[str, Any], pending: List[int]) -> None:
        super().__init__()
        self.handoff, self.pending = handoff, pending


class ThinRunner:
    """The waiting half of `run` while a watcher does the AWS work: relays log and progress
    lines, keeps the log tail, owns the deadline and the signals, and at the end has the
    watcher's child judge and print (or execs into the full ecsbatch, the same pid) as always."""

    def __init__(self, state: Dict[str, Any]) -> None:
        self.state = state
        self.signals: List[int] = list(state.get("pending") or [])  # came as the launch handed over
        self.tail: List[str] = []
        self.tail_size = 0
        self.token: Optional[str] = state.get("log_token")
        self.last_task: Optional[Dict[str, Any]] = state.get("last_task")
        self.silenced: Dict[str, str] = dict(state.get("silenced") or {})
        self.syslog = None
        if state.get("syslog"):
            import _socket

            try:
                self.syslog = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
                self.syslog.connect(state["syslog"])
                self.syslog.setblocking(False)
            except OSError:
                self.syslog = None
        self.stop_asked = False
        self.stop_sent = False
        self.judge: Optional[int] = None  # the watcher's process that judges the end, once it said so
        self.finish_asked = False
        self.wake: List[int] = []  # the signals' wake-up pipe (install_signals)

    def forward(self, signum: int) -> None:
        try:
            os.kill(self.judge, signum)  # type: ignore[arg-type]
        except OSError:
            pass

    # output
    def write(self, fd: int, line: str) -> None:
        """As SilencingWriter writes: a stream that fails is silenced, never the job."""
        import errno
        import select

        name = "stdout" if fd == 1 else "stderr"
        if name in self.silenced:
            return
        data = (line + "\n").encode(self.state["encodings"][0 if fd == 1 else 1], "replace")
        try:
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    select.select([], [fd], [], 1.0)
        except OSError as exc:
            self.silenced[name] = "was closed" if exc.errno == errno.EPIPE else f"failed ({exc.strerror or exc})"
            self.progress(f"{name} {self.silenced[name]}: nothing more is printed there; the job goes on")

    def progress(self, message: str, severity: int = 6) -> None:
        if self.syslog is not None:
            try:
                text = " ".join(message.split())
                self.syslog.send(f"<{8 + severity}>ecsbatch[{os.getpid()}]: {text}".encode("utf-8", "replace")
                                 [:self.state["syslog_limit"]])
            except OSError:
                pass
        if not self.state["output"]["quiet"]:
            self.write(2, f"{local_timestamp()} ecsbatch: {message}")

    def log_line(self, line: str) -> None:
        if not self.state["output"]["quiet"]:
            self.write(2 if self.state["as_json"] else 1, line)
        self.tail.append(line)
        self.tail_size += len(line) + 1
        while len(self.tail) > self.state["tail_lines"] and \
                self.tail_size - len(self.tail[0]) - 1 >= self.state["output"]["limit"]:
            self.tail_size -= len(self.tail.pop(0)) + 1

    # signals (_signal: the signal module imports enum, half a megabyte)
    def install_signals(self) -> int:
        import _signal

        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        _signal.set_wakeup_fd(write_fd)
        self.wake = [read_fd, write_fd]
        numbers = thin_signal_numbers()
        for signum in numbers:
            if signum == _signal.SIGHUP and _signal.getsignal(signum) == _signal.SIG_IGN:
                continue  # nohup: whoever started the job asked it to outlive the session
            _signal.signal(signum, self.on_signal)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, numbers)  # blocked since the hand-off was read
        return read_fd

    def close(self) -> None:
        """Let go of the wake-up pipe and the system log, for the thin runner of a new task."""
        import _signal

        _signal.set_wakeup_fd(-1)
        for fd in self.wake:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.syslog is not None:
            self.syslog.close()

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        if self.judge and len(self.signals) == 1:  # it may be launching again: it stops what it launched
            self.forward(signum)
        if len(self.signals) > 1:
            first = self.signals[0]
            arn = self.state["task_arn"]
            said = (f"exiting now; StopTask was sent for task {arn.rsplit('/', 1)[-1]}" if self.stop_sent else
                    f"exiting now; {still_running(self.state)}")
            import _signal

            name = next((n for n in THIN_SIGNALS if getattr(_signal, n) == signum), str(signum))
            self.write(2, f"ecsbatch: second {name}: {said}")
            self.unregister()
            os._exit(self.state["exit_for_signal"][str(first)])

    def unregister(self) -> None:
        for path in self.state.get("registry") or []:
            try:
                os.unlink(path)
            except OSError:
                pass

    # the end: exec the full ecsbatch
    def exec_full(self, resume: Dict[str, Any]) -> None:
        import _signal

        if not os.path.isfile(self.state["script"]):  # the release was pruned under the job
            self.write(2, f"ecsbatch: error: the watcher cannot finish this job and {self.state['script']} is gone "
                          f"(a release pruned under it): {still_running(self.state)}")
            self.unregister()
            os._exit(125)
        _signal.pthread_sigmask(_signal.SIG_BLOCK, thin_signal_numbers())
        resume = self.resume_state(resume)
        exec_with_state([sys.executable, self.state["script"]] + list(self.state["argv"]), resume)

    def fall_back(self, why: str) -> None:
        """No watcher: wait by ourselves, with botocore, but only a few runners at a time."""
        import random

        self.progress(f"the watcher {why}; this runner waits on its task by itself")
        if not self.signals:
            pause = random.uniform(0.0, min(FALLBACK_STAGGER, float(self.state["poll_interval"])))
            self.wait_for_signal(pause)
        slot = None
        deadline = self.state.get("deadline")
        until = time.monotonic() + FALLBACK_SLOT_WAIT
        until = until if deadline is None else min(until, deadline)
        # A stop never waits for a slot: a signal, or a deadline that has passed, goes at once.
        while not self.signals and slot is None and time.monotonic() < until:
            slot = take_fallback_slot(self.state["paths"]["dir"])
            if slot is None:
                self.wait_for_signal(min(0.25, max(0.0, until - time.monotonic())))
        self.exec_full({"mode": "adopt", "slot": slot})

    def wait_for_signal(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.signals and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # the watcher
    def connect(self, silence: float) -> Optional[LineChannel]:
        """Hand our task to the watcher, or to a new one when none lives (its lock is free)."""
        paths = self.state["paths"]
        start = not lock_held(paths["lock"]) and not os.environ.get(WATCHER_SOCKET_ENV)
        sock = (start_watcher(self.state["watcher_command"], paths, WATCHER_START_SECONDS) if start
                else connect_watcher(paths["socket"], silence) if socket_owned_by_me(paths["socket"]) else None)
        if sock is None:
            return None
        channel = LineChannel(sock)
        try:
            channel.send({"op": "watch", "context": self.state["context"], "task_arn": self.state["task_arn"],
                          "cluster": self.state["cluster"], "ticket": self.state["ticket"],
                          "poll_interval": self.state["poll_interval"], "missing_grace": self.state["missing_grace"],
                          "started": self.state["started"], "log_source": self.state["log_source"],
                          "log_token": self.token, "last_task": self.last_task, "region": self.state["region"],
                          "profile": self.state["profile"], "timeout_text": self.state["timeout_text"]})
            # A watcher that hangs is noticed as fast as in the wait; one just started gets longer.
            answer = channel.receive(WATCHER_ANSWER_SECONDS if start else silence)
        except (OSError, ValueError):
            answer = None
        if not answer or answer.get("op") != "watching":
            sock.close()
            return None
        return channel

    def resume_state(self, resume: Dict[str, Any]) -> Dict[str, Any]:
        if self.signals and "interrupted_by" not in resume and resume.get("mode") == "adopt":
            resume["interrupted_by"] = self.signals[0]
        resume.update(state=self.state, tail=self.tail, log_token=self.token, last_task=self.last_task,
                      stop_asked=self.stop_asked, silenced=self.silenced)
        return resume

    def finish(self, channel: LineChannel, final: Dict[str, Any]) -> None:
        """The watcher's warm launcher judges and prints, with our streams and the same code as
        the full ecsbatch (and from memory: a release pruned meanwhile does not matter); if it
        cannot, the full ecsbatch does it here."""
        resume = self.resume_state({"mode": "final", "final": final})
        answer: Optional[Dict[str, Any]] = None
        self.finish_asked = True  # from now on a judge may be at work, known to us or not
        try:
            channel.send({"op": "finish", "context": self.state["context"], "resume": resume}, fds=[0, 1, 2])
        except OSError:
            pass  # it may have gone whole all the same: a judge that took it has answered, and is read below
        try:
            while True:
                # Once the judge is known it may wait out a backoff and launch again: no time limit.
                answer = channel.receive(None if self.judge else WATCHER_ANSWER_SECONDS * 4)
                if answer is None or answer.get("op") in ("exit", "refused", "handoff"):
                    break
                judge = process_id(answer.get("pid")) if answer.get("op") == "launching" else None
                if judge is not None:
                    self.judge = judge
                    for signum in self.signals[:1]:  # one that came before it was known
                        self.forward(signum)
        except (OSError, ValueError):
            answer = None
        ending = checked_ending(answer) if answer is not None and answer.get("op") != "refused" else None
        if ending is not None and ending["op"] == "exit":
            self.unregister()
            os._exit(ending["code"])
        if ending is not None and ending["op"] == "handoff":  # the task failed to start; a new one runs
            import _signal

            _signal.pthread_sigmask(_signal.SIG_BLOCK, thin_signal_numbers())
            channel.sock.close()
            self.close()
            raise HandedOver(ending, self.signals[:1])
        channel.sock.close()
        if self.judge and self.state.get("continuation"):  # it may have launched again: never a second judge
            self.exec_full({"mode": "lost"})
        self.exec_full(resume)

    def handle(self, channel: LineChannel, message: Dict[str, Any]) -> None:
        op = message.get("op")
        for line in message.get("progress") or []:
            self.progress(line)
        for line in message.get("lines") or []:
            self.log_line(line)
        if "token" in message:
            self.token = message["token"]
        if message.get("task") is not None:
            self.last_task = message["task"]
        if message.get("stop_sent"):
            self.stop_sent = True
        if op == "final":
            self.finish(channel, message)
        elif op == "refused":  # the watcher could not end the watch: we do it, with the same code
            channel.sock.close()
            self.fall_back(f"could not end the wait ({message.get('why')})")

    def run(self) -> None:
        import select

        wake = self.install_signals()
        # It says "alive" every second: silence longer than a poll interval (within bounds) is a hang.
        silence = max(WATCHER_SILENCE_FLOOR, min(float(self.state["poll_interval"]), 30.0))
        deadline = self.state.get("deadline")
        channel = self.connect(silence)
        if channel is None:
            self.fall_back("could not take the task over")
        heard = time.monotonic()
        reconnected = False
        while True:
            if self.signals and not self.stop_asked:
                self.ask_stop(channel, {"signal": self.signals[0]})
            if deadline is not None and time.monotonic() >= deadline and not self.stop_asked:
                self.ask_stop(channel, {"timeout": True})
            wait = silence - (time.monotonic() - heard)
            if deadline is not None and not self.stop_asked:
                wait = min(wait, deadline - time.monotonic())
            if b"\n" in channel.buffer:  # a whole message is here already
                ready = [channel.sock]
            else:
                ready = select.select([channel.sock, wake], [], [], max(0.0, wait))[0]
            if wake in ready:
                try:
                    os.read(wake, 64)
                except OSError:
                    pass
            if channel.sock in ready:
                try:
                    message = channel.receive(0.0)  # never wait on half a message: signals come first
                except TimeoutError:
                    heard = time.monotonic()  # it is talking
                    continue
                except (OSError, ValueError):
                    message = None
                if message is None:  # the watcher went away: a new one may take over
                    channel.sock.close()
                    again = None if reconnected or self.stop_asked else self.connect(silence)
                    if again is None:
                        self.fall_back("went away")
                    channel, reconnected, heard = again, True, time.monotonic()
                    continue
                heard = time.monotonic()
                self.handle(channel, message)
            elif time.monotonic() - heard >= silence:
                channel.sock.close()
                self.fall_back(f"said nothing for {silence:g}s")

    def ask_stop(self, channel: LineChannel, why: Dict[str, Any]) -> None:
        try:
            channel.send(dict(why, op="stop"))
            self.stop_asked = True
        except OSError:
            self.fall_back("could not be asked to stop the task")


def local_timestamp() -> str:
    """What datetime.now().astimezone().isoformat(timespec="seconds") says, without datetime."""
    now = time.localtime()
    offset = now.tm_gmtoff or 0
    sign, offset = ("+" if offset >= 0 else "-"), abs(offset)
    return time.strftime("%Y-%m-%dT%H:%M:%S", now) + f"{sign}{offset // 3600:02d}:{offset % 3600 // 60:02d}"


def take_fallback_slot(directory: str) -> Optional[int]:
    """One of FALLBACK_SLOTS flock'ed files, held (across exec) until this process exits."""
    import fcntl

    for number in range(FALLBACK_SLOTS):
        path = os.path.join(directory, f"fallback.{number}.lock")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        return fd
    return None


def memory_file(name: str, data: bytes) -> int:
    """An inheritable memory file holding `data`, read from its start."""
    fd = os.memfd_create(name, 0)
    while data:
        data = data[os.write(fd, data):]
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def exec_with_state(argv: List[str], state: Mapping[str, Any], fd_env: str = RESUME_FD_ENV) -> None:
    """Exec (same pid) with `state` in an inherited memory file named by `fd_env`."""
    fd = memory_file("ecsbatch-state", encode_message(state))
    env = dict(os.environ, **{fd_env: str(fd)})
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        last_line(f"ecsbatch: error: could not run {argv[0]}: {exc}; the task may still be running")
        os._exit(125)


def read_state(fd: int) -> Dict[str, Any]:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return decode_message(b"".join(chunks).rstrip(b"\n"))


# --- where runners and watchers meet ------------------------------------------------------------

ECSBATCH_FILE = os.path.abspath(__file__)


def temp_dir() -> str:
    """The temporary directory as tempfile.gettempdir() mostly finds it, without importing tempfile
    (random, shutil and more: a thin start cannot afford them)."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        path = os.environ.get(name)
        if path and os.path.isdir(path):
            return os.path.abspath(path)
    return "/tmp"


def runtime_dirs() -> List[str]:
    """Where runners register and watchers listen: $XDG_RUNTIME_DIR/ecsbatch, then a private
    directory under the temp directory (sudo and cron often leave XDG_RUNTIME_DIR unset)."""
    dirs = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "ecsbatch"))
    dirs.append(os.path.join(temp_dir(), f"ecsbatch-{os.getuid()}"))
    return dirs


def sha256_hex(data: bytes) -> str:
    """hashlib's sha256 without hashlib, whose OpenSSL costs a thin start 12 ms."""
    try:
        from _sha256 import sha256  # Python 3.9-3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore  # Python 3.12+
        except ImportError:
            from hashlib import sha256
    return sha256(data).hexdigest()


def private_dir(path: str, *, create: bool) -> bool:
    """Is `path` a real directory (not a link) of this user that nobody else can use?"""
    import stat

    if create:
        try:
            os.mkdir(path, 0o700)
        except OSError:
            pass
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def process_start_time(pid: int) -> Optional[str]:
    """The start time of a live process in clock ticks since boot (Linux /proc), or None when
    there is no such process or it has exited (a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def credential_context(environ: Mapping[str, str], region: Optional[str], profile: Optional[str]) -> str:
    """A digest of everything that selects credentials or where calls go: every AWS_* variable,
    BOTO_CONFIG and BOTOCORE_*, proxies (any case) and CA bundles, --region and --profile, and the identity (path, size, mtime) of the
    config, credential and web-identity token files. Two runs share a watcher only if equal."""
    items = sorted([k, v] for k, v in environ.items()
                   if k.startswith(CONTEXT_ENV_PREFIXES) or k.lower().endswith(CONTEXT_ENV_SUFFIXES)
                   or k in CONTEXT_ENV_NAMES)
    files = []
    for name in CONTEXT_FILES:
        path = (os.path.expanduser(name) if name.startswith("~") else name if name.startswith("/")
                else environ.get(name))
        if path:
            try:
                info = os.stat(path)
                files.append([path, info.st_size, info.st_mtime_ns, info.st_ino])
            except OSError:
                files.append([path, None, None, None])
    text = encode_message({"uid": os.getuid(), "env": items, "files": files, "region": region, "profile": profile})
    return sha256_hex(text)


def release_id(path: str) -> str:
    """What tells two installed releases apart: the protocol, the file itself and the Python
    (the thin runner's code is marshalled for one interpreter)."""
    try:
        info = os.stat(path)
        ident = f"{path}:{info.st_size}:{info.st_mtime_ns}:{sys.implementation.cache_tag}"
    except OSError:
        ident = path
    return f"{WATCHER_PROTOCOL}-{sha256_hex(ident.encode('utf-8', 'surrogateescape'))[:12]}"


def watcher_paths(context: str, release: str) -> Optional[Dict[str, str]]:
    """The socket, the locks and the ticket key of one watcher, in the first private runtime
    directory; None when there is none (then there is no watcher)."""
    for directory in runtime_dirs():
        if private_dir(directory, create=True):
            base = os.path.join(directory, f"w{release}-{context[:16]}")
            paths = {"dir": directory, "socket": base + ".sock", "lock": base + ".lock", "start": base + ".start",
                     "key": os.path.join(directory, f"w{context[:16]}.key")}
            if os.environ.get(WATCHER_SOCKET_ENV):
                paths["socket"] = os.environ[WATCHER_SOCKET_ENV]
            if len(os.fsencode(paths["socket"])) >= SOCKET_PATH_LIMIT:
                return None
            return paths
    return None


def watcher_command(region: Optional[str], profile: Optional[str]) -> List[str]:
    command = [sys.executable, ECSBATCH_FILE, "watcher", "--detach"]
    if os.environ.get(WATCHER_IDLE_ENV):
        command += ["--idle", os.environ[WATCHER_IDLE_ENV]]
    return command + (["--region", region] if region else []) + (["--profile", profile] if profile else [])


def standard_fds() -> List[int]:
    """fds 0, 1 and 2 to lend to the launch: /dev/null in place of one that is closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds



# --- a run handed to the watcher -----------------------------------------------------------------

WATCHER_OFF_VALUES = ("off", "0", "no", "false")
# Options whose values change the credential context: a run that names them is never handed to
# the watcher of the environment's context from the top of the file. (The launch child checks
# the parsed context anyway and declines; this only spares the round trip.)
CONTEXT_OPTIONS = ("--region", "--profile", "--debug")


def watcher_allowed(environ: Mapping[str, str]) -> bool:
    """The shared watcher is used unless ECSBATCH_WATCHER says off, on a system that has what it
    needs (Linux's SO_PEERCRED, SCM_RIGHTS and memfd_create)."""
    return (environ.get(WATCHER_ENV, "on").strip().lower() not in WATCHER_OFF_VALUES
            and sys.platform.startswith("linux") and hasattr(os, "memfd_create"))


def thin_start_wanted(argv: List[str], environ: Mapping[str, str]) -> bool:
    """Is this process `ecsbatch run` as its users start it, to be handed to the watcher before the
    rest of the file loads? Not a parser: anything unusual goes the full way, and parses there."""
    if len(argv) < 2 or argv[1] != "run" or os.path.basename(argv[0]) not in ("ecsbatch", "ecsbatch.py"):
        return False
    options = argv[2:argv.index("--")] if "--" in argv else argv[2:]
    return (watcher_allowed(environ) and not environ.get(RESUME_FD_ENV) and not environ.get(THIN_FD_ENV)
            and not any(arg.startswith(CONTEXT_OPTIONS) for arg in options))


def exit_for_signal(signum: int) -> int:
    """128 + the signal's number, as EXIT_FOR_SIGNAL (section 2) says for the four it handles."""
    return 128 + signum


# What the thin start at the top of the file found: the full `run` does not try a watcher of
# the same context again.
THIN_START: Dict[str, Any] = {}


def run_through_watcher(args: List[str], *, region: Optional[str], profile: Optional[str],
                        in_place: bool) -> Optional[str]:
    """Have the shared watcher launch this `run`, then become the thin runner (never returns): in
    this process when `in_place` (the top of the file, where nothing else is loaded), else by an
    exec (a full `run`, which has click and more in memory).

    `args` are the command line as given; the watcher's launch child parses them with the same
    click parser as always, and declines (before any AWS call) when their --region, --profile or
    --debug make this run another context's. Returns, having sent nothing that launches, when
    the watcher cannot take the run: then the run goes on by itself, as without the watcher, and
    what is returned, if anything, says why (for the run to say, within its -q budget)."""
    import _signal

    context = credential_context(os.environ, region, profile)
    if THIN_START.get("unreachable") == context:
        return None
    paths = watcher_paths(context, release_id(ECSBATCH_FILE))
    if paths is None:
        return None
    received: List[int] = []
    child: List[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        for pid in child:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    numbers = thin_signal_numbers()
    before = {signum: _signal.getsignal(signum) for signum in numbers}
    for signum in numbers:
        if before[signum] != _signal.SIG_IGN:
            _signal.signal(signum, on_signal)

    def give_up(why: Optional[str]) -> Optional[str]:
        """Nothing was launched: the run goes on by itself, or ends for the signal it got."""
        for signum, handler in before.items():
            _signal.signal(signum, handler if handler is not None else _signal.SIG_DFL)
        if why is not None:
            THIN_START["unreachable"] = context
        if received:
            resume_full(args, {"mode": "interrupted", "signal": received[0]})
        return why

    fds = standard_fds()  # first: a stream closed at start must not become the watcher's socket
    try:
        sock = start_watcher(watcher_command(region, profile), paths, WATCHER_START_SECONDS)
    except Exception as exc:  # never a traceback where a sentence is owed; nothing was sent
        return give_up(f"the watcher could not be started ({type(exc).__name__}: {' '.join(str(exc).split())})")
    if sock is None:
        return give_up("no watcher could be started or reached")
    channel = LineChannel(sock)
    try:
        channel.send({"op": "hello", "context": context, "release": __version__})
        answer = channel.receive(WATCHER_ANSWER_SECONDS)
        if not answer or answer.get("op") != "hello":
            raise ValueError((answer or {}).get("why") or "no answer")
        pid = os.getpid()
        channel.send({"op": "launch", "context": context, "argv": args, "cwd": os.getcwd(), "env": dict(os.environ),
                      "region": region, "profile": profile,
                      "encodings": [getattr(sys.stdout, "encoding", None) or "utf-8",
                                    getattr(sys.stderr, "encoding", None) or "utf-8"],
                      "runner": {"pid": pid, "start": process_start_time(pid)}}, fds=fds)
        answer = channel.receive(WATCHER_ANSWER_SECONDS)
        if not answer or answer.get("op") != "launching":
            raise ValueError((answer or {}).get("why") or "no answer")
        launcher = process_id(answer.get("pid"))
        if launcher is None:
            raise ValueError(f"a launch process of pid {answer.get('pid')!r}")  # a signal must reach only it
    except (OSError, ValueError) as exc:  # nothing was launched: the launch child never got "go"
        sock.close()
        return give_up(f"the watcher cannot be used ({' '.join(str(exc).split())})")
    if received:  # before "go": nothing was launched, and nothing will be
        sock.close()
        return give_up(None)
    child.append(launcher)
    flush_streams()
    THIN_START["go"] = True
    try:
        channel.send({"op": "go"})
    except OSError:
        pass  # the child reads "go" or EOF: what it did, it says below
    # From here on a task may be launched: the run never goes on by itself (it could launch twice).
    message = launch_outcome(channel)
    if message is not None and message["op"] == "handoff":
        _signal.pthread_sigmask(_signal.SIG_BLOCK, numbers)  # first: a signal now waits for the thin runner
    if message is not None and message["op"] == "decline":  # before any AWS call
        sock.close()
        return give_up(None)
    if message is None and received:  # the launch child ended on our signal and said so
        os._exit(exit_for_signal(received[0]))
    if message is None:
        resume_full(args, {"mode": "lost"})
    if message["op"] == "exit":
        os._exit(message["code"])
    sock.close()
    become_thin_runner(message, args=args, script=runner_script(), context=context, paths=paths,
                       watcher_command=watcher_command(region, profile), pending=received[:1], in_place=in_place)


def launch_outcome(channel: LineChannel) -> Optional[Dict[str, Any]]:
    """What the launch child said at the end of its part: "exit" (with a code of 0-255),
    "handoff" (with the thin runner's state), "decline", or None when it ended
    without a word or with words that make no sense (then a task may have been launched)."""
    while True:
        try:
            message = channel.receive(None)
        except (OSError, ValueError):
            return None
        if message is None:
            return None
        if message.get("op") in ("decline", "exit", "handoff"):
            return checked_ending(message)


def checked_ending(message: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A launch child's last message as sent; None when it makes no sense (an exit code outside
    0-255, a hand-off without a task)."""
    op = message.get("op")
    if op == "decline":
        return message
    if op == "exit":
        code = message.get("code")
        return message if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255 else None
    if op == "handoff":
        state = message.get("state")
        return message if isinstance(state, dict) and isinstance(state.get("task_arn"), str) else None
    return None


def become_thin_runner(handoff: Dict[str, Any], *, args: List[str], script: str, context: str,
                       paths: Mapping[str, str], watcher_command: List[str], pending: List[int],
                       in_place: bool) -> None:
    """Wait (never returns) as the thin runner of the task that a launch child handed over
    (checked_ending), the signals blocked until it listens, `pending` the signal that came
    meanwhile, and then on each task that a judge launches again (HandedOver).

    `in_place` at the top of the file: the rest of the file never loads, and a second Python start
    (some 20 ms of CPU per job, which 100 jobs starting at once all wait for) is spared. Else an
    exec of the same script (the same pid) waits, with nothing of the full ecsbatch in memory."""
    shared = dict(argv=args, script=script, context=context, paths=paths, watcher_command=watcher_command)
    if not in_place:
        exec_with_state([sys.executable, script] + list(args), dict(shared, handoff=handoff, pending=pending),
                        fd_env=THIN_FD_ENV)
    while True:
        runner: Optional[ThinRunner] = None
        try:
            runner = ThinRunner(dict(handoff["state"], pending=pending, **shared))
            runner.run()
        except HandedOver as again:
            handoff, pending = again.handoff, again.pending
        except Exception:  # the full ecsbatch takes the task over, unless a judge may be launching again
            thin_last_word(runner, handoff["state"])


def thin_last_word(runner: Optional[ThinRunner], state: Mapping[str, Any]) -> None:
    """After an error in the thin wait: the full ecsbatch adopts the task ("lost" once a judge may
    be at work, which could launch again); if even that fails, one line and 125 (never returns)."""
    try:
        if runner is not None:
            runner.exec_full({"mode": "lost"} if runner.finish_asked and runner.state.get("continuation")
                             else {"mode": "adopt"})
    except Exception:
        pass
    last_line(f"ecsbatch: error: the wait failed: {still_running(state)}")
    os._exit(125)


def thin_state_fd(argv: List[str], environ: Mapping[str, str]) -> Optional[int]:
    """The fd of the state that become_thin_runner's exec left (THIN_FD_ENV): only for `run`, and
    only a memory file of ours; anything else, say the variable copied into another environment,
    is ignored."""
    text = environ.get(THIN_FD_ENV, "")
    if len(argv) < 2 or argv[1] != "run" or not text.isdigit():
        return None
    try:
        return int(text) if os.readlink(f"/proc/self/fd/{text}").startswith("/memfd:ecsbatch-state") else None
    except OSError:
        return None


def resume_thin(fd: int) -> None:
    """The thin runner after become_thin_runner's exec, at the top of the file (never returns)."""
    standard_fds()  # first: a stream closed at start must not become the wake-up pipe or the socket
    state = read_state(fd)
    become_thin_runner(state["handoff"], args=state["argv"], script=state["script"], context=state["context"],
                       paths=state["paths"], watcher_command=state["watcher_command"], pending=state["pending"],
                       in_place=True)


def process_id(value: Any) -> Optional[int]:
    """`value` as a pid that a signal may be sent to: an int above 1 (0, -1 and 1 would reach a
    process group, every process of the user, or init), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else None


def flush_streams() -> None:
    """Flush stdout and stderr, which may be None (closed when the process started) or broken."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def runner_script() -> str:
    """What runs the full ecsbatch again, for the end of a job: the script this process was
    started as (the console script), else this file."""
    return os.path.abspath(sys.argv[0] if sys.argv and os.path.isfile(sys.argv[0]) else ECSBATCH_FILE)


def resume_full(args: List[str], resume: Dict[str, Any]) -> None:
    """Exec the full ecsbatch (same pid) to end this run as it says: a launch child lost without
    a word, or a signal before anything was launched. Its main() prints the line."""
    exec_with_state([sys.executable, runner_script()] + list(args), resume)


# --- the end of the thin runner ---------------------------------------------------------------

if __name__ in ("ecsbatch", "__main__") and THIN_FD_ENV in os.environ:
    _fd = thin_state_fd(sys.argv, os.environ)
    os.environ.pop(THIN_FD_ENV)
    if _fd is not None:
        try:
            resume_thin(_fd)
        except Exception as _exc:  # the state did not come through: say so, and what may be running
            last_line(f"ecsbatch: error: the thin runner got no state from its exec ({type(_exc).__name__}); "
                      "a task may have been launched: see `ecsbatch status`")
            os._exit(125)
if __name__ in ("ecsbatch", "__main__") and thin_start_wanted(sys.argv, os.environ):
    try:
        THIN_START["why"] = run_through_watcher(sys.argv[1:], region=None, profile=None, in_place=True)
    except Exception as _exc:  # a last word: before "go" the run goes on by itself, after it never
        if THIN_START.get("go"):
            resume_full(sys.argv[1:], {"mode": "lost"})
        THIN_START["why"] = f"the watcher cannot be used ({type(_exc).__name__})"

import collections
import contextlib
import copy
import datetime
import io
import json
import random
import re
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Protocol, Tuple

import click


# ---------------------------------------------------------------------------------------------
# 2. The contract: exit codes, constants, exception types
# ---------------------------------------------------------------------------------------------

# 0-255 is the exit code of the container that counts. Everything else is ecsbatch's own word:
# Job authors keep their own failures in 1-99, so that no container code reads as one of these.
EXIT_USAGE = 2  # bad usage or a bad input file; nothing was launched
EXIT_ALREADY_RUNNING = 120  # --if-running fail: a task of this job (same key) is still live
EXIT_TIMEOUT = 124  # --timeout expired and ecsbatch's StopTask ended the task
EXIT_ECS_FAILURE = 125  # ECS could not launch or finish the container, or refused a call
EXIT_SIGHUP = 129  # SIGHUP (a lost terminal or SSH session); the task was stopped first
EXIT_SIGINT = 130  # interrupted by SIGINT; the task was stopped first
EXIT_SIGQUIT = 131  # SIGQUIT; the task was stopped first
EXIT_SIGTERM = 143  # SIGTERM, or `ecsbatch stop` by an operator; the task was stopped first
EXIT_FOR_SIGNAL = {signal.SIGHUP: EXIT_SIGHUP, signal.SIGINT: EXIT_SIGINT, signal.SIGQUIT: EXIT_SIGQUIT,
                   signal.SIGTERM: EXIT_SIGTERM}

DEFAULT_RUN_FILE = "run-task.yaml"
DEFAULT_REGISTER_FILE = "register-task.yaml"
DEFAULT_POLL_INTERVAL = 6.0
DEFAULT_STARTED_BY = "ecsbatch"
# A poll waits a random 75-100% of --poll-interval so that jobs started in the same minute
# drift apart instead of hitting DescribeTasks in lockstep.
POLL_JITTER_FLOOR = 0.75
FIRST_POLL_FLOOR = 0.1
HEARTBEAT_SECONDS = 300.0
# How often a second run of a job, waiting for the first runner's launch, reads that runner's
# registry entry for the task it launched (a local file: cheap, and faster than any task ends).
REGISTRY_LOOK_SECONDS = 0.5
# After StopTask, ECS sends SIGTERM and, 30 s later by default, SIGKILL. Wait a little longer.
STOP_CONFIRM_SECONDS = 40.0
STOP_CONFIRM_POLL = 2.0
# DescribeTasks is eventually consistent: a task just launched may briefly be MISSING.
MISSING_GRACE_SECONDS = 60.0
# One answer without the task is not proof that it is gone (a glitch, a proxy's error page):
# MISSING ends a wait only after this many answers in a row, spread over at least this long.
MISSING_CONFIRM_ANSWERS = 3
MISSING_CONFIRM_SECONDS = 30.0
# What task_or_why_missing says when an answer names neither the task nor a failure for it (an empty
# or non-JSON body, such as a proxy's HTML page with status 200): that is no word on the task.
NO_WORD_ON_TASK = "an answer that names neither the task nor a failure for it"
# botocore's standard retry mode: exponential backoff with jitter, throttling included.
AWS_RETRY_ATTEMPTS = 10
AWS_CONNECT_TIMEOUT = 10
AWS_READ_TIMEOUT = 30
LAUNCH_RESENDS = 3  # after botocore's own retries, each with the same clientToken
STOP_REASON_LIMIT = 255  # ECS's limit on StopTask's reason
# `ecsbatch stop` puts this first in the reason it sends, whatever --reason says, so that the
# runner waiting on the task can tell an operator's stop (143) from anyone else's (125).
OPERATOR_STOP_MARKER = "ecsbatch stop:"
# Tags that ecsbatch puts on every task it launches (ECS never shows a clientToken back).
TAG_CLIENT_TOKEN = "ecsbatch:client-token"  # which launch made the task: adopt a lost answer
TAG_REQUEST_HASH = "ecsbatch:request"  # what the task runs: a rerun attaches only to the same job
TAG_DEADLINE = "ecsbatch:deadline"  # when --timeout ends it: `stop --expired` after a lost server
ECSBATCH_TAG_KEYS = (TAG_CLIENT_TOKEN, TAG_REQUEST_HASH, TAG_DEADLINE)
ECSBATCH_TAG_PREFIX = "ecsbatch:"  # tag keys that only ecsbatch writes; a request file may not
TASK_TAG_LIMIT = 50  # ECS: at most 50 tags on a task
TAG_KEY_LIMIT = 128
TAG_VALUE_LIMIT = 256
IF_RUNNING_CHOICES = ("attach", "fail", "launch")
# A lost RunTask answer: after the last re-send, look for the task by its client-token tag, a
# few times, because ListTasks may not show a task in its first seconds.
ADOPT_LOOKUPS = 3
ADOPT_LOOKUP_GAP = 2.0
# `stop --expired` leaves a live runner this long to time its task out itself.
DEFAULT_EXPIRED_GRACE = "2m"
# Matched with fullmatch: `$` would also accept a trailing newline.
STARTED_BY_PATTERN = re.compile(r"[A-Za-z0-9_/-]{1,36}")
DOCKER_TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
VARIABLE_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `$${` is a literal `${`; `${NAME}` is a placeholder; any other `${` is malformed.
PLACEHOLDER_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
DURATION_PATTERN = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
IMAGE_TAG_VARIABLE = "IMAGE_TAG"
# Keys that ecsbatch derives from --job-key start with this, so `status` can tell its tasks apart.
JOB_KEY_PREFIX = "ecsbatch-"
# CloudWatch Logs: the log driver may still be flushing when the task stops, so the final read
# goes on until the stream has been quiet this long (and never longer than the limit).
LOG_SETTLE_SECONDS = 2.0
LOG_DRAIN_LIMIT_SECONDS = 30.0
LOG_DRAIN_POLL = 0.5
LOG_TAIL_LINES = 10  # shown again under the failure line
DESCRIBE_TASKS_BATCH = 100  # DescribeTasks' limit per call
# What a scheduler keeps of a job's output. The Hinemos agent keeps the FIRST job.message.length
# bytes (default 1,024) of stdout and, separately, of stderr; its manager stores
# "[yyyy/MM/dd HH:mm:ss] stdout=..., stderr=..." and cuts the whole to job_message_max_length
# characters (default 2,048, twice the agent's). -q/--quiet writes within these by construction.
DEFAULT_OUTPUT_LIMIT = 1024
MIN_OUTPUT_LIMIT = 256  # room for the exit code, the task id and the stopCode on two lines
MANAGER_MESSAGE_OVERHEAD = len("[yyyy/MM/dd HH:mm:ss] stdout=, stderr=")
# The one line on stdout under --quiet that a scheduler can match, e.g. Hinemos's job variable
# from stdout: `ecsbatch-result: task=ID exit=N from=container|ecsbatch`. Documented; keep stable.
RESULT_LINE_PREFIX = "ecsbatch-result:"
SHORTENED = "..."  # marks text cut out of a line; ASCII, so any output encoding can write it
# Progress lines of `run` and `wait` also go to the system log where this socket exists, so that
# `journalctl -t ecsbatch` shows what --quiet withholds. ECSBATCH_SYSLOG_SOCKET overrides it
# ("" turns it off).
SYSLOG_SOCKET = "/dev/log"
SYSLOG_IDENTIFIER = "ecsbatch"
SYSLOG_MESSAGE_LIMIT = 4096
DEFAULT_STOP_TIMEOUT = "2m"
# Input limits. ECS forgets a stopped task after about an hour, so a poll interval must leave
# several polls in that hour; a timeout longer than a year is a typo, not a bound.
MIN_POLL_INTERVAL = 0.05
MAX_POLL_INTERVAL = 600.0
MAX_DURATION_SECONDS = 366 * 24 * 3600.0
# A request file is small: ECS caps a task definition at 64 KiB and RunTask overrides at 8 KiB.
YAML_MAX_DEPTH = 64  # nesting levels, counted after aliases are followed
YAML_MAX_VALUES = 100_000  # scalars, lists and mappings, counted after aliases are expanded
SHOWN_LIMIT = 120  # characters of a value echoed in a message

# A task stopped by someone or something other than its own containers did not finish its
# job, whatever exit codes its containers report after SIGTERM.
EXTERNAL_STOP_CODES = frozenset(
    {"UserInitiated", "ServiceSchedulerInitiated", "SpotInterruption", "TerminationNotice"}
)

# When capacity runs out (README: "When capacity runs out"). A launch that ECS refuses for a
# reason in TRANSIENT_LAUNCH_REASONS (a RunTask `failures` entry, or the stoppedReason of a task
# that stopped with TaskFailedToStart) is tried again, with a fresh clientToken, after a wait of
# full jitter: a random 0 to min(cap, LAUNCH_BACKOFF_FIRST * 2**(n-1)) seconds before attempt
# n+1, until --launch-timeout. Every other reason is permanent and ends the job at once.
DEFAULT_LAUNCH_TIMEOUT = "5m"
DEFAULT_LAUNCH_BACKOFF = "30s"  # --launch-backoff: the longest wait between two launch attempts
LAUNCH_BACKOFF_FIRST = 2.0
# (reason, how it matches, what it means). "exact": the whole reason; "prefix": its start, as
# ECS goes on with advice ("... Please try again later or in a different availability zone").
TRANSIENT_LAUNCH_REASONS = (
    ("RESOURCE:CPU", "exact", "no container instance has the CPU free"),
    ("RESOURCE:MEMORY", "exact", "no container instance has the memory free"),
    ("RESOURCE:PORTS_TCP", "exact", "a host port the task needs is taken"),
    ("RESOURCE:PORTS_UDP", "exact", "a host port the task needs is taken"),
    ("RESOURCE:ENI", "exact", "no free network interface (awsvpc) on the instances"),
    ("RESOURCE:GPU", "exact", "no container instance has the GPUs free"),
    ("AGENT", "exact", "the instance's ECS agent is disconnected"),
    ("Capacity is unavailable at this time", "prefix", "Fargate (or Fargate Spot) has no capacity"),
)
# A task stopped by one of these, or whose host was lost, was interrupted: with
# --rerun-on-interruption it is launched again.
INTERRUPTION_STOP_CODES = ("SpotInterruption", "TerminationNotice")
# ECS's stoppedReason when an EC2 host went away under the task: "Host EC2 (instance i-0abc)
# terminated." (also "stopped"), or an instance that was terminated or deregistered.
HOST_LOSS_PATTERN = re.compile(r"\bhost\b.*\b(terminated|stopped)\b|\binstance\b.*\b(terminated|terminating|"
                               r"deregistered)\b", re.IGNORECASE | re.DOTALL)
MAX_RERUNS = 10
# What ECS takes in a capacityProviderStrategy: checked at the start, not at a rerun in the night.
CAPACITY_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_STRATEGY_PROVIDERS = 20

# Values that ECS fills into a registered task definition although the request left them out;
# they must not make an unchanged definition look changed.
CONTAINER_DEFAULTS = {"cpu": 0, "essential": True}
PORT_MAPPING_DEFAULTS = {"protocol": "tcp"}


# How a job ended, as --json's "outcome" names it (Outcome.kind). Documented; keep stable.
OUTCOME_SUCCEEDED = "succeeded"  # the counted container exited 0
OUTCOME_FAILED = "failed"  # the counted container exited non-zero, or ECS ended the task
OUTCOME_TIMEOUT = "timeout"  # --timeout expired
OUTCOME_INTERRUPTED = "interrupted"  # a signal to the runner, or `ecsbatch stop` by an operator
OUTCOME_MISSING = "missing"  # ECS no longer knows the task
OUTCOME_NOT_STOPPED = "not-stopped"  # ecsbatch had to stop the task and StopTask failed
OUTCOME_LAUNCH_FAILED = "launch-failed"  # RunTask was refused or ECS could not place the task
OUTCOME_ERROR = "error"  # an AWS call failed, or something unforeseen
OUTCOME_USAGE_ERROR = "usage-error"  # bad usage or a bad input file; nothing was launched
OUTCOME_KINDS = (OUTCOME_SUCCEEDED, OUTCOME_FAILED, OUTCOME_TIMEOUT, OUTCOME_INTERRUPTED, OUTCOME_MISSING,
                 OUTCOME_NOT_STOPPED, OUTCOME_LAUNCH_FAILED, OUTCOME_ERROR, OUTCOME_USAGE_ERROR)


class EcsbatchError(click.ClickException):
    """An error that ends the command with one line on stderr and a documented exit code."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"ecsbatch: error: {self.format_message()}", err=True)


class InputError(EcsbatchError):
    """Bad usage or a bad input file. Nothing was sent to AWS."""

    exit_code = EXIT_USAGE


class AwsError(EcsbatchError):
    """AWS refused a call or could not be reached. Callers ask `code` (AWS's error code, None when
    AWS gave none) and `no_answer` (True when the request may have gone out but no answer came)."""

    exit_code = EXIT_ECS_FAILURE

    def __init__(self, message: str, *, code: Optional[str] = None, no_answer: bool = False) -> None:
        super().__init__(message)
        self.code, self.no_answer = code, no_answer


class AlreadyRunning(EcsbatchError):
    """--if-running fail: a task of this job (same key, same request) is still live."""

    exit_code = EXIT_ALREADY_RUNNING


class StillRunning(EcsbatchError):
    """The tasks were asked to stop but are not STOPPED in time."""

    exit_code = EXIT_TIMEOUT


class LaunchInterrupted(EcsbatchError):
    """A signal arrived while RunTask had no answer, and no task was found to stop."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = EXIT_FOR_SIGNAL[signum]


class Interrupted(BaseException):
    """SIGHUP, SIGINT, SIGQUIT or SIGTERM arrived. A BaseException so that no `except Exception`
    swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class TimeoutExpired(Exception):
    pass


class TaskMissing(Exception):
    pass


def format_path(path: Tuple[Any, ...]) -> str:
    """("overrides", "containerOverrides", 0, "name") -> overrides.containerOverrides[0].name"""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """A value as a message echoes it: quoted as repr() does, so control characters, NUL and
    undecodable bytes are escaped and a newline cannot split the line, and cut to `limit`."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def clipped(text: Any, limit: int = 4 * SHOWN_LIMIT) -> str:
    """Free text from elsewhere (an AWS message, a process's stderr) on one line, cut to `limit`."""
    flat = " ".join("".join(c if c.isprintable() or c.isspace() else repr(c)[1:-1] for c in str(text)).split())
    return flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat)} characters)"


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# 3. Request files: reading, YAML, templating, validation, pinning
# ---------------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '1h30m' -> seconds."""
    compact = text.strip().lower()
    parts = DURATION_PATTERN.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact or (len(parts) > 1 and not all(u for _, u in parts)):
        raise InputError(f"bad duration {shown(text)}: use seconds or a unit, e.g. 90, 90s, 15m, 2h")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise InputError(f"bad duration {shown(text)}: it must be more than zero")
    if not seconds <= MAX_DURATION_SECONDS:  # also catches inf, from a few hundred digits
        raise InputError(f"bad duration {shown(text)}: at most {int(MAX_DURATION_SECONDS // 3600)}h (a year)")
    return seconds


def parse_launch_timeout(text: str) -> float:
    """--launch-timeout: a duration, or zero however it is written (0, 0s, 0.0, 0m): no retries."""
    compact = text.strip().lower()
    parts = DURATION_PATTERN.findall(compact)
    if parts and "".join(n + u for n, u in parts) == compact and all(float(n) == 0 for n, _ in parts):
        return 0.0
    return parse_duration(text)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def parse_assignments(pairs: Tuple[str, ...], option: str, *, identifier: bool) -> Dict[str, str]:
    """['A=1', 'B=x=y'] -> {'A': '1', 'B': 'x=y'}; later assignments win."""
    result: Dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        valid = VARIABLE_NAME_PATTERN.fullmatch(name) if identifier else name
        if not sep or not valid:
            kind = "a letter or _ then letters, digits or _" if identifier else "a non-empty name"
            raise InputError(f"{option} {shown(pair)}: expected NAME=VALUE with {kind}")
        check_utf8(pair, f"{option} {shown(name)}")
        result[name] = value
    return result


def parse_variables_file(text: str, source: str) -> Dict[str, str]:
    """NAME=VALUE lines, as docker's --env-file reads them: blank lines and # comments are
    skipped, an `export ` in front is allowed, and the value is everything after the first `=`,
    quotes included. Later lines win."""
    result: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped[len("export "):].partition("=") if stripped.startswith("export ") \
            else stripped.partition("=")
        if not sep or not VARIABLE_NAME_PATTERN.fullmatch(name):
            raise InputError(f"{source}:{number}: expected NAME=VALUE, not {shown(stripped)}")
        result[name] = value
    return result


def check_utf8(text: str, what: str) -> str:
    """Arguments arrive decoded with surrogateescape: bytes that are not UTF-8 become lone
    surrogates, which no AWS request can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} holds bytes that are not UTF-8 text (at character {exc.start + 1}): "
                         "pass it in UTF-8") from None
    return text


def render_template(data: Any, variables: Mapping[str, str], source: str) -> Any:
    """Fill `${NAME}` placeholders in every string value of parsed YAML.

    Substitution works on parsed values, never on text, and a substituted value is not scanned
    again, so no value can change the document's structure or smuggle in another placeholder.
    Every unresolved or malformed placeholder is reported at once.
    """
    unresolved: Dict[str, List[str]] = {}
    malformed: List[str] = []

    def render_string(text: str, path: Tuple[Any, ...]) -> str:
        def substitute(match: "re.Match[str]") -> str:
            token, name = match.group(0), match.group(1)
            if token == "$${":
                return "${"
            if name is None:
                malformed.append(format_path(path) or "top level")
            elif name in variables:
                return variables[name]
            else:
                unresolved.setdefault(name, []).append(format_path(path))
            return token

        return PLACEHOLDER_PATTERN.sub(substitute, text)

    def walk(value: Any, path: Tuple[Any, ...]) -> Any:
        if isinstance(value, str):
            return render_string(value, path)
        if isinstance(value, dict):
            return {key: walk(item, path + (key,)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, path + (index,)) for index, item in enumerate(value)]
        return value

    rendered = walk(data, ())
    problems = []
    if unresolved:
        names = ", ".join(f"${{{name}}} (at {', '.join(paths)})" for name, paths in unresolved.items())
        problems.append(f"unresolved {names}: pass --var NAME=VALUE or --var-file FILE, or set NAME in the environment")
    if malformed:
        problems.append(f"malformed placeholder at {', '.join(malformed)}: write ${{NAME}}, or $${{ for a literal ${{")
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems))
    return rendered


def template_variables(variables: Tuple[str, ...], extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """--var first, then --var-file, then the environment."""
    merged = dict(os.environ)
    context = click.get_current_context(silent=True)
    merged.update(context.meta.get("ecsbatch.var_file", {}) if context is not None else {})
    merged.update(parse_assignments(variables, "--var", identifier=True))
    merged.update(extra or {})
    return merged


def yaml_error_text(exc: Exception, text: str, source: str) -> str:
    """One line for any of PyYAML's errors, naming the line and column."""
    import yaml

    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return f"{source}:{line}:{column}: YAML does not allow the character {shown(character)}"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        if isinstance(exc, request_loader().RequestYamlError):
            return f"{where}: {exc.problem}"
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        return f"{where}: YAML syntax error: {clipped(what)}"
    return f"{source}: YAML error: {clipped(exc)}"


_request_loader: Any = None


def request_loader() -> Any:
    """yaml.SafeLoader, made careful: every YAML file ecsbatch reads goes through it.

    It refuses duplicate keys (SafeLoader keeps the last silently), nesting deeper than
    YAML_MAX_DEPTH (SafeLoader recurses and dies of RecursionError) and aliases that refer to
    themselves or expand past YAML_MAX_VALUES (a few hundred bytes of nested aliases would
    otherwise expand into gigabytes once the values are copied). Sizes are counted on the node
    graph with each alias counted once per use, in time linear in the file.
    """
    global _request_loader
    if _request_loader is not None:
        return _request_loader
    import yaml

    class RequestYamlError(yaml.MarkedYAMLError):
        """Well-formed YAML that ecsbatch refuses; problem and problem_mark say why and where."""

    class RequestLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > YAML_MAX_DEPTH:
                    raise RequestYamlError(problem=f"nested deeper than {YAML_MAX_DEPTH} levels",
                                           problem_mark=self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def get_single_node(self) -> Any:
            node = super().get_single_node()
            if node is not None:
                measure_expanded(node, 1, {}, set())
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: Dict[Any, Any] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    first = seen.setdefault(key, key_node)
                    if first is not key_node:
                        raise RequestYamlError(
                            problem=f"duplicate key {shown(key)}: first at line {first.start_mark.line + 1}, "
                                    f"again at line {key_node.start_mark.line + 1}; keep one of them",
                            problem_mark=key_node.start_mark)
            return super().construct_mapping(node, deep)

    def measure_expanded(node: Any, depth: int, memo: Dict[int, Tuple[int, int]], active: set) -> Tuple[int, int]:
        """(values, height) of a node with its aliases expanded; raises when past the limits."""
        known = memo.get(id(node))
        if known is None:
            if id(node) in active:
                raise RequestYamlError(problem="an alias refers to a node that contains it",
                                       problem_mark=node.start_mark)
            if depth > YAML_MAX_DEPTH:
                raise RequestYamlError(problem=f"nested deeper than {YAML_MAX_DEPTH} levels once aliases "
                                               "are followed", problem_mark=node.start_mark)
            active.add(id(node))
            values, height = 1, 1
            children = node.value if isinstance(node.value, list) else []
            for child in (c for item in children for c in (item if isinstance(item, tuple) else (item,))):
                child_values, child_height = measure_expanded(child, depth + 1, memo, active)
                values, height = values + child_values, max(height, child_height + 1)
            active.discard(id(node))
            known = memo[id(node)] = (values, height)
        if depth + known[1] - 1 > YAML_MAX_DEPTH:
            raise RequestYamlError(problem=f"nested deeper than {YAML_MAX_DEPTH} levels once aliases are followed",
                                   problem_mark=node.start_mark)
        if known[0] > YAML_MAX_VALUES:
            raise RequestYamlError(problem=f"more than {YAML_MAX_VALUES} values once aliases are expanded; "
                                           "a request file needs far fewer", problem_mark=node.start_mark)
        return known

    RequestLoader.RequestYamlError = RequestYamlError
    _request_loader = RequestLoader
    return RequestLoader


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with request_loader(); any problem is an InputError."""
    import yaml

    try:
        return yaml.load(text, Loader=request_loader())
    except yaml.YAMLError as exc:
        raise InputError(yaml_error_text(exc, text, source)) from exc
    except RecursionError as exc:  # a last guard: the depth limit should come first
        raise InputError(f"{source}: nested too deeply") from exc


def parse_yaml_mapping(text: str, source: str) -> Dict[str, Any]:
    """Parse a request file with request_loader(); errors name the line and column."""
    data = load_yaml(text, source)
    if data is None:
        raise InputError(f"{source} is empty: it must hold a mapping of request parameters")
    if not isinstance(data, dict):
        raise InputError(f"{source}: the top level must be a mapping of request parameters, "
                         f"not a {type(data).__name__}")
    return data


def describe_validation_error(error_type: str, name: str, details: Mapping[str, Any]) -> str:
    """One sentence for one finding of botocore's ParamValidator."""
    where = name.lstrip(".")
    if error_type == "unknown field":
        import difflib

        unknown, valid = details["unknown_param"], details["valid_names"]
        close = difflib.get_close_matches(str(unknown), valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
        return f"unknown key {shown(unknown)}{' in ' + where if where else ''}: {hint}"
    if error_type == "missing required field":
        return f"missing required key {details['required_name']!r}{' in ' + where if where else ''}"
    if error_type == "invalid type":
        wanted = ", ".join(t.replace("<class '", "").replace("'>", "") for t in details["valid_types"])
        got = details["param"]
        hint = " (quote it in YAML)" if "str" in wanted and isinstance(got, (int, float, bool)) else ""
        return f"{where} must be {wanted}, not {type(got).__name__} {shown(got)}{hint}"
    if error_type == "invalid range":
        return f"{where} is {shown(details['param'])}, below the minimum {details['min_allowed']}"
    if error_type == "invalid length":
        return f"{where} is too short: at least {details['min_allowed']} needed"
    return f"{where or 'request'}: {error_type} ({', '.join(f'{k}={shown(v)}' for k, v in details.items())})"


def shape_problems(operation: str, params: Mapping[str, Any]) -> List[str]:
    """Every way `params` breaks botocore's model of the ECS operation, as sentences."""
    from botocore.validate import ParamValidator

    shape = ecs_service_model().operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    return [describe_validation_error(kind, name, details) for kind, name, details in report._errors] + \
        bool_number_problems(shape, params, ())


NUMBER_SHAPES = frozenset({"integer", "long", "float", "double"})


def bool_number_problems(shape: Any, value: Any, path: Tuple[Any, ...]) -> List[str]:
    """true/false where the model wants a number: YAML's `count: true`. Python's bool is an int,
    so botocore's validator lets it through; walk the shape and refuse it here."""
    kind = shape.type_name
    if kind in NUMBER_SHAPES:
        if isinstance(value, bool):
            return [f"{format_path(path)} must be a number, not bool {value!r} "
                    "(YAML reads true/false/yes/no/on/off as booleans)"]
        return []
    problems: List[str] = []
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                problems += bool_number_problems(member, value[name], path + (name,))
    elif kind == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            problems += bool_number_problems(shape.member, item, path + (index,))
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            problems += bool_number_problems(shape.value, item, path + (key,))
    return problems


def run_request_problems(request: Mapping[str, Any]) -> List[str]:
    """Shape problems plus the rules that ecsbatch adds to RunTask."""
    problems = shape_problems("RunTask", request)
    if request.get("count", 1) != 1:
        problems.append("count must be 1 (or left out): ecsbatch runs and judges one task per job")
    if isinstance(request.get("cluster"), str) and not request["cluster"].strip():
        problems.append("cluster is empty: name the cluster, or leave the key out for ECS's default cluster")
    if "clientToken" in request:
        problems.append("remove clientToken: ecsbatch makes a fresh one for every run, "
                        "and a fixed one would make every later run return the first task")
    problems.extend(tag_problems(request.get("tags")))
    started_by = request.get("startedBy")
    if isinstance(started_by, str) and not STARTED_BY_PATTERN.fullmatch(started_by):
        problems.append(f"startedBy {shown(started_by)} must be 1-36 letters, digits, _, - or /")
    return problems


def register_request_problems(request: Mapping[str, Any]) -> List[str]:
    return shape_problems("RegisterTaskDefinition", request)


def request_kind(request: Mapping[str, Any]) -> str:
    """Which operation a request file is for: a task definition names its containers."""
    return "RegisterTaskDefinition" if "containerDefinitions" in request or "family" in request else "RunTask"


def check_docker_tag(tag: str) -> str:
    if not DOCKER_TAG_PATTERN.fullmatch(tag):
        raise InputError(f"--tag {shown(tag)} is not a valid image tag: use 1-128 characters from "
                         "A-Z a-z 0-9 _ . -, not starting with . or -")
    return tag


def check_started_by(value: str) -> str:
    if not STARTED_BY_PATTERN.fullmatch(value):
        raise InputError(f"--started-by {shown(value)}: ECS allows 1-36 letters, digits, _, - or /")
    return value


def job_key_started_by(job_key: str) -> str:
    """A startedBy that fits ECS's 36 characters, derived from any text such as Hinemos job
    variables. The same text always gives the same key, so a stop command can find the task."""
    import hashlib

    if not job_key:
        raise InputError("--job-key must not be empty")
    check_utf8(job_key, "--job-key")
    digest = hashlib.sha256(job_key.encode("utf-8")).hexdigest()
    return JOB_KEY_PREFIX + digest[: 36 - len(JOB_KEY_PREFIX)]


def chosen_started_by(started_by: Optional[str], job_key: Optional[str]) -> Optional[str]:
    """--started-by KEY or --job-key TEXT, checked; None when neither was given."""
    if started_by is not None and job_key is not None:
        raise InputError("give --started-by or --job-key, not both")
    if job_key is not None:
        return job_key_started_by(job_key)
    return None if started_by is None else check_started_by(started_by)


def tag_problems(tags: Any) -> List[str]:
    """What ECS or ecsbatch would refuse in a request's own `tags`, as sentences."""
    if not isinstance(tags, list):
        return []  # the shape check names it
    problems = []
    room = TASK_TAG_LIMIT - len(ECSBATCH_TAG_KEYS)
    if len(tags) > room:
        problems.append(f"tags has {len(tags)} entries: at most {room}, because ECS allows {TASK_TAG_LIMIT} "
                        f"tags on a task and ecsbatch adds {len(ECSBATCH_TAG_KEYS)} of its own")
    for index, tag in enumerate(tags):
        if not isinstance(tag, dict):
            continue
        key, value = tag.get("key"), tag.get("value")
        if isinstance(key, str) and key.lower().startswith(ECSBATCH_TAG_PREFIX):
            problems.append(f"tags[{index}].key {key!r} is reserved: ecsbatch writes the "
                            f"{ECSBATCH_TAG_PREFIX}* tags itself")
        if isinstance(key, str) and len(key) > TAG_KEY_LIMIT:
            problems.append(f"tags[{index}].key is {len(key)} characters long: ECS allows {TAG_KEY_LIMIT}")
        if isinstance(value, str) and len(value) > TAG_VALUE_LIMIT:
            problems.append(f"tags[{index}].value is {len(value)} characters long: ECS allows {TAG_VALUE_LIMIT}")
    return problems


def request_hash(request: Mapping[str, Any]) -> str:
    """What identifies a job's request: everything RunTask is asked to run (task definition,
    overrides, cluster, network, the file's own tags...), without what changes from one launch
    of the same job to the next: the clientToken and ecsbatch's own tags."""
    import hashlib

    essence = {k: v for k, v in request.items() if k != "clientToken"}
    if isinstance(essence.get("tags"), list):
        essence["tags"] = [t for t in essence["tags"]
                           if not (isinstance(t, dict) and str(t.get("key", "")).lower().startswith(ECSBATCH_TAG_PREFIX))]
        if not essence["tags"]:
            del essence["tags"]
    text = json.dumps(essence, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def deadline_text(now: datetime.datetime, timeout: Optional[float]) -> Optional[str]:
    """The moment --timeout ends a job launched `now`, ISO-8601 UTC to the second (rounded up)."""
    if timeout is None:
        return None
    import math

    moment = now.astimezone(datetime.timezone.utc) + datetime.timedelta(seconds=math.ceil(timeout))
    if moment.microsecond:  # never before the real deadline: `stop --expired` must not come early
        moment += datetime.timedelta(microseconds=1_000_000 - moment.microsecond)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_deadline(text: Any) -> Optional[datetime.datetime]:
    """A deadline tag's value, or None when it is not one that ecsbatch wrote."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def task_tags(user_tags: Any, *, client_token: str, request_digest: str,
              deadline: Optional[str]) -> List[Dict[str, str]]:
    """The request's own tags, then ecsbatch's. A tag of the file never replaces one of ecsbatch's."""
    ours = [{"key": TAG_CLIENT_TOKEN, "value": client_token}, {"key": TAG_REQUEST_HASH, "value": request_digest}]
    if deadline is not None:
        ours.append({"key": TAG_DEADLINE, "value": deadline})
    theirs = [dict(t) for t in (user_tags if isinstance(user_tags, list) else [])
              if not (isinstance(t, dict) and str(t.get("key", "")).lower().startswith(ECSBATCH_TAG_PREFIX))]
    return theirs + ours


def parse_capacity_provider(text: str) -> Dict[str, Any]:
    """--rerun-capacity-provider NAME[:WEIGHT[:BASE]] -> one capacityProviderStrategy item.
    WEIGHT defaults to 1 (ECS refuses a strategy whose weights are all 0) and BASE to none."""
    name, *numbers = text.split(":")
    if not name.strip() or len(numbers) > 2 or not all(re.fullmatch(r"[0-9]+", n) for n in numbers):
        raise InputError(f"bad capacity provider {shown(text)}: use NAME[:WEIGHT[:BASE]], e.g. FARGATE or "
                         "FARGATE:1:1")
    if not CAPACITY_PROVIDER_NAME.fullmatch(name.strip()):
        raise InputError(f"bad capacity provider {shown(text)}: a NAME is 1-255 letters, digits, _ and -")
    item: Dict[str, Any] = {"capacityProvider": name.strip(), "weight": int(numbers[0]) if numbers else 1}
    if len(numbers) == 2:
        item["base"] = int(numbers[1])
    if not 0 <= item["weight"] <= 1000 or not 0 <= item.get("base", 0) <= 100000:
        raise InputError(f"bad capacity provider {shown(text)}: WEIGHT is 0-1000 and BASE 0-100000")
    return item


def capacity_strategy(texts: Tuple[str, ...]) -> List[Dict[str, Any]]:
    """Every --rerun-capacity-provider, checked as ECS checks a strategy."""
    if len(texts) > MAX_STRATEGY_PROVIDERS:
        raise InputError(f"--rerun-capacity-provider: at most {MAX_STRATEGY_PROVIDERS} providers (ECS's limit), "
                         f"not {len(texts)}")
    strategy = [parse_capacity_provider(text) for text in texts]
    names = [item["capacityProvider"] for item in strategy]
    if len(set(names)) != len(names):
        raise InputError(f"--rerun-capacity-provider names a provider twice: {', '.join(names)}")
    if sum(1 for item in strategy if item.get("base")) > 1:
        raise InputError("--rerun-capacity-provider: only one provider may have a BASE")
    if strategy and not any(item["weight"] for item in strategy):
        raise InputError("--rerun-capacity-provider: at least one provider needs a WEIGHT above 0")
    return strategy


def rerun_request(request: Mapping[str, Any], strategy: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The RunTask request of a rerun after an interruption: the job's own, or, with
    --rerun-capacity-provider, with that capacityProviderStrategy and without launchType (ECS
    refuses the two together). Its request tag stays the job's, so a rerun of the job attaches."""
    rerun = copy.deepcopy(dict(request))
    if strategy:
        rerun.pop("launchType", None)
        rerun["capacityProviderStrategy"] = [dict(item) for item in strategy]
    return rerun


def build_run_request(
    base: Mapping[str, Any],
    *,
    target_container: str,
    env: Mapping[str, str],
    command: Tuple[str, ...],
) -> Dict[str, Any]:
    """Merge -e and the trailing command into the target container's overrides; the CLI wins."""
    request = copy.deepcopy(dict(base))
    if not env and not command:
        return request
    overrides = request.setdefault("overrides", {})
    container_overrides = overrides.setdefault("containerOverrides", [])
    entry = next((o for o in container_overrides if o.get("name") == target_container), None)
    if entry is None:
        entry = {"name": target_container}
        container_overrides.append(entry)
    if env:
        merged = [e for e in entry.get("environment", []) if e.get("name") not in env]
        entry["environment"] = merged + [{"name": k, "value": v} for k, v in env.items()]
    if command:
        entry["command"] = list(command)
    return request


def normalized_definition(definition: Mapping[str, Any], fields: List[str]) -> Dict[str, Any]:
    """A task definition reduced to the request fields, without empties or ECS-filled defaults."""

    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            pruned = {k: prune(v) for k, v in value.items()}
            return {k: v for k, v in pruned.items() if v not in (None, [], {})}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    def drop_defaults(item: Dict[str, Any], defaults: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in item.items() if not (k in defaults and defaults[k] == v)}

    result = prune({k: v for k, v in definition.items() if k in fields})
    containers = []
    for container in result.get("containerDefinitions", []):
        container = drop_defaults(container, CONTAINER_DEFAULTS)
        if "portMappings" in container:
            container["portMappings"] = [
                drop_defaults({k: v for k, v in m.items()
                               if not (k == "hostPort" and v == m.get("containerPort"))},
                              PORT_MAPPING_DEFAULTS)
                for m in container["portMappings"]]
        containers.append(container)
    if containers:
        result["containerDefinitions"] = containers
    return result


def definition_matches(request: Mapping[str, Any], registered: Mapping[str, Any],
                       registered_tags: List[Mapping[str, str]], fields: List[str]) -> bool:
    """Would registering `request` give the same definition as the `registered` revision?"""
    wanted = normalized_definition(request, fields)
    have = normalized_definition(dict(registered, tags=registered_tags), fields)
    wanted_tags = sorted((t["key"], t.get("value")) for t in wanted.pop("tags", []))
    have_tags = sorted((t["key"], t.get("value")) for t in have.pop("tags", []))
    return wanted == have and wanted_tags == have_tags


def names_one_revision(task_definition: str) -> bool:
    """Does `task_definition` name one revision (family:N, or the ARN of one)? A revision never
    changes once registered, unlike a bare family, which names the latest."""
    return re.fullmatch(r"(arn:aws[a-z-]*:ecs:[^:]*:[0-9]*:task-definition/)?[A-Za-z0-9_-]{1,255}:[1-9][0-9]{0,9}",
                        task_definition) is not None


def pin_task_definition(text: str, value: str, source: str) -> str:
    """Set the top-level `taskDefinition` of a YAML file to `value`, keeping every other byte."""
    import yaml

    try:
        root = yaml.compose(text, Loader=request_loader())
    except yaml.YAMLError as exc:
        raise InputError(f"cannot pin, {yaml_error_text(exc, text, source)}") from exc
    if not isinstance(root, yaml.MappingNode):
        raise InputError(f"{source}: cannot pin, the top level is not a mapping")
    rendered = json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    plain = value if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_:/.-]*", value) else rendered
    for key_node, value_node in root.value:
        if key_node.value == "taskDefinition":
            if not isinstance(value_node, yaml.ScalarNode):
                raise InputError(f"{source}: cannot pin, taskDefinition is not a plain value")
            start, end = value_node.start_mark.index, value_node.end_mark.index
            new_text = text[:start] + plain + text[end:]
            break
    else:
        new_text = text + ("" if text.endswith("\n") or not text else "\n") + f"taskDefinition: {plain}\n"
    original, pinned = load_yaml(text, source), load_yaml(new_text, source)
    original["taskDefinition"] = value
    if pinned != original:
        raise InputError(f"{source}: cannot pin taskDefinition safely; set it to {value} by hand")
    return new_text


def dump_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise InputError(f"{what} {path} not found: pass its path, or run where the file is") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {one_line(exc)}") from exc


def load_request(path: str, variables: Mapping[str, str]) -> Dict[str, Any]:
    """Read, parse and render one request file."""
    return render_template(parse_yaml_mapping(read_text(path, "request file"), path), variables, path)


def fail_on_problems(source: str, problems: List[str]) -> None:
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems))


def read_pin_target(path: str) -> str:
    """Read the --pin file and prove, before anything is registered, that it can be rewritten:
    a pin that fails after RegisterTaskDefinition leaves a revision that nothing runs."""
    text = read_text(path, "--pin file")
    pin_task_definition(text, "check:1", path)  # fail before registering, not after
    target = os.path.realpath(path)
    if not os.access(target, os.W_OK):
        raise InputError(f"--pin file {path} is read-only: make it writable, or pin another file")
    try:
        fd, temporary = create_beside(target, 0o600)
        os.close(fd)
        os.unlink(temporary)
    except OSError as exc:
        raise InputError(f"--pin file {path}: cannot write in its directory {os.path.dirname(target)}: "
                         f"{clipped(exc.strerror or exc)}") from exc
    return text


def create_beside(target: str, mode: int) -> Tuple[int, str]:
    """A new file next to `target` with an unguessable name, created exclusively (never through a
    symlink or over another file), with `mode` from the first byte on."""
    import secrets

    directory, name = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temporary = os.path.join(directory, f".{name}.ecsbatch-{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(temporary, flags, mode)
        except FileExistsError:
            continue
        os.fchmod(fd, mode)  # os.open's mode passes through the umask; the final mode is exact
        return fd, temporary
    raise FileExistsError(f"no free temporary name beside {target}")


def write_atomically(path: str, text: str) -> None:
    """Replace the file at `path`, or the file a symlink at `path` points to, in one rename.

    A symlink is followed, as the editors do: the link stays and its target is pinned, which
    is the file the jobs read (e.g. current/run-task.yaml -> releases/…/run-task.yaml)."""
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o644
    fd, temporary = create_beside(target, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------------------------------------
# 4. The verdict: judgment, summaries, failure context
# ---------------------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """What happened to the job: the exit code, its kind (one of OUTCOME_KINDS, for --json), one
    line that explains it, and the task as last seen. Every judgment below returns one."""

    exit_code: int
    kind: str
    message: str
    task: Optional[Dict[str, Any]] = None


def essential_container_names(task_definition: Mapping[str, Any]) -> List[str]:
    """Essential containers in definition order. ECS treats a missing `essential` as true."""
    return [c["name"] for c in task_definition.get("containerDefinitions", []) if c.get("essential", True)]


def counted_container_names(task_definition: Mapping[str, Any], container: Optional[str]) -> List[str]:
    """The containers whose exit codes decide the job: --container, else the essential ones."""
    names = [c["name"] for c in task_definition.get("containerDefinitions", [])]
    if container is not None:
        if container not in names:
            raise InputError(f"--container {shown(container)} is not in task definition "
                             f"{task_definition_label(task_definition)} (it has {', '.join(names)})")
        return [container]
    return essential_container_names(task_definition) or names


def task_definition_label(task_definition: Mapping[str, Any]) -> str:
    return f"{task_definition.get('family')}:{task_definition.get('revision')}"


def tag_value(task: Mapping[str, Any], key: str) -> Optional[str]:
    """One tag of a DescribeTasks entry (asked with include=["TAGS"])."""
    for tag in task.get("tags") or []:
        if tag.get("key") == key:
            return tag.get("value")
    return None


def is_ecsbatch_task(task: Mapping[str, Any]) -> bool:
    started_by = task.get("startedBy") or ""
    return started_by == DEFAULT_STARTED_BY or started_by.startswith(JOB_KEY_PREFIX)


def expired_tasks(tasks: List[Mapping[str, Any]], now: datetime.datetime,
                  grace: float) -> List[Tuple[Mapping[str, Any], datetime.datetime]]:
    """ecsbatch's live tasks whose deadline passed more than `grace` seconds ago, with it.

    A task counts as ecsbatch's only when it carries both its client-token and deadline tags,
    which only ecsbatch writes; a task without a deadline (no --timeout) never expires."""
    found = []
    for task in tasks:
        if task.get("lastStatus") == "STOPPED" or tag_value(task, TAG_CLIENT_TOKEN) is None:
            continue
        deadline = parse_deadline(tag_value(task, TAG_DEADLINE))
        if deadline is not None and now - deadline >= datetime.timedelta(seconds=grace):
            found.append((task, deadline))
    return found


class RerunDecision(NamedTuple):
    action: str  # launch | attach | refuse | fail
    task: Optional[Mapping[str, Any]]
    message: str


def rerun_decision(live: List[Mapping[str, Any]], digest: str, key: str, if_running: str) -> RerunDecision:
    """What `run` does when tasks with the job's key are not STOPPED yet (issue: never run twice).

    attach: one live task of the same request is this job: wait on it instead of launching.
    fail: exit EXIT_ALREADY_RUNNING rather than attach. A live task of another request (or of no
    known request) shares the key by mistake: refuse, whatever --if-running says, except launch.
    """
    live = [t for t in live if t.get("lastStatus") != "STOPPED"]
    if if_running == "launch" or not live:
        return RerunDecision("launch", None, "")
    same = [t for t in live if tag_value(t, TAG_REQUEST_HASH) == digest]
    others = [t for t in live if tag_value(t, TAG_REQUEST_HASH) != digest]
    ids = ", ".join(task_id(str(t.get("taskArn"))) for t in others)
    if others:
        what = ("runs a different request (task definition, overrides or network differ)"
                if all(tag_value(t, TAG_REQUEST_HASH) for t in others)
                else f"carries no {TAG_REQUEST_HASH} tag, so it cannot be known to be this job")
        return RerunDecision("refuse", others[0], (
            f"key {key} is in use by another job: task {ids} {what}; give this job its own --job-key, "
            "or stop that task first"))
    oldest = sorted(same, key=lambda t: str(t.get("createdAt") or ""))[0]
    if len(same) > 1:
        return RerunDecision("refuse", oldest, (
            f"key {key} has {len(same)} live tasks of this job ({', '.join(task_id(str(t.get('taskArn'))) for t in same)}); "
            "stop the extra ones with ecsbatch stop TASK, then rerun"))
    tid = task_id(str(oldest.get("taskArn")))
    if if_running == "fail":
        return RerunDecision("fail", oldest, f"task {tid} of this job (key {key}) is still {oldest.get('lastStatus')}; "
                                             "not launching another (--if-running fail)")
    return RerunDecision("attach", oldest, f"task {tid} of this job (key {key}) is already "
                                           f"{oldest.get('lastStatus')}: attaching to it instead of launching another")


def judge_stopped_task(task: Mapping[str, Any], counted_names: List[str], *, late_stop: bool = False) -> Outcome:
    """The whole success judgment for a STOPPED task, from its DescribeTasks entry.

    A task stopped by an operator with `ecsbatch stop` ends as a SIGTERM does (143): both of
    Hinemos's stop types must read as a deliberate stop. A task that failed to start, was stopped
    from outside otherwise, or whose counted container has no exit code is an ECS failure (125),
    never a success. Otherwise the first non-zero exit code among the counted containers, in
    definition order, decides; sidecars never do. With `late_stop`, the stopCode is a stop that
    ECS recorded after the counted containers had exited, and the exit codes decide.
    """
    stop_code = None if late_stop else task.get("stopCode")
    containers = {c.get("name"): c for c in task.get("containers", [])}
    counted = [containers.get(name, {"name": name}) for name in counted_names]
    context = failure_context(task, counted)
    tid = task_id(task.get("taskArn", "?"))

    def judged(code: int, message: str) -> Outcome:
        return Outcome(code, judged_kind(code, task, late_stop=late_stop), message, dict(task))

    if stop_code == "TaskFailedToStart":
        return judged(EXIT_ECS_FAILURE, f"task {tid} failed to start: {context}")
    if is_operator_stop(task) and not late_stop:
        return judged(EXIT_SIGTERM, f"task {tid} was stopped by an operator with ecsbatch stop: {context}")
    if stop_code in EXTERNAL_STOP_CODES:
        return judged(EXIT_ECS_FAILURE, f"task {tid} was stopped before its job finished: {context}")
    if not counted:
        return judged(EXIT_ECS_FAILURE, f"task {tid} has no container to judge: {context}")
    for container in counted:
        code = container.get("exitCode")
        if not isinstance(code, int) or isinstance(code, bool):
            return judged(EXIT_ECS_FAILURE,
                          f"task {tid}: container {container.get('name')} has no exit code: {context}")
        if not 0 <= code <= 255:
            return judged(EXIT_ECS_FAILURE,
                          f"task {tid}: container {container.get('name')} reported exit code {code}, "
                          f"outside 0-255: {context}")
    for container in counted:
        if container["exitCode"] != 0:
            return judged(container["exitCode"], f"task {tid} failed: container {container['name']} exited "
                                                 f"{container['exitCode']}: {context}")
    names = ", ".join(c["name"] for c in counted)
    return judged(0, f"task {tid} succeeded: {names} exited 0")


def failure_context(task: Mapping[str, Any], counted: List[Mapping[str, Any]]) -> str:
    """stopCode, stoppedReason and each counted container's exit code and reason, on one line."""
    parts = [f"stopCode={task.get('stopCode') or '-'}",
             f"stoppedReason={one_line(task.get('stoppedReason') or '-')!r}"]
    for container in counted:
        code = container.get("exitCode")
        parts.append(f"{container.get('name')}: exitCode={'-' if code is None else code}, "
                     f"reason={one_line(container.get('reason') or '-')!r}")
    return "; ".join(parts)


def missing_is_final(*, seen: bool, answers: int, first_missing_at: float, now: float, started_at: float,
                     launch_grace: float) -> bool:
    """Whether MISSING answers in a row prove that ECS does not know the task.

    One odd answer is not proof: it takes MISSING_CONFIRM_ANSWERS answers in a row over at least
    MISSING_CONFIRM_SECONDS. A task never seen yet also gets `launch_grace` from the start of the
    wait, because DescribeTasks may not show a task just launched. All times are one clock's.
    """
    if answers < MISSING_CONFIRM_ANSWERS or now - first_missing_at < MISSING_CONFIRM_SECONDS:
        return False
    return seen or now - started_at >= launch_grace


class StopAttempt(NamedTuple):
    """What happened when ecsbatch asked ECS to stop the task it waits on."""

    reason: str  # the stoppedReason that ecsbatch sent
    accepted: bool  # ECS answered StopTask
    error: Optional[str]  # why StopTask failed, when it did
    before: Optional[Mapping[str, Any]]  # the task as last seen before StopTask
    at_stop: Optional[Mapping[str, Any]]  # the task in StopTask's answer: as it was when the stop took effect
    task: Optional[Mapping[str, Any]]  # the task as last seen afterwards


def exited_containers(task: Optional[Mapping[str, Any]], counted_names: List[str]) -> bool:
    """Had every counted container already exited, with an exit code, in this state of the task?"""
    if not task or not counted_names:
        return False
    codes = {c.get("name"): c.get("exitCode") for c in task.get("containers", [])}
    return all(isinstance(codes.get(name), int) and not isinstance(codes.get(name), bool) for name in counted_names)


def recorded_our_stop(task: Mapping[str, Any], attempt: StopAttempt) -> bool:
    """Did ECS record ecsbatch's own StopTask (UserInitiated with exactly the reason we sent)?"""
    return task.get("stopCode") == "UserInitiated" and \
        one_line(task.get("stoppedReason") or "") == one_line(attempt.reason)


def exited_before_our_stop(attempt: StopAttempt, counted_names: List[str]) -> bool:
    """Had the counted containers exited before our stop took effect: in the last poll before it,
    or in StopTask's own answer? ECS may still record the stop, which came too late to matter."""
    return exited_containers(attempt.before, counted_names) or exited_containers(attempt.at_stop, counted_names)


def stop_command(cluster: Optional[str], task_arn: str) -> str:
    """The command that stops this one task, for a verdict that could not stop it."""
    return f"ecsbatch stop {cli_cluster_arg(cluster)}{task_arn}"


def judge_after_stop(ending: Outcome, attempt: StopAttempt, counted_names: List[str], *, cluster: Optional[str],
                     task_arn: str) -> Outcome:
    """The outcome when ecsbatch ended the wait (`ending`: a timeout, a signal, an error) and tried StopTask.

    - Our StopTask ended it: the ending's code and kind (124, 143, ...), "was stopped (STOPPED)".
    - It had stopped on its own or by someone else: judged as it stopped, whatever fired meanwhile.
    - ECS accepted a stop but the task is not STOPPED yet: the ending's code, "ECS is stopping".
    - StopTask failed and the task may still run: 125 (OUTCOME_NOT_STOPPED), with the command
      that stops it; never "was stopped".
    """
    tid = task_id(task_arn)
    task = attempt.task or {}
    last_seen = dict(attempt.task) if attempt.task else None
    status = task.get("lastStatus")
    if status == "STOPPED":
        ours, early = recorded_our_stop(task, attempt), exited_before_our_stop(attempt, counted_names)
        if ours and not early:
            return ending._replace(message=f"{ending.message}; task {tid} was stopped (STOPPED)", task=last_seen)
        judged = judge_stopped_task(task, counted_names, late_stop=ours)
        return judged._replace(message=f"{judged.message} (it stopped before ecsbatch's StopTask took effect: "
                                       f"{ending.message})")
    state = status or "state unknown"
    if attempt.accepted or task.get("desiredStatus") == "STOPPED":
        return ending._replace(message=f"{ending.message}; StopTask was accepted and ECS is stopping task {tid} "
                                       f"({state})", task=last_seen)
    return Outcome(EXIT_ECS_FAILURE, OUTCOME_NOT_STOPPED,
                   f"{ending.message}; task {tid} was NOT stopped and may still be {state}: StopTask failed "
                   f"({attempt.error}); stop it with: {stop_command(cluster, task_arn)}", last_seen)


def judge_missing(missing: str, attempt: StopAttempt, *, cluster: Optional[str], task_arn: str,
                  last_seen: Optional[Dict[str, Any]] = None) -> Outcome:
    """125 when ECS stopped knowing the task; say whether the StopTask sent just in case went through."""
    if attempt.accepted:
        return Outcome(EXIT_ECS_FAILURE, OUTCOME_MISSING, f"{missing}; StopTask was accepted, so ECS still knows the "
                       "task and is stopping it", last_seen)
    return Outcome(EXIT_ECS_FAILURE, OUTCOME_MISSING, f"{missing}; StopTask failed ({attempt.error}): if the task "
                   f"still runs, stop it with: {stop_command(cluster, task_arn)}", last_seen)


def ending_for(exc: BaseException, *, timeout_text: str, during_launch: bool = False) -> Outcome:
    """What ends a wait that ecsbatch cut short, before the task is stopped: a signal is its own
    exit code, an expired --timeout is 124, and anything else (a bug of ours) is 125."""
    if isinstance(exc, Interrupted):
        when = " during launch" if during_launch else ""
        return Outcome(EXIT_FOR_SIGNAL[exc.signum], OUTCOME_INTERRUPTED,
                       f"{signal.Signals(exc.signum).name} received by the job runner{when}")
    if isinstance(exc, TimeoutExpired):
        return Outcome(EXIT_TIMEOUT, OUTCOME_TIMEOUT, f"--timeout {timeout_text} expired")
    return Outcome(EXIT_ECS_FAILURE, OUTCOME_ERROR, f"internal error while waiting ({type(exc).__name__}: "
                   f"{one_line(exc)}; rerun with --debug for the traceback)")


def launch_failure_message(failures: List[Mapping[str, Any]]) -> str:
    details = "; ".join(
        one_line(" ".join(str(f.get(k)) for k in ("arn", "reason", "detail") if f.get(k)))
        for f in failures) or "no task and no reason in the answer"
    return f"RunTask started no task: {details}"


def transient_launch_reason(reason: Any) -> Optional[str]:
    """The entry of TRANSIENT_LAUNCH_REASONS that a RunTask failure reason (or the stoppedReason of
    a task that failed to start) matches, or None: the failure is permanent and never retried."""
    text = str(reason or "").strip()
    for known, how, _ in TRANSIENT_LAUNCH_REASONS:
        if text == known or (how == "prefix" and text.startswith(known)):
            return known
    return None


def transient_run_task_failure(failures: List[Mapping[str, Any]]) -> Optional[str]:
    """For a RunTask answer that started no task: the transient reason, when every failure it
    names is transient (one permanent failure, or none named, makes the whole answer permanent)."""
    reasons = [transient_launch_reason(f.get("reason")) for f in failures]
    if not reasons or None in reasons:
        return None
    return reasons[0]


def failed_start_for_capacity(task: Mapping[str, Any]) -> Optional[str]:
    """The transient reason of a task that stopped with TaskFailedToStart for lack of capacity."""
    if task.get("stopCode") != "TaskFailedToStart":
        return None
    return transient_launch_reason(task.get("stoppedReason"))


def interruption_of(task: Mapping[str, Any], counted_names: List[str]) -> Optional[str]:
    """What took the task from its job before the job finished, when it was ECS's capacity and not
    the job: stopCode SpotInterruption or TerminationNotice, or a lost host (a counted container
    has no exit code, and the stoppedReason says the host or instance went away). Else None."""
    code = task.get("stopCode")
    if code in INTERRUPTION_STOP_CODES:
        return str(code)
    if code in ("TaskFailedToStart", "UserInitiated") or not counted_names:
        return None
    if exited_containers(task, counted_names):  # every counted code is there: they judge the job
        return None
    return "host lost" if HOST_LOSS_PATTERN.search(str(task.get("stoppedReason") or "")) else None


def launch_backoff(attempt: int, rng: random.Random, *, cap: float, first: float = LAUNCH_BACKOFF_FIRST) -> float:
    """The wait after launch attempt `attempt` (1 for the first): full jitter, a random 0 to
    min(cap, first * 2**(attempt-1)) seconds, so that jobs refused together do not come back together."""
    return rng.uniform(0.0, min(cap, first * 2.0 ** min(max(attempt - 1, 0), 32)))


class LaunchWait(NamedTuple):
    wait: Optional[float]  # seconds before the next attempt; None: no next attempt
    why_not: str  # when wait is None: GAVE_UP_LAUNCH_TIMEOUT or GAVE_UP_TIMEOUT


GAVE_UP_LAUNCH_TIMEOUT = "launch-timeout"
GAVE_UP_TIMEOUT = "timeout"


def next_launch_wait(attempt: int, rng: random.Random, *, now: float, launch_deadline: float,
                     job_deadline: Optional[float], cap: float) -> LaunchWait:
    """Whether and when to try the launch again after attempt `attempt` failed for a transient reason.

    No attempt starts after the launch deadline (--launch-timeout from the launch's first
    attempt): the last wait is cut to end there. No attempt starts either when --timeout would
    have expired by then, for the whole job, retries included, lives within --timeout."""
    if now >= launch_deadline:
        return LaunchWait(None, GAVE_UP_LAUNCH_TIMEOUT)
    wait = min(launch_backoff(attempt, rng, cap=cap), launch_deadline - now)
    if job_deadline is not None and now + wait >= job_deadline:
        return LaunchWait(None, GAVE_UP_TIMEOUT)
    return LaunchWait(wait, "")


class AttemptDecision(NamedTuple):
    action: str  # ATTEMPT_DONE | ATTEMPT_RETRY (it never started: launch again) | ATTEMPT_RERUN
    why: str


ATTEMPT_DONE, ATTEMPT_RETRY, ATTEMPT_RERUN = "done", "retry", "rerun"


def after_attempt(kind: str, task: Optional[Mapping[str, Any]], counted_names: List[str], *, reruns_done: int,
                  reruns_allowed: int) -> AttemptDecision:
    """What follows a task that the wait judged (Outcome.kind and the task as it stopped).

    A task that failed to start for lack of capacity is a launch that did not happen: retry it
    (within --launch-timeout). A task that ECS interrupted (Spot, a termination notice, a lost
    host) is rerun while --rerun-on-interruption allows. Everything else is the job's verdict;
    so is any stop that ecsbatch or an operator asked for (its kind is not "failed")."""
    if kind != OUTCOME_FAILED or not task or task.get("lastStatus") != "STOPPED":
        return AttemptDecision(ATTEMPT_DONE, "")
    tid = task_id(str(task.get("taskArn") or "?"))
    reason = failed_start_for_capacity(task)
    if reason is not None:
        return AttemptDecision(ATTEMPT_RETRY, f"task {tid} failed to start: {reason}")
    why = interruption_of(task, counted_names)
    if why is None:
        return AttemptDecision(ATTEMPT_DONE, "")
    if reruns_done >= reruns_allowed:
        left = "no rerun was asked for (--rerun-on-interruption)" if not reruns_allowed else \
            f"no rerun is left of --rerun-on-interruption {reruns_allowed}"
        return AttemptDecision(ATTEMPT_DONE, f"task {tid} was interrupted ({why}); {left}")
    return AttemptDecision(ATTEMPT_RERUN, f"task {tid} was interrupted ({why}): rerun {reruns_done + 1} of "
                                          f"{reruns_allowed}")


def attempts_note(launches: int, reruns: int) -> Optional[str]:
    """How many launch attempts the job took, for the verdict, compact enough for --quiet:
    None for one, else e.g. "after 3 launch attempts (1 rerun)"."""
    if launches <= 1 and not reruns:
        return None
    rerun_part = f" ({reruns} rerun{'s' if reruns != 1 else ''})" if reruns else ""
    return f"after {launches} launch attempt{'s' if launches != 1 else ''}{rerun_part}"


def launch_gave_up_message(last: str, *, attempts: int, elapsed: float, why_not: str, launch_timeout: str,
                           timeout: Optional[str]) -> str:
    """The verdict when no launch attempt started the task: the last failure, and for more than
    one attempt, how many over how long and which bound ended the retries."""
    if why_not == GAVE_UP_TIMEOUT:
        return (f"{last}; gave up after {attempts} launch attempt{'s' if attempts != 1 else ''} over "
                f"{format_duration(elapsed)}: --timeout {timeout} would expire before the next; nothing is running")
    if attempts <= 1:
        return last
    return (f"{last}; gave up after {attempts} launch attempts over {format_duration(elapsed)} "
            f"(--launch-timeout {launch_timeout}); nothing is running")


def stop_reason_text(why: str) -> str:
    return f"ecsbatch: {why}"[:STOP_REASON_LIMIT]


def operator_stop_reason(reason: str) -> str:
    """The reason `ecsbatch stop` sends: the marker first, so no --reason can hide it."""
    return f"{OPERATOR_STOP_MARKER} {one_line(reason)}"[:STOP_REASON_LIMIT]


def is_operator_stop(task: Mapping[str, Any]) -> bool:
    return task.get("stopCode") == "UserInitiated" and \
        str(task.get("stoppedReason") or "").startswith(OPERATOR_STOP_MARKER)


def iso_time(value: Any) -> Optional[str]:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def task_summary(
    task: Optional[Mapping[str, Any]],
    *,
    task_arn: Optional[str],
    counted_names: List[str],
    exit_code: int,
    outcome: str,
    message: str,
    elapsed: float,
    failures: Optional[List[Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """The object that --json prints on exit."""
    task = task or {}
    summary = {
        "taskArn": task.get("taskArn", task_arn),
        "lastStatus": task.get("lastStatus"),
        "stopCode": task.get("stopCode"),
        "stoppedReason": task.get("stoppedReason"),
        "containers": [
            {"name": c.get("name"), "exitCode": c.get("exitCode"), "reason": c.get("reason"),
             "counted": c.get("name") in counted_names}
            for c in task.get("containers", [])
        ],
        "exitCode": exit_code,
        "outcome": outcome,
        "message": message,
        "timings": {
            "createdAt": iso_time(task.get("createdAt")),
            "startedAt": iso_time(task.get("startedAt")),
            "stoppedAt": iso_time(task.get("stoppedAt")),
            "waitedSeconds": round(elapsed, 3),
        },
    }
    if failures:
        summary["failures"] = list(failures)
    summary["exitCodeFrom"] = "ecsbatch" if code_owner(task, counted_names, exit_code, outcome) is None else "container"
    return summary


def code_owner(task: Optional[Mapping[str, Any]], counted_names: List[str], exit_code: int,
               outcome: str) -> Optional[str]:
    """The counted container(s) whose own exit code `exit_code` is, or None when it is ecsbatch's.

    Only a task that stopped by itself and was judged by its containers passes its code on: a
    container that itself exits 2, 124, 125 or 143 is told apart from ecsbatch's codes here.
    """
    if outcome not in (OUTCOME_SUCCEEDED, OUTCOME_FAILED) or not task or task.get("lastStatus") != "STOPPED":
        return None
    if task.get("stopCode") in EXTERNAL_STOP_CODES or task.get("stopCode") == "TaskFailedToStart":
        return None
    containers = {c.get("name"): c for c in task.get("containers", [])}
    codes = [(name, containers.get(name, {}).get("exitCode")) for name in counted_names]
    if not codes or any(not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255
                        for _, code in codes):
        return None
    failed = [(name, code) for name, code in codes if code != 0]
    if failed:
        return failed[0][0] if failed[0][1] == exit_code else None
    return ", ".join(name for name, _ in codes) if exit_code == 0 else None


def judged_kind(exit_code: int, task: Mapping[str, Any], *, late_stop: bool = False) -> str:
    """The --json outcome of a task judged as it stopped."""
    if exit_code == 0:
        return OUTCOME_SUCCEEDED
    return OUTCOME_INTERRUPTED if is_operator_stop(task) and not late_stop else OUTCOME_FAILED


# ---------------------------------------------------------------------------------------------
# 5. AWS: clients, wrappers, errors, redaction
# ---------------------------------------------------------------------------------------------


def task_id(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[-1]


def cluster_arg(cluster: Optional[str]) -> Dict[str, str]:
    """The cluster keyword for an ECS call; no cluster means ECS's default cluster."""
    return {"cluster": cluster} if cluster else {}


def cli_cluster_arg(cluster: Optional[str]) -> str:
    """The same, for a command line printed for an operator."""
    return f"--cluster {cluster} " if cluster else ""


def cluster_for_task(task: str, cluster: Optional[str]) -> Optional[str]:
    """The cluster for a TASK argument: --cluster, else the one a long-format ARN names."""
    if cluster is None and task.startswith("arn:"):
        parts = task.split(":", 5)[-1].split("/")  # task/CLUSTER/ID
        if len(parts) == 3:
            return parts[1]
    return cluster


REDACTED = "<redacted>"

# What --debug must never print: the session token, the access key id, signatures (and so the
# Authorization header), in every shape botocore's and urllib3's debug lines give them.
SECRET_TEXT_PATTERNS = [
    (re.compile(r"""(?i)(['"](?:authorization|x-amz-security-token)['"]\s*:\s*b?)(['"]).*?\2"""),
     r"\1\2" + REDACTED + r"\2"),
    (re.compile(r"(?im)^(x-amz-security-token\s*:).*$"), r"\1" + REDACTED),
    (re.compile(r"(?i)((?:x-amz-security-token|x-amz-signature|x-amz-credential)=)[^&\s'\"]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(credential=)[^/,&<\s'\"]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(signature\s*[=:]\s*)[0-9a-f]{64}"), r"\1" + REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b"), REDACTED),
]


def redact_environment(value: Any) -> Any:
    """A request or an answer with the `value` of every `environment` entry hidden: -e values,
    the task definition's and the overrides'. Names, secrets' valueFrom ARNs and all else stay."""
    if isinstance(value, dict):
        return {key: ([dict(entry, value=REDACTED) if isinstance(entry, dict) and "value" in entry else entry
                       for entry in item] if key == "environment" and isinstance(item, list)
                      else redact_environment(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact_environment(item) for item in value]
    return value


def redact_body(body: Any) -> Any:
    """A JSON request or answer body (bytes or str) with its environment values hidden."""
    if not isinstance(body, (bytes, str)) or not body.lstrip()[:1] in (b"{", "{"):
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    text = json.dumps(redact_environment(data))
    return text.encode("utf-8") if isinstance(body, bytes) else text


def redact_debug_text(text: str, secrets: Any = ()) -> str:
    """One debug line without credentials: known secret values first, then the patterns."""
    for secret in sorted((s for s in secrets if s and len(s) >= 8), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in SECRET_TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def aws_error_text(exc: BaseException) -> str:
    """AWS's own message, on one line, with what to do for the errors operators meet."""
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Error"), clipped(error.get("Message", ""))
        text = f"{exc.operation_name}: {code}: {message}"
        if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
            text += " (grant this action to the instance role or profile in use)"
        return text
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ("no AWS credentials found: attach an instance role, or set AWS_PROFILE "
                "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"cannot reach AWS at {exc.kwargs.get('endpoint_url')}: check the network and AWS_ENDPOINT_URL"
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        provider = exc.kwargs.get("provider")
        source = "the profile's credential_process" if provider == "custom-process" else f"{provider}"
        said = clipped(exc.kwargs.get("error_msg") or "").rstrip(" :")
        return (f"cannot get AWS credentials from {source}: "
                f"{said if said else 'it failed without saying why'}; run it by hand to see why, "
                "or fix the profile")
    text = clipped(exc) or type(exc).__name__
    return f"{text.rstrip(' :')} (no further detail)" if text.endswith(":") else text


NO_REGION_TEXT = ("no AWS region: pass --region, or set AWS_REGION (or AWS_DEFAULT_REGION), "
                  "or set region in the AWS profile")


def stop_advice(cluster: Optional[str], key: Optional[str], token: str) -> str:
    """How an operator stops what this launch may have started, and nothing else: this job's
    own key from the command line, or the launch's client token. Never a shared startedBy."""
    if key is not None:
        return f"ecsbatch stop {cli_cluster_arg(cluster)}--started-by {key}"
    return f"ecsbatch stop {cli_cluster_arg(cluster)}--client-token {token}"


_botocore_session = None


def botocore_session() -> Any:
    """One botocore session per process: validation and the client share its parsed ECS model."""
    global _botocore_session
    if _botocore_session is None:
        import botocore.session

        _botocore_session = botocore.session.get_session()
    return _botocore_session


_ecs_model = None


def ecs_service_model() -> Any:
    """botocore's own ECS model, read from disk: no credentials, no network. One per process, so
    that the shapes it resolves are resolved once (the watcher's launch children inherit them)."""
    global _ecs_model
    if _ecs_model is None:
        _ecs_model = botocore_session().get_service_model("ecs")
    return _ecs_model


def resolve_shapes(shape: Any, seen: Optional[set] = None) -> None:
    """Resolve every member of `shape`, and of theirs: botocore does it lazily, once per shape
    object, so that a model resolved before the watcher forks is resolved in every launch child."""
    seen = set() if seen is None else seen
    if shape is None or id(shape) in seen:
        return
    seen.add(id(shape))
    if shape.type_name == "structure":
        for member in shape.members.values():
            resolve_shapes(member, seen)
    elif shape.type_name == "list":
        resolve_shapes(shape.member, seen)
    elif shape.type_name == "map":
        resolve_shapes(shape.key, seen)
        resolve_shapes(shape.value, seen)


_clients: Dict[Tuple[str, str], Any] = {}


def make_client(service: str, region: Optional[str], profile: Optional[str]) -> Any:
    """One client per service and process, from the botocore session that validation already
    loaded (boto3.client() returns the same botocore client, at the cost of importing boto3).

    The region is --region, else AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region:
    the AWS CLI v2's order. The standard credential chain and AWS_ENDPOINT_URL apply.
    AWS_RETRY_MODE and AWS_MAX_ATTEMPTS (or the profile's retry_mode and max_attempts) mean
    what they mean to the AWS CLI; unset, standard mode with AWS_RETRY_ATTEMPTS attempts.

    A client is made once per credential context (credential_context: everything that selects
    credentials, the region or the endpoint), so that the watcher's launch children, whose
    context the watcher has checked, use the client it made before forking them."""
    import botocore.config
    import botocore.exceptions

    cache_key = (service, credential_context(os.environ, region, profile))
    if cache_key in _clients:
        return _clients[cache_key]
    try:
        core = botocore_session()
        if profile:
            core.set_config_variable("profile", profile)
        # botocore's own "region" reads AWS_DEFAULT_REGION, then the profile; it never reads AWS_REGION.
        region = region or os.environ.get("AWS_REGION") or core.get_config_variable("region")
        if not region:
            raise botocore.exceptions.NoRegionError()
        profile_config = core.get_scoped_config()
        attempts_text = os.environ.get("AWS_MAX_ATTEMPTS") or profile_config.get("max_attempts")
        attempts = int(attempts_text) if attempts_text else AWS_RETRY_ATTEMPTS
        if attempts < 1:
            raise ValueError(f"{attempts} is less than 1")
        retries = {
            "mode": os.environ.get("AWS_RETRY_MODE") or profile_config.get("retry_mode") or "standard",
            # The AWS CLI's max_attempts counts every attempt; botocore's `max_attempts` counts only
            # the retries, so it would make one call more. `total_max_attempts` is the CLI's meaning.
            "total_max_attempts": attempts,
        }
        client = core.create_client(service, region_name=region, config=botocore.config.Config(
            retries=retries, connect_timeout=AWS_CONNECT_TIMEOUT, read_timeout=AWS_READ_TIMEOUT,
            user_agent_extra=f"ecsbatch/{__version__}"))
        if _debug_redactor is not None:
            _debug_redactor.learn(core.get_credentials())
        _clients[cache_key] = client
        return client
    except botocore.exceptions.NoRegionError as exc:
        raise AwsError(NO_REGION_TEXT) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise AwsError(aws_error_text(exc)) from exc
    except ValueError as exc:
        raise InputError(f"AWS_MAX_ATTEMPTS or the profile's max_attempts must be a whole number of "
                         f"attempts, 1 or more: {clipped(exc)}") from exc


class DebugRedactor:
    """A logging filter for --debug's handler: every record, botocore's and urllib3's included,
    loses its credentials and environment values before it is written.

    It sits on the handler, not on the "botocore" logger: a logger's filter never sees the
    records of its children (botocore.endpoint, botocore.auth, botocore.parsers)."""

    def __init__(self) -> None:
        self.secrets: set = set()

    def learn(self, credentials: Any) -> None:
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            self.secrets.update(v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v)

    def filter(self, record: Any) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(dict(a, body=redact_body(a["body"])) if isinstance(a, dict) and "body" in a
                                else redact_body(a) for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, as it would be anyway
            return True
        record.msg, record.args = redact_debug_text(message, self.secrets), None
        return True


_debug_redactor: Optional[DebugRedactor] = None


def install_debug_log() -> None:
    """--debug: botocore's wire log and our own debug lines on stderr, without secrets."""
    global _debug_redactor
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _debug_redactor = DebugRedactor()
    _debug_redactor.secrets.update(v for v in (os.environ.get(name) for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")) if v)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_debug_redactor)


def setup_debug(debug: bool) -> None:
    if debug:
        install_debug_log()


@contextlib.contextmanager
def aws_errors_as() -> Iterator[None]:
    """Turn botocore's exceptions into one-line errors with the contract's exit code."""
    import botocore.exceptions

    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, botocore.exceptions.ClientError) else None
        no_answer = isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError))
        raise AwsError(aws_error_text(exc), code=code, no_answer=no_answer) from exc


def describe_task_definition(ecs: Any, name: str, *, with_tags: bool = False) -> Tuple[Dict[str, Any], List[Any]]:
    with aws_errors_as():
        answer = ecs.describe_task_definition(taskDefinition=name, **({"include": ["TAGS"]} if with_tags else {}))
    return answer["taskDefinition"], answer.get("tags", [])


class LaunchAttempts:
    """botocore event hooks around each RunTask attempt (botocore's retries included).

    A signal is held while a request is on the wire, so that a launch is never cut in half, and
    acted on between attempts: no further attempt, no backoff sleep. `unanswered` says whether
    some attempt may have reached ECS without its answer reaching us (a task may exist)."""

    def __init__(self, guard: "SignalGuard") -> None:
        self.guard = guard
        self.unanswered = False
        self._between_attempts = contextlib.ExitStack()

    def before_send(self, **_: Any) -> None:
        self.hold()
        if self.guard.received is not None:
            raise Interrupted(self.guard.received)

    def needs_retry(self, response: Any = None, **_: Any) -> None:
        status = response[0].status_code if response else None
        if status is None or status >= 500:
            self.unanswered = True
        if status is not None and status < 300:
            return  # answered: the caller acts on a held signal once it knows the task
        # botocore may back off now: a held signal ends the launch here, and a new one cuts the sleep short
        self._between_attempts.enter_context(self.guard.interruptible())

    def hold(self) -> None:
        """A request goes out, or the launch is over: signals wait their turn again."""
        self._between_attempts.close()


def quick_client(ecs: Any) -> Any:
    """The same ECS endpoint and credentials with two attempts and short timeouts: for a look
    that must be quick because the job is being interrupted."""
    import botocore.config

    config = ecs.meta.config.merge(botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=3, read_timeout=5))
    with aws_errors_as():
        return botocore_session().create_client("ecs", region_name=ecs.meta.region_name,
                                                endpoint_url=ecs.meta.endpoint_url, config=config)


def find_launched_task(ecs: Any, cluster: Optional[str], started_by: str, token: str, *,
                       include_stopped: bool) -> Optional[Dict[str, Any]]:
    """The task whose client-token tag is `token`: ECS never shows a RunTask's clientToken, and
    under a shared startedBy a match on startedBy alone could be another job's task."""
    for desired in ("RUNNING", "STOPPED") if include_stopped else ("RUNNING",):
        arns = list_task_arns(ecs, cluster, desired_status=desired, started_by=started_by)
        for task in tasks_ecs_knows(ecs, cluster, arns, with_tags=True):
            if tag_value(task, TAG_CLIENT_TOKEN) == token:
                return task
    return None


def launch(ecs: Any, request: Mapping[str, Any], guard: "SignalGuard", *, key: Optional[str]) -> Dict[str, Any]:
    """RunTask, under `guard` held by the caller. Returns RunTask's answer, or one holding the
    task found by its client-token tag when no answer came back.

    When no answer arrives even after botocore's retries, the same request is re-sent: its
    clientToken makes ECS return the task it already started instead of a second one. After the
    last re-send, or as soon as a signal arrives, the task is looked for by its client-token tag.
    A task found is returned (the caller stops it if a signal is held). When none is found, a
    signal ends the launch with its own exit code, and otherwise the error is 125."""
    token, cluster = request["clientToken"], request.get("cluster")
    attempts = LaunchAttempts(guard)
    events = ecs.meta.events
    events.register_first("needs-retry.ecs.RunTask", attempts.needs_retry)
    events.register("before-send.ecs.RunTask", attempts.before_send)
    failure: Optional[AwsError] = None
    try:
        for resend in range(LAUNCH_RESENDS + 1):
            try:
                with aws_errors_as():
                    return ecs.run_task(**request)
            except AwsError as exc:
                attempts.hold()
                failure = exc
                if not exc.no_answer or resend == LAUNCH_RESENDS:
                    break
                progress(f"RunTask got no answer ({exc.format_message()}); re-sending it with the same clientToken")
    except Interrupted:
        pass  # guard.received holds it
    finally:
        attempts.hold()
        events.unregister("needs-retry.ecs.RunTask", attempts.needs_retry)
        events.unregister("before-send.ecs.RunTask", attempts.before_send)

    signum = guard.received
    if not attempts.unanswered:
        if signum is not None:
            raise Interrupted(signum)  # every attempt was refused or never sent: nothing started
        assert failure is not None
        raise failure
    # Some attempt may have started a task whose answer was lost: look for it by its tag.
    what = failure.format_message() if failure is not None else "RunTask had no answer yet"
    found, look_error = None, None
    lookups = 1 if signum is not None else ADOPT_LOOKUPS
    for lookup in range(lookups):
        if lookup:
            time.sleep(ADOPT_LOOKUP_GAP)
        try:
            if guard.received is not None:  # interrupted: one quick look, then stop what was found
                found = find_launched_task(quick_client(ecs), cluster, request["startedBy"], token,
                                           include_stopped=False)
                break
            found = find_launched_task(ecs, cluster, request["startedBy"], token, include_stopped=True)
        except AwsError as exc:
            look_error = exc.format_message()
        if found is not None:
            break
    if found is not None:
        progress("RunTask's answer was lost; found the task it started by its client token")
        return {"tasks": [found], "failures": []}
    looked = f"could not look for it ({look_error})" if look_error else \
        f"no task carries tag {TAG_CLIENT_TOKEN}={token} yet"
    advice = f"if one appears, stop it with: {stop_advice(cluster, key, token)}"
    if guard.received is not None:
        name = signal.Signals(guard.received).name
        raise LaunchInterrupted(guard.received, f"interrupted by {name} while RunTask had no answer ({what}); "
                                                f"{looked}; {advice}")
    raise AwsError(f"{what}; {looked}; {advice}") from failure


def launch_attempt(ecs: Any, request: Mapping[str, Any], guard: "SignalGuard", *, digest: str, key: Optional[str],
                   timeout: Optional[float]) -> Dict[str, Any]:
    """One launch attempt, under `guard` held by the caller: RunTask with a fresh clientToken and
    client-token tag (a capacity retry is a new attempt; only the re-sends of an attempt whose
    answer was lost keep its token, see launch()). The task carries the job's request hash
    `digest`, whatever this attempt's request is, and the deadline of what is left of --timeout."""
    import uuid

    token = str(uuid.uuid4())
    final = copy.deepcopy(dict(request))
    final["clientToken"] = token
    final["tags"] = task_tags(request.get("tags"), client_token=token, request_digest=digest,
                              deadline=deadline_text(datetime.datetime.now(datetime.timezone.utc), timeout))
    guard.on_second_signal = ("exiting now; a task may have been launched: "
                              f"{stop_advice(final.get('cluster'), key, token)}")
    return launch(ecs, final, guard, key=key)


def task_or_why_missing(ecs: Any, cluster: Optional[str],
                        task_arn: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the task, None), or (None, why it is not there). Raises AwsError."""
    with aws_errors_as():
        answer = ecs.describe_tasks(**cluster_arg(cluster), tasks=[task_arn])
    for task in answer.get("tasks", []):
        if task.get("taskArn") == task_arn or task_id(task.get("taskArn", "")) == task_id(task_arn):
            return task, None
    reasons = [f.get("reason") for f in answer.get("failures", []) if f.get("reason")]
    return None, ", ".join(reasons) or NO_WORD_ON_TASK


def require_task(ecs: Any, cluster: Optional[str], task: str) -> Dict[str, Any]:
    """A task named on the command line, or a one-line error when ECS does not know it."""
    found, missing_reason = task_or_why_missing(ecs, cluster, task)
    if found is None:
        raise AwsError(f"task {task} is unknown to ECS ({missing_reason}) in cluster {cluster or 'default'}: "
                       "check the id and --cluster; ECS forgets stopped tasks after about an hour")
    return found


def stop_task(ecs: Any, cluster: Optional[str], task_arn: str, reason: str) -> Optional[Dict[str, Any]]:
    """StopTask with `reason` sent as it is: see stop_reason_text and operator_stop_reason.
    Returns the task as StopTask's answer shows it: its state when the stop took effect. Raises AwsError."""
    with aws_errors_as():
        answer = ecs.stop_task(**cluster_arg(cluster), task=task_arn, reason=reason)
    return answer.get("task")


class _RehearsalBody:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.payload


REHEARSAL_MARKER = "ecsbatch-rehearsal-not-sent"


def rehearse_call(client: Any, operation: str, params: Mapping[str, Any], status: int, answer: Mapping[str, Any]) -> None:
    """Run one call through the client's whole pipeline without sending it.

    botocore answers it from a `before-send` hook, so validation, serializer, signer, retry
    handler, parser and error factory all run, and whatever they load lazily (modules, model and
    data files) is in memory afterwards. Only a request that carries REHEARSAL_MARKER is answered;
    every other one goes out as usual, also while the hook is registered.
    """
    import botocore.awsrequest
    import botocore.exceptions

    model = client.meta.service_model
    event = f"before-send.{model.service_id.hyphenize()}.{model.operation_model(operation).name}"
    payload = json.dumps(answer).encode()

    def answer_it(request: Any, **kwargs: Any) -> Any:
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        if REHEARSAL_MARKER.encode() not in body:
            return None
        return botocore.awsrequest.AWSResponse(request.url, status, {"Content-Type": "application/x-amz-json-1.1",
                                                                      "x-amzn-RequestId": "rehearsal"},
                                               _RehearsalBody(payload))

    method = getattr(client, botocore.xform_name(operation))
    client.meta.events.register(event, answer_it, unique_id=f"ecsbatch-rehearsal-{operation}")
    try:
        method(**params)
    except botocore.exceptions.ClientError as exc:
        aws_error_text(exc)
    finally:
        client.meta.events.unregister(event, unique_id=f"ecsbatch-rehearsal-{operation}")


def rehearse_stop(ecs: Any, cluster: Optional[str], logs: Any = None) -> None:
    """Before a wait begins, load everything that stopping the task, judging and reporting need.

    A release pruned or replaced under a running job (a deploy swaps the venv) must never break
    that job's stop: after this, StopTask, DescribeTasks, GetLogEvents, their error paths and
    the modules of the verdict's path are in memory, so the stop reads no file from disk.
    """
    import logging  # noqa: F401  (the internal-error path logs with a traceback)
    import traceback  # noqa: F401
    import _strptime  # noqa: F401  (time.strptime, which botocore's retries use, imports it lazily)

    for status, answer in ((400, {"__type": "ClientException", "message": "rehearsal"}),
                           (200, {"task": {"taskArn": REHEARSAL_MARKER, "lastStatus": "STOPPED",
                                           "stoppingAt": 0, "stoppedAt": 0, "containers": [
                                               {"name": "rehearsal", "exitCode": 0, "lastStatus": "STOPPED"}]}})):
        rehearse_call(ecs, "StopTask", dict(cluster_arg(cluster), task=REHEARSAL_MARKER, reason=REHEARSAL_MARKER),
                      status, answer)
    rehearse_call(ecs, "DescribeTasks", dict(cluster_arg(cluster), tasks=[REHEARSAL_MARKER]), 200,
                  {"tasks": [], "failures": [{"arn": REHEARSAL_MARKER, "reason": "MISSING"}]})
    if logs is not None:
        rehearse_call(logs, "GetLogEvents", {"logGroupName": REHEARSAL_MARKER, "logStreamName": REHEARSAL_MARKER},
                      400, {"__type": "ResourceNotFoundException", "message": "rehearsal"})


def list_task_arns(ecs: Any, cluster: Optional[str], *, desired_status: str,
                   started_by: Optional[str] = None) -> List[str]:
    arns: List[str] = []
    filters = dict(cluster_arg(cluster), desiredStatus=desired_status,
                   **({"startedBy": started_by} if started_by else {}))
    with aws_errors_as():
        for page in ecs.get_paginator("list_tasks").paginate(**filters):
            arns.extend(page.get("taskArns", []))
    return arns


def tasks_ecs_knows(ecs: Any, cluster: Optional[str], task_arns: List[str], *,
                    with_tags: bool = False) -> List[Dict[str, Any]]:
    """The tasks among `task_arns` that ECS knows; the ones it does not are left out. Raises AwsError."""
    tasks: List[Dict[str, Any]] = []
    include = {"include": ["TAGS"]} if with_tags else {}
    with aws_errors_as():
        for start in range(0, len(task_arns), DESCRIBE_TASKS_BATCH):
            answer = ecs.describe_tasks(**cluster_arg(cluster), tasks=task_arns[start:start + DESCRIBE_TASKS_BATCH],
                                        **include)
            tasks.extend(answer.get("tasks", []))
    return tasks


def live_tasks_of_key(ecs: Any, cluster: Optional[str], key: str) -> List[Dict[str, Any]]:
    """The tasks with startedBy `key` that are meant to run (not asked to stop), with their tags."""
    arns = list_task_arns(ecs, cluster, desired_status="RUNNING", started_by=key)
    return [t for t in tasks_ecs_knows(ecs, cluster, arns, with_tags=True) if t.get("lastStatus") != "STOPPED"]


def read_log_page(logs: Any, source: LogSource, token: Optional[str]) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """One page of a log stream, oldest first, and the token for the next one. Raises AwsError."""
    with aws_errors_as():
        answer = logs.get_log_events(logGroupName=source.group, logStreamName=source.stream, startFromHead=True,
                                     **({"nextToken": token} if token else {}))
    return answer.get("events", []), answer.get("nextForwardToken")


def register_task_definition(ecs: Any, request: Mapping[str, Any]) -> Dict[str, Any]:
    with aws_errors_as():
        return ecs.register_task_definition(**request)["taskDefinition"]


def latest_registered(ecs: Any, family: str) -> Tuple[Optional[Dict[str, Any]], List[Any]]:
    """The family's latest ACTIVE revision with its tags, or (None, []) for a new family."""
    try:
        return describe_task_definition(ecs, family, with_tags=True)
    except AwsError as exc:
        if exc.code == "ClientException":
            return None, []
        raise


# ---------------------------------------------------------------------------------------------
# 6. Waiting: signal guard, poller, supervisor, log follower
# ---------------------------------------------------------------------------------------------


def next_poll_delay(poll_interval: float, rng: random.Random, *, first: bool = False) -> float:
    """Never more than poll_interval; the first poll is spread over the whole interval."""
    return poll_interval * rng.uniform(FIRST_POLL_FLOOR if first else POLL_JITTER_FLOOR, 1.0)


def status_line(tid: str, status: Optional[str], last_status: Optional[str], *, since_line: float,
                waited: float) -> Optional[str]:
    """What a poll that saw the task in `status` says: each change of state, and a heartbeat
    after HEARTBEAT_SECONDS without a line, so that a long job's log shows it is still watched."""
    if status != last_status:
        return f"task {tid} {status}"
    if since_line >= HEARTBEAT_SECONDS:
        return f"task {tid} still {status} after {format_duration(waited)}"
    return None


class LogSource(NamedTuple):
    group: str
    stream: str
    region: Optional[str]


def container_log_source(task_definition: Mapping[str, Any], container: str,
                         task_arn: str) -> Tuple[Optional[LogSource], str]:
    """Where one container's log lines can be read, and a sentence that says where they go."""
    definition = next((c for c in task_definition.get("containerDefinitions", []) if c.get("name") == container), {})
    config = definition.get("logConfiguration") or {}
    driver, options = config.get("logDriver"), config.get("options") or {}
    if driver == "awslogs":
        group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
        if group and prefix:
            stream = f"{prefix}/{container}/{task_id(task_arn)}"
            return LogSource(group, stream, options.get("awslogs-region")), f"CloudWatch Logs {group} {stream}"
        return None, (f"container {container} logs to CloudWatch Logs group {group} without "
                      "awslogs-stream-prefix, so its stream cannot be named; see the ECS console")
    if not driver:
        return None, f"container {container} has no log configuration; its output is not kept"
    destination = options.get("Host") or options.get("fluentd-address") or options.get("Name")
    return None, (f"container {container} sends its logs through {driver}"
                  f"{' to ' + destination if destination else ''}; ecsbatch does not stream them: "
                  f"search there for task {task_id(task_arn)}")


def runner_file_name(key: str, pid: int) -> str:
    """The registry entry of one runner of a key: a hex name, whatever the key holds."""
    import hashlib

    return f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.{pid}.json"


def runners_before(runners: List[Tuple[int, str]], me: Tuple[int, str]) -> List[int]:
    """The pids of the runners of a key that started before `me` ((pid, start time in clock ticks)).
    Start time, then pid, is one order that every runner of the key agrees on."""
    def order(runner: Tuple[int, str]) -> Tuple[int, int]:
        return (int(runner[1]) if runner[1].isdigit() else 0, runner[0])

    return [pid for pid, start in runners if (pid, start) != me and order((pid, start)) < order(me)]


class SignalGuard:
    """SIGHUP, SIGINT, SIGQUIT and SIGTERM end the job the same way: the task is stopped first,
    then ecsbatch exits with the signal's code (EXIT_FOR_SIGNAL: 129, 130, 131, 143).

    - SIGHUP is a lost terminal or SSH session. A SIGHUP ignored at start (`nohup`) stays
      ignored: whoever started ecsbatch asked for the job to outlive the session.
    - SIGQUIT (Ctrl-\\) would otherwise kill the runner at once (and dump core), leaving the task
      running unwatched. An operator who presses it wants the job gone, so it stops the task like
      SIGTERM does; a second signal still exits at once.

    By default a first signal raises Interrupted where the main thread is. Inside `hold()` it is
    only recorded in `received` and waits its turn; `deferred()` is a hold that raises it when the
    block ends; `interruptible()`, inside a hold, raises a held signal at once and lets new ones
    raise again until the block ends. A second signal always exits at once with the first
    signal's code, without cleaning up, after one line that says what is left behind.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.ignored: List[int] = []  # ignored at start, and left so
        # What the second-signal line says after "second SIGTERM: "; a callable is asked then.
        self.on_second_signal: Any = "exiting now"
        self._modes: List[bool] = []  # innermost last: True holds a first signal, False raises it

    @property
    def holding(self) -> bool:
        return bool(self._modes) and self._modes[-1]

    def install(self) -> None:
        for signum in EXIT_FOR_SIGNAL:
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                self.ignored.append(signum)
                continue
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            self._exit_now(signum)
        self.received = signum
        if not self.holding:
            raise Interrupted(signum)

    def _exit_now(self, signum: int) -> None:
        """Straight to the file descriptor: the main thread may be in the middle of a write."""
        try:
            said = self.on_second_signal() if callable(self.on_second_signal) else self.on_second_signal
            os.write(2, OUTPUT.last_words(f"second {signal.Signals(signum).name}: {said}"))
        except Exception:  # nothing may keep this exit from happening
            pass
        os._exit(EXIT_FOR_SIGNAL[self.received or signum])

    @contextlib.contextmanager
    def _mode(self, holding: bool) -> Iterator[None]:
        depth = len(self._modes)
        self._modes.append(holding)
        try:
            yield
        finally:
            del self._modes[depth:]

    def hold(self) -> "contextlib.AbstractContextManager[None]":
        """A first signal inside the block is recorded in `received` and waits its turn."""
        return self._mode(True)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal until the block ends, so that a launch is never cut in half; then raise it."""
        with self.hold():
            yield
        if self.received is not None:
            raise Interrupted(self.received)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside a hold: a signal already held raises now, and new ones raise until the block ends."""
        with self._mode(False):
            if self.received is not None:
                raise Interrupted(self.received)
            yield


class KnownTask:
    """The task this run launched, from the moment RunTask answered: if a signal ever escapes
    the wait's own handling, main() still stops it instead of saying nothing was started."""

    current: Optional[Tuple[Any, Optional[str], str]] = None

    @classmethod
    def remember(cls, ecs: Any, cluster: Optional[str], task_arn: str) -> None:
        cls.current = (ecs, cluster, task_arn)
        note_runner_task(task_arn)

    @classmethod
    def forget(cls) -> None:
        """The wait has judged or stopped the task: nothing left to do for it."""
        cls.current = None

    @classmethod
    def stop_for(cls, signum: int) -> Optional[str]:
        return cls.stop(f"{signal.Signals(signum).name} received by the job runner")

    @classmethod
    def stop(cls, why: str) -> Optional[str]:
        """StopTask the remembered task; a sentence saying what happened, or None."""
        if cls.current is None:
            return None
        ecs, cluster, task_arn = cls.current
        cls.current = None
        try:
            stop_task(ecs, cluster, task_arn, stop_reason_text(why))
        except AwsError as exc:
            return (f"{why}; StopTask failed ({exc.format_message()}): task {task_arn} may still be running; "
                    f"stop it with: ecsbatch stop {cli_cluster_arg(cluster)}{task_arn}")
        return f"{why}; StopTask sent for task {task_id(task_arn)}"


# The runner registry: `ecsbatch stop --job-key K` signals the runners of K on this machine, so
# that a job whose RunTask is still in flight (re-sends, capacity retries) is stopped by its own
# runner's signal path, which knows or finds the task. One file per runner, in a directory only
# this user can use, holding the pid and the process start time (a reused pid does not match).


def register_runner(key: str) -> Optional[str]:
    """Record this runner under its key until it exits, in each runtime directory (a stop command
    may run with another environment). Returns the first file, or None if no private directory
    could be used (then `stop` still finds the tasks in ECS). A launch child of the watcher
    records its runner; the runner removes the entries when it ends."""
    import atexit

    pid, start = runner_identity()
    start = start or None
    first: Optional[str] = None
    directories = [d for d in runtime_dirs() if start is not None and private_dir(d, create=True)]
    # Under the key's lock, the runners already registered are exactly those before this one:
    # two runners registering at once agree on which came first, whenever their processes started.
    with registry_lock(directories[-1] if directories else None, key):
        before = registered_runners(key)
        for directory in directories:
            path = os.path.join(directory, runner_file_name(key, pid))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"pid": pid, "start": start, "key": key}, handle)
            if WATCHER_CHILD is None:
                atexit.register(unregister_runner, path)
            OWN_ENTRIES.append(path)
            first = first or path
    if first is not None:
        REGISTERED_BEFORE[key] = [runner for runner in before if runner[0] != pid]
    return first


# The live runners of a key that had registered when this runner did, by key (register_runner).
REGISTERED_BEFORE: Dict[str, List[Tuple[int, str]]] = {}
# This runner's own registry entries.
OWN_ENTRIES: List[str] = []


def note_runner_task(task_arn: str) -> None:
    """Write the task this runner now waits on into its registry entries: a second run of the job
    that waits for this runner's launch finds the task there, even one that starts and stops
    between two of its looks at ECS. Never fails the job."""
    for path in OWN_ENTRIES:
        try:
            with open(path, encoding="utf-8") as handle:
                entry = json.load(handle)
            entry["task"] = task_arn
            write_atomically(path, json.dumps(entry))
        except (OSError, ValueError, TypeError):
            continue


def registry_entries(key: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(path, entry) of every readable registry entry of `key` for this user, live or stale."""
    import glob

    prefix = runner_file_name(key, 0).split(".", 1)[0]
    for directory in runtime_dirs():
        if not private_dir(directory, create=False):
            continue
        for path in glob.glob(os.path.join(directory, f"{prefix}.*.json")):
            try:
                with open(path, encoding="utf-8") as handle:
                    entry = json.load(handle)
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict):
                yield path, entry


def runner_tasks(key: str, pids: List[int]) -> List[str]:
    """The tasks that these runners of `key` wrote into their entries (note_runner_task)."""
    found: List[str] = []
    for _, entry in registry_entries(key):
        if entry.get("key") == key and entry.get("pid") in pids and isinstance(entry.get("task"), str) \
                and entry["task"] not in found:
            found.append(entry["task"])
    return found


@contextlib.contextmanager
def registry_lock(directory: Optional[str], key: str) -> Iterator[None]:
    """An exclusive lock on the key's entries in `directory` (the temporary directory's, which every
    runner of this user registers in), held while a runner registers. None: no lock to take."""
    fd = None
    if directory is not None:
        import fcntl

        with contextlib.suppress(OSError):
            fd = os.open(os.path.join(directory, runner_file_name(key, 0).split(".", 1)[0] + ".lock"),
                         os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def older_runners(key: str, me: Tuple[int, str]) -> List[int]:
    """The pids of the live runners of `key` that registered before this one; when this one could
    not register, those whose processes started before it (runners_before)."""
    live = registered_runners(key)
    if key not in REGISTERED_BEFORE:
        return runners_before(live, me)
    return [pid for pid, start in live if (pid, start) in REGISTERED_BEFORE[key]]


def unregister_runner(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def registered_runners(key: str) -> List[Tuple[int, str]]:
    """(pid, start time) of the live runners of `key` for this user; stale entries are removed."""
    pids: List[Tuple[int, str]] = []
    for path, entry in registry_entries(key):
        try:
            pid, start = int(entry["pid"]), str(entry["start"])
        except (KeyError, TypeError, ValueError):
            continue
        if entry.get("key") == key and process_start_time(pid) == start:
            pids.append((pid, start))
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return sorted(set(pids))


def runner_alive(pid: int, start: Optional[str]) -> bool:
    return start is not None and process_start_time(pid) == start


def runner_identity() -> Tuple[int, str]:
    """This runner's (pid, start time). A launch child of the shared watcher acts for its runner."""
    child = WATCHER_CHILD
    if child is not None:
        return int(child["runner"]["pid"]), str(child["runner"].get("start") or "")
    return os.getpid(), process_start_time(os.getpid()) or ""


def decide_rerun(ecs: Any, cluster: Optional[str], key: str, digest: str, if_running: str, *,
                 poll_interval: float) -> RerunDecision:
    """rerun_decision for this run of the job, once no older runner of the key is still launching.

    A runner of the job that is alive with no live task is launching, or waiting between launch
    attempts: launching here too would run the job twice. So this one waits while such a runner
    lives, until its task appears (then attach, as to any live task, or to the task it noted in the
    registry since this run began waiting, even one that already stopped) or it exits (then launch).
    With --if-running fail it does not wait: 120. Only this user's runners on this machine are
    seen (the runner registry); a signal while waiting exits at once, nothing launched."""
    me = runner_identity()
    told = False
    next_look = 0.0
    noted_before: Optional[set] = None
    while True:
        looked = time.monotonic() >= next_look
        if looked:  # ECS at the poll interval; the registry in between
            next_look = time.monotonic() + poll_interval
            live = [] if if_running == "launch" else live_tasks_of_key(ecs, cluster, key)
            decision = rerun_decision(live, digest, key, if_running)
            if decision.action != "launch" or if_running == "launch":
                return decision
        older = older_runners(key, me)
        if not older:
            if looked:
                return decision
            next_look = 0.0  # the older runner is gone: one more look at ECS decides
            continue
        pids = ", ".join(str(pid) for pid in older)
        if if_running == "fail":
            return RerunDecision("fail", None, f"runner pid {pids} of this job (key {key}) is still launching its "
                                               "task; not launching another (--if-running fail)")
        noted = runner_tasks(key, older)
        if noted_before is None:  # tasks of earlier attempts or runs: what their runners report is theirs
            noted_before = set(noted)
        launched = [task for task in tasks_ecs_knows(ecs, cluster, [arn for arn in noted if arn not in noted_before],
                                                    with_tags=True) if tag_value(task, TAG_REQUEST_HASH) == digest]
        if launched:  # launched while this run waited, even if it already stopped: this run is that one
            task = launched[-1]
            return RerunDecision("attach", task, f"task {task_id(str(task.get('taskArn')))} of this job (key {key}), "
                                                 f"launched by runner pid {pids}, is {task.get('lastStatus')}: "
                                                 "attaching to it instead of launching another")
        if not told:
            progress(f"runner pid {pids} of this job (key {key}) is still launching its task: waiting for it, "
                     "to attach to it instead of launching another", kept=True)
            told = True
        time.sleep(min(poll_interval, REGISTRY_LOOK_SECONDS))


class Target(NamedTuple):
    """A task named on the command line, found: what waiting on it or reading its log needs."""

    ecs: Any
    cluster: Optional[str]
    task: Dict[str, Any]
    definition: Dict[str, Any]
    counted: List[str]


def find_target(task: str, cluster: Optional[str], container: Optional[str], region: Optional[str],
                profile: Optional[str]) -> Target:
    """Find TASK (its cluster from --cluster or its ARN), its task definition and the containers
    that count, or end with a one-line error."""
    cluster = cluster_for_task(task, cluster)
    ecs = make_client("ecs", region, profile)
    found = require_task(ecs, cluster, task)
    definition, _ = describe_task_definition(ecs, found["taskDefinitionArn"])
    return Target(ecs, cluster, found, definition, counted_container_names(definition, container))


class LogFollower:
    """Prints a container's CloudWatch Logs lines as they arrive, each exactly once.

    It pages with forward tokens from the head of the stream, waits for a stream that does not
    exist yet, and keeps the last lines for the failure report: at least LOG_TAIL_LINES, and at
    least `tail_bytes` of them for --quiet. Under --quiet it prints nothing. A failed read is
    reported once and retried on the next poll: logs never end the wait or change the exit code.
    """

    def __init__(self, logs: Any, source: LogSource, *, to_stderr: bool, tail_bytes: int = 0) -> None:
        self.logs, self.source, self.to_stderr = logs, source, to_stderr
        self.token: Optional[str] = None
        self.tail: "collections.deque[str]" = collections.deque()
        self.tail_bytes, self.tail_size = tail_bytes, 0
        self.failing = False
        self.pages_per_poll: Optional[int] = None  # None: every page there is

    def poll(self) -> int:
        """Read every page there is now (at most pages_per_poll). Returns how many lines were printed."""
        printed, pages = 0, 0
        while self.pages_per_poll is None or pages < self.pages_per_poll:
            pages += 1
            try:
                events, next_token = read_log_page(self.logs, self.source, self.token)
            except AwsError as exc:
                if exc.code != "ResourceNotFoundException":  # a stream appears when its container starts
                    self._report(exc)
                return printed
            self.failing = False
            for event in events:
                line = str(event.get("message", "")).rstrip("\n")
                self._print(line)
                self._keep(line)
            printed += len(events)
            # CloudWatch Logs hands back the token it was given at the end of the stream.
            if not next_token or next_token == self.token:
                return printed
            self.token = next_token
        return printed

    def drain(self, after_read: Optional[Callable[[], None]] = None) -> None:
        """After the task stopped: read on until the stream has been quiet for a while, calling
        `after_read` after each read that brought lines."""
        limit = time.monotonic() + LOG_DRAIN_LIMIT_SECONDS
        quiet_since = time.monotonic()
        while time.monotonic() < limit:
            if self.poll():
                quiet_since = time.monotonic()
                if after_read is not None:
                    after_read()
            elif time.monotonic() - quiet_since >= LOG_SETTLE_SECONDS:
                return
            time.sleep(LOG_DRAIN_POLL)

    def _print(self, line: str) -> None:
        # A reader that went away (`ecsbatch run | head`) silences the stream, never the job:
        # see SilencingWriter.
        if not OUTPUT.quiet:
            click.echo(line, file=sys.stderr if self.to_stderr else sys.stdout)

    def _keep(self, line: str) -> None:
        self.tail.append(line)
        self.tail_size += len(line) + 1
        while len(self.tail) > LOG_TAIL_LINES and self.tail_size - len(self.tail[0]) - 1 >= self.tail_bytes:
            self.tail_size -= len(self.tail.popleft()) + 1

    def _report(self, exc: AwsError) -> None:
        if not self.failing:
            progress(f"reading {self.source.group} {self.source.stream} failed, will retry: {exc.format_message()}")
        self.failing = True


def open_log_follower(definition: Mapping[str, Any], container: str, task_arn: str, *, region: Optional[str],
                      profile: Optional[str], to_stderr: bool) -> Optional[LogFollower]:
    """A LogFollower for `container`'s log, or None (said on stderr) when it has no CloudWatch log."""
    source, where = container_log_source(definition, container, task_arn)
    if source is None:
        progress(where)
        return None
    progress(f"streaming the log of {container} from {where}")
    return LogFollower(make_client("logs", source.region or region, profile), source, to_stderr=to_stderr,
                       tail_bytes=OUTPUT.limit)


class TaskWatch(Protocol):
    """What supervise() needs from whatever watches the task, and all it needs: wait until the
    task stops (or a deadline passes), stop it and say what happened, and the task as last seen.

    Watch is this process's own DescribeTasks poller. Anything that keeps these promises (a
    watcher that polls for many runners at once) can stand in for it without touching supervise().
    """

    task_arn: str
    cluster: Optional[str]
    last_task: Optional[Dict[str, Any]]
    stop_sent: bool  # a StopTask went out: what a second signal's last line says

    def rehearse(self, logs: Any) -> None:
        """Load now whatever a stop needs; never fails the job."""

    def until_stopped(self, deadline: Optional[float],
                      between_polls: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
        """The STOPPED task. Raises TimeoutExpired at `deadline` (time.monotonic), TaskMissing when
        ECS no longer knows it. `between_polls` runs after each look (the log follower reads)."""

    def stop(self, why: str, *, confirm: bool = True) -> StopAttempt:
        """StopTask, then (with `confirm`) wait a while for STOPPED. Never raises."""


class Watch:
    """Polls one task with DescribeTasks until it stops, saying each state change and a heartbeat
    on stderr. It only polls and stops: supervise() decides what the task's end means.

    `clock` and `sleep` are injectable so that tests can run the MISSING rules on a fake clock.
    """

    def __init__(self, ecs: Any, cluster: Optional[str], task_arn: str, *, poll_interval: float,
                 missing_grace: float = MISSING_GRACE_SECONDS, rng: Optional[random.Random] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 started: Optional[float] = None) -> None:
        self.ecs, self.cluster, self.task_arn = ecs, cluster, task_arn
        self.poll_interval = poll_interval
        self.missing_grace = missing_grace
        self.rng = rng or random.Random()
        self.clock, self.sleep = clock, sleep
        self.started = clock() if started is None else started  # a thin runner's wait began earlier
        self.last_task: Optional[Dict[str, Any]] = None
        self.last_status: Optional[str] = None
        self.last_line_at = self.started
        self.missing_since: Optional[float] = None
        self.missing_answers = 0
        self.no_word = False
        self.stop_sent = False
        self.polled = False

    def rehearse(self, logs: Any = None) -> None:
        """Load now everything a stop needs (see rehearse_stop); a failure here never ends the job."""
        try:
            rehearse_stop(self.ecs, self.cluster, logs)
        except Exception:  # the real stop will try anyway
            import logging

            logging.getLogger("ecsbatch").debug("rehearsing the stop failed", exc_info=True)

    def poll(self) -> Optional[Dict[str, Any]]:
        """One DescribeTasks call. Returns the task, or None when ECS gave no word on it this time."""
        try:
            task, missing_reason = task_or_why_missing(self.ecs, self.cluster, self.task_arn)
        except AwsError as exc:
            progress(f"DescribeTasks failed after retries, polling again: {exc.format_message()}")
            self.last_line_at = self.clock()
            return None
        if task is None and missing_reason == NO_WORD_ON_TASK:
            if not self.no_word:  # once per spell: an answer like this is no word on the task either way
                progress(f"DescribeTasks gave {NO_WORD_ON_TASK}; polling again")
                self.last_line_at = self.clock()
            self.no_word = True
            return None
        self.no_word = False
        if task is None:
            self._missing(missing_reason or "MISSING")
            return None
        self.missing_since, self.missing_answers = None, 0
        self._seen(task)
        return task

    def _seen(self, task: Dict[str, Any]) -> None:
        now = self.clock()
        line = status_line(task_id(self.task_arn), task.get("lastStatus"), self.last_status,
                           since_line=now - self.last_line_at, waited=now - self.started)
        if line is not None:
            progress(line)
            self.last_line_at = now
        self.last_task, self.last_status = task, task.get("lastStatus")

    def _missing(self, reason: str) -> None:
        """Count a MISSING answer; raise TaskMissing once missing_is_final says they prove it."""
        now = self.clock()
        if self.missing_since is None:
            self.missing_since = now
        self.missing_answers += 1
        seen = self.last_task is not None
        if missing_is_final(seen=seen, answers=self.missing_answers, first_missing_at=self.missing_since, now=now,
                            started_at=self.started, launch_grace=self.missing_grace):
            after = f" after it was seen {self.last_status}" if seen else ""
            raise TaskMissing(f"task {task_id(self.task_arn)} is unknown to ECS ({reason}) in {self.missing_answers} "
                              f"answers over {format_duration(now - self.missing_since)}{after}: "
                              "it never started or was deleted")
        if seen and self.missing_answers == 1:
            progress(f"DescribeTasks did not find task {task_id(self.task_arn)} ({reason}), last seen "
                     f"{self.last_status}; polling again: one answer is not proof")
            self.last_line_at = now

    def until_stopped(self, deadline: Optional[float],
                      between_polls: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
        """Poll until STOPPED. Raises TimeoutExpired at the deadline, TaskMissing if it vanished."""
        delay = next_poll_delay(self.poll_interval, self.rng, first=True)
        if not self.polled:  # the first poll of all counts from the watch's start, not from the rehearsal
            delay = max(0.0, self.started + delay - self.clock())
        while True:
            if deadline is not None:
                if self.clock() >= deadline:
                    raise TimeoutExpired()
                delay = min(delay, max(0.0, deadline - self.clock()))
            self.sleep(delay)
            if deadline is not None and self.clock() >= deadline:
                raise TimeoutExpired()
            task = self.poll()
            self.polled = True
            if between_polls is not None:
                between_polls()
            if task is not None and task.get("lastStatus") == "STOPPED":
                return task
            delay = next_poll_delay(self.poll_interval, self.rng)

    def stop(self, why: str, *, confirm: bool = True) -> StopAttempt:
        """StopTask through stop_and_confirm, the one path `ecsbatch stop` takes too. Says what
        happened, never more."""
        tid = task_id(self.task_arn)
        before = self.last_task
        progress(f"stopping task {tid}: {why}")
        window = STOP_CONFIRM_SECONDS if confirm else 0.0
        reason = stop_reason_text(why)
        try:
            result = stop_and_confirm(self.ecs, self.cluster, [self.task_arn], reason,
                                      deadline=self.clock() + window,
                                      poll_interval=min(self.poll_interval, STOP_CONFIRM_POLL), clock=self.clock,
                                      sleep=self.sleep, tolerate_errors=True,
                                      on_accepted=lambda _: setattr(self, "stop_sent", True))
            stopped = result.stops[tid]
        except Exception as exc:  # a bug of ours: the verdict still says what is known of the stop
            import logging

            logging.getLogger("ecsbatch").debug("internal error while stopping", exc_info=True)
            error = None if self.stop_sent else f"{type(exc).__name__}: {one_line(exc)}"
            stopped = StopResult(reason, self.stop_sent, error, None, None)
        if stopped.last_seen is not None:
            self._seen(dict(stopped.last_seen))
        if not stopped.accepted:
            progress(f"StopTask failed: {stopped.error}")
            task = self._look_once() if confirm else self.last_task
            return StopAttempt(stopped.reason, False, stopped.error, before, None, task)
        if confirm and (self.last_task or {}).get("lastStatus") != "STOPPED":
            progress(f"task {tid} is still {self.last_status} after {format_duration(window)}; ECS is stopping it")
        return StopAttempt(stopped.reason, True, None, before, stopped.at_stop, self.last_task)

    def _look_once(self) -> Optional[Dict[str, Any]]:
        """After a failed StopTask: how the task is now, if ECS says (it may have stopped anyway)."""
        try:
            task, _ = task_or_why_missing(self.ecs, self.cluster, self.task_arn)
        except Exception:  # as little as can be said is all that is said
            return self.last_task
        if task is not None:
            self.last_task, self.last_status = task, task.get("lastStatus")
        return self.last_task


def supervise(watch: TaskWatch, guard: SignalGuard, *, counted_names: List[str], deadline: Optional[float],
              timeout_text: str, follower: Optional[LogFollower] = None,
              interrupted_by: Optional[int] = None, during_launch: bool = True,
              stop_asked_before: bool = False) -> Outcome:
    """Wait for the task and judge it. Whatever ends the wait, ecsbatch stops the task, or the
    outcome says plainly that it could not. Only the wait itself can be interrupted: before it,
    a signal is held (and then ends the wait at once), after it a first signal waits its turn.
    `follower` reads the container's log beside the wait, and drains it at the end.
    `stop_asked_before`: a watcher was asked to stop the task before this process took it over,
    so StopTask's answer here may show what that earlier stop did, not what came before it."""
    arn, tid = watch.task_arn, task_id(watch.task_arn)
    guard.on_second_signal = lambda: (
        f"exiting now; StopTask was sent for task {tid}" if watch.stop_sent else
        f"exiting now; task {tid} may still be running: stop it with: {stop_command(watch.cluster, arn)}")
    ending: Optional[Outcome] = None
    with guard.hold():
        watch.rehearse(follower.logs if follower is not None else None)  # a release replaced under a job
        try:
            if interrupted_by is not None:
                raise Interrupted(interrupted_by)
            with guard.interruptible():
                task = watch.until_stopped(deadline, follower.poll if follower is not None else None)
        except TaskMissing as missing:
            attempt = watch.stop(str(missing), confirm=False)
            return judge_missing(str(missing), attempt, cluster=watch.cluster, task_arn=arn,
                                 last_seen=watch.last_task)  # no stream to drain
        except (Interrupted, Exception) as exc:  # a bug of ours must not orphan the task either
            if not isinstance(exc, (Interrupted, TimeoutExpired)):
                import logging

                logging.getLogger("ecsbatch").debug("internal error while waiting", exc_info=True)
            ending = ending_for(exc, timeout_text=timeout_text,
                                during_launch=interrupted_by is not None and during_launch)
        if ending is None:
            outcome = judge_stopped_task(task, counted_names)
        else:
            attempt = watch.stop(ending.message)
            if stop_asked_before:
                attempt = attempt._replace(at_stop=None)
            outcome = judge_after_stop(ending, attempt, counted_names, cluster=watch.cluster, task_arn=arn)
        if follower is not None:
            try:
                follower.drain()  # the last lines, usually the error, come after the stop
            except Exception as exc:  # the log is a courtesy: it never changes the verdict
                progress(f"reading the last log lines failed: {type(exc).__name__}: {one_line(exc)}")
        return outcome


class StopResult(NamedTuple):
    """One task's StopTask, as stop_and_confirm saw it."""

    reason: str
    accepted: bool
    error: Optional[str]
    at_stop: Optional[Mapping[str, Any]]  # the task in StopTask's answer
    last_seen: Optional[Mapping[str, Any]]  # the task as last described after the stop


class StopReport(NamedTuple):
    stops: Dict[str, StopResult]  # by task id
    pending: List[str]  # ARNs accepted but not yet STOPPED at the deadline
    describe_error: Optional[str]  # the last DescribeTasks failure, if the last look failed


def send_stop(ecs: Any, cluster: Optional[str], task_arn: str, reason: str) -> StopResult:
    """StopTask once. Never raises: whatever kept it from going out is in `error`."""
    try:
        at_stop = stop_task(ecs, cluster, task_arn, reason)
    except Exception as exc:  # whatever kept it from going out, the verdict must say so
        error = exc.format_message() if isinstance(exc, AwsError) else f"{type(exc).__name__}: {one_line(exc)}"
        return StopResult(reason, False, error, None, None)
    if at_stop is None:  # ECS always answers with the task: this came from something else
        return StopResult(reason, False, f"StopTask got {NO_WORD_ON_TASK}", None, None)
    return StopResult(reason, True, None, at_stop, None)


def stop_and_confirm(ecs: Any, cluster: Optional[str], arns: List[str], reason: str, *, deadline: float,
                     poll_interval: float, more: Optional[Callable[[], Tuple[List[str], bool]]] = None,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                     tolerate_errors: bool = False, announce: bool = False,
                     on_accepted: Optional[Callable[[str], None]] = None) -> StopReport:
    """The one way ecsbatch stops tasks, for the runner and for `ecsbatch stop`: StopTask each, then
    DescribeTasks until every accepted one is STOPPED or the deadline passes.

    `more()`, asked after each look, gives further ARNs to stop (a launch that was in flight) and
    whether to keep looking even with nothing pending (a runner still exiting). A DescribeTasks
    failure ends the confirmation with AwsError, unless `tolerate_errors` (a runner must judge).
    With `announce`, each StopTask sent and each task STOPPED gets its own line; `on_accepted(arn)`
    hears of each StopTask that ECS accepted the moment it did."""
    stops: Dict[str, StopResult] = {}
    pending: Dict[str, str] = {}
    describe_error: Optional[str] = None

    def stop_new(candidates: List[str]) -> None:
        for arn in candidates:
            if task_id(arn) in stops:
                continue
            result = send_stop(ecs, cluster, arn, reason)
            stops[task_id(arn)] = result
            if result.accepted:
                pending[task_id(arn)] = arn
                if on_accepted is not None:
                    on_accepted(arn)
                if announce:
                    progress(f"StopTask sent for {task_id(arn)}")
            elif not tolerate_errors:
                raise AwsError(result.error or "StopTask failed")

    stop_new(arns)
    confirming = deadline > clock()  # no time given: send the stops and look no further
    while True:
        keep_looking = False
        if pending and confirming:  # one look even at the deadline: the last interval counts too
            try:
                found = tasks_ecs_knows(ecs, cluster, sorted(pending.values()))
                describe_error = None
            except Exception as exc:  # a runner must still judge what it stopped
                if not tolerate_errors:
                    raise
                said = exc.format_message() if isinstance(exc, AwsError) else f"{type(exc).__name__}: {one_line(exc)}"
                if describe_error is None:
                    progress(f"DescribeTasks failed, looking again: {said}")
                describe_error, found = said, []
            for task in found:
                tid = task_id(task.get("taskArn", ""))
                if tid in pending:
                    stops[tid] = stops[tid]._replace(last_seen=task)
                    if task.get("lastStatus") == "STOPPED":
                        if announce:
                            progress(f"task {tid} STOPPED")
                        del pending[tid]
        if more is not None:
            appeared, keep_looking = more()
            stop_new(appeared)
        if (not pending and not keep_looking) or clock() >= deadline:
            return StopReport(stops, sorted(pending.values()), describe_error)
        sleep(min(poll_interval, max(0.0, deadline - clock())))


def hand_off(watch: TaskWatch, guard: SignalGuard, make_follower: Optional[Callable[[], Optional[LogFollower]]], *,
             interrupted_by: Optional[int], **wait_args: Any) -> Tuple[Outcome, Optional[LogFollower]]:
    """From a known task to supervise(). The log client is built with signals held, and a signal
    that lands anywhere before supervise() takes over is handed to it, so the task is stopped."""
    pending = interrupted_by
    follower: Optional[LogFollower] = None
    for _ in range(3):
        try:
            if make_follower is not None:
                build, make_follower = make_follower, None
                with guard.deferred():
                    try:
                        follower = build()
                    except EcsbatchError as exc:  # no logs client: the job goes on without its lines
                        progress(f"container logs are not streamed: {exc.format_message()}")
            outcome = supervise(watch, guard, follower=follower, interrupted_by=pending, **wait_args)
            KnownTask.forget()
            return outcome, follower
        except Interrupted as interrupt:
            pending = interrupt.signum if pending is None else pending
    raise Interrupted(pending if pending is not None else signal.SIGTERM)  # main() stops the known task


def stop_and_wait(ecs: Any, cluster: Optional[str], arns: List[str], reason: str, *, runners: List[Tuple[int, str]],
                  key: Optional[str], deadline: float, timeout_text: str, poll_interval: float) -> None:
    """`ecsbatch stop`: stop_and_confirm the tasks, and wait until the signalled runners are gone.
    While a runner of the key lives, and once more after, tasks of the key that appear (a launch
    that was in flight, here or on another machine) are stopped too."""
    alive = list(runners)
    last_look = key is None

    def more() -> Tuple[List[str], bool]:
        nonlocal alive, last_look
        was_alive = bool(alive)
        alive = [(pid, start) for pid, start in alive if process_start_time(pid) == start]
        if was_alive and not alive:
            progress("the runner has exited")
        appeared: List[str] = []
        if key is not None and (alive or not last_look):
            last_look = not alive
            appeared = list_task_arns(ecs, cluster, desired_status="RUNNING", started_by=key)
        return appeared, bool(alive) or not last_look

    report = stop_and_confirm(ecs, cluster, arns, reason, deadline=deadline, poll_interval=poll_interval, more=more,
                              announce=True)
    left = [task_id(a) for a in report.pending] + [f"runner pid {pid}" for pid, _ in alive]
    if left:
        raise StillRunning(f"not STOPPED after {timeout_text}: {', '.join(left)}; ECS is still stopping them")


def attach_to(target: Target, guard: SignalGuard, message: str, timeout: Optional[float],
              wait_args: Dict[str, Any], next_attempt: Optional[Callable[[], RerunDecision]] = None) -> None:
    """A rerun of a job whose task is still live: wait on that task as `wait` would. --timeout
    counts from the task's creation, so a rerun never gives a stuck job more time.

    When ECS takes the task away (an interruption, a failed start for lack of capacity), the job's
    own runner may launch it again: `next_attempt()` (decide_rerun) waits while that runner lives,
    and its next task is attached to in turn. Only when no attempt follows is the task the verdict."""
    while True:
        task_arn = target.task["taskArn"]
        OUTPUT.task_arn = task_arn
        progress(f"{message}; to reattach: ecsbatch wait {cli_cluster_arg(target.cluster)}{task_arn}", kept=True)
        remaining = timeout
        created = target.task.get("createdAt")
        if timeout is not None and isinstance(created, datetime.datetime):
            age = (datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()
            remaining = max(0.0, timeout - max(0.0, age))
        KnownTask.remember(target.ecs, target.cluster, task_arn)
        if next_attempt is None:
            wait_to_the_end(target, guard, timeout=remaining, interrupted_by=None, missing_grace=0.0, **wait_args)
            return
        with guard.hold():
            watched = watch_one_task(target, guard, timeout=remaining, interrupted_by=None, missing_grace=0.0,
                                     **wait_args)
            outcome = watched.outcome
            taken = after_attempt(outcome.kind, outcome.task, target.counted, reruns_done=0, reruns_allowed=1)
            if taken.action != ATTEMPT_DONE and guard.received is None:
                progress(f"{outcome.message}; looking for the job's next attempt")
                with guard.interruptible():
                    decision = next_attempt()
                if decision.action == "attach" and decision.task and decision.task.get("taskArn") != task_arn:
                    target, message = target._replace(task=dict(decision.task)), decision.message
                    continue
            report_outcome(outcome, task_arn=task_arn, cluster=target.cluster, counted=target.counted,
                           follower=watched.follower, where=watched.where, as_json=wait_args["as_json"],
                           elapsed=watched.elapsed)
            click.get_current_context().exit(outcome.exit_code)


def wait_to_the_end(target: Target, guard: SignalGuard, *, timeout: Optional[float], timeout_text: Optional[str],
                    poll_interval: float, logs: bool, as_json: bool, region: Optional[str], profile: Optional[str],
                    interrupted_by: Optional[int], missing_grace: float) -> None:
    """The waiting half of `run`, shared with `wait`: follow, judge, report, exit.

    Only supervise's wait can be interrupted: a signal before it (say, while the logs client is
    built) is held and then ends the wait at once; one after it waits for the exit."""
    with guard.hold():
        watched = watch_one_task(target, guard, timeout=timeout, timeout_text=timeout_text, poll_interval=poll_interval,
                                 logs=logs, as_json=as_json, region=region, profile=profile,
                                 interrupted_by=interrupted_by, missing_grace=missing_grace,
                                 hand_over={"attempts": None, "continuation": None} if WATCHER_CHILD else None)
        report_outcome(watched.outcome, task_arn=target.task["taskArn"], cluster=target.cluster, counted=target.counted,
                       follower=watched.follower, where=watched.where, as_json=as_json, elapsed=watched.elapsed)
        click.get_current_context().exit(watched.outcome.exit_code)


class Watched(NamedTuple):
    """One task waited on to its end: the judged outcome, and what the report needs of the wait."""

    outcome: Outcome
    follower: Optional[LogFollower]
    where: Optional[str]  # where the container's log lines are, when logs are followed
    elapsed: float


def watch_one_task(target: Target, guard: SignalGuard, *, timeout: Optional[float], timeout_text: Optional[str],
                   poll_interval: float, logs: bool, as_json: bool, region: Optional[str], profile: Optional[str],
                   interrupted_by: Optional[int], missing_grace: float, resumed: Optional[Mapping[str, Any]] = None,
                   hand_over: Optional[Mapping[str, Any]] = None) -> Watched:
    """Follow one task to its end and judge it (stopping it when the wait ends otherwise); no report.

    `hand_over` (in a launch child of the shared watcher): give the task to the runner, which
    waits thin, instead (hand_off_to_runner). `resumed`: a thin runner's state when its watcher
    went away: when the wait began, the log read so far, the task as last seen, and whether the
    watcher was asked to stop it."""
    task_arn, counted, definition = target.task["taskArn"], target.counted, target.definition
    resumed = resumed or {}
    started = resumed["state"]["started"] if resumed else time.monotonic()
    watch = Watch(target.ecs, target.cluster, task_arn, poll_interval=poll_interval, missing_grace=missing_grace,
                  started=started)
    if resumed.get("last_task"):
        watch.last_task, watch.last_status = dict(resumed["last_task"]), resumed["last_task"].get("lastStatus")
    during_launch = not resumed
    if hand_over is not None and interrupted_by is None:
        interrupted_by = hand_off_to_runner(watch, guard, target=target, timeout=timeout, timeout_text=timeout_text,
                                            poll_interval=poll_interval, logs=logs, as_json=as_json, region=region,
                                            profile=profile, missing_grace=missing_grace, **hand_over)
        during_launch = False

    def make_follower() -> Optional[LogFollower]:
        follower = open_log_follower(definition, counted[0], task_arn, region=region, profile=profile,
                                     to_stderr=as_json)
        if follower is not None and resumed:  # go on where the watcher's reads ended: each line once
            follower.token = resumed.get("log_token")
            for line in resumed.get("tail") or []:
                follower._keep(line)
        return follower

    outcome, follower = hand_off(watch, guard, make_follower if logs else None, interrupted_by=interrupted_by,
                                 counted_names=counted, deadline=None if timeout is None else watch.started + timeout,
                                 timeout_text=timeout_text or "", during_launch=during_launch,
                                 stop_asked_before=bool(resumed.get("stop_asked")))
    where = container_log_source(definition, counted[0], task_arn)[1] if logs else None
    return Watched(outcome, follower, where, time.monotonic() - started)


class RetryPolicy(NamedTuple):
    """How `run` launches: --launch-timeout, --launch-backoff, --rerun-on-interruption and the
    reruns' request (--rerun-capacity-provider), and the clock, sleep and rng (tests inject them)."""

    launch_timeout: float
    launch_timeout_text: str
    backoff_cap: float
    reruns: int
    strategy: List[Dict[str, Any]]  # --rerun-capacity-provider: the reruns' capacityProviderStrategy
    rng: random.Random
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


class AttemptLog:
    """What a job's attempts were: for the verdict's note, stderr and --json's `attempts`."""

    def __init__(self) -> None:
        self.launches = 0  # RunTask attempts (not counting the re-sends of a lost answer)
        self.reruns = 0
        self.task_arns: List[str] = []  # every task launched, in order

    def note(self) -> Optional[str]:
        return attempts_note(self.launches, self.reruns)

    def json(self) -> Dict[str, Any]:
        return {"attempts": list(self.task_arns), "launchAttempts": self.launches}


class LaunchWindow:
    """One launch and its retries: --launch-timeout counts from its first attempt, the backoff
    grows with its attempts. A rerun opens a new window."""

    def __init__(self, policy: RetryPolicy, job_deadline: Optional[float], timeout_text: Optional[str]) -> None:
        self.policy, self.job_deadline, self.timeout_text = policy, job_deadline, timeout_text
        self.started = policy.clock()
        self.attempts = 0

    def wait_or_give_up(self, guard: SignalGuard, why: str, log: AttemptLog) -> Optional[str]:
        """After a transient failure (`why`): wait the backoff, a signal cutting it short, and
        return None; or return the reason to give up (GAVE_UP_*), having waited for nothing."""
        policy = self.policy
        planned = next_launch_wait(self.attempts, policy.rng, now=policy.clock(),
                                   launch_deadline=self.started + policy.launch_timeout,
                                   job_deadline=self.job_deadline, cap=policy.backoff_cap)
        if planned.wait is None:
            return planned.why_not
        progress(f"launch attempt {log.launches} failed: {why}; trying again in {planned.wait:.1f}s "
                 f"(--launch-timeout {policy.launch_timeout_text})")
        guard.on_second_signal = "exiting now; no task is running"
        try:
            with guard.interruptible():
                policy.sleep(planned.wait)
        except Interrupted as interrupt:
            name = signal.Signals(interrupt.signum).name
            count = f"{log.launches} launch attempt{'s' if log.launches != 1 else ''}"
            raise LaunchInterrupted(interrupt.signum, (
                f"{name} received while waiting to launch again after {count} (the last: {why}): no task is "
                "running, and no further attempt is made")) from None
        return None

    def gave_up(self, last: str, why_not: str, log: AttemptLog) -> str:
        return launch_gave_up_message(last, attempts=self.attempts, elapsed=self.policy.clock() - self.started,
                                      why_not=why_not, launch_timeout=self.policy.launch_timeout_text,
                                      timeout=self.timeout_text)


def launch_failed(error: EcsbatchError, log: AttemptLog, counted: List[str], as_json: bool,
                  failures: Optional[List[Mapping[str, Any]]] = None) -> EcsbatchError:
    """The --json object for a job that ended before a task of it could be judged: launch-failed, or
    interrupted for a signal. Returns the error, for the caller to raise."""
    if as_json and not OUTPUT.json_emitted:
        kind = OUTCOME_INTERRUPTED if isinstance(error, LaunchInterrupted) else OUTCOME_LAUNCH_FAILED
        emit_summary(as_json, dict(task_summary(None, task_arn=None, counted_names=counted,
                                                exit_code=error.exit_code, outcome=kind,
                                                message=error.format_message(), elapsed=0.0, failures=failures),
                                   **log.json()))
    return error


def launch_with_retries(ecs: Any, guard: SignalGuard, request: Mapping[str, Any], window: LaunchWindow,
                        log: AttemptLog, *, digest: str, key: Optional[str], verb: str,
                        definition: Mapping[str, Any], counted: List[str], as_json: bool,
                        context: Optional[str] = None) -> Tuple[Dict[str, Any], Optional[int]]:
    """Launch attempts until RunTask starts a task, with the backoff between transient failures
    (a RunTask `failures` answer whose every reason is in TRANSIENT_LAUNCH_REASONS) until the
    window closes. Returns the task (RunTask's entry) and a signal that arrived during its launch
    (then the caller stops the task). A permanent failure, or the last transient one, ends the
    job: 125. `context` (a rerun's) goes first in the error line."""
    cluster = request.get("cluster")
    first = f"{context}: " if context else ""
    while True:
        window.attempts += 1
        log.launches += 1
        job_deadline = window.job_deadline
        timeout = None if job_deadline is None else max(0.0, job_deadline - window.policy.clock())
        task_arn: Optional[str] = None
        task: Dict[str, Any] = {}
        try:
            with guard.deferred():
                try:
                    answer = launch_attempt(ecs, request, guard, digest=digest, key=key, timeout=timeout)
                except AwsError as error:
                    raise launch_failed(AwsError(f"{first}{error.format_message()}", code=error.code,
                                                 no_answer=error.no_answer), log, counted, as_json) from error
                except LaunchInterrupted as error:
                    raise launch_failed(error, log, counted, as_json)
                tasks = answer.get("tasks") or []
                if tasks:
                    task, task_arn = dict(tasks[0]), tasks[0]["taskArn"]
                    log.task_arns.append(task_arn)
                    KnownTask.remember(ecs, cluster, task_arn)
                    guard.on_second_signal = (f"exiting now; task {task_arn} may still be running: "
                                              f"ecsbatch stop {cli_cluster_arg(cluster)}{task_arn}")
                    OUTPUT.task_line(verb, task_arn, task_definition_label(definition), counted, cluster)
        except Interrupted as interrupt:
            if task_arn is None:  # refused, or never sent: nothing of this attempt runs
                name = signal.Signals(interrupt.signum).name
                raise launch_failed(LaunchInterrupted(interrupt.signum, (
                    f"{first}{name} received during launch attempt {log.launches}: RunTask started no task; "
                    "nothing is running, and no further attempt is made")), log, counted, as_json) from None
            return task, interrupt.signum
        if task_arn is not None:
            return task, None
        failures = answer.get("failures") or []
        last = launch_failure_message(failures)
        reason = transient_run_task_failure(failures)
        try:
            why_not = GAVE_UP_LAUNCH_TIMEOUT if reason is None else window.wait_or_give_up(guard, last, log)
        except LaunchInterrupted as error:
            raise launch_failed(error, log, counted, as_json, failures)
        if why_not is None:
            continue
        message = last if reason is None else window.gave_up(last, why_not, log)
        if reason is None and log.note():
            message = f"{message}; {log.note()}"
        raise launch_failed(AwsError(f"{first}{message}"), log, counted, as_json, failures)


class AttemptsSoFar(NamedTuple):
    """A job's attempts up to a task that has ended, for run_attempts to go on from: the end of a
    task that the shared watcher waited on is judged in another process than its launch."""

    log: AttemptLog
    window: LaunchWindow
    watched: Watched
    task_arn: str


def run_attempts(ecs: Any, guard: SignalGuard, request: Mapping[str, Any], policy: RetryPolicy, *, digest: str,
                 key: Optional[str], definition: Dict[str, Any], counted: List[str], timeout: Optional[float],
                 wait_args: Dict[str, Any], so_far: Optional[AttemptsSoFar] = None) -> int:
    """`run` from the first launch to the exit: launch (with retries), wait, judge; launch again
    after a task that failed to start for lack of capacity (same window), rerun after an
    interruption while --rerun-on-interruption allows (a new window, the reruns' request), then
    report the last attempt's outcome, with the attempts, and return its exit code. `so_far`: go
    on from a task already waited on (continue_attempts)."""
    log = so_far.log if so_far else AttemptLog()
    job_deadline = so_far.window.job_deadline if so_far else None if timeout is None else policy.clock() + timeout
    timeout_text, as_json = wait_args["timeout_text"], wait_args["as_json"]
    cluster = request.get("cluster")
    with guard.hold():
        window = so_far.window if so_far else LaunchWindow(policy, job_deadline, timeout_text)
        this_request, verb, context = request, "launched", None
        watched, task_arn = (so_far.watched, so_far.task_arn) if so_far else (None, "")
        while True:
            if watched is None:
                watched, task_arn = launch_and_wait(ecs, guard, this_request, policy, window, log, digest=digest,
                                                    key=key, definition=definition, counted=counted, verb=verb,
                                                    context=context, wait_args=wait_args)
            outcome = watched.outcome
            decision = after_attempt(outcome.kind, outcome.task, counted, reruns_done=log.reruns,
                                     reruns_allowed=policy.reruns)
            if guard.received is not None or (job_deadline is not None and policy.clock() >= job_deadline):
                if decision.action == ATTEMPT_RETRY and guard.received is None:  # say why none follows
                    outcome = outcome._replace(message=f"{outcome.message}; --timeout {timeout_text} expired")
                decision = AttemptDecision(ATTEMPT_DONE, decision.why)  # a signal or --timeout: no more attempts
            if decision.action == ATTEMPT_RETRY:
                progress(outcome.message)
                try:
                    why_not = window.wait_or_give_up(guard, decision.why, log)
                except LaunchInterrupted as error:
                    raise launch_failed(error, log, counted, as_json)
                if why_not is None:
                    watched = None
                    continue
                outcome = outcome._replace(message=window.gave_up(outcome.message, why_not, log))
            elif decision.action == ATTEMPT_RERUN:
                progress(f"{outcome.message}; {decision.why}")
                log.reruns += 1
                why = interruption_of(outcome.task or {}, counted)
                verb = f"rerun {log.reruns} of {policy.reruns} after {why}: launched"
                context = f"rerun {log.reruns} of {policy.reruns} after task {task_id(task_arn)} was interrupted ({why})"
                this_request = rerun_request(request, policy.strategy)
                window = LaunchWindow(policy, job_deadline, timeout_text)
                watched = None
                continue
            elif decision.why and policy.reruns:  # say that the reruns ran out
                outcome = outcome._replace(message=f"{outcome.message}; {decision.why.split('; ', 1)[-1]}")
            report_outcome(outcome, task_arn=task_arn, cluster=cluster, counted=counted, follower=watched.follower,
                           where=watched.where, as_json=as_json, elapsed=watched.elapsed, attempts=log)
            return outcome.exit_code


def launch_and_wait(ecs: Any, guard: SignalGuard, request: Mapping[str, Any], policy: RetryPolicy,
                    window: LaunchWindow, log: AttemptLog, *, digest: str, key: Optional[str],
                    definition: Dict[str, Any], counted: List[str], verb: str, context: Optional[str],
                    wait_args: Dict[str, Any]) -> Tuple[Watched, str]:
    """One attempt of run_attempts: launch (with retries) and wait for the task's end. Through the
    shared watcher the runner waits thin, unless reruns may follow (they launch from here); the
    attempts so far go with it, so that a task that fails to start for lack of capacity is
    launched again by whoever judges its end (continue_attempts)."""
    task, pending = launch_with_retries(ecs, guard, request, window, log, digest=digest, key=key, verb=verb,
                                        definition=definition, counted=counted, as_json=wait_args["as_json"],
                                        context=context)
    remaining = None if window.job_deadline is None else max(0.0, window.job_deadline - policy.clock())
    hand_over = None
    if WATCHER_CHILD is not None and not policy.reruns:
        hand_over = {"attempts": log, "continuation": None if policy.launch_timeout <= 0 else {
            "request": dict(request), "digest": digest, "key": key, "launch_timeout": policy.launch_timeout_text,
            "backoff_cap": policy.backoff_cap, "window_started": window.started, "window_attempts": window.attempts,
            "job_deadline": window.job_deadline, "wait_args": wait_args}}
    watched = watch_one_task(Target(ecs, request.get("cluster"), task, definition, counted), guard, timeout=remaining,
                             interrupted_by=pending, missing_grace=MISSING_GRACE_SECONDS, hand_over=hand_over,
                             **wait_args)
    return watched, task["taskArn"]


def continue_attempts(continuation: Mapping[str, Any], log: AttemptLog, watched: Watched, task_arn: str,
                      guard: SignalGuard, definition: Dict[str, Any], counted: List[str]) -> Optional[int]:
    """After a task that a thin runner waited on: if it failed to start for lack of capacity and
    its launch window is still open, go on with the job's attempts here, as the launching `run`
    would have (backoff, a new launch, its wait, the report); return the exit code. None: no
    attempt follows, and the ending is reported as it is."""
    decision = after_attempt(watched.outcome.kind, watched.outcome.task, counted, reruns_done=log.reruns,
                             reruns_allowed=0)
    if decision.action != ATTEMPT_RETRY:
        return None
    wait_args = dict(continuation["wait_args"])
    policy = RetryPolicy(launch_timeout=parse_launch_timeout(continuation["launch_timeout"]),
                         launch_timeout_text=continuation["launch_timeout"],
                         backoff_cap=float(continuation["backoff_cap"]), reruns=0, strategy=[], rng=random.Random())
    window = LaunchWindow(policy, continuation["job_deadline"], wait_args["timeout_text"])
    window.started, window.attempts = float(continuation["window_started"]), int(continuation["window_attempts"])
    ecs = make_client("ecs", wait_args["region"], wait_args["profile"])
    return run_attempts(ecs, guard, continuation["request"], policy, digest=continuation["digest"],
                        key=continuation["key"], definition=definition, counted=counted, timeout=None,
                        wait_args=wait_args, so_far=AttemptsSoFar(log, window, watched, task_arn))


# ---------------------------------------------------------------------------------------------
# 7. Output: progress, quiet budget, result line, safe streams, syslog
# ---------------------------------------------------------------------------------------------


def status_rows(tasks: List[Mapping[str, Any]]) -> List[Dict[str, str]]:
    """One row per task for `ecsbatch status`, newest first."""
    rows = []
    for task in sorted(tasks, key=lambda t: str(t.get("createdAt") or ""), reverse=True):
        codes = " ".join(f"{c.get('name')}={c.get('exitCode', '-')}" for c in task.get("containers", []))
        rows.append({
            "TASK": task_id(task.get("taskArn", "?")),
            "STATUS": task.get("lastStatus") or "-",
            "STARTED BY": task.get("startedBy") or "-",
            "DEFINITION": task.get("taskDefinitionArn", "").rsplit("/", 1)[-1] or "-",
            "CREATED": iso_time(task.get("createdAt")) or "-",
            "STOP CODE": task.get("stopCode") or "-",
            "EXIT CODES": codes or "-",
        })
    return rows


def format_table(rows: List[Mapping[str, str]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def task_details(task: Mapping[str, Any]) -> str:
    """Everything an operator asks about one task, one fact per line."""
    lines = [
        f"task          {task.get('taskArn')}",
        f"status        {task.get('lastStatus')} (desired {task.get('desiredStatus')})",
        f"definition    {task.get('taskDefinitionArn')}",
        f"started by    {task.get('startedBy') or '-'}",
        f"created       {iso_time(task.get('createdAt')) or '-'}",
        f"started       {iso_time(task.get('startedAt')) or '-'}",
        f"stopped       {iso_time(task.get('stoppedAt')) or '-'}",
        f"stop code     {task.get('stopCode') or '-'}",
        f"stop reason   {one_line(task.get('stoppedReason') or '-')}",
    ]
    for container in task.get("containers", []):
        code = container.get("exitCode")
        lines.append(f"container     {container.get('name')}: {container.get('lastStatus')}, "
                     f"exitCode={'-' if code is None else code}, reason={one_line(container.get('reason') or '-')}")
    return "\n".join(lines)


def result_line(task_arn: Optional[str], exit_code: int, owner: Optional[str]) -> str:
    """The stable line for schedulers: `ecsbatch-result: task=ID exit=N from=container|ecsbatch`."""
    return (f"{RESULT_LINE_PREFIX} task={task_id(task_arn) if task_arn else '-'} exit={exit_code} "
            f"from={'ecsbatch' if owner is None else 'container'}")


# How a part of a line fares when the line must fit a byte budget: by the issue's priority, the
# exit code, whose it is, the task id and the stopCode are kept whole; a reason is shortened in
# the middle; advice is dropped first.
KEEP, SHORTEN, DROP = "keep", "shorten", "drop"


def encoded_size(text: str, encoding: str = "utf-8") -> int:
    """Bytes that `text` takes on a stream with this encoding and errors="replace"."""
    return len(text.encode(encoding, errors="replace"))


def _longest_prefix(text: str, budget: int, encoding: str) -> str:
    size = 0
    for index, char in enumerate(text[: max(0, budget)]):  # a character takes at least one byte
        size += encoded_size(char, encoding)
        if size > budget:
            return text[:index]
    return text[: max(0, budget)]


def _longest_suffix(text: str, budget: int, encoding: str) -> str:
    return _longest_prefix(text[::-1], budget, encoding)[::-1]


def shorten_middle(text: str, budget: int, encoding: str = "utf-8") -> str:
    """`text` in at most `budget` bytes: its start and its end, with "..." for what was cut."""
    if encoded_size(text, encoding) <= budget:
        return text
    room = budget - len(SHORTENED)
    if room <= 0:
        return ""
    head = _longest_prefix(text, room - room // 2, encoding)
    tail = _longest_suffix(text, room - encoded_size(head, encoding), encoding)
    return head + SHORTENED + tail


def fit_parts(parts: List[Tuple[str, str]], budget: int, encoding: str = "utf-8") -> str:
    """Join (how, text) parts into one line of at most `budget` bytes, cutting by priority.

    DROP parts go first, the last one first; then SHORTEN parts are shortened in the middle
    (and left out when too little of them would be left); KEEP parts are never cut, so the
    caller gives a budget that holds them.
    """
    parts = list(parts)

    def size() -> int:
        return sum(encoded_size(text, encoding) for _, text in parts)

    for index in reversed(range(len(parts))):
        if size() <= budget:
            break
        if parts[index][0] == DROP:
            parts[index] = (DROP, "")
    for index in reversed(range(len(parts))):
        if size() <= budget:
            break
        how, text = parts[index]
        if how == SHORTEN:
            room = budget - (size() - encoded_size(text, encoding))
            shortened = shorten_middle(text, room, encoding)
            parts[index] = (how, shortened if encoded_size(shortened, encoding) >= 2 * len(SHORTENED) + 8 else "")
    return "".join(text for _, text in parts)


def tail_that_fits(lines: List[str], budget: int, encoding: str = "utf-8") -> List[str]:
    """The last lines that fit in `budget` bytes, one newline each. If not even the last one
    fits, its end, after "...": the error is usually at the end of the log and of its line."""
    kept: List[str] = []
    used = 0
    for line in reversed(lines):
        size = encoded_size(line, encoding) + 1
        if used + size > budget:
            end = _longest_suffix(line, budget - used - 1 - len(SHORTENED), encoding) if not kept else ""
            if end:
                kept.append(SHORTENED + end)
            break
        kept.append(line)
        used += size
    return kept[::-1]


def stdout_budget(limit: int, stderr_used: int) -> int:
    """What stdout may hold under --quiet: the agent's limit, and with stderr together, what the
    manager's cut to twice that limit keeps, so the verdict on stderr is never cut off there."""
    return max(0, min(limit, 2 * limit - MANAGER_MESSAGE_OVERHEAD - stderr_used))


def kept_line_budget(limit: int) -> int:
    """At most this much for one line before the verdict (the launch line, a notice)."""
    return max(limit // 4, 64)


def verdict_reserve(limit: int) -> int:
    """What lines before the verdict always leave for it: the exit code, whose it is, the task
    id and the stopCode fit in 192 bytes whatever the names (see verdict_parts)."""
    return max(limit // 2, 192)


def with_note(message: str, note: Optional[str]) -> str:
    """The verdict with the attempts' note (attempts_note) after it, as stderr and --json give it."""
    return f"{message}; {note}" if note else message


def verdict_parts(exit_code: int, owner: Optional[str], task_arn: Optional[str], stop_code: Optional[str],
                  message: str, advice: Optional[str] = None, *, note: Optional[str] = None) -> List[Tuple[str, str]]:
    """The verdict under --quiet, by priority: the exit code and whose it is; the task id; how
    many launch attempts (attempts_note, when more than one); the stopCode; the reason
    (Outcome.message, without the task id it repeats); advice."""
    whose = "ecsbatch" if owner is None else f"container {shorten_middle(owner, 40)}"
    parts = [(KEEP, f"ecsbatch: exit {exit_code} from {whose}")]
    tid = task_id(task_arn) if task_arn else None
    if tid:
        parts.append((KEEP, f", task {shorten_middle(tid, 48)}"))
    if note:
        parts.append((SHORTEN, f", {note}"))  # shortened only after the reason, at the smallest limits
    if stop_code:
        parts.append((KEEP, f", stopCode {shorten_middle(stop_code, 32)}"))
    reason = message[len(f"task {tid} "):] if tid and message.startswith(f"task {tid} ") else message
    reason = reason.replace(f"stopCode={stop_code}; ", "") if stop_code else reason
    parts.append((SHORTEN, f": {reason}"))
    if advice:
        parts.append((DROP, f"; {advice}"))
    return parts


def task_line_parts(verb: str, task_arn: str, label: str, counted: List[str], cluster: Optional[str],
                    state: Optional[str] = None) -> List[Tuple[str, str]]:
    """The launch (or attach) line under --quiet: the task id first, the reattach advice last."""
    details = f" ({label}, cluster {cluster or 'default'}, counting {', '.join(counted)}{', ' + state if state else ''})"
    return [(KEEP, f"ecsbatch: {verb} task {task_id(task_arn)}"), (SHORTEN, details),
            (DROP, f"; to reattach: ecsbatch wait {cli_cluster_arg(cluster)}{task_id(task_arn)}")]


class SilencingWriter(io.BufferedIOBase):
    """The bytes under sys.stdout or sys.stderr. A write that fails (the reader went away, a
    full disk, a closed descriptor) silences this stream for good and tells `on_silenced`; it
    never raises, so output can never end a job, stop its task or change its exit code."""

    def __init__(self, fd: int, name: str, on_silenced: Callable[[str, str], None]) -> None:
        super().__init__()
        self.fd, self.name, self.on_silenced = fd, name, on_silenced
        self.silenced: Optional[str] = None

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.silenced is not None:
            return size
        try:
            while view:
                try:
                    view = view[os.write(self.fd, view):]
                except BlockingIOError:  # a descriptor some parent left non-blocking
                    import select

                    select.select([], [self.fd], [], 1.0)
        except OSError as exc:
            import errno

            self.silenced = "was closed" if exc.errno == errno.EPIPE else f"failed ({exc.strerror or exc})"
            self.on_silenced(self.name, self.silenced)
        return size

    def flush(self) -> None:
        pass


def install_safe_streams() -> None:
    """Put stdout and stderr on SilencingWriters, with their encodings and errors="replace":
    a character the encoding cannot write (an emoji under EUC-JP, a lone surrogate) becomes "?"."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd, encoding = stream.fileno(), stream.encoding
            stream.flush()
        except (AttributeError, OSError, ValueError):
            continue  # no such stream (closed at start), or not a real file: leave it alone
        writer = SilencingWriter(fd, name, OUTPUT.stream_silenced)
        setattr(sys, name, io.TextIOWrapper(writer, encoding=encoding, errors="replace", write_through=True))


class SystemLog:
    """Lines to syslog (RFC 3164 framing, facility user) on a Unix datagram socket, never blocking
    and never failing: without a socket, or when the log is busy, a line is simply not logged."""

    def __init__(self, path: str) -> None:
        import socket

        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.socket.connect(path)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise

    def send(self, message: str, severity: int = 6) -> None:
        data = f"<{8 + severity}>{SYSLOG_IDENTIFIER}[{os.getpid()}]: {one_line(message)}"
        try:
            self.socket.send(data.encode("utf-8", errors="replace")[:SYSLOG_MESSAGE_LIMIT])
        except OSError:
            pass


class Reporter:
    """Everything `run` and `wait` say: progress, the task line, the verdict, the result line.

    Without --quiet, progress and the verdict go to stderr as they happen and the container's
    log lines to stdout. With --quiet, stderr holds only the task line, kept notices and the
    verdict, and stdout only the result line and the log tail, each within --output-limit bytes
    and, together, within the manager's cut (see stdout_budget); the journal gets everything.
    """

    def __init__(self) -> None:
        self.quiet = False
        self.limit = DEFAULT_OUTPUT_LIMIT
        self.as_json = False
        self.json_emitted = False
        self.result_written = False
        self.stderr_used = 0
        self.task_arn: Optional[str] = None
        self.syslog: Optional[SystemLog] = None

    def use_syslog(self) -> None:
        path = os.environ.get("ECSBATCH_SYSLOG_SOCKET", SYSLOG_SOCKET)
        if self.syslog is None and path and os.path.exists(path):
            with contextlib.suppress(OSError):
                self.syslog = SystemLog(path)

    def encoding(self, stream: Any) -> str:
        return getattr(stream, "encoding", None) or "utf-8"

    def progress(self, message: str, *, kept: bool = False, severity: int = 6) -> None:
        if self.syslog is not None:
            self.syslog.send(message, severity)
        if not self.quiet:
            stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            click.echo(f"{stamp} ecsbatch: {message}", file=sys.stderr)
        elif kept:
            said, _, advice = message.partition("; to reattach: ")  # advice gives way first
            self.kept([(KEEP, "ecsbatch: "), (SHORTEN, said)] + ([(DROP, f"; to reattach: {advice}")] if advice else []))

    def kept(self, parts: List[Tuple[str, str]]) -> None:
        """A line before the verdict, under --quiet: left out when its KEEP parts do not fit."""
        room = self.limit - self.stderr_used - verdict_reserve(self.limit)
        budget = min(room, kept_line_budget(self.limit)) - 1
        line = fit_parts(parts, budget, self.encoding(sys.stderr))
        if 0 < encoded_size(line, self.encoding(sys.stderr)) <= budget:
            self.err_line(line)

    def last_words(self, message: str) -> bytes:
        """The bytes of a line written straight to fd 2 just before os._exit (no verdict follows):
        timestamped, or under --quiet fitted into what is left of the limit."""
        if self.syslog is not None:
            self.syslog.send(message, 3)
        encoding = self.encoding(sys.stderr)
        if self.quiet:
            line = fit_parts([(KEEP, "ecsbatch: "), (SHORTEN, message)], self.limit - self.stderr_used - 1, encoding)
        else:
            line = f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')} ecsbatch: {message}"
        return (line + "\n").encode(encoding, "replace")

    def err_line(self, line: str) -> None:
        self.stderr_used += encoded_size(line, self.encoding(sys.stderr)) + 1
        click.echo(line, file=sys.stderr)

    def task_line(self, verb: str, task_arn: str, label: str, counted: List[str], cluster: Optional[str],
                  state: Optional[str] = None) -> None:
        """`launched task …` or `attached to task …`: the line that names the task at once."""
        self.task_arn = task_arn
        if self.quiet:
            if self.syslog is not None:
                self.syslog.send(f"{verb} task {task_arn} ({label}, counting {', '.join(counted)})")
            self.kept(task_line_parts(verb, task_arn, label, counted, cluster, state))
        else:
            self.progress(f"{verb} task {task_arn} ({label}, counting {', '.join(counted)})"
                          + (f", {state}" if state else "")
                          + (f"; to reattach: ecsbatch wait {cli_cluster_arg(cluster)}{task_arn}"
                             if verb.endswith("launched") else ""))

    def verdict(self, exit_code: int, owner: Optional[str], task: Optional[Mapping[str, Any]],
                task_arn: Optional[str], message: str, advice: Optional[str], *, note: Optional[str] = None) -> None:
        """The last word on stderr: Outcome.message (and the attempts' `note`), or under --quiet
        its budgeted form."""
        severity = 6 if exit_code == 0 else 3  # info, or err
        if not self.quiet:
            self.progress(with_note(message, note), severity=severity)
            return
        if self.syslog is not None:
            self.syslog.send(with_note(message, note), severity)
        stop_code = (task or {}).get("stopCode")
        parts = verdict_parts(exit_code, owner, task_arn, stop_code, message, advice, note=note)
        self.err_line(fit_parts(parts, self.limit - self.stderr_used - 1, self.encoding(sys.stderr)))

    def error(self, line: str, *, leave: int = 0) -> None:
        """An `ecsbatch: error: …` line; under --quiet, shortened to what is left of the limit
        (less `leave`, for a line to come)."""
        if self.syslog is not None:
            self.syslog.send(line, severity=3)
        if not self.quiet:
            click.echo(line, file=sys.stderr)
            return
        prefix = "ecsbatch: error: " if line.startswith("ecsbatch: error: ") else ""
        parts = [(KEEP, prefix), (SHORTEN, line[len(prefix):])]
        self.err_line(fit_parts(parts, max(self.limit - self.stderr_used - leave, 64) - 1, self.encoding(sys.stderr)))

    def quiet_stdout(self, exit_code: int, owner: Optional[str], tail: List[str], note: Optional[str]) -> None:
        """Under --quiet, the end of the job on stdout: the result line first (a regex finds the
        first match), then the log's last lines that fit, or where the logs went."""
        if self.result_written:
            return
        self.result_written = True
        encoding = self.encoding(sys.stdout)
        budget = stdout_budget(self.limit, self.stderr_used)
        first = result_line(self.task_arn, exit_code, owner)
        budget -= encoded_size(first, encoding) + 1
        lines = [first]
        if note:
            lines.append(shorten_middle(f"ecsbatch: {note}", max(budget - 1, 0), encoding))
        elif tail:
            lines += tail_that_fits(tail, budget, encoding)
        for line in lines:
            if line:
                click.echo(line, file=sys.stdout)

    def emit_json(self, summary: Mapping[str, Any], tail: List[str]) -> None:
        """--json: one object on stdout; under --quiet its log tail is cut to fit the limit."""
        self.json_emitted = True
        summary = dict(summary, logTail=list(tail))
        if self.quiet:
            budget = stdout_budget(self.limit, self.stderr_used) - 1
            encoding = self.encoding(sys.stdout)
            kept = tail_that_fits(tail, budget, encoding)
            while kept and encoded_size(json.dumps(dict(summary, logTail=kept), default=str), encoding) > budget:
                kept = kept[1:]
            summary["logTail"] = kept
        click.echo(json.dumps(summary, default=str), file=sys.stdout)

    def failed(self, exit_code: int, outcome: str, line: str, message: str, stopped: Optional[str], *,
               as_json: bool, quiet: bool) -> None:
        """main()'s ending for an error: the line on stderr (and what became of the task), and the
        JSON object or the result line that --json or --quiet promise, unless already written."""
        self.quiet = self.quiet or quiet
        self.error(line, leave=(self.limit - self.stderr_used) // 2 if stopped else 0)
        if stopped:
            self.error(f"ecsbatch: {stopped}")
        if as_json or self.as_json:
            if not self.json_emitted:
                self.emit_json(task_summary(None, task_arn=self.task_arn, counted_names=[], exit_code=exit_code,
                                            outcome=outcome, message=f"{message}; {stopped}" if stopped else message,
                                            elapsed=0.0), [])
        elif self.quiet:
            self.quiet_stdout(exit_code, None, [], None)

    def stream_silenced(self, name: str, why: str) -> None:
        self.progress(f"{name} {why}: nothing more is printed there; the job goes on")


OUTPUT = Reporter()


_PROGRESS_SINK = threading.local()


def progress(message: str, *, kept: bool = False) -> None:
    """One timestamped line on stderr, and in the system log for `run` and `wait`.

    Under --quiet only `kept` lines reach stderr (a line that names the task), within the output
    limit and shortened to fit, always leaving room for the verdict. In the watcher, a thread
    working for one runner collects its lines for that runner instead (progress_to).
    """
    sink = getattr(_PROGRESS_SINK, "sink", None)
    if sink is not None:
        sink(message)
        return
    OUTPUT.progress(message, kept=kept)


@contextlib.contextmanager
def progress_to(sink: Callable[[str], None]) -> Iterator[None]:
    """This thread's progress lines go to `sink` inside the block."""
    before = getattr(_PROGRESS_SINK, "sink", None)
    _PROGRESS_SINK.sink = sink
    try:
        yield
    finally:
        _PROGRESS_SINK.sink = before


def report_outcome(outcome: Outcome, *, task_arn: str, cluster: Optional[str], counted: List[str],
                   follower: Optional[LogFollower], where: Optional[str], as_json: bool, elapsed: float,
                   attempts: Optional["AttemptLog"] = None) -> None:
    """The verdict on stderr, then the log tail: under the verdict on stderr by default, on stdout
    under --quiet (with the result line), or inside the JSON object with --json."""
    OUTPUT.task_arn = task_arn
    owner = code_owner(outcome.task, counted, outcome.exit_code, outcome.kind)
    advice = f"details: ecsbatch status {cli_cluster_arg(cluster)}{task_id(task_arn)}" if outcome.exit_code else None
    note = attempts.note() if attempts is not None else None
    note = None if note is not None and note in outcome.message else note  # "gave up after N launch attempts"
    OUTPUT.verdict(outcome.exit_code, owner, outcome.task, task_arn, outcome.message, advice, note=note)
    tail = list(follower.tail) if follower is not None else []
    if not OUTPUT.quiet:
        tail = tail[-LOG_TAIL_LINES:]
        if outcome.exit_code != 0 and tail:
            click.echo(f"last {len(tail)} log lines of {counted[0]}:", file=sys.stderr)
            for line in tail:
                click.echo(f"  | {line}", file=sys.stderr)
    summary = task_summary(outcome.task, task_arn=task_arn, counted_names=counted, exit_code=outcome.exit_code,
                           outcome=outcome.kind, message=with_note(outcome.message, note), elapsed=elapsed)
    if attempts is not None:
        summary.update(attempts.json())
    if as_json:
        OUTPUT.emit_json(summary, tail)
    elif OUTPUT.quiet:
        note = where if follower is None else (None if tail else f"no log line in {where}")
        OUTPUT.quiet_stdout(outcome.exit_code, owner, tail, note)


def emit_summary(as_json: bool, summary: Mapping[str, Any]) -> None:
    if as_json:
        OUTPUT.emit_json(summary, list(summary.get("logTail") or []))


# ---------------------------------------------------------------------------------------------
# 8. Commands: shared options, then thin click shells
# ---------------------------------------------------------------------------------------------


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class PollInterval(click.FloatRange):
    """Seconds between two polls: a finite number from MIN_POLL_INTERVAL to MAX_POLL_INTERVAL."""

    def __init__(self) -> None:
        super().__init__(min=MIN_POLL_INTERVAL, max=MAX_POLL_INTERVAL)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:  # nan passes every comparison that FloatRange makes
            self.fail(f"{shown(value)} is not a number of seconds", param, ctx)
        return number


def checked_duration(ctx: Any, param: Any, value: Optional[str]) -> Optional[str]:
    """--timeout: checked before anything else happens; an empty one is not 'no timeout'."""
    if value is not None:
        try:
            parse_duration(value)
        except InputError as exc:
            raise click.BadParameter(exc.format_message(), ctx, param) from None
    return value


def checked_cluster(ctx: Any, param: Any, value: Optional[str]) -> Optional[str]:
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty: leave --cluster out for ECS's default cluster", ctx, param)
    return value


def checked_job_key(ctx: Any, param: Any, value: Optional[str]) -> Optional[str]:
    if value is not None:
        if not value:
            raise click.BadParameter("must not be empty", ctx, param)
        try:
            check_utf8(value, "it")
        except InputError as exc:
            raise click.BadParameter(exc.format_message(), ctx, param) from None
    return value


def read_var_files(ctx: Any, param: Any, paths: Tuple[str, ...]) -> None:
    """--var-file: parsed as the option is read, kept for template_variables()."""
    values: Dict[str, str] = {}
    for path in paths:
        values.update(parse_variables_file(read_text(path, "--var-file"), path))
    ctx.meta["ecsbatch.var_file"] = values


def remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    OUTPUT.as_json = OUTPUT.as_json or value  # main() owes a JSON object even for an error
    return value


def set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    OUTPUT.quiet = value
    OUTPUT.use_syslog()  # run and wait: the journal keeps the whole trail


def set_output_limit(ctx: click.Context, param: click.Parameter, value: int) -> None:
    OUTPUT.limit = value


def apply_options(command: Callable, *decorators: Callable) -> Callable:
    """Apply option decorators as if written above `command` in this order."""
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def poll_interval_option(default: float, help: str) -> Callable:
    """--poll-interval, with the default and the help of the command that takes it."""
    return click.option("--poll-interval", type=PollInterval(), default=default, show_default=True,
                        metavar="SECONDS", help=help)


def aws_options(command: Callable) -> Callable:
    """--region, --profile and --debug, shared by every command that talks to AWS."""
    return apply_options(
        command,
        click.option("--region", metavar="REGION",
                     help="AWS region; default: AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region."),
        click.option("--profile", metavar="NAME", help="AWS profile; default: the standard credential chain."),
        click.option("--debug", is_flag=True, help="Show tracebacks and botocore's wire log on stderr."),
    )


def template_options(command: Callable) -> Callable:
    """--var and --var-file: where ${NAME} placeholders get their values."""
    return apply_options(
        command,
        click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
                     help="Fill ${NAME} in the YAML file (repeatable). Unset names come from --var-file, "
                          "then the environment."),
        click.option("--var-file", multiple=True, metavar="FILE", expose_value=False, callback=read_var_files,
                     help="Read NAME=VALUE lines (# comments) for ${NAME}; --var wins over it, it wins over "
                          "the environment. E.g. examples/variables.env."),
    )


json_option = click.option("--json", "as_json", is_flag=True, callback=remember_json,
                           help="Print one JSON object on stdout on exit, also for an error.")


cluster_option = click.option("--cluster", metavar="NAME", callback=checked_cluster,
                              help="The cluster; default: the one a task ARN names, else ECS's default.")


def wait_options(command: Callable) -> Callable:
    """What `run` and `wait` share about waiting for a task."""
    return apply_options(
        command,
        click.option("--container", metavar="NAME",
                     help="The container whose exit code counts. Default: the task definition's essential containers."),
        click.option("--timeout", "timeout_text", metavar="DURATION", callback=checked_duration,
                     help="Stop the task and exit 124 after this long: 90, 90s, 15m, 2h."),
        poll_interval_option(DEFAULT_POLL_INTERVAL, "Longest gap between two DescribeTasks calls."),
        click.option("--no-logs", is_flag=True, help="Do not stream the container's CloudWatch Logs."),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
                     help="For schedulers that keep the head of the output (Hinemos): print nothing while "
                          "waiting; stderr gets the task line and the verdict, stdout the result line and "
                          "the log's last lines, each within --output-limit."),
        click.option("--output-limit", type=click.IntRange(min=MIN_OUTPUT_LIMIT), default=DEFAULT_OUTPUT_LIMIT,
                     show_default=True, metavar="BYTES", expose_value=False, callback=set_output_limit,
                     help="With --quiet: bytes per stream, as the agent keeps (Hinemos: job.message.length)."),
    )


def key_options(command: Callable) -> Callable:
    """--started-by and --job-key: the key that finds a job's tasks without local state."""
    return apply_options(
        command,
        click.option("--started-by", metavar="KEY", help="startedBy: 1-36 letters, digits, _, - or /."),
        click.option("--job-key", metavar="TEXT", callback=checked_job_key,
                     help="Derive startedBy from any text, e.g. Hinemos job variables; "
                     "run and stop derive the same key."),
    )


def checked_launch_timeout(ctx: Any, param: Any, value: str) -> str:
    """--launch-timeout: a duration, or 0 for no retries."""
    try:
        parse_launch_timeout(value)
    except InputError as exc:
        raise click.BadParameter(exc.format_message(), ctx, param) from None
    return value


def capacity_options(command: Callable) -> Callable:
    """When capacity runs out: launch retries and reruns after an interruption."""
    return apply_options(
        command,
        click.option("--launch-timeout", "launch_timeout_text", metavar="DURATION", default=DEFAULT_LAUNCH_TIMEOUT,
                     show_default=True, callback=checked_launch_timeout,
                     help="Retry a launch that failed for lack of capacity (RESOURCE:*, AGENT, Fargate's "
                          "\"Capacity is unavailable\") this long; 0: never."),
        click.option("--launch-backoff", "launch_backoff_text", metavar="DURATION", default=DEFAULT_LAUNCH_BACKOFF,
                     show_default=True, callback=checked_duration,
                     help="The longest wait between two launch attempts (full jitter, from 2s doubling)."),
        click.option("--rerun-on-interruption", "reruns", type=click.IntRange(0, MAX_RERUNS), default=0,
                     show_default=True, metavar="N",
                     help="Launch the job again, up to N times, when ECS interrupts its task (Spot, a "
                          "termination notice, a lost host). Only if the job may run twice."),
        click.option("--rerun-capacity-provider", "rerun_providers", multiple=True, metavar="NAME[:WEIGHT[:BASE]]",
                     help="The reruns' capacityProviderStrategy (repeatable), e.g. FARGATE; drops launchType."),
    )


def retry_policy(launch_timeout_text: str, launch_backoff_text: str, reruns: int,
                 rerun_providers: Tuple[str, ...]) -> RetryPolicy:
    """The options of capacity_options, checked together, as run_attempts takes them."""
    if rerun_providers and not reruns:
        raise InputError("--rerun-capacity-provider needs --rerun-on-interruption N (it is the reruns' strategy)")
    strategy = capacity_strategy(rerun_providers)
    launch_timeout = parse_launch_timeout(launch_timeout_text)
    return RetryPolicy(launch_timeout=launch_timeout, launch_timeout_text=launch_timeout_text,
                       backoff_cap=parse_duration(launch_backoff_text), reruns=reruns,
                       strategy=strategy, rng=random.Random())


@click.group(context_settings=CONTEXT_SETTINGS, invoke_without_command=True, no_args_is_help=False)
@click.version_option(__version__, "--version", message="ecsbatch %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run Amazon ECS tasks as batch jobs that a scheduler can judge by exit code.

    \b
    Exit codes: 0-255 the counted container's exit code; 2 bad input, nothing launched;
    124 --timeout expired (task stopped); 125 ECS could not launch or finish the task;
    130/143 SIGINT/SIGTERM (task stopped first).
    """
    if ctx.invoked_subcommand is None:
        # Bare `ecsbatch` did nothing, so it must not look like success to a scheduler: the help
        # goes to stderr and the exit is 2, the same under every click version.
        click.echo(ctx.get_help(), err=True)
        ctx.exit(EXIT_USAGE)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("-f", "--file", "path", default=DEFAULT_RUN_FILE, show_default=True, metavar="PATH",
              help="RunTask request, as `aws ecs run-task --cli-input-yaml` takes it.")
@template_options
@click.option("--cluster", metavar="NAME", callback=checked_cluster, help="Override the file's cluster.")
@click.option("--task-definition", metavar="FAMILY[:REV]|ARN", help="Override the file's taskDefinition.")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="Set an environment variable in the target container (repeatable).")
@wait_options
@key_options
@click.option("--if-running", type=click.Choice(IF_RUNNING_CHOICES), default="attach", show_default=True,
              help="With --job-key or --started-by, when a task of the same key is still live: attach to it "
                   "(same request), fail with exit 120, or launch another anyway.")
@capacity_options
@click.option("--dry-run", is_flag=True, help="Print the rendered request as YAML and exit 0. No AWS call.")
@json_option
@aws_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND ARGS...]")
def run(path: str, variables: Tuple[str, ...], cluster: Optional[str], task_definition: Optional[str],
        env_pairs: Tuple[str, ...], container: Optional[str], timeout_text: Optional[str], poll_interval: float,
        no_logs: bool, started_by: Optional[str], job_key: Optional[str], if_running: str,
        launch_timeout_text: str, launch_backoff_text: str, reruns: int, rerun_providers: Tuple[str, ...],
        dry_run: bool, as_json: bool,
        region: Optional[str], profile: Optional[str], debug: bool, command: Tuple[str, ...]) -> None:
    """Launch the task in run-task.yaml, wait until it stops, exit with its exit code.

    -e and COMMAND go to --container, else to the first essential container. The task's
    startedBy is --started-by, a key derived from --job-key, the file's, or "ecsbatch".

    \b
    Example:
        ecsbatch run
        ecsbatch run -f run-task.yaml --timeout 2h -e TARGET_DATE=2026-11-28
        ecsbatch run --cluster batch --task-definition nightly:42 -- python job.py --full
        ecsbatch run --job-key "#[SESSION_ID]/#[JOB_ID]" --timeout 3h
        ecsbatch run --launch-timeout 10m --rerun-on-interruption 1 --rerun-capacity-provider FARGATE
        ecsbatch run --dry-run --var SUBNET_ID=subnet-0abc
    """
    decline_unless_ours(region, profile, debug)
    setup_debug(debug)
    guard = SignalGuard()
    guard.install()
    timeout = parse_duration(timeout_text) if timeout_text else None
    env = parse_assignments(env_pairs, "-e/--env", identifier=False)
    started_by = chosen_started_by(started_by, job_key)
    why = THIN_START.pop("why", None)  # the thin start's, at the top of the file
    if watcher_wanted(dry_run=dry_run, debug=debug):  # returns only if the watcher cannot launch it
        why = run_through_watcher(list(COMMAND_ARGS), region=region, profile=profile, in_place=False) or why
    request = load_request(path, template_variables(variables))
    for key, value in (("cluster", cluster), ("taskDefinition", task_definition), ("startedBy", started_by)):
        if value is not None:
            request[key] = value
    request.setdefault("startedBy", DEFAULT_STARTED_BY)
    fail_on_problems(path, run_request_problems(request))
    policy = retry_policy(launch_timeout_text, launch_backoff_text, reruns, rerun_providers)

    if dry_run:
        target = container or f"the first essential container of {request['taskDefinition']}"
        final = build_run_request(request, target_container=target, env=env, command=command)
        fail_on_problems(path, run_request_problems(final))
        click.echo(dump_yaml(final), nl=False)
        return

    ecs = make_client("ecs", region, profile)
    if why:  # said once the run gets this far: a bad file or bad credentials say only their own line
        progress(f"{why}; this run waits by itself")
    definition = definition_to_launch(ecs, request["taskDefinition"])
    counted = counted_container_names(definition, container)
    target = container or counted[0]
    # Launch exactly the revision we judged, even if a new one is registered meanwhile.
    request["taskDefinition"] = definition["taskDefinitionArn"]
    final = build_run_request(request, target_container=target, env=env, command=command)
    fail_on_problems(path, run_request_problems(final))
    if policy.strategy:
        fail_on_problems(f"{path} with --rerun-capacity-provider",
                         run_request_problems(rerun_request(final, policy.strategy)))
    digest = request_hash(final)
    cluster_name = final.get("cluster")
    wait_args = dict(timeout_text=timeout_text, poll_interval=poll_interval, logs=not no_logs, as_json=as_json,
                     region=region, profile=profile)

    # A key of this job's own, from the command line: never the shared default, never the file's.
    own_key = started_by if started_by != DEFAULT_STARTED_BY else None
    if own_key is not None:
        register_runner(own_key)  # so that `ecsbatch stop --job-key` reaches this runner
        decision = decide_rerun(ecs, cluster_name, own_key, digest, if_running, poll_interval=poll_interval)
        if decision.action in ("refuse", "fail"):
            code = EXIT_ALREADY_RUNNING if decision.action == "fail" else EXIT_USAGE
            emit_summary(as_json, task_summary(decision.task, task_arn=None, counted_names=counted, exit_code=code,
                                               outcome="already-running" if code == EXIT_ALREADY_RUNNING
                                               else "key-in-use", message=decision.message, elapsed=0.0))
            raise (AlreadyRunning if code == EXIT_ALREADY_RUNNING else InputError)(decision.message)
        if decision.action == "attach":
            attach_to(Target(ecs, cluster_name, dict(decision.task or {}), definition, counted), guard,
                      decision.message, timeout, wait_args,
                      lambda: decide_rerun(ecs, cluster_name, own_key, digest, if_running, poll_interval=poll_interval))
            return

    # Each launch attempt has a clientToken of its own; botocore's retries and the re-sends of an
    # attempt whose answer was lost reuse it, so ECS starts one task per attempt.
    click.get_current_context().exit(run_attempts(ecs, guard, final, policy, digest=digest, key=own_key,
                                                  definition=definition, counted=counted, timeout=timeout,
                                                  wait_args=wait_args))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("task")
@cluster_option
@wait_options
@json_option
@aws_options
def wait(task: str, cluster: Optional[str], container: Optional[str], timeout_text: Optional[str],
         poll_interval: float, no_logs: bool, as_json: bool, region: Optional[str], profile: Optional[str],
         debug: bool) -> None:
    """Attach to a task that is already running and behave as `run` does from launch on.

    The same exit codes, the same logs, the same signals: SIGTERM or SIGINT stops the task.

    \b
    Example:
        ecsbatch wait --cluster batch 0123456789abcdef0123456789abcdef
        ecsbatch wait arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef --timeout 1h
    """
    setup_debug(debug)
    guard = SignalGuard()
    guard.install()
    timeout = parse_duration(timeout_text) if timeout_text else None
    target = find_target(task, cluster, container, region, profile)
    OUTPUT.task_line("attached to", target.task["taskArn"], task_definition_label(target.definition), target.counted,
                     target.cluster, target.task.get("lastStatus"))
    wait_to_the_end(target, guard, timeout=timeout, timeout_text=timeout_text, poll_interval=poll_interval,
                    logs=not no_logs, as_json=as_json, region=region, profile=profile, interrupted_by=None,
                    missing_grace=0.0)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("task", required=False)
@cluster_option
@click.option("--started-by", metavar="KEY", help="List the tasks with exactly this startedBy.")
@json_option
@aws_options
def status(task: Optional[str], cluster: Optional[str], started_by: Optional[str], as_json: bool,
           region: Optional[str], profile: Optional[str], debug: bool) -> None:
    """Show one task, or list ecsbatch's tasks: running and recently stopped.

    Without TASK, the list holds the tasks whose startedBy is "ecsbatch" or a key derived with
    --job-key, or exactly --started-by KEY. ECS keeps stopped tasks for about an hour.

    \b
    Example:
        ecsbatch status --cluster batch
        ecsbatch status --cluster batch 0123456789abcdef0123456789abcdef --json
    """
    setup_debug(debug)
    if started_by is not None:
        check_started_by(started_by)
    ecs = make_client("ecs", region, profile)
    if task is not None:
        found = require_task(ecs, cluster_for_task(task, cluster), task)
        click.echo(json.dumps(found, default=str) if as_json else task_details(found))
        return
    arns = [arn for desired in ("RUNNING", "STOPPED")
            for arn in list_task_arns(ecs, cluster, desired_status=desired, started_by=started_by)]
    tasks = tasks_ecs_knows(ecs, cluster, arns)
    if started_by is None:  # ListTasks filtered on an exact key already; this keeps all of ecsbatch's
        tasks = [t for t in tasks if is_ecsbatch_task(t)]
    if as_json:
        click.echo(json.dumps(tasks, default=str))
    elif tasks:
        click.echo(format_table(status_rows(tasks)))
    else:
        progress(f"no ecsbatch task in cluster {cluster or 'default'}, running or stopped in the last hour")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("task", required=False)
@cluster_option
@key_options
@click.option("--client-token", metavar="TOKEN", help="Stop the task of one launch, by the token in its "
              f"{TAG_CLIENT_TOKEN} tag (ecsbatch prints it when a launch's answer is lost).")
@click.option("--expired", is_flag=True, help="Stop ecsbatch's tasks that are past the deadline their --timeout "
              "gave them (their runner is gone, e.g. after a batch-server outage).")
@click.option("--grace", "grace_text", default=DEFAULT_EXPIRED_GRACE, show_default=True, metavar="DURATION",
              callback=checked_duration, help="With --expired: leave a live runner this long past the deadline to stop its task itself.")
@click.option("--reason", default="stopped by an operator with ecsbatch stop", show_default=True,
              help="Why; shown as the task's stoppedReason.")
@click.option("--timeout", "timeout_text", default=DEFAULT_STOP_TIMEOUT, show_default=True, metavar="DURATION",
              callback=checked_duration,
              help="Exit 124 if the tasks are not STOPPED (and the runners not gone) by then.")
@poll_interval_option(STOP_CONFIRM_POLL, "Gap between two DescribeTasks calls.")
@aws_options
def stop(task: Optional[str], cluster: Optional[str], started_by: Optional[str], job_key: Optional[str],
         client_token: Optional[str], expired: bool, grace_text: str, reason: str, timeout_text: str,
         poll_interval: float, region: Optional[str], profile: Optional[str], debug: bool) -> None:
    """Stop a task, or every running task of a key, and wait until they are STOPPED.

    With --started-by or --job-key it needs no local state, so it works even after the runner was
    killed outright: use it as the scheduler's stop command. It also signals (SIGTERM) the runners
    of that key that this user runs on this machine, so that a job whose launch is still in
    flight is stopped by its own runner, and waits for them to exit. Exit 0 once every task is
    STOPPED and every runner gone, also when there was none.

    \b
    Example:
        ecsbatch stop --cluster batch 0123456789abcdef0123456789abcdef
        ecsbatch stop --cluster batch --job-key "#[SESSION_ID]/#[JOB_ID]"
        ecsbatch stop --cluster batch --expired
    """
    setup_debug(debug)
    key = chosen_started_by(started_by, job_key)
    if sum(1 for given in (task is not None, key is not None, client_token is not None, expired) if given) != 1:
        raise InputError("name a TASK, or give --started-by or --job-key, --client-token or --expired (one of them)")
    deadline = time.monotonic() + parse_duration(timeout_text)
    grace = parse_duration(grace_text) if expired else 0.0
    runners: List[Tuple[int, str]] = []
    if key is not None:
        runners = registered_runners(key)
        for pid, _ in runners:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            progress(f"sent SIGTERM to the runner of {key} (pid {pid}); it stops what it launched or is launching")
    ecs = make_client("ecs", region, profile)
    if task is not None:
        cluster = cluster_for_task(task, cluster)
        arns = [task]
    elif key is not None:
        arns = list_task_arns(ecs, cluster, desired_status="RUNNING", started_by=key)
    elif client_token is not None:
        arns = [t["taskArn"] for t in tasks_ecs_knows(ecs, cluster, list_task_arns(ecs, cluster, desired_status="RUNNING"),
                                                     with_tags=True)
                if tag_value(t, TAG_CLIENT_TOKEN) == client_token]
    else:
        live = tasks_ecs_knows(ecs, cluster, list_task_arns(ecs, cluster, desired_status="RUNNING"), with_tags=True)
        found = expired_tasks(live, datetime.datetime.now(datetime.timezone.utc), grace)
        for item, when in found:
            progress(f"task {task_id(item['taskArn'])} (startedBy {item.get('startedBy') or '-'}) is past its "
                     f"deadline {when.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        arns = [item["taskArn"] for item, _ in found]
        reason = f"{reason}; past its deadline (--expired)"
    what = (f"startedBy {key}" if key is not None else f"tag {TAG_CLIENT_TOKEN}={client_token}"
            if client_token is not None else "a deadline past")
    if not arns and not runners:
        progress(f"no running task with {what} in cluster {cluster or 'default'}; nothing to stop")
        return
    stop_and_wait(ecs, cluster, arns, operator_stop_reason(reason), runners=runners, key=key, deadline=deadline,
                  timeout_text=timeout_text, poll_interval=poll_interval)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("task")
@cluster_option
@click.option("--container", metavar="NAME", help="Whose log. Default: the first essential container.")
@click.option("--follow", is_flag=True, help="Keep printing new lines until the task stops (no -f: that is --file).")
@poll_interval_option(DEFAULT_POLL_INTERVAL, "With --follow, the gap between two reads.")
@aws_options
def logs(task: str, cluster: Optional[str], container: Optional[str], follow: bool, poll_interval: float,
         region: Optional[str], profile: Optional[str], debug: bool) -> None:
    """Print a task's container log from CloudWatch Logs (the awslogs driver).

    Interrupting `logs --follow` never stops the task.

    \b
    Example:
        ecsbatch logs --cluster batch 0123456789abcdef0123456789abcdef
        ecsbatch logs --follow arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef
    """
    setup_debug(debug)
    ecs, cluster, found, definition, counted = find_target(task, cluster, container, region, profile)
    name = counted[0]
    source, where = container_log_source(definition, name, found["taskArn"])
    if source is None:
        raise InputError(where)
    follower = LogFollower(make_client("logs", source.region or region, profile), source, to_stderr=False)
    follower.poll()
    if follow:
        watch = Watch(ecs, cluster, found["taskArn"], poll_interval=poll_interval, missing_grace=0.0)
        with contextlib.suppress(TaskMissing):
            watch.until_stopped(None, follower.poll)
        follower.drain()


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("-f", "--file", "path", default=DEFAULT_REGISTER_FILE, show_default=True, metavar="PATH",
              help="RegisterTaskDefinition request, as `aws ecs register-task-definition --cli-input-yaml` takes it.")
@click.option("--tag", required=True, metavar="TAG", help="Image tag that fills ${IMAGE_TAG}, e.g. the commit's first 7 characters.")
@template_options
@click.option("--pin", "pin_path", metavar="FILE", help="Then set FILE's top-level taskDefinition to the new family:revision.")
@click.option("--force", is_flag=True, help="Register even if the latest revision is the same.")
@click.option("--dry-run", is_flag=True, help="Print the rendered request as YAML and exit 0. No AWS call.")
@json_option
@aws_options
def register(path: str, tag: str, variables: Tuple[str, ...], pin_path: Optional[str], force: bool, dry_run: bool,
             as_json: bool, region: Optional[str], profile: Optional[str], debug: bool) -> None:
    """Register the task definition in register-task.yaml for one image tag; print its ARN.

    Nothing is registered when the family's latest ACTIVE revision already equals the rendered
    request; its ARN is printed instead, so a re-run leaves no trail of identical revisions.

    \b
    Example:
        ARN=$(ecsbatch register --tag "${CODEBUILD_RESOLVED_SOURCE_VERSION:0:7}" --pin run-task.yaml)
        ecsbatch register --tag 1a2b3c4 --dry-run
    """
    setup_debug(debug)
    check_docker_tag(tag)
    request = load_request(path, template_variables(variables, {IMAGE_TAG_VARIABLE: tag}))
    fail_on_problems(path, register_request_problems(request))
    pin_text = read_pin_target(pin_path) if pin_path else None
    if dry_run:
        click.echo(dump_yaml(request), nl=False)
        return

    ecs = make_client("ecs", region, profile)
    fields = list(ecs_service_model().operation_model("RegisterTaskDefinition").input_shape.members)
    latest, latest_tags = (None, []) if force else latest_registered(ecs, request["family"])
    if latest is not None and definition_matches(request, latest, latest_tags, fields):
        definition, registered = latest, False
        progress(f"{task_definition_label(definition)} already matches {path}; nothing registered")
    else:
        definition, registered = register_task_definition(ecs, request), True
        progress(f"registered {task_definition_label(definition)}")
    label = task_definition_label(definition)
    if pin_path and pin_text is not None:
        write_atomically(pin_path, pin_task_definition(pin_text, label, pin_path))
        progress(f"pinned {pin_path} to {label}")
    if as_json:
        click.echo(json.dumps({"taskDefinitionArn": definition["taskDefinitionArn"], "family": definition["family"],
                               "revision": definition["revision"], "registered": registered}))
    else:
        click.echo(definition["taskDefinitionArn"])


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, metavar="[RUN_FILE] [REGISTER_FILE]")
@template_options
@click.option("--tag", metavar="TAG", help="Image tag that fills ${IMAGE_TAG}.")
def validate(paths: Tuple[str, ...], variables: Tuple[str, ...], tag: Optional[str]) -> None:
    """Render and check request files against botocore's ECS model, offline.

    Each file is checked as RunTask or as RegisterTaskDefinition, by what it holds. Every
    problem in every file is listed. Exit 0 when all are valid, 2 otherwise.

    \b
    Example:
        ecsbatch validate
        ecsbatch validate run-task.yaml register-task.yaml --tag 1a2b3c4 --var SUBNET_ID=subnet-0abc
    """
    extra = {IMAGE_TAG_VARIABLE: check_docker_tag(tag)} if tag else {}
    names = template_variables(variables, extra)
    problems: List[str] = []
    for path in paths or (DEFAULT_RUN_FILE, DEFAULT_REGISTER_FILE):
        try:
            request = load_request(path, names)
        except InputError as exc:
            problems.append(exc.format_message())
            continue
        kind = request_kind(request)
        found = run_request_problems(request) if kind == "RunTask" else register_request_problems(request)
        problems.extend(f"{path}: {problem}" for problem in found)
        if not found:
            progress(f"{path}: valid {kind} request")
    for problem in problems:
        click.echo(f"ecsbatch: error: {problem}", err=True)
    if problems:
        click.get_current_context().exit(EXIT_USAGE)


@cli.command(context_settings=CONTEXT_SETTINGS, hidden=True)
@click.option("--detach", is_flag=True, help="Leave the session and close stdin, stdout and stderr first.")
@click.option("--idle", "idle_text", metavar="DURATION", callback=checked_duration,
              help="Exit after this long with nothing to do. Default: 2m.")
@aws_options
def watcher(detach: bool, idle_text: Optional[str], region: Optional[str], profile: Optional[str],
            debug: bool) -> None:
    """The shared watcher of this user and credential context (unless ECSBATCH_WATCHER=off).

    `run` starts it when none listens; a systemd socket unit may start it instead (LISTEN_FDS,
    with ECSBATCH_WATCHER_SOCKET naming the socket for the runners).

    \b
    Example:
        ecsbatch run --job-key nightly    # starts it when none listens
        ecsbatch watcher --idle 10m       # systemd's ExecStart=
    """
    setup_debug(debug)
    serve_watcher(detach=detach, idle=parse_duration(idle_text) if idle_text else DEFAULT_WATCHER_IDLE,
                  region=region, profile=profile)


COMMAND_ARGS: List[str] = []  # what this process was asked, for the watcher to run the same


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: every failure ends in one line on stderr and a documented exit code; with
    --json, stdout always holds one JSON object; with --quiet, always the result line."""
    install_safe_streams()
    args = list(sys.argv[1:] if argv is None else argv)
    COMMAND_ARGS[:] = args
    resume = RESUME_STATE
    if resume is None and os.environ.get(RESUME_FD_ENV):  # the end of a job that a thin runner waited on
        fd = os.environ.pop(RESUME_FD_ENV)
        with contextlib.suppress(OSError, ValueError):
            resume = read_state(int(fd))
        if resume is None:
            sys.stderr.write("ecsbatch: error: the state of the job to resume could not be read\n")
            sys.exit(EXIT_ECS_FAILURE)
    options = args[: args.index("--")] if "--" in args else args
    debug = "--debug" in options
    # Before click has parsed them (a usage error), the flags are read from the arguments.
    as_json = "--json" in options
    quiet = bool(options) and options[0] in ("run", "wait") and bool({"-q", "--quiet"} & set(options))

    def fail(exit_code: int, outcome: str, line: str, message: str, stopped: Optional[str] = None) -> None:
        OUTPUT.failed(exit_code, outcome, line, message, stopped, as_json=as_json, quiet=quiet)
        sys.exit(exit_code)

    try:
        # Without standalone mode click returns ctx.exit()'s code instead of exiting.
        result = resume_job(resume) if resume else cli.main(args=args, prog_name="ecsbatch", standalone_mode=False)
    except click.Abort:
        fail(EXIT_SIGINT, OUTCOME_INTERRUPTED, "ecsbatch: aborted", "aborted")
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        fail(EXIT_USAGE, OUTCOME_USAGE_ERROR, f"ecsbatch: error: {exc.format_message()}{hint}", exc.format_message())
    except click.ClickException as exc:
        if debug:
            import traceback

            traceback.print_exc()
        stopped = KnownTask.stop(f"stopped after an error: {one_line(exc.format_message())}")
        outcome = OUTCOME_USAGE_ERROR if exc.exit_code == EXIT_USAGE else OUTCOME_ERROR
        fail(exc.exit_code, outcome, f"ecsbatch: error: {exc.format_message()}", exc.format_message(), stopped)
    except Interrupted as interrupt:
        stopped = KnownTask.stop_for(interrupt.signum)  # a task launched by this run is never left behind
        what = stopped or f"interrupted by {signal.Signals(interrupt.signum).name}; nothing was started"
        fail(EXIT_FOR_SIGNAL[interrupt.signum], OUTCOME_INTERRUPTED, f"ecsbatch: {what}", what)
    except Exception as exc:
        stopped = KnownTask.stop(f"internal error: {type(exc).__name__}")
        if debug:
            raise
        message = f"internal error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for the traceback)"
        fail(EXIT_ECS_FAILURE, OUTCOME_ERROR, f"ecsbatch: {message}", message, stopped)
    sys.exit(result if isinstance(result, int) else 0)


# ---------------------------------------------------------------------------------------------
# 9. The shared watcher: launch children, the resumed ending, the watcher itself
# ---------------------------------------------------------------------------------------------


def task_ticket(key: bytes, task_arn: str, pid: int, start: Optional[str]) -> str:
    """What proves that runner `pid` (started at `start`) launched or attached to `task_arn`."""
    import hashlib
    import hmac

    return hmac.new(key, f"{task_arn}\n{pid}\n{start}".encode("utf-8"), hashlib.sha256).hexdigest()


def read_key(path: str, *, create: bool) -> Optional[bytes]:
    """The ticket key of a context, 0600 in the private directory; a new watcher reuses it, so
    that runners re-adopt their tasks through it."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(2):
        try:
            fd = os.open(path, flags)
            try:
                info = os.fstat(fd)
                data = os.read(fd, 256)
            finally:
                os.close(fd)
            if info.st_uid != os.getuid() or info.st_mode & 0o077 or len(data) < 32:
                return None
            return data
        except FileNotFoundError:
            if not create:
                return None
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
        except OSError:
            return None
    return None


WATCHER_CHILD: Optional[Dict[str, Any]] = None  # set in a launch child: whom to hand the task to
# The launcher's: revisions its launch children described (names_one_revision), which every later
# child inherits at its fork instead of describing them again. A child tells the launcher of one
# over DEFINITIONS_SINK. The launcher serves one credential context, so a name means one revision.
KNOWN_DEFINITIONS: Dict[str, Dict[str, Any]] = {}
KNOWN_DEFINITIONS_LIMIT = 64
DEFINITIONS_SINK: Optional[Any] = None
RESUME_STATE: Optional[Dict[str, Any]] = None  # set in a finishing child: the job to judge


def watcher_wanted(*, dry_run: bool, debug: bool) -> bool:
    """The watcher is allowed, for a real launch, from a runner (not from a launch child)."""
    return watcher_allowed(os.environ) and not dry_run and not debug and WATCHER_CHILD is None


def decline_unless_ours(region: Optional[str], profile: Optional[str], debug: bool) -> None:
    """In a launch child, before any AWS call: a run whose --region or --profile make it another
    credential context's, or that wants --debug, is not for the watcher. The runner is told, and
    runs it by itself; this child launches nothing."""
    child = WATCHER_CHILD
    if child is None or (not debug and credential_context(os.environ, region, profile) == child["context"]):
        return
    with contextlib.suppress(OSError):
        child["channel"].send({"op": "decline"})
    os._exit(0)


def hand_off_to_runner(watch: Watch, guard: SignalGuard, *, target: Target, timeout: Optional[float],
                       timeout_text: Optional[str], poll_interval: float, logs: bool, as_json: bool,
                       region: Optional[str], profile: Optional[str], missing_grace: float,
                       attempts: Optional[AttemptLog], continuation: Optional[Dict[str, Any]]) -> Optional[int]:
    """Full, in a launch child, where the wait begins: give the task to the runner and exit.

    `continuation`: what the judge of the task's end needs to launch again after a failure to
    start for lack of capacity (continue_attempts), the launch window included. Returns, and the
    child waits as `run` always does, when there is no runner to give it to or a signal came
    first: that signal (then the task is stopped), else None."""
    child = WATCHER_CHILD
    if child is None or guard.received is not None:
        return None
    task_arn, cluster, counted, definition = target.task["taskArn"], target.cluster, target.counted, target.definition
    deadline = None if timeout is None else watch.started + timeout
    source, where = container_log_source(definition, counted[0], task_arn) if logs else (None, None)
    if logs:  # what open_log_follower says
        progress(where if source is None else f"streaming the log of {counted[0]} from {where}")
    runner = child["runner"]
    state = {
        "task_arn": task_arn, "cluster": cluster, "definition": definition, "counted": counted,
        "timeout": timeout, "timeout_text": timeout_text or "", "poll_interval": poll_interval, "logs": logs,
        "as_json": as_json, "region": region, "profile": profile, "missing_grace": missing_grace,
        "started": watch.started, "deadline": deadline, "last_task": watch.last_task,
        "log_source": list(source) if source is not None else None, "where": where,
        "attempts": None if attempts is None else {"launches": attempts.launches, "reruns": attempts.reruns,
                                                   "task_arns": attempts.task_arns},
        "ticket": task_ticket(child["key"], task_arn, runner["pid"], runner["start"]) + ":" +
        task_ticket(child["key"], cluster or "", runner["pid"], runner["start"]),
        "encodings": child["encodings"], "tail_lines": LOG_TAIL_LINES, "registry": list(OWN_ENTRIES),
        "runner": runner, "continuation": continuation,
        "exit_for_signal": {str(int(k)): v for k, v in EXIT_FOR_SIGNAL.items()},
        "stop_command": stop_command(cluster, task_arn),
        "output": {"quiet": OUTPUT.quiet, "limit": OUTPUT.limit, "stderr_used": OUTPUT.stderr_used},
        "syslog": os.environ.get("ECSBATCH_SYSLOG_SOCKET", SYSLOG_SOCKET) if OUTPUT.syslog is not None else None,
        "syslog_limit": SYSLOG_MESSAGE_LIMIT,
        "silenced": {name: getattr(getattr(sys, name), "buffer", None).silenced for name in ("stdout", "stderr")
                     if getattr(getattr(getattr(sys, name), "buffer", None), "silenced", None)},
    }
    for signum in EXIT_FOR_SIGNAL:  # from here on the runner owns the signals
        signal.signal(signum, signal.SIG_IGN)
    if guard.received is not None:
        guard.install()
        return None
    flush_streams()
    with contextlib.suppress(OSError):  # a runner killed meanwhile leaves its task running, as always
        child["channel"].send({"op": "handoff", "state": state})
    os._exit(0)


def definition_to_launch(ecs: Any, name: str) -> Dict[str, Any]:
    """Full: the task definition that `run` judges and launches. In a launch child, a revision
    that an earlier child described comes from the launcher's memory (one DescribeTaskDefinition
    a revision per watcher, not one a job); a new one is described and told to the launcher."""
    if WATCHER_CHILD is not None and name in KNOWN_DEFINITIONS:
        return KNOWN_DEFINITIONS[name]
    definition, _ = describe_task_definition(ecs, name)
    if WATCHER_CHILD is not None and DEFINITIONS_SINK is not None and names_one_revision(name):
        with contextlib.suppress(OSError):  # full, or too big: the next child describes it again
            DEFINITIONS_SINK.send(encode_message({"op": "definition", "name": name, "definition": definition}))
    return definition


def learn_definitions(source: Any) -> None:
    """Full, in the launcher before each fork: take in the revisions that children described."""
    while True:
        try:
            message = decode_message(source.recv(1 << 20).rstrip(b"\n"))
        except InterruptedError:
            continue
        except OSError:  # nothing more to read now
            return
        except ValueError:
            continue
        name, definition = message.get("name"), message.get("definition")
        if isinstance(name, str) and names_one_revision(name) and isinstance(definition, dict) \
                and isinstance(definition.get("taskDefinitionArn"), str):
            if len(KNOWN_DEFINITIONS) >= KNOWN_DEFINITIONS_LIMIT:
                KNOWN_DEFINITIONS.clear()
            KNOWN_DEFINITIONS[name] = definition


def follow_runner(channel: LineChannel) -> None:
    """This child does the runner's job only while the runner lives: the runner sends nothing more
    (its signals come by kill), so its end of the connection closing means it was killed (or
    gave us up). Then this child ends at once, as the killed runner's own process would have: a
    task already launched is left running (a rerun with its key attaches to it), and no launch,
    retry or rerun follows."""
    import threading

    def watch() -> None:
        import select

        try:
            while True:
                select.select([channel.sock], [], [])
                if not channel.sock.recv(4096):
                    os._exit(0)
        except OSError:
            os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def launch_child(message: Dict[str, Any], conn_fd: int, fds: List[int], key: bytes) -> None:
    """Full, in a child of the zygote: become the runner's `run` up to the launch, with its
    stdin, stdout, stderr, directory, environment and arguments."""
    import socket

    global WATCHER_CHILD
    for signum in list(EXIT_FOR_SIGNAL) + [signal.SIGCHLD]:
        signal.signal(signum, signal.SIG_DFL)
    channel = LineChannel(socket.socket(fileno=conn_fd))
    finishing = message.get("kind") == "finish"
    if finishing:  # the end of a job a thin runner waited on: judge and print, as the full ecsbatch would
        global RESUME_STATE
        RESUME_STATE = message["resume"]
        state = RESUME_STATE["state"]
        message = dict(message, cwd="/", env=dict(os.environ, ECSBATCH_SYSLOG_SOCKET=state.get("syslog") or ""),
                       encodings=state["encodings"], argv=state["argv"], runner={})
        if state.get("runner"):  # a failure to start launches again from here, and hands over again
            WATCHER_CHILD = {"channel": channel, "runner": state["runner"], "key": key,
                             "encodings": state["encodings"], "context": state.get("context")}
            OWN_ENTRIES[:] = list(state.get("registry") or [])
        # The runner forwards its signals here from now on. They wait (blocked) for resume_job's
        # guard, which records them: no attempt follows a signal, and the judged ending stands.
        signal.pthread_sigmask(signal.SIG_BLOCK, list(EXIT_FOR_SIGNAL))
        try:
            channel.send({"op": "launching", "pid": os.getpid()})
        except OSError:
            os._exit(0)
    else:
        try:
            channel.send({"op": "launching", "pid": os.getpid()})
            go = channel.receive(WATCHER_ANSWER_SECONDS * 2)
        except (OSError, ValueError):
            go = None
        if not go or go.get("op") != "go":
            os._exit(0)  # the runner gave up on us: it launches by itself, we launch nothing
    follow_runner(channel)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(message["cwd"])
    os.environ.clear()
    os.environ.update(message["env"])
    for target, name, encoding in ((1, "stdout", message["encodings"][0]), (2, "stderr", message["encodings"][1])):
        setattr(sys, name, io.TextIOWrapper(io.FileIO(target, "w", closefd=False), encoding=encoding,
                                            errors="replace", line_buffering=True))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    # The watcher forked us for a runner of its own credential context (it checked the runner's
    # environment, and run() declines parsed options of another): the session and the clients
    # made before the fork serve this launch, and make no call that another process made.
    if not finishing:  # from here on this child registers, decides and notes as its runner
        WATCHER_CHILD = {"channel": channel, "runner": message["runner"], "key": key,
                         "encodings": message["encodings"], "context": message["context"]}
    code: Any = 0
    try:
        main(list(message["argv"]))
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # main() answers for everything; this is only a last word
        code = EXIT_ECS_FAILURE
    # The job's ending is decided and said: a signal the runner forwards late changes nothing, and
    # must not keep its "exit" from the runner.
    signal.pthread_sigmask(signal.SIG_BLOCK, list(EXIT_FOR_SIGNAL))
    code = code if isinstance(code, int) else (0 if code is None else 1)
    flush_streams()
    for path in OWN_ENTRIES:  # the job ended here: its runner is about to exit
        unregister_runner(path)
    with contextlib.suppress(OSError):
        channel.send({"op": "exit", "code": code})
    os._exit(0)


class TailOnly:
    """What report_outcome reads of a follower, for a log that the watcher read."""

    def __init__(self, tail: List[str]) -> None:
        self.tail = tail


def outcome_from_watcher(final: Mapping[str, Any], counted: List[str], *, cluster: Optional[str],
                         task_arn: str) -> Outcome:
    """Full, pure: the outcome of what the watcher saw, by the same rules as supervise()."""
    how = final.get("how")
    if how == "stopped":
        return judge_stopped_task(final["task"], counted)
    attempt = StopAttempt(**final["attempt"])
    if how == "missing":
        return judge_missing(final["message"], attempt, cluster=cluster, task_arn=task_arn,
                             last_seen=final.get("task"))
    code, kind, message = final["ending"]
    return judge_after_stop(Outcome(int(code), kind, message), attempt, counted, cluster=cluster, task_arn=task_arn)


def resume_job(resume: Dict[str, Any]) -> int:
    """Full, after the thin runner: judge and print what the watcher saw ("final"), or wait on
    the task by ourselves ("adopt", when the watcher is gone), as `run` does from launch on. A run
    that the thin start could not finish ends here too: "interrupted" before anything was
    launched, or "lost" when the watcher's launch child ended without a word."""
    import atexit

    if resume.get("mode") == "interrupted":
        raise Interrupted(int(resume["signal"]))
    if resume.get("mode") == "lost":
        raise AwsError("the watcher's launch process ended without a word, and a task may have been launched: "
                       "see `ecsbatch status`, and stop it with `ecsbatch stop` if this job must not run")
    state = resume["state"]
    OUTPUT.quiet, OUTPUT.limit = state["output"]["quiet"], state["output"]["limit"]
    OUTPUT.stderr_used, OUTPUT.task_arn = state["output"]["stderr_used"], state["task_arn"]
    OUTPUT.as_json = OUTPUT.as_json or state["as_json"]
    OUTPUT.use_syslog()
    for name, why in (resume.get("silenced") or {}).items():  # said once, by the thin runner
        writer = getattr(getattr(sys, name), "buffer", None)
        if isinstance(writer, SilencingWriter):
            writer.silenced = why
    for path in state.get("registry") or []:
        atexit.register(unregister_runner, path)
    guard = SignalGuard()
    guard.install()
    task_arn, cluster, counted = state["task_arn"], state["cluster"], state["counted"]
    attempts: Optional[AttemptLog] = None
    if state.get("attempts"):
        attempts = AttemptLog()
        attempts.launches, attempts.reruns = state["attempts"]["launches"], state["attempts"]["reruns"]
        attempts.task_arns = list(state["attempts"]["task_arns"])
    # The thin runner blocked the signals across the exec: one that came since is pending. It is
    # let in only inside the hold and once the task is known, so that it stops the task (adopt) or
    # leaves the judged ending as it is (final), never "nothing was started".
    with guard.hold():
        if resume["mode"] == "final":
            signal.pthread_sigmask(signal.SIG_UNBLOCK, list(EXIT_FOR_SIGNAL))
            outcome = outcome_from_watcher(resume["final"], counted, cluster=cluster, task_arn=task_arn)
            follower: Any = TailOnly(list(resume.get("tail") or [])) if state["log_source"] else None
            where, elapsed = state["where"], time.monotonic() - state["started"]
        else:
            try:
                ecs = make_client("ecs", state["region"], state["profile"])
                KnownTask.remember(ecs, cluster, task_arn)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, list(EXIT_FOR_SIGNAL))
                if resume.get("slot") is not None:  # botocore is loaded: the next runner may load it
                    with contextlib.suppress(OSError):
                        os.close(int(resume["slot"]))
            watched = watch_one_task(Target(ecs, cluster, {"taskArn": task_arn}, state["definition"], counted), guard,
                                     timeout=state["timeout"], timeout_text=state["timeout_text"],
                                     poll_interval=state["poll_interval"], logs=state["logs"],
                                     as_json=state["as_json"], region=state["region"], profile=state["profile"],
                                     interrupted_by=resume.get("interrupted_by") or guard.received,
                                     missing_grace=state["missing_grace"],
                                     resumed=resume)
            outcome, follower, where, elapsed = watched.outcome, watched.follower, watched.where, watched.elapsed
        code = None
        if state.get("continuation") and attempts is not None:  # a failure to start may be launched again
            code = continue_attempts(state["continuation"], attempts, Watched(outcome, follower, where, elapsed),
                                     task_arn, guard, state["definition"], counted)
        if code is None:
            report_outcome(outcome, task_arn=task_arn, cluster=cluster, counted=counted, follower=follower,
                           where=where, as_json=state["as_json"], elapsed=elapsed, attempts=attempts)
            code = outcome.exit_code
        # Judged and said: a signal from now on (say, forwarded late by the runner) changes nothing.
        signal.pthread_sigmask(signal.SIG_BLOCK, list(EXIT_FOR_SIGNAL))
    return code


class WatchedTask:
    """The watcher's view of one runner's task: all of it comes from the runner."""

    def __init__(self, conn: Any, request: Mapping[str, Any]) -> None:
        import threading

        self.conn = conn
        self.arn, self.cluster = request["task_arn"], request["cluster"]
        self.interval = float(request["poll_interval"])
        self.started = float(request["started"])
        self.missing_grace = float(request["missing_grace"])
        self.timeout_text = request.get("timeout_text") or ""
        self.source = LogSource(*request["log_source"]) if request.get("log_source") else None
        self.token = request.get("log_token")
        self.last_task = request.get("last_task")
        self.next_due = 0.0
        self.finishing = False
        self.confirming = False  # a stop of the watcher's waits for STOPPED: still in every cycle
        self.lock = threading.Lock()
        self.watch: Any = None
        self.follower: Any = None
        self.reported_status: Optional[str] = None


class Watcher:
    """Full: the shared watcher. The main thread owns the sockets (non-blocking, bounded
    buffers: a runner that does not read is cut off, never waited for); one thread polls every
    task with one DescribeTasks per cluster and interval; log reads run in a small pool on the
    same clock; stops run in threads of their own."""

    def __init__(self, listen: Any, zygote: Any, context: str, key: bytes, idle: float, region: Optional[str],
                 profile: Optional[str]) -> None:
        import queue
        import selectors
        import threading

        self.listen, self.zygote, self.context, self.key, self.idle = listen, zygote, context, key, idle
        self.region, self.profile = region, profile
        self.selector = selectors.DefaultSelector()
        self.outbox: "queue.Queue[Tuple[Any, Dict[str, Any]]]" = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.conns: Dict[Any, Dict[str, Any]] = {}
        self.tasks: Dict[Any, WatchedTask] = {}
        self.lock = threading.Lock()
        self.poll_event = threading.Event()
        self.cycled = threading.Condition()  # a DescribeTasks cycle ended: answers for confirming stops
        self.cycles = 0
        self.answers: Dict[Optional[str], Any] = {}  # the last cycle's, by cluster
        self.asked: set = set()  # the tasks that the last cycle asked about
        self.next_cycle_at: Dict[float, float] = {}  # by poll interval: when its next cycle begins
        self.cycle_at = time.monotonic()
        self.last_busy = time.monotonic()
        self.ecs = make_client("ecs", region, profile)
        self.logs_clients: Dict[Optional[str], Any] = {}

    # --- the socket loop (main thread) ---
    def serve(self) -> None:
        import selectors
        import threading

        self.listen.setblocking(False)
        self.selector.register(self.listen, selectors.EVENT_READ, "listen")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        threading.Thread(target=self.poll_loop, daemon=True).start()
        last_beat = 0.0
        while True:
            for key, events in self.selector.select(0.25):
                if key.data == "listen":
                    self.accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        os.read(self.wake_r, 4096)
                else:
                    if events & selectors.EVENT_READ:
                        self.read(key.fileobj)
                    if events & selectors.EVENT_WRITE and key.fileobj in self.conns:
                        self.flush(key.fileobj)
            while not self.outbox.empty():
                conn, message = self.outbox.get_nowait()
                self.queue(conn, message)
            now = time.monotonic()
            if now - last_beat >= WATCHER_HEARTBEAT and now - self.cycle_at < WATCHER_STALL_SECONDS:
                last_beat = now
                for conn in list(self.tasks):
                    self.queue(conn, {"op": "alive"})
            if self.conns or self.tasks:
                self.last_busy = now
            elif now - self.last_busy >= self.idle:
                return

    def accept(self) -> None:
        import selectors

        while True:
            try:
                conn, _ = self.listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                pid, uid, _ = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if uid != os.getuid():  # SO_PEERCRED: only this user's runners
                conn.close()
                continue
            conn.setblocking(False)
            self.conns[conn] = {"in": b"", "out": b"", "pid": pid, "fds": []}
            self.selector.register(conn, selectors.EVENT_READ, "conn")

    def read(self, conn: Any) -> None:
        import socket

        state = self.conns.get(conn)
        if state is None:
            return
        try:
            data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        state["fds"].extend(fds)
        if not data:
            self.drop(conn)
            return
        state["in"] += data
        if len(state["in"]) > WATCHER_BUFFER_LIMIT:
            self.drop(conn)
            return
        while conn in self.conns and b"\n" in state["in"]:
            line, state["in"] = state["in"].split(b"\n", 1)
            try:
                message = decode_message(line)
            except ValueError as exc:
                self.queue(conn, {"op": "refused", "why": f"watcher speaks protocol {WATCHER_PROTOCOL}: {exc}"})
                continue
            try:
                self.handle(conn, state, message)
            except Exception as exc:  # one runner's trouble (say, a log in a bad region) is never every runner's
                import logging

                logging.getLogger("ecsbatch").debug("a runner's message failed", exc_info=True)
                self.queue(conn, {"op": "refused", "why": f"{type(exc).__name__}: {one_line(exc)}"})
                self.drop(conn)
                return

    def handle(self, conn: Any, state: Dict[str, Any], message: Dict[str, Any]) -> None:
        op = message.get("op")
        if op not in ("stop",) and message.get("context") != self.context:
            self.queue(conn, {"op": "refused", "why": "another credential context"})
            return
        if op == "hello":
            self.queue(conn, {"op": "hello", "release": __version__})
        elif op == "launch":
            fds, state["fds"] = state["fds"], []
            env_context = credential_context(message.get("env") or {}, message.get("region"), message.get("profile"))
            runner = message.get("runner") or {}
            if len(fds) != 3 or env_context != self.context or runner.get("pid") != state["pid"]:
                for fd in fds:
                    os.close(fd)
                self.queue(conn, {"op": "refused", "why": "a launch must come from the runner, with its three streams"})
                return
            self.to_zygote(conn, dict(message, kind="launch"), fds)
        elif op == "watch":
            start = process_start_time(state["pid"])
            expected = task_ticket(self.key, str(message.get("task_arn")), state["pid"], start) + ":" + \
                task_ticket(self.key, message.get("cluster") or "", state["pid"], start)
            import hmac

            if conn in self.tasks or not hmac.compare_digest(str(message.get("ticket")), expected):
                self.queue(conn, {"op": "refused", "why": "this runner did not start or attach to that task"})
                return
            task = WatchedTask(conn, message)
            # Join the next cycle of its interval (planned when the last one began, so also while
            # one is in flight), so that one DescribeTasks still covers every task; else look now.
            now = time.monotonic()
            with self.lock:
                planned = self.next_cycle_at.get(task.interval)
            task.next_due = planned if planned is not None and now < planned <= now + task.interval else now
            task.watch = self.batch_watch(task)
            if task.source is not None:
                task.follower = self.relay_follower(task)
            with self.lock:
                self.tasks[conn] = task
            self.queue(conn, {"op": "watching"})
            self.poll_event.set()
        elif op == "finish" and conn in self.tasks:
            fds, state["fds"] = state["fds"], []
            resume = message.get("resume") or {}
            if len(fds) != 3 or (resume.get("state") or {}).get("task_arn") != self.tasks[conn].arn:
                for fd in fds:
                    os.close(fd)
                self.queue(conn, {"op": "refused", "why": "a runner finishes its own task, with its streams"})
                return
            self.to_zygote(conn, {"kind": "finish", "resume": resume}, fds)
        elif op == "stop" and conn in self.tasks:
            task = self.tasks[conn]
            cause = Interrupted(int(message["signal"])) if message.get("signal") is not None else TimeoutExpired()
            self.finish(task, self.stop_task, ending_for(cause, timeout_text=task.timeout_text))

    def to_zygote(self, conn: Any, message: Mapping[str, Any], fds: List[int]) -> None:
        """A child of the zygote takes this runner's connection and streams from here on."""
        import socket

        try:
            socket.send_fds(self.zygote, [encode_message(message)], [conn.fileno()] + fds)
        except OSError:
            self.queue(conn, {"op": "refused", "why": "the launcher is gone"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.drop(conn)

    def queue(self, conn: Any, message: Mapping[str, Any]) -> None:
        import selectors

        state = self.conns.get(conn)
        if state is None:
            return
        state["out"] += encode_message(message)
        self.flush(conn)
        if conn in self.conns and len(state["out"]) > WATCHER_BUFFER_LIMIT:  # stopped or too slow: cut off
            self.drop(conn)
            return
        if conn in self.conns:
            self.selector.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if state["out"] else 0), "conn")

    def flush(self, conn: Any) -> None:
        state = self.conns[conn]
        try:
            while state["out"]:
                state["out"] = state["out"][conn.send(state["out"]):]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(conn)

    def drop(self, conn: Any, quiet: bool = False) -> None:
        """A runner gone without a word (killed, or re-exec'd to wait by itself) leaves its task
        running, as a killed runner always has: a rerun with its key attaches to it."""
        state = self.conns.pop(conn, None)
        with self.lock:
            task = self.tasks.pop(conn, None)
        if task is not None:
            task.finishing = True
        with contextlib.suppress(Exception):
            self.selector.unregister(conn)
        for fd in (state or {}).get("fds", []):
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.close()

    def send(self, conn: Any, message: Dict[str, Any]) -> None:
        """From any thread: hand a message to the socket loop."""
        self.outbox.put((conn, message))
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    # --- polling (one thread) ---
    def batch_watch(self, task: WatchedTask) -> Watch:
        watcher = self

        class BatchAnswer:
            """DescribeTasks as the batch call of this cycle answered it for this one task."""

            def describe_tasks(self, **kwargs: Any) -> Dict[str, Any]:
                answer = watcher.answers.get(task.cluster)
                if isinstance(answer, AwsError):
                    raise answer
                tasks = [t for t in (answer or {}).get("tasks", []) if t.get("taskArn") == task.arn]
                failures = [f for f in (answer or {}).get("failures", []) if f.get("arn") == task.arn]
                return {"tasks": tasks, "failures": failures}  # neither: no word on it, as for one task

        watch = Watch(BatchAnswer(), task.cluster, task.arn, poll_interval=task.interval,
                      missing_grace=task.missing_grace, started=task.started)
        if task.last_task:
            watch.last_task, watch.last_status = task.last_task, task.last_task.get("lastStatus")
            task.reported_status = watch.last_status
        return watch

    def relay_follower(self, task: WatchedTask) -> Any:
        region = task.source.region or self.region
        with self.lock:
            if region not in self.logs_clients:
                self.logs_clients[region] = make_client("logs", region, self.profile)
            client = self.logs_clients[region]

        class RelayFollower(LogFollower):
            """The log lines go to the runner, which prints and keeps them."""

            def _print(self, line: str) -> None:
                self.outbox.append(line)

            def _keep(self, line: str) -> None:
                pass

        follower = RelayFollower(client, task.source, to_stderr=False)
        follower.pages_per_poll = 1  # a page (at most 1 MB) per message: a burst never outgrows a buffer
        follower.outbox = []
        follower.token = task.token
        return follower

    def poll_loop(self) -> None:
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(WATCHER_LOG_READERS)
        while True:
            self.cycle_at = time.monotonic()
            with self.lock:
                live = [t for t in self.tasks.values() if not t.finishing or t.confirming]
            now = time.monotonic()
            due = [t for t in live if now >= t.next_due]
            if not due:
                wait = min([t.next_due for t in live], default=now + 1.0) - now
                self.poll_event.wait(max(0.01, min(wait, 1.0)))
                self.poll_event.clear()
                continue
            by_cluster: Dict[Optional[str], List[WatchedTask]] = {}
            for task in due:
                by_cluster.setdefault(task.cluster, []).append(task)
            with self.lock:
                for task in due:
                    self.next_cycle_at[task.interval] = now + task.interval
            answers: Dict[Optional[str], Any] = {}
            for cluster, tasks in by_cluster.items():
                merged: Dict[str, List[Any]] = {"tasks": [], "failures": []}
                arns = [t.arn for t in tasks]
                try:
                    with aws_errors_as():
                        for first in range(0, len(arns), DESCRIBE_TASKS_BATCH):
                            answer = self.ecs.describe_tasks(**cluster_arg(cluster),
                                                             tasks=arns[first:first + DESCRIBE_TASKS_BATCH])
                            merged["tasks"] += answer.get("tasks", [])
                            merged["failures"] += answer.get("failures", [])
                    answers[cluster] = merged
                except AwsError as exc:
                    answers[cluster] = exc
            with self.cycled:
                self.answers = answers  # one whole cycle's answers at a time
                self.asked = {task.arn for task in due}
                self.cycles += 1
                self.cycled.notify_all()
            reads = {task: pool.submit(self.poll_one, task) for task in due if not task.finishing}
            for task in due:  # a task being stopped too: one DescribeTasks per interval for them all
                task.next_due = now + task.interval
            for task, future in reads.items():
                try:
                    future.result()
                except Exception:  # one task's trouble is never every task's
                    import logging

                    logging.getLogger("ecsbatch").debug("polling one task failed", exc_info=True)

    def poll_one(self, task: WatchedTask) -> None:
        said: List[str] = []
        # An ending holds the lock while it waits for the next cycle: waiting for it here would
        # hold that cycle back for every task.
        if not task.lock.acquire(blocking=False):
            return
        try:
            if task.finishing:
                return
            with progress_to(said.append):
                try:
                    found = task.watch.poll()
                except TaskMissing as missing:
                    self.finish(task, self.missing_task, str(missing), said=said)
                    return
                if found is not None and found.get("lastStatus") == "STOPPED":
                    self.finish(task, self.stopped_task, found, said=said)
                    return
                lines = self.read_logs(task)
            message: Dict[str, Any] = {"op": "tick", "progress": said, "lines": lines,
                                       "token": task.follower.token if task.follower is not None else None}
            if found is not None and found.get("lastStatus") != task.reported_status:
                task.reported_status = found.get("lastStatus")
                message["task"] = found
            self.send(task.conn, message)
        finally:
            task.lock.release()

    def read_logs(self, task: WatchedTask, drain: bool = False) -> List[str]:
        """A page of the task's log; when draining, every page, each sent as it is read."""
        if task.follower is None:
            return []
        if drain:
            task.follower.drain(after_read=lambda: self.send(task.conn, self.log_tick(task)))
        else:
            task.follower.poll()
        return self.log_tick(task)["lines"]

    @staticmethod
    def log_tick(task: WatchedTask) -> Dict[str, Any]:
        """The lines read since the last message, with the token that follows them."""
        lines, task.follower.outbox = task.follower.outbox, []
        return {"op": "tick", "lines": lines, "token": task.follower.token}

    # --- endings (a thread each) ---
    def finish(self, task: WatchedTask, how: Callable[..., Dict[str, Any]], *args: Any,
               said: Optional[List[str]] = None) -> None:
        """End the watch of one task in a thread of its own; the final message goes last."""
        import threading

        with self.lock:
            if task.finishing:
                return
            task.finishing = True
        if said:
            self.send(task.conn, {"op": "tick", "progress": said})

        def run_it() -> None:
            def tell(line: str) -> None:  # as it happens: "stopping task …" must not wait for the end
                self.send(task.conn, {"op": "tick", "progress": [line]})

            try:
                with task.lock, progress_to(tell):
                    try:
                        final = how(task, *args)
                    finally:
                        task.confirming = False
            except Exception as exc:  # the runner waits by itself rather than hear nothing
                import logging

                logging.getLogger("ecsbatch").debug("ending a task failed", exc_info=True)
                self.send(task.conn, {"op": "refused", "why": f"{type(exc).__name__}: {one_line(exc)}"})
                return
            lines = final.pop("lines", [])
            self.send(task.conn, dict(final, op="final", lines=lines,
                                      token=task.follower.token if task.follower is not None else None))

        threading.Thread(target=run_it, daemon=True).start()

    def real_watch(self, task: WatchedTask) -> Watch:
        watcher, real = self, self.ecs

        class TellingClient:
            """The ECS client, and the runner hears at once when StopTask has gone out. Looking for
            STOPPED rides on the shared cycle: one DescribeTasks for every task, stopping or not."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def stop_task(self, **kwargs: Any) -> Any:
                answer = real.stop_task(**kwargs)
                watcher.send(task.conn, {"op": "tick", "stop_sent": True})
                return answer

            def describe_tasks(self, **kwargs: Any) -> Any:
                return watcher.next_answer(task)

        watch = Watch(TellingClient(), task.cluster, task.arn, poll_interval=task.interval,
                      missing_grace=task.missing_grace, started=task.started)
        watch.last_task, watch.last_status = task.watch.last_task, task.watch.last_status
        watch.polled = True
        watch.sleep = lambda seconds: None  # next_answer waits for the next cycle instead
        return watch

    def next_answer(self, task: WatchedTask) -> Dict[str, Any]:
        """This task's part of the next DescribeTasks cycle (it joins the cycles while it is stopped)."""
        with self.cycled:
            seen = self.cycles
            task.confirming = True  # in every cycle of its own interval until STOPPED, as before the stop
            if not self.cycled.wait_for(lambda: self.cycles > seen and task.arn in self.asked,
                                        timeout=task.interval + AWS_READ_TIMEOUT):
                raise AwsError("the watcher's DescribeTasks cycle gave no answer in time")
            answer = self.answers.get(task.cluster)
        if isinstance(answer, AwsError):
            raise answer
        return {"tasks": [t for t in (answer or {}).get("tasks", []) if t.get("taskArn") == task.arn],
                "failures": [f for f in (answer or {}).get("failures", []) if f.get("arn") == task.arn]}

    def stopped_task(self, task: WatchedTask, found: Dict[str, Any]) -> Dict[str, Any]:
        return {"how": "stopped", "task": found, "lines": self.read_logs(task, drain=True)}

    def missing_task(self, task: WatchedTask, why: str) -> Dict[str, Any]:
        attempt = self.real_watch(task).stop(why, confirm=False)
        return {"how": "missing", "message": why, "attempt": attempt._asdict(), "task": task.watch.last_task}

    def stop_task(self, task: WatchedTask, ending: Outcome) -> Dict[str, Any]:
        attempt = self.real_watch(task).stop(ending.message)
        return {"how": "stop", "ending": [ending.exit_code, ending.kind, ending.message], "attempt": attempt._asdict(),
                "lines": self.read_logs(task, drain=True)}


def zygote_loop(sock: Any, key: bytes) -> None:
    """Full, single-threaded, forked from the watcher once its models are loaded: fork one
    launch child per request, so that a launch costs a fork, not an import of botocore."""
    import socket

    def reap(signum: int, frame: Any) -> None:  # reaped here, their CPU time counts as the watcher's
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    signal.signal(signal.SIGCHLD, reap)
    global DEFINITIONS_SINK
    definitions, DEFINITIONS_SINK = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    definitions.setblocking(False)
    DEFINITIONS_SINK.setblocking(False)
    # What is loaded now stays out of every child's garbage collections, which would otherwise
    # touch (and so copy) the pages of botocore's models in each child.
    import gc

    gc.collect()
    gc.freeze()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)  # the watcher is gone
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        learn_definitions(definitions)
        if os.fork() == 0:
            sock.close()
            definitions.close()
            try:
                launch_child(decode_message(data.rstrip(b"\n")), fds[0], fds[1:], key)
            finally:
                os._exit(EXIT_ECS_FAILURE)
        for fd in fds:
            os.close(fd)


def serve_watcher(*, detach: bool, idle: float, region: Optional[str], profile: Optional[str]) -> None:
    """Full: the `watcher` command. Listens on its own socket, or on systemd's (LISTEN_FDS).

    Everything that can fail (the directory, the lock, the socket, the key, botocore and the
    clients, credentials included) is done before it detaches, so that the runner that started it
    hears at once, by its exit status, that no watcher will listen."""
    import fcntl
    import socket

    context = credential_context(os.environ, region, profile)
    paths = watcher_paths(context, release_id(ECSBATCH_FILE))
    if paths is None:
        raise InputError("no private runtime directory for the watcher's socket")
    lock: Optional[int] = None
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS") or 0) >= 1:
        listen = socket.socket(fileno=3)  # systemd's socket activation
        bound = None
    else:
        lock = os.open(paths["lock"], os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a watcher of this context is running
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths["socket"])  # stale: its watcher is gone, since we hold the lock
        listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listen.bind(paths["socket"])
        finally:
            os.umask(old)
        bound = os.lstat(paths["socket"]).st_ino
    try:
        key = read_key(paths["key"], create=True)
        if key is None:
            raise InputError(f"the watcher's key {paths['key']} is not a private file of this user")
        prepare_watcher(region, profile)
        listen.listen(256)
    except BaseException:
        remove_socket(paths["socket"], bound)
        raise
    if detach:  # its own session, and nothing of the runner's: Hinemos reads stdout until EOF
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    if lock is not None:
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())  # who holds it, for operators and tests
    parent_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.fork() == 0:
        parent_end.close()
        listen.close()
        if lock is not None:  # the lock is the watcher's alone: a new one may start when it dies
            os.close(lock)
        zygote_loop(zygote_end, key)
    zygote_end.close()
    watcher = Watcher(listen, parent_end, context, key, idle, region, profile)
    try:
        watcher.serve()
    finally:
        remove_socket(paths["socket"], bound)


def prepare_watcher(region: Optional[str], profile: Optional[str]) -> None:
    """Load what every launch needs before the launcher forks, so that a launch child imports
    and reads nothing: PyYAML, validation, botocore's models and the clients (credentials
    resolved). Raises when the watcher could not work."""
    import difflib  # noqa: F401  (validation's suggestions)
    import encodings.idna  # noqa: F401  (host names in URLs)

    load_yaml("loaded: true", "the watcher's start")
    botocore_session().get_component("endpoint_resolver")
    ecs, logs = make_client("ecs", region, profile), make_client("logs", region, profile)
    rehearse_stop(ecs, None, logs)  # and what stops and reports need: a release pruned later
    for model in (ecs_service_model(), ecs.meta.service_model):  # validation's, and the client's
        for operation in ("RunTask", "DescribeTaskDefinition", "DescribeTasks", "ListTasks", "StopTask"):
            resolve_shapes(model.operation_model(operation).input_shape)
            resolve_shapes(model.operation_model(operation).output_shape)


def remove_socket(path: str, bound: Optional[int]) -> None:
    """Remove the socket this watcher bound, and never one that a newer watcher bound since."""
    if bound is not None:
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == bound:
                os.unlink(path)


if __name__ == "__main__":
    main()
