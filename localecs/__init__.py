"""A local ECS-shaped endpoint for the demo, the tests and the benchmarks.

moto's server on loopback, plus the parts of ECS that moto leaves out:
- a task lifecycle on a clock: PROVISIONING -> PENDING -> RUNNING -> STOPPED, with one container
  per container definition, exit codes, stopCode, stoppedReason and timestamps;
- RunTask made idempotent on clientToken, as ECS is;
- DescribeTasks naming unknown tasks as MISSING failures, as ECS does, with a task's tags only
  when asked for with include=["TAGS"];
- StopTask going through DEACTIVATING, the containers exiting as on SIGTERM;
- a log of every ECS request, for tests that count calls;
- with `container_logs=True` (the demo), log lines in CloudWatch Logs for every container whose
  definition uses the awslogs driver: a line every LOG_LINE_SECONDS while it runs, then its exit.

By default a task's fate comes from the command override of its first container override:
`exit N` exits N, `sleep S` runs S seconds, `fail-to-start` fails to pull its image and
`host-terminated` loses its host. Tests queue an exact `Plan` instead.
"""

from __future__ import annotations

import collections
import copy
import datetime
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional

ACCOUNT_ID = "123456789012"
REGION = "ap-northeast-1"
TICK_SECONDS = 0.02
LOG_LINE_SECONDS = 0.5  # with container_logs, an awslogs container writes a line this often


@dataclass
class Plan:
    """What one task will do. Durations are seconds; exit codes are by container name."""

    provisioning: float = 0.2
    pending: float = 0.2
    running: float = 0.5
    exit_code: Optional[int] = 0  # for essential containers not named in exit_codes
    exit_codes: Dict[str, Optional[int]] = field(default_factory=dict)
    sidecar_exit_code: Optional[int] = 137  # non-essential containers are killed at the end
    reasons: Dict[str, str] = field(default_factory=dict)
    stop_code: Optional[str] = "EssentialContainerExited"
    stopped_reason: str = "Essential container in task exited"
    stop_delay: float = 0.3  # StopTask -> STOPPED
    sigterm_exit_code: Optional[int] = 143
    failures: Optional[List[Dict[str, str]]] = None  # RunTask answers these instead of a task


def plan_from_command(command: List[str], base: Plan) -> Plan:
    """The demo's little language: `exit 3`, `sleep 5`, `sleep 2; exit 1`, `fail-to-start`."""
    text = " ".join(command)
    plan = Plan(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in base.__dict__.items()})
    sleep = re.search(r"sleep\s+(\d+(?:\.\d+)?)", text)
    if sleep:
        plan.running = float(sleep.group(1))
    code = re.search(r"exit\s+(\d+)", text)
    if code:
        plan.exit_code = int(code.group(1))
    if "fail-to-start" in text:
        plan.running, plan.exit_code, plan.sidecar_exit_code = 0.0, None, None
        plan.stop_code = "TaskFailedToStart"
        plan.stopped_reason = ("CannotPullContainerError: pull image manifest has been retried 5 time(s): "
                               "failed to resolve ref example.invalid/batch:nosuch: not found")
    if "host-terminated" in text:
        plan.exit_code, plan.sidecar_exit_code, plan.stop_code = None, None, None
        plan.stopped_reason = "Host EC2 (instance i-0123456789abcdef0) terminated."
    return plan


class SimContainer:
    """The attributes moto's serializer reads for one entry of a task's `containers`."""

    def __init__(self, task_arn: str, definition: Dict[str, Any]) -> None:
        self.name = definition["name"]
        self.image = definition.get("image")
        self.essential = definition.get("essential", True)
        self.task_arn = task_arn
        self.container_arn = f"{task_arn.replace(':task/', ':container/')}/{self.name}"
        self.last_status = "PENDING"
        self.exit_code: Optional[int] = None
        self.reason: Optional[str] = None


