"""What a local task does on the clock, with no I/O: the plan, the task and one step of its life.

A task goes PROVISIONING -> PENDING -> RUNNING -> STOPPED, with one container per container
definition. Its `Plan` says how long each phase lasts, how its containers exit, and how it ends:
- normally (stopCode EssentialContainerExited);
- failing to start (stopCode TaskFailedToStart, no exit codes);
- interrupted by ECS itself (a Spot reclaim: desiredStatus STOPPED, DEACTIVATING, stopCode
  SpotInterruption, the containers exit as on SIGTERM);
- or stopped by StopTask (DEACTIVATING, stopCode UserInitiated).

`advance(state, now)` moves one task to where it is at `now` (a monotonic clock reading); its wall
timestamps are derived from the same reading, so the whole lifecycle runs under an injected clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

CAPACITY_UNAVAILABLE = ("Capacity is unavailable at this time. Please try again later or in a different "
                        "availability zone")
SPOT_INTERRUPTED = "Your Spot Task was interrupted."
LIVE_STATUSES = ("PROVISIONING", "PENDING", "ACTIVATING", "RUNNING")


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
    stop_delay: float = 0.3  # StopTask (or an interruption) -> STOPPED
    sigterm_exit_code: Optional[int] = 143  # every container's code when the task is stopped while running
    failures: Optional[List[Dict[str, str]]] = None  # RunTask answers these instead of a task
    interrupted: bool = False  # at the end of `running`, ECS stops the task itself with stop_code/stopped_reason


def copy_plan(plan: Plan, **changes: Any) -> Plan:
    values = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
              for k, v in plan.__dict__.items()}
    values.update(changes)
    return Plan(**values)


def capacity_failures(launches: int, then: Optional[Plan] = None, reason: str = "RESOURCE:CPU") -> List[Plan]:
    """Plans for the next launches: `launches` RunTask answers with a capacity failure and no task,
    then `then` (when given). Extend LocalEcs.plans with them. `reason` may be any RunTask failure
    reason, CAPACITY_UNAVAILABLE (Fargate) or "RESOURCE:MEMORY" for instance."""
    plans = [Plan(failures=[{"reason": reason}]) for _ in range(launches)]
    return plans + ([then] if then is not None else [])


def failed_to_start(reason: str = CAPACITY_UNAVAILABLE, **timing: float) -> Plan:
    """A task that is accepted, then stops with TaskFailedToStart before any container runs."""
    return Plan(running=0.0, exit_code=None, sidecar_exit_code=None, stop_code="TaskFailedToStart",
                stopped_reason=reason, **timing)


def spot_interruption(running: float = 0.5, exit_code: Optional[int] = 143, **timing: float) -> Plan:
    """A task whose Spot capacity is reclaimed after `running` seconds: ECS sets desiredStatus
    STOPPED, the task goes DEACTIVATING and every container exits `exit_code` (143 as on SIGTERM,
    or None for one killed without an exit code) with stopCode SpotInterruption."""
    return Plan(running=running, interrupted=True, stop_code="SpotInterruption", stopped_reason=SPOT_INTERRUPTED,
                sigterm_exit_code=exit_code, **timing)


HOST_TERMINATED = "Host EC2 (instance i-0123456789abcdef0) terminated."


def host_lost(running: float = 0.5, **timing: float) -> Plan:
    """A task whose EC2 host goes away after `running` seconds: DEACTIVATING, then STOPPED with no
    stopCode, no exit codes and the stoppedReason "Host EC2 (instance i-...) terminated."."""
    return Plan(running=running, interrupted=True, stop_code=None, stopped_reason=HOST_TERMINATED,
                sigterm_exit_code=None, sidecar_exit_code=None, exit_code=None, **timing)


def plan_from_command(command: List[str], base: Plan) -> Plan:
    """The demo's little language: `exit 3`, `sleep 5`, `sleep 2; exit 1`, `fail-to-start`,
    `host-terminated`, `spot-interruption`."""
    text = " ".join(command)
    plan = copy_plan(base)
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
        plan.stopped_reason = HOST_TERMINATED
    if "spot-interruption" in text:
        plan.interrupted, plan.stop_code, plan.stopped_reason = True, "SpotInterruption", SPOT_INTERRUPTED
    return plan


@dataclass
class Container:
    name: str
    container_arn: str
    task_arn: str
    image: Optional[str] = None
    essential: bool = True
    last_status: str = "PENDING"
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    cpu: Optional[int] = None
    memory: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        answer: Dict[str, Any] = {"containerArn": self.container_arn, "taskArn": self.task_arn, "name": self.name,
                                  "lastStatus": self.last_status, "networkInterfaces": [], "healthStatus": "UNKNOWN",
                                  "cpu": str(self.cpu or 0)}
        if self.image is not None:
            answer["image"] = self.image
        if self.memory is not None:
            answer["memory"] = str(self.memory)
        if self.exit_code is not None:
            answer["exitCode"] = self.exit_code
        if self.reason is not None:
            answer["reason"] = self.reason
        return answer


@dataclass
class Task:
    """One task as ECS describes it. Times are epoch seconds."""

    task_arn: str
    cluster_arn: str
    task_definition_arn: str
    created_at: float
    containers: List[Container] = field(default_factory=list)
    started_by: Optional[str] = None
    group: Optional[str] = None
    overrides: Dict[str, Any] = field(default_factory=dict)  # as the RunTask request gave them
    launch_type: Optional[str] = None
    capacity_provider_name: Optional[str] = None
    platform_version: Optional[str] = None
    tags: List[Dict[str, str]] = field(default_factory=list)
    cpu: Optional[str] = None
    memory: Optional[str] = None
    attachments: List[Dict[str, Any]] = field(default_factory=list)
    availability_zone: str = ""
    enable_execute_command: bool = False
    last_status: str = "PROVISIONING"
    desired_status: str = "RUNNING"
    stop_code: Optional[str] = None
    stopped_reason: Optional[str] = None
    started_at: Optional[float] = None
    stopping_at: Optional[float] = None
    stopped_at: Optional[float] = None
    version: int = 1

    @property
    def id(self) -> str:
        return self.task_arn.rsplit("/", 1)[-1]

    @property
    def cluster_name(self) -> str:
        return self.cluster_arn.rsplit("/", 1)[-1]

    @property
    def family(self) -> str:
        return self.task_definition_arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]

    def to_json(self, with_tags: bool = True) -> Dict[str, Any]:
        """The task as DescribeTasks answers it. Call it under the lock that guards the task."""
        overrides = dict(self.overrides)
        overrides.setdefault("containerOverrides", [{"name": c.name} for c in self.containers])
        overrides.setdefault("inferenceAcceleratorOverrides", [])
        answer: Dict[str, Any] = {
            "taskArn": self.task_arn, "clusterArn": self.cluster_arn, "taskDefinitionArn": self.task_definition_arn,
            "containers": [c.to_json() for c in self.containers], "overrides": overrides,
            "lastStatus": self.last_status, "desiredStatus": self.desired_status, "createdAt": self.created_at,
            "group": self.group, "version": self.version, "attachments": self.attachments,
            "availabilityZone": self.availability_zone, "connectivity": "CONNECTED", "healthStatus": "UNKNOWN",
            "enableExecuteCommand": self.enable_execute_command, "attributes": [],
        }
        optional = {"startedBy": self.started_by, "launchType": self.launch_type,
                    "capacityProviderName": self.capacity_provider_name, "platformVersion": self.platform_version,
                    "cpu": self.cpu, "memory": self.memory, "stopCode": self.stop_code,
                    "stoppedReason": self.stopped_reason, "startedAt": self.started_at,
                    "pullStartedAt": self.started_at, "pullStoppedAt": self.started_at,
                    "connectivityAt": self.created_at, "stoppingAt": self.stopping_at,
                    "executionStoppedAt": self.stopped_at, "stoppedAt": self.stopped_at}
        answer.update((k, v) for k, v in optional.items() if v is not None)
        if with_tags:
            answer["tags"] = [dict(t) for t in self.tags]
        return answer


class TaskState:
    """A task, its plan, and where it is on the monotonic clock."""

    def __init__(self, task: Task, plan: Plan, now: float, definitions: Optional[List[Dict[str, Any]]] = None,
                 region: str = "") -> None:
        self.task = task
        self.plan = plan
        self.definitions = definitions or []  # the task definition's containerDefinitions
        self.region = region
        self.seq = 0  # launch order, for ListTasks' pages
        self.born = now
        self.born_wall = task.created_at
        self.stop_requested_at: Optional[float] = None
        self.stopped_monotonic: Optional[float] = None
        self.done = False

    def wall(self, now: float) -> float:
        """Epoch seconds at monotonic `now`, counted from the task's creation."""
        return round(self.born_wall + (now - self.born), 3)


