"""A loopback HTTP proxy in front of the local ECS endpoint that counts requests and injects faults.

Faults are rules matched against the operation named in the X-Amz-Target header:
- throttle: answer 400 ThrottlingException instead of forwarding;
- drop: close the connection without an answer, before forwarding;
- lose-answer: forward, let ECS act, then close the connection without the answer;
- delay: wait `seconds`, then forward;
- deny: answer 400 AccessDeniedException instead of forwarding;
- expired-token: answer 400 ExpiredTokenException instead of forwarding;
- error500: answer 500 ServerException instead of forwarding (botocore retries it);
- html: answer 200 with an HTML page instead of forwarding, as a captive portal or a broken
  proxy does (botocore parses it as an empty answer);
- omit-task: forward DescribeTasks, then answer without its tasks: each becomes a MISSING failure.
A rule applies `times` times, or for `seconds` seconds of wall time when it has a window.
With no upstream the proxy is a tripwire: it counts connections and answers none.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Optional

from localecs import hang_up, send


ERRORS = {
    "throttle": ("ThrottlingException", "Rate exceeded"),
    "deny": ("AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/batch-server/i-0abc "
             "is not authorized to perform: ecs:RunTask on resource: *"),
    "expired-token": ("ExpiredTokenException", "The security token included in the request is expired"),
    "error500": ("ServerException", "Service encountered an internal error"),
}
ERROR_STATUS = {"error500": 500}  # the others are 400
HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
             b"<body><h1>Please try again later</h1></body></html>\n")


@dataclass
class Fault:
    action: str  # throttle | deny | expired-token | error500 | html | omit-task | drop | lose-answer | delay
    operation: Optional[str] = None  # None matches every operation
    times: Optional[int] = None  # how many requests it applies to; None: unlimited in its window
    window: Optional[float] = None  # seconds from when it was added
    seconds: float = 0.0  # for delay
    added_at: float = 0.0

    def applies(self, operation: str, now: float) -> bool:
        if self.operation not in (None, operation):
            return False
        if self.window is not None and now - self.added_at > self.window:
            return False
        return self.times is None or self.times > 0


class FaultProxy:
    def __init__(self, upstream: Optional[str]) -> None:
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.faults: List[Fault] = []
        self.log: List[Dict[str, object]] = []
        self.connections = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.connections += 1

            def do_POST(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_DELETE = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, fault: Fault) -> Fault:
        fault.added_at = time.monotonic()
        with self.lock:
            self.faults.append(fault)
        return fault

    def count(self, operation: str) -> int:
        with self.lock:
            return sum(1 for entry in self.log if entry["operation"] == operation)

    def entries(self, operation: str) -> List[Dict[str, object]]:
        """The requests for one operation, each with its monotonic time `at`."""
        with self.lock:
            return [dict(entry) for entry in self.log if entry["operation"] == operation]

    def _take_fault(self, operation: str) -> Optional[Fault]:
        now = time.monotonic()
        with self.lock:
            for fault in self.faults:
                if fault.applies(operation, now):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        operation = (handler.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        entry: Dict[str, object] = {"operation": operation, "at": time.monotonic()}
        if operation == "RunTask":
            try:
                entry["startedBy"] = json.loads(body or b"{}").get("startedBy")
            except ValueError:
                pass
        with self.lock:
            self.log.append(entry)
        fault = self._take_fault(operation)
        if self.upstream is None or (fault and fault.action == "drop"):
            hang_up(handler)
            return
        if fault and fault.action in ERRORS:
            code, message = ERRORS[fault.action]
            send(handler, ERROR_STATUS.get(fault.action, 400), [("Content-Type", "application/x-amz-json-1.1")],
                 json.dumps({"__type": code, "message": message}).encode())
            return
        if fault and fault.action == "html":
            send(handler, 200, [("Content-Type", "text/html")], HTML_PAGE)
            return
        if fault and fault.action == "delay":
            time.sleep(fault.seconds)
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            answer_headers = {k: v for k, v in response.getheaders()
                              if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        except OSError:  # the endpoint is gone (end of a test run): hang up as it would
            hang_up(handler)
            return
        finally:
            connection.close()
        if fault and fault.action == "lose-answer":
            hang_up(handler)
            return
        if fault and fault.action == "omit-task" and response.status == 200:
            payload = self._without_tasks(payload)
        send(handler, response.status, list(answer_headers.items()), payload)

    @staticmethod
    def _without_tasks(payload: bytes) -> bytes:
        """A DescribeTasks answer in which every task found is a MISSING failure instead."""
        try:
            answer = json.loads(payload)
        except ValueError:
            return payload
        missing = [{"arn": task.get("taskArn"), "reason": "MISSING"} for task in answer.get("tasks", [])]
        answer["tasks"], answer["failures"] = [], answer.get("failures", []) + missing
        return json.dumps(answer).encode()