class TaskState:
    def __init__(self, task: Any, plan: Plan, definition: Dict[str, Any]) -> None:
        self.task = task
        self.plan = plan
        self.born = time.monotonic()
        self.stop_requested_at: Optional[float] = None
        self.stopped_monotonic: Optional[float] = None
        self.done = False
        task.containers = [SimContainer(task.task_arn, d) for d in definition["containerDefinitions"]]
        task.created_at = utcnow()
        task.last_status = "PROVISIONING"
        task.stop_code = None


def snapshot(task: Any) -> Any:
    """A copy of a task and its containers as they are now."""
    clone = copy.copy(task)
    clone.containers = [copy.copy(c) for c in task.containers]
    return clone


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class LocalEcs:
    """moto's server on 127.0.0.1 with the lifecycle above. Use as a context manager."""

    def __init__(self, port: int = 0, default_plan: Optional[Plan] = None, container_logs: bool = False) -> None:
        self.port = port
        self.container_logs = container_logs
        self._log_writers: Dict[str, "AwslogsWriter"] = {}
        self._log_lines: List[Any] = []
        self.default_plan = default_plan or Plan()
        self.plans: Deque[Plan] = collections.deque()
        self.requests: List[Dict[str, Any]] = []
        self.tokens: Dict[str, List[Any]] = {}
        self.states: Dict[str, TaskState] = {}
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None

    # -- life of the endpoint -------------------------------------------------------------
    def start(self) -> "LocalEcs":
        from moto.moto_api import state_manager
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # The lifecycle thread decides every status; moto's own progression must stay still.
        state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10**9})
        self._patch_moto()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self._thread = threading.Thread(target=self._lifecycle, name="localecs-lifecycle", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> "LocalEcs":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self, url: Optional[str] = None) -> Dict[str, str]:
        """Environment for an AWS client of this endpoint: fake credentials, no profile files."""
        return {"AWS_ENDPOINT_URL": url or self.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def seed_network(self, cluster: str = "batch") -> Dict[str, str]:
        """A cluster and a VPC that FARGATE tasks can use (moto needs DNS hostnames for them)."""
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"batch-{vpc}", Description="batch", VpcId=vpc)["GroupId"]
        self.client("ecs").create_cluster(clusterName=cluster)
        return {"ECS_CLUSTER": cluster, "SUBNET_ID": subnet, "SECURITY_GROUP_ID": group}

    # -- what tests look at ---------------------------------------------------------------
    def backend(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT_ID][REGION]

    def calls(self, operation: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["operation"] == operation]

    def task(self, task_arn: str) -> Any:
        return self.states[task_arn].task

    def tasks(self) -> List[Any]:
        with self.lock:
            return [s.task for s in self.states.values()]

    # -- moto patches -----------------------------------------------------------------------
    def _patch_moto(self) -> None:
        from moto.core.responses import ActionResult
        from moto.ecs.exceptions import InvalidParameterException
        from moto.ecs.models import EC2ContainerServiceBackend
        from moto.ecs.responses import EC2ContainerServiceResponse as Responses

        sim = self
        if getattr(Responses, "_localecs", None) is not None:
            Responses._localecs = sim  # a later LocalEcs in the same process takes over
            return
        Responses._localecs = sim
        original_run_task = Responses.run_task

        def run_task(self: Any) -> Any:
            sim = Responses._localecs
            token = self._get_param("clientToken")
            with sim.lock:
                sim._record("RunTask", self)
                if token and token in sim.tokens:
                    return ActionResult({"tasks": sim.tokens[token], "failures": []})
                plan = sim._next_plan(self._get_param("overrides") or {})
                if plan.failures is not None:
                    return ActionResult({"tasks": [], "failures": plan.failures})
                result = original_run_task(self)
                tasks = result.result["tasks"]
                for task in tasks:
                    definition = self.ecs_backend.describe_task_definition(task.task_definition_arn)
                    sim.states[task.task_arn] = TaskState(task, plan, {
                        "containerDefinitions": definition.container_definitions})
                if token:
                    sim.tokens[token] = tasks
                return result

        def describe_tasks(self: Any) -> Any:
            sim = Responses._localecs
            with sim.lock:
                sim._record("DescribeTasks", self)
            wanted = self._get_param("tasks", [])
            # Under the lock: moto iterates the task table that a concurrent RunTask grows, and
            # moto serializes the answer after this returns, so it reads a snapshot, never a task
            # that the lifecycle thread is halfway through stopping.
            with sim.lock:
                tasks = [snapshot(t) for t in self.ecs_backend.describe_tasks(
                    self._get_param("cluster", "default"), wanted)]
            if "TAGS" not in (self._get_param("include") or []):
                for task in tasks:  # as ECS does: a task's tags only when asked for
                    task.tags = None
            found = {t.id for t in tasks}
            failures = [{"arn": w, "reason": "MISSING"} for w in wanted if w.rsplit("/", 1)[-1] not in found]
            return ActionResult({"tasks": tasks, "failures": failures})

        def stop_task(self: Any, cluster_str: str, task_str: str, reason: str) -> Any:
            self._get_cluster(cluster_str)
            sim = Responses._localecs
            with sim.lock:
                for state in sim.states.values():
                    if state.task.task_arn.endswith(task_str.rsplit("/", 1)[-1]):
                        task = state.task
                        if task.last_status != "STOPPED" and state.stop_requested_at is None:
                            state.stop_requested_at = time.monotonic()
                            task.desired_status = "STOPPED"
                            task.stopped_reason = reason or "Task stopped by user"
                            task.stop_code = "UserInitiated"
                        return task
            raise InvalidParameterException("The referenced task was not found.")

        def recorded(name: str, method: Any) -> Any:
            def call(self: Any) -> Any:
                with Responses._localecs.lock:
                    Responses._localecs._record(name, self)
                return method(self)
            return call

        Responses.run_task = run_task
        Responses.describe_tasks = describe_tasks
        EC2ContainerServiceBackend.stop_task = stop_task
        for name in ("stop_task", "describe_task_definition", "register_task_definition", "list_tasks"):
            operation = "".join(part.title() for part in name.split("_"))
            setattr(Responses, name, recorded(operation, getattr(Responses, name)))

    def _record(self, operation: str, response: Any) -> None:
        self.requests.append({"operation": operation, "at": time.monotonic(),
                              "params": dict(getattr(response, "params", None) or {})})

    def _next_plan(self, overrides: Dict[str, Any]) -> Plan:
        if self.plans:
            return self.plans.popleft()
        for override in overrides.get("containerOverrides", []):
            if override.get("command"):
                return plan_from_command(override["command"], self.default_plan)
        return self.default_plan

    # -- the clock --------------------------------------------------------------------------
    def _lifecycle(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self.lock:
                for state in list(self.states.values()):
                    if not state.done:
                        self._advance(state, time.monotonic())
                        self._collect_log_lines(state)
            self._flush_log_lines()

    @staticmethod
    def _advance(state: TaskState, now: float) -> None:
        task, plan = state.task, state.plan
        age = now - state.born
        if state.stop_requested_at is not None:
            if task.last_status in ("PROVISIONING", "PENDING", "RUNNING"):
                task.last_status = "DEACTIVATING"
            if now - state.stop_requested_at >= plan.stop_delay:
                ran = task.started_at if hasattr(task, "started_at") else None
                for container in task.containers:
                    container.exit_code = plan.sigterm_exit_code if ran else None
                    container.last_status = "STOPPED"
                LocalEcs._stopped(state)
            return
        if task.last_status == "PROVISIONING" and age >= plan.provisioning:
            task.last_status = "PENDING"
        if plan.stop_code == "TaskFailedToStart" and task.last_status == "PENDING" and \
                age >= plan.provisioning + plan.pending:
            task.stop_code, task.stopped_reason = plan.stop_code, plan.stopped_reason
            for container in task.containers:
                container.reason = plan.stopped_reason
            LocalEcs._stopped(state)
            return
        if task.last_status == "PENDING" and age >= plan.provisioning + plan.pending:
            task.last_status = "RUNNING"
            task.started_at = utcnow()
            for container in task.containers:
                container.last_status = "RUNNING"
        if task.last_status == "RUNNING" and age >= plan.provisioning + plan.pending + plan.running:
            for container in task.containers:
                if container.name in plan.exit_codes:
                    container.exit_code = plan.exit_codes[container.name]
                elif container.essential:
                    container.exit_code = plan.exit_code
                else:
                    container.exit_code = plan.sidecar_exit_code
                container.reason = plan.reasons.get(container.name)
                container.last_status = "STOPPED"
            task.stop_code, task.stopped_reason = plan.stop_code, plan.stopped_reason
            LocalEcs._stopped(state)

    @staticmethod
    def _stopped(state: TaskState) -> None:
        state.task.last_status = "STOPPED"
        state.task.desired_status = "STOPPED"
        state.task.stopped_at = utcnow()
        state.stopped_monotonic = time.monotonic()
        state.done = True

    # -- container log lines (the demo) ----------------------------------------------------
    def _collect_log_lines(self, state: TaskState) -> None:
        """Under the lock: the lines this task's awslogs containers have written since last time."""
        if not self.container_logs:
            return
        writer = self._log_writers.get(state.task.task_arn)
        if writer is None:
            definition = self.backend().describe_task_definition(state.task.task_definition_arn)
            writer = self._log_writers[state.task.task_arn] = AwslogsWriter(state, definition.container_definitions)
        self._log_lines.extend(writer.lines(time.monotonic()))

    def _flush_log_lines(self) -> None:
        """Outside the lock: put the collected lines into CloudWatch Logs through the endpoint."""
        with self.lock:
            lines, self._log_lines = self._log_lines, []
        if not lines:
            return
        import botocore.exceptions

        logs = self._logs_client = getattr(self, "_logs_client", None) or self.client("logs")
        for group, stream, message in lines:
            for create, kwargs in ((logs.create_log_group, {"logGroupName": group}),
                                   (logs.create_log_stream, {"logGroupName": group, "logStreamName": stream})):
                try:
                    create(**kwargs)
                except botocore.exceptions.ClientError:
                    pass  # it exists already
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
                {"timestamp": int(time.time() * 1000), "message": message}])