def request_stop(state: TaskState, now: float, reason: str, stop_code: Optional[str]) -> None:
    """Ask a task to stop (StopTask, or ECS itself). The first request wins; a stopped task stays as it is."""
    task = state.task
    if state.done or state.stop_requested_at is not None:
        return
    state.stop_requested_at = now
    task.desired_status = "STOPPED"
    task.stopped_reason = reason
    task.stop_code = stop_code
    task.version += 1


def advance(state: TaskState, now: float) -> None:
    """Move one task to where its plan puts it at monotonic `now`. Every change to a task happens
    here or in request_stop, under the caller's lock, so an answer built under that lock is a
    consistent snapshot."""
    if state.done:
        return
    task, plan = state.task, state.plan
    age = now - state.born
    started = plan.provisioning + plan.pending
    if plan.interrupted and task.last_status == "RUNNING" and age >= started + plan.running:
        request_stop(state, now, plan.stopped_reason, plan.stop_code)
    if state.stop_requested_at is not None:
        if task.last_status in LIVE_STATUSES:
            task.last_status = "DEACTIVATING"
            task.stopping_at = state.wall(now)
            task.version += 1
        if now - state.stop_requested_at >= plan.stop_delay:
            ran = task.started_at is not None
            for container in task.containers:
                container.exit_code = plan.sigterm_exit_code if ran else None
                container.last_status = "STOPPED"
            _stopped(state, now)
        return
    if task.last_status == "PROVISIONING" and age >= plan.provisioning:
        task.last_status = "PENDING"
        task.version += 1
    if plan.stop_code == "TaskFailedToStart" and task.last_status == "PENDING" and age >= started:
        task.stop_code, task.stopped_reason = plan.stop_code, plan.stopped_reason
        for container in task.containers:
            container.reason = plan.stopped_reason
            container.last_status = "STOPPED"
        _stopped(state, now)
        return
    if task.last_status == "PENDING" and age >= started:
        task.last_status = "RUNNING"
        task.started_at = state.wall(now)
        task.version += 1
        for container in task.containers:
            container.last_status = "RUNNING"
    if task.last_status == "RUNNING" and not plan.interrupted and age >= started + plan.running:
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
        _stopped(state, now)


def _stopped(state: TaskState, now: float) -> None:
    task = state.task
    task.last_status = "STOPPED"
    task.desired_status = "STOPPED"
    task.stopped_at = state.wall(now)
    task.version += 1
    state.stopped_monotonic = now
    state.done = True