class AwslogsWriter:
    """What one task's awslogs containers print: a line every LOG_LINE_SECONDS while RUNNING, then
    the line a job prints as it exits. Streams are named as ECS names them: PREFIX/CONTAINER/TASK_ID."""

    def __init__(self, state: TaskState, definitions: List[Dict[str, Any]]) -> None:
        self.state = state
        self.targets = []
        task_id = state.task.task_arn.rsplit("/", 1)[-1]
        for definition in definitions:
            config = definition.get("logConfiguration") or {}
            options = config.get("options") or {}
            if config.get("logDriver") == "awslogs" and options.get("awslogs-group") and \
                    options.get("awslogs-stream-prefix"):
                stream = f"{options['awslogs-stream-prefix']}/{definition['name']}/{task_id}"
                self.targets.append((definition["name"], options["awslogs-group"], stream))
        self.step = 0
        self.next_at: Optional[float] = None
        self.finished = False

    def lines(self, now: float) -> List[Any]:
        task = self.state.task
        if not self.targets or self.finished or task.last_status not in ("RUNNING", "DEACTIVATING", "STOPPED"):
            return []
        out = []
        if task.last_status == "RUNNING" and (self.next_at is None or now >= self.next_at):
            self.step += 1
            self.next_at = now + LOG_LINE_SECONDS
            for name, group, stream in self.targets:
                out.append((group, stream, f"{name}: working, step {self.step}"))
        if task.last_status == "STOPPED":
            self.finished = True
            containers = {c.name: c for c in task.containers}
            for name, group, stream in self.targets:
                code = getattr(containers.get(name), "exit_code", None)
                why = "received SIGTERM, " if self.state.stop_requested_at is not None else ""
                if code is not None:
                    out.append((group, stream, f"{name}: {why}exiting with code {code}"))
        return out
