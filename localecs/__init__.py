"""A local ECS-shaped endpoint for the demo, the tests and the benchmarks.

An HTTP endpoint on loopback in front of moto's server (unpatched, on a port of its own). Requests
are routed on their X-Amz-Target header:
- ECS's RunTask, DescribeTasks, StopTask and ListTasks, and TagResource, UntagResource and
  ListTagsForResource of a task ARN, are answered here, from localecs's own tasks;
- everything else (RegisterTaskDefinition, DescribeTaskDefinition, CreateCluster, EC2, CloudWatch
  Logs, ...) goes to moto unchanged.

What that adds to moto:
- a task lifecycle on a clock (localecs/lifecycle.py): PROVISIONING -> PENDING -> RUNNING ->
  STOPPED, with one container per container definition, exit codes, stopCode, stoppedReason and
  timestamps, scripted by a `Plan`;
- RunTask checked as ECS checks it (the cluster and the task definition exist, a launch type or a
  capacity provider strategy, the network configuration, overrides, tags, startedBy), and
  idempotent on clientToken, as ECS is (the same token with another request is a ConflictException);
- task tags (RunTask's `tags`, propagateTags, DescribeTasks' include=["TAGS"], TagResource);
- DescribeTasks naming unknown tasks as MISSING failures; ListTasks with ECS's filters and pages;
- StopTask going through DEACTIVATING, the containers exiting as on SIGTERM;
- a log of every ECS request with its parameters, for tests that count calls;
- with `container_logs=True` (the demo), log lines in moto's CloudWatch Logs for every container
  whose definition uses the awslogs driver: a line every LOG_LINE_SECONDS while it runs, then its exit.

By default a task's fate comes from the command override of its first container override:
`exit N` exits N, `sleep S` runs S seconds, `fail-to-start` fails to pull its image,
`host-terminated` loses its host and `spot-interruption` loses its Spot capacity. Tests queue
an exact `Plan` instead (see also capacity_failures, failed_to_start, spot_interruption and host_lost).
"""

from __future__ import annotations

import base64
import collections
import http.client
import http.server
import json
import logging
import re
import socket
import threading
import time
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from localecs.lifecycle import (CAPACITY_UNAVAILABLE, HOST_TERMINATED, SPOT_INTERRUPTED, Container, Plan, Task,
                                TaskState, advance, capacity_failures, copy_plan, failed_to_start, host_lost,
                                plan_from_command, request_stop, spot_interruption)

__all__ = ["ACCOUNT_ID", "REGION", "LocalEcs", "Plan", "Task", "Container", "TaskState", "EcsError",
           "plan_from_command", "copy_plan", "capacity_failures", "failed_to_start", "spot_interruption", "host_lost",
           "HOST_TERMINATED",
           "CAPACITY_UNAVAILABLE", "SPOT_INTERRUPTED"]

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "ap-northeast-1"
TICK_SECONDS = 0.02
LOG_LINE_SECONDS = 0.5  # with container_logs, an awslogs container writes a line this often
ECS_TARGET = "AmazonEC2ContainerServiceV20141113"
JSON_TYPE = "application/x-amz-json-1.1"
TAG_OPERATIONS = ("TagResource", "UntagResource", "ListTagsForResource")
# Forwarded ECS operations after which a cached cluster may have changed.
CLUSTER_CHANGES = ("CreateCluster", "DeleteCluster", "UpdateCluster", "PutClusterCapacityProviders",
                   "UpdateClusterSettings", "CreateCapacityProvider", "DeleteCapacityProvider")
STARTED_BY = re.compile(r"[A-Za-z0-9_/-]{1,36}")
FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")


class EcsError(Exception):
    """An ECS error answer: HTTP 400 (500 for ServerException) with {"__type", "message", ...}."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.extra = code, message, status, extra

    def body(self) -> Dict[str, Any]:
        return dict(self.extra, __type=self.code, message=self.message)


def invalid(message: str) -> EcsError:
    return EcsError("InvalidParameterException", message)


class Call:
    """One request as localecs's own operations see it."""

    def __init__(self, operation: str, params: Dict[str, Any], region: str, authorization: Optional[str]) -> None:
        self.operation, self.params, self.region, self.authorization = operation, params, region, authorization


def region_of(authorization: Optional[str]) -> str:
    """The region in a SigV4 Authorization header's credential scope."""
    found = re.search(r"Credential=[^/,]+/\d{8}/([^/,]+)/", authorization or "")
    return found.group(1) if found else REGION


class LocalEcs:
    """The endpoint described above, on 127.0.0.1:`port` (0: any free port). Use as a context manager."""

    def __init__(self, port: int = 0, default_plan: Optional[Plan] = None, container_logs: bool = False) -> None:
        self.port = port
        self.container_logs = container_logs
        self.default_plan = default_plan or Plan()
        self.plans: Deque[Plan] = collections.deque()
        self.requests: List[Dict[str, Any]] = []
        self.tokens: Dict[str, Dict[str, Any]] = {}  # clientToken -> the request and its answer
        self.states: Dict[str, TaskState] = {}  # task ARN -> its state, in launch order
        self.lock = threading.RLock()
        self._active: Dict[str, TaskState] = {}  # not yet STOPPED: what the lifecycle thread looks at
        self._ids: Dict[str, str] = {}  # task id -> task ARN
        self._launched = 0
        self._clusters: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self._log_writers: Dict[str, AwslogsWriter] = {}
        self._log_lines: List[Tuple[str, str, str, str]] = []
        self._logs_clients: Dict[str, Any] = {}
        self._stop = threading.Event()
        self._moto: Any = None
        self._moto_port = 0
        self._front: Optional[FrontServer] = None
        self._threads: List[threading.Thread] = []
        self._upstream = threading.local()
        self._operations: Dict[str, Callable[[Call], Dict[str, Any]]] = {
            "RunTask": self._run_task, "DescribeTasks": self._describe_tasks, "StopTask": self._stop_task,
            "ListTasks": self._list_tasks, "TagResource": self._tag_resource,
            "UntagResource": self._untag_resource, "ListTagsForResource": self._list_tags_for_resource}

    # -- life of the endpoint -------------------------------------------------------------
    def start(self) -> "LocalEcs":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._moto_port = free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self._moto_port, verbose=False)
        self._moto.start()
        self._front = FrontServer(("127.0.0.1", self.port), front_handler(self))
        self.port = self._front.server_address[1]
        for name, target in (("localecs-http", self._front.serve_forever), ("localecs-lifecycle", self._lifecycle)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._front is not None:
            self._front.shutdown()
            self._front.server_close()
        if self._moto is not None:
            self._moto.stop()

    def __enter__(self) -> "LocalEcs":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def moto_url(self) -> str:
        """moto's own server, behind this endpoint: requests sent here bypass localecs."""
        return f"http://127.0.0.1:{self._moto_port}"

    def client_env(self, url: Optional[str] = None) -> Dict[str, str]:
        """Environment for an AWS client of this endpoint: fake credentials, no profile files."""
        return {"AWS_ENDPOINT_URL": url or self.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, service: str, region: str = REGION, url: Optional[str] = None) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=url or self.url, region_name=region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def seed_network(self, cluster: str = "batch") -> Dict[str, str]:
        """A cluster (with the FARGATE and FARGATE_SPOT capacity providers) and a VPC for its tasks."""
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"batch-{vpc}", Description="batch", VpcId=vpc)["GroupId"]
        self.client("ecs").create_cluster(clusterName=cluster, capacityProviders=list(FARGATE_PROVIDERS))
        return {"ECS_CLUSTER": cluster, "SUBNET_ID": subnet, "SECURITY_GROUP_ID": group}

    # -- what tests look at ---------------------------------------------------------------
    def calls(self, operation: str) -> List[Dict[str, Any]]:
        """The ECS requests for `operation` so far, each {"operation", "at" (monotonic), "params"}."""
        with self.lock:
            return [r for r in self.requests if r["operation"] == operation]

    def task(self, task_arn: str) -> Task:
        """The live task (its attributes change as it runs)."""
        return self.states[task_arn].task

    def tasks(self) -> List[Task]:
        with self.lock:
            return [s.task for s in self.states.values()]

    def finish(self, task_arn: str) -> None:
        """End a RUNNING task's run now, with the exit codes its plan gives: for a test that needs
        a job to outlive some steps and then end, without waiting out a fixed running time."""
        with self.lock:
            state = self.states[task_arn]
            if state.task.last_status == "RUNNING" and state.stop_requested_at is None:
                age = time.monotonic() - state.born
                state.plan = copy_plan(state.plan, running=max(0.0, age - state.plan.provisioning
                                                               - state.plan.pending))

    def forget(self, task_arn: str) -> None:
        """Make ECS forget a task, as it does an hour after it stopped: DescribeTasks says MISSING."""
        with self.lock:
            self.states.pop(task_arn, None)
            self._active.pop(task_arn, None)
            self._ids.pop(task_arn.rsplit("/", 1)[-1], None)

    # -- HTTP ---------------------------------------------------------------------------------
    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        service, _, operation = (handler.headers.get("X-Amz-Target") or "").rpartition(".")
        if service == ECS_TARGET:
            try:
                params = json.loads(body or b"{}")
                if not isinstance(params, dict):
                    raise ValueError("not an object")
            except ValueError:
                answer_json(handler, 400, {"__type": "SerializationException", "message": "Malformed request body"})
                return
            with self.lock:
                self.requests.append({"operation": operation, "at": time.monotonic(), "params": params})
            own = self._operations.get(operation)
            if own is not None and (operation not in TAG_OPERATIONS or is_task_arn(params.get("resourceArn"))):
                authorization = handler.headers.get("Authorization")
                call = Call(operation, params, region_of(authorization), authorization)
                try:
                    answer_json(handler, 200, own(call))
                except EcsError as exc:
                    answer_json(handler, exc.status, exc.body())
                return
            if operation in CLUSTER_CHANGES:
                with self.lock:
                    self._clusters.clear()
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        try:
            status, answer_headers, payload = self._moto_request(handler.command, handler.path, body, headers)
        except OSError:  # moto is gone (the end of a test run): hang up as it would
            hang_up(handler)
            return
        send(handler, status, answer_headers, payload)

    def _moto_request(self, method: str, path: str, body: bytes,
                      headers: Dict[str, str]) -> Tuple[int, List[Tuple[str, str]], bytes]:
        """One request to moto on this thread's kept-alive connection (a fresh one if it went stale)."""
        for attempt in (1, 2):
            connection = getattr(self._upstream, "connection", None)
            if connection is None:
                connection = self._upstream.connection = http.client.HTTPConnection(
                    "127.0.0.1", self._moto_port, timeout=60)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                answer_headers = [(k, v) for k, v in response.getheaders()
                                  if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                if response.will_close:
                    connection.close()
                    self._upstream.connection = None
                return response.status, answer_headers, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                self._upstream.connection = None
                if attempt == 2:
                    raise
            except OSError:
                connection.close()
                self._upstream.connection = None
                raise
        raise AssertionError("unreachable")

    def _moto_ecs(self, call: Call, operation: str, params: Dict[str, Any]) -> Dict[str, Any]:
        """An ECS request of localecs's own to moto, as the caller (same credentials, same region)."""
        headers = {"Content-Type": JSON_TYPE, "X-Amz-Target": f"{ECS_TARGET}.{operation}",
                   "Authorization": call.authorization or (
                       f"AWS4-HMAC-SHA256 Credential=testing/20260101/{call.region}/ecs/aws4_request, "
                       "SignedHeaders=host, Signature=0")}
        status, _, payload = self._moto_request("POST", "/", json.dumps(params).encode(), headers)
        answer = json.loads(payload or b"{}")
        if status != 200:
            code = str(answer.get("__type", "ServerException")).rsplit("#", 1)[-1]
            raise EcsError(code, str(answer.get("message") or answer.get("Message") or code), status)
        return answer

    # -- what ECS knows besides tasks: asked of moto ------------------------------------------
    def _cluster(self, call: Call, reference: Optional[str]) -> Dict[str, Any]:
        """The cluster named (or ARN'd) in a request, or ClusterNotFoundException."""
        name = (reference or "default").rsplit("/", 1)[-1]
        key = (call.region, name)
        with self.lock:
            known = self._clusters.get(key)
        if known is not None:
            return known
        found = self._moto_ecs(call, "DescribeClusters", {"clusters": [name]}).get("clusters") or []
        cluster = next((c for c in found if c.get("clusterName") == name and c.get("status", "ACTIVE") == "ACTIVE"),
                       None)
        if cluster is None:
            raise EcsError("ClusterNotFoundException", "Cluster not found.")
        with self.lock:
            self._clusters[key] = cluster
        return cluster

    def _task_definition(self, call: Call, reference: str) -> Tuple[Dict[str, Any], List[Dict[str, str]]]:
        try:
            answer = self._moto_ecs(call, "DescribeTaskDefinition", {"taskDefinition": reference, "include": ["TAGS"]})
        except EcsError as exc:
            if exc.status >= 500:
                raise
            raise invalid("TaskDefinition not found.") from exc
        definition = answer.get("taskDefinition") or {}
        if definition.get("status", "ACTIVE") != "ACTIVE":
            raise EcsError("ClientException", "TaskDefinition is inactive")
        return definition, answer.get("tags") or []

    # -- RunTask --------------------------------------------------------------------------------
    def _run_task(self, call: Call) -> Dict[str, Any]:
        params = call.params
        token = params.get("clientToken")
        if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 64):
            raise invalid("clientToken must be 1 to 64 characters.")
        request = json.dumps({k: v for k, v in params.items() if k != "clientToken"}, sort_keys=True)
        if token:
            with self.lock:
                if token in self.tokens:
                    return self._idempotent_answer(token, request)
        if not params.get("taskDefinition"):
            raise invalid("TaskDefinition cannot be empty.")
        cluster = self._cluster(call, params.get("cluster"))
        definition, definition_tags = self._task_definition(call, params["taskDefinition"])
        shape = run_shape(params, cluster, definition, definition_tags)
        with self.lock:
            if token and token in self.tokens:  # the same request raced this one
                return self._idempotent_answer(token, request)
            plan = self._next_plan(params.get("overrides") or {})
            if plan.failures is not None:
                answer = {"tasks": [], "failures": [self._failure(f, call, cluster) for f in plan.failures]}
                arns: List[str] = []
            else:
                arns = [self._launch(call, cluster, definition, shape, plan) for _ in range(shape["count"])]
                answer = {"tasks": [self.states[a].task.to_json() for a in arns], "failures": []}
            if token:
                self.tokens[token] = {"request": request, "arns": arns, "failures": answer["failures"]}
            return answer

    def _idempotent_answer(self, token: str, request: str) -> Dict[str, Any]:
        """Under the lock: what a repeated clientToken gets, the tasks as they are now."""
        first = self.tokens[token]
        if first["request"] != request:
            raise EcsError("ConflictException", "The clientToken is already in use with a different RunTask "
                           "request. The resourceIds are the existing task ARNs which are already associated "
                           "with the clientToken.", resourceIds=list(first["arns"]))
        return {"tasks": [self.states[a].task.to_json() for a in first["arns"] if a in self.states],
                "failures": list(first["failures"])}

    def _next_plan(self, overrides: Dict[str, Any]) -> Plan:
        if self.plans:
            return self.plans.popleft()
        for override in overrides.get("containerOverrides", []):
            if override.get("command"):
                return plan_from_command(override["command"], self.default_plan)
        return self.default_plan

    @staticmethod
    def _failure(failure: Dict[str, str], call: Call, cluster: Dict[str, Any]) -> Dict[str, str]:
        entry = dict(failure)
        if "arn" not in entry and str(entry.get("reason", "")).startswith("RESOURCE:"):
            account = cluster["clusterArn"].split(":")[4]
            entry["arn"] = (f"arn:aws:ecs:{call.region}:{account}:container-instance/"
                            f"{cluster['clusterName']}/{uuid.uuid4().hex}")
        return entry

    def _launch(self, call: Call, cluster: Dict[str, Any], definition: Dict[str, Any], shape: Dict[str, Any],
                plan: Plan) -> str:
        """Under the lock: one new task."""
        arn_prefix = cluster["clusterArn"].split(":cluster/")[0]
        task_id = uuid.uuid4().hex
        task_arn = f"{arn_prefix}:task/{cluster['clusterName']}/{task_id}"
        now, wall = time.monotonic(), round(time.time(), 3)
        task = Task(task_arn=task_arn, cluster_arn=cluster["clusterArn"],
                    task_definition_arn=definition["taskDefinitionArn"], created_at=wall,
                    started_by=shape["startedBy"], group=shape["group"], overrides=shape["overrides"],
                    launch_type=shape["launchType"], capacity_provider_name=shape["capacityProviderName"],
                    platform_version=shape["platformVersion"], tags=[dict(t) for t in shape["tags"]],
                    cpu=shape["cpu"], memory=shape["memory"], availability_zone=f"{call.region}a",
                    enable_execute_command=shape["enableExecuteCommand"])
        for container in definition.get("containerDefinitions", []):
            task.containers.append(Container(
                name=container["name"], image=container.get("image"), essential=container.get("essential", True),
                container_arn=f"{arn_prefix}:container/{cluster['clusterName']}/{task_id}/{uuid.uuid4()}",
                task_arn=task_arn, cpu=container.get("cpu"), memory=container.get("memory")))
        subnets = ((shape["networkConfiguration"] or {}).get("awsvpcConfiguration") or {}).get("subnets") or []
        if subnets:
            task.attachments = [{"id": str(uuid.uuid4()), "type": "ElasticNetworkInterface", "status": "ATTACHED",
                                 "details": [{"name": "subnetId", "value": subnets[0]},
                                             {"name": "networkInterfaceId", "value": f"eni-{task_id[:17]}"},
                                             {"name": "privateIPv4Address", "value": "10.0.1.%d" % (
                                                 len(self.states) % 250 + 4)}]}]
        state = TaskState(task, plan, now, definition.get("containerDefinitions", []), region=call.region)
        state.seq = self._launched = self._launched + 1
        self.states[task_arn] = self._active[task_arn] = state
        self._ids[task_id] = task_arn
        return task_arn

    # -- DescribeTasks, StopTask, ListTasks, tags ------------------------------------------------
    def _find(self, cluster: Dict[str, Any], reference: str) -> Optional[TaskState]:
        """Under the lock: the task named by ARN or id in this cluster."""
        state = self.states.get(self._ids.get(str(reference).rsplit("/", 1)[-1], ""))
        return state if state is not None and state.task.cluster_arn == cluster["clusterArn"] else None

    def _describe_tasks(self, call: Call) -> Dict[str, Any]:
        wanted = call.params.get("tasks") or []
        if not isinstance(wanted, list) or not 1 <= len(wanted) <= 100:
            raise invalid("Tasks cannot be empty." if not wanted else "Too many tasks were specified (up to 100).")
        cluster = self._cluster(call, call.params.get("cluster"))
        with_tags = "TAGS" in (call.params.get("include") or [])
        tasks, failures = [], []
        with self.lock:  # one consistent snapshot: the lifecycle thread changes tasks under this lock
            for reference in wanted:
                state = self._find(cluster, reference)
                if state is None:
                    failures.append({"arn": reference, "reason": "MISSING"})
                else:
                    tasks.append(state.task.to_json(with_tags=with_tags))
        return {"tasks": tasks, "failures": failures}

    def _stop_task(self, call: Call) -> Dict[str, Any]:
        cluster = self._cluster(call, call.params.get("cluster"))
        reason = call.params.get("reason") or "Task stopped by user"
        with self.lock:
            state = self._find(cluster, call.params.get("task") or "")
            if state is None:
                raise invalid("The referenced task was not found.")
            request_stop(state, time.monotonic(), str(reason), "UserInitiated")
            return {"task": state.task.to_json()}

    def _list_tasks(self, call: Call) -> Dict[str, Any]:
        params = call.params
        cluster = self._cluster(call, params.get("cluster"))
        desired = params.get("desiredStatus") or "RUNNING"
        if desired not in ("RUNNING", "PENDING", "STOPPED"):
            raise invalid("desiredStatus must be one of RUNNING, PENDING, STOPPED.")
        limit = params.get("maxResults") or 100
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise invalid("maxResults must be between 1 and 100.")
        after = -1
        if params.get("nextToken"):
            try:
                after = int(json.loads(base64.urlsafe_b64decode(params["nextToken"].encode()))["after"])
            except (ValueError, KeyError, TypeError):
                raise invalid("Invalid nextToken.") from None
        family = params.get("family")
        with self.lock:
            matching = [(state.seq, state.task.task_arn) for state in self.states.values()
                        if state.seq > after and state.task.cluster_arn == cluster["clusterArn"]
                        and state.task.desired_status == desired
                        and (family is None or state.task.family == family)
                        and (params.get("startedBy") is None or state.task.started_by == params["startedBy"])
                        and (params.get("launchType") is None or state.task.launch_type == params["launchType"])
                        and not params.get("serviceName") and not params.get("containerInstance")]
        answer: Dict[str, Any] = {"taskArns": [arn for _, arn in matching[:limit]]}
        if len(matching) > limit:
            answer["nextToken"] = base64.urlsafe_b64encode(
                json.dumps({"after": matching[limit - 1][0]}).encode()).decode()
        return answer

    def _tagged_task(self, call: Call) -> TaskState:
        """Under the lock: the task whose ARN is the request's resourceArn."""
        state = self.states.get(call.params["resourceArn"])
        if state is None:
            raise invalid("The specified task is not found.")
        return state

    def _tag_resource(self, call: Call) -> Dict[str, Any]:
        tags = check_tags(call.params.get("tags"))
        with self.lock:
            task = self._tagged_task(call).task
            keys = {t["key"] for t in tags}
            task.tags = [t for t in task.tags if t["key"] not in keys] + tags
        return {}

    def _untag_resource(self, call: Call) -> Dict[str, Any]:
        keys = set(call.params.get("tagKeys") or [])
        with self.lock:
            task = self._tagged_task(call).task
            task.tags = [t for t in task.tags if t["key"] not in keys]
        return {}

    def _list_tags_for_resource(self, call: Call) -> Dict[str, Any]:
        with self.lock:
            return {"tags": [dict(t) for t in self._tagged_task(call).task.tags]}

    # -- the clock --------------------------------------------------------------------------
    def _lifecycle(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self.lock:
                now = time.monotonic()
                for arn, state in list(self._active.items()):
                    advance(state, now)
                    self._collect_log_lines(state, now)
                    if state.done:
                        del self._active[arn]
            self._flush_log_lines()

    # -- container log lines (the demo) ----------------------------------------------------
    def _collect_log_lines(self, state: TaskState, now: float) -> None:
        """Under the lock: the lines this task's awslogs containers have written since last time."""
        if not self.container_logs:
            return
        writer = self._log_writers.get(state.task.task_arn)
        if writer is None:
            writer = self._log_writers[state.task.task_arn] = AwslogsWriter(state)
        self._log_lines.extend((state.region, group, stream, message) for group, stream, message in writer.lines(now))

    def _flush_log_lines(self) -> None:
        """Outside the lock: put the collected lines into moto's CloudWatch Logs."""
        with self.lock:
            lines, self._log_lines = self._log_lines, []
        if not lines:
            return
        import botocore.exceptions

        for region, group, stream, message in lines:
            logs = self._logs_clients.get(region)
            if logs is None:
                logs = self._logs_clients[region] = self.client("logs", region=region, url=self.moto_url)
            for create, kwargs in ((logs.create_log_group, {"logGroupName": group}),
                                   (logs.create_log_stream, {"logGroupName": group, "logStreamName": stream})):
                try:
                    create(**kwargs)
                except botocore.exceptions.ClientError:
                    pass  # it exists already
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
                {"timestamp": int(time.time() * 1000), "message": message}])


def run_shape(params: Dict[str, Any], cluster: Dict[str, Any], definition: Dict[str, Any],
              definition_tags: List[Dict[str, str]]) -> Dict[str, Any]:
    """What a RunTask request makes of its tasks, checked as ECS checks it (InvalidParameterException)."""
    count = params.get("count", 1)
    if not isinstance(count, int) or not 1 <= count <= 10:
        raise invalid("count must be between 1 and 10.")
    started_by = params.get("startedBy")
    if started_by is not None and not STARTED_BY.fullmatch(str(started_by)):
        raise invalid("startedBy may contain up to 36 letters (uppercase and lowercase), numbers, hyphens, "
                      "forward slashes and underscores.")
    launch_type, strategy = params.get("launchType"), params.get("capacityProviderStrategy")
    if launch_type and strategy:
        raise invalid("Specifying both a launch type and capacity provider strategy is not supported. "
                      "Remove one and try again.")
    provider = None
    if not launch_type:
        strategy = strategy or cluster.get("defaultCapacityProviderStrategy") or []
        provider = choose_capacity_provider(strategy, cluster.get("capacityProviders") or [])
        launch_type = "FARGATE" if provider in FARGATE_PROVIDERS else "EC2"
    elif launch_type not in ("EC2", "FARGATE", "EXTERNAL"):
        raise invalid(f"launchType {launch_type} is not one of EC2, FARGATE, EXTERNAL.")
    network = params.get("networkConfiguration")
    if definition.get("networkMode") == "awsvpc" and not (network or {}).get("awsvpcConfiguration"):
        raise invalid("Network Configuration must be provided when networkMode 'awsvpc' is specified.")
    if launch_type == "FARGATE" and definition.get("networkMode") not in (None, "awsvpc"):
        raise invalid("Fargate only supports network mode 'awsvpc'.")
    if network is not None and not ((network.get("awsvpcConfiguration") or {}).get("subnets")):
        raise invalid("subnets can not be empty.")
    overrides = params.get("overrides") or {}
    names = {c["name"] for c in definition.get("containerDefinitions", [])}
    for override in overrides.get("containerOverrides") or []:
        if override.get("name") not in names:
            raise invalid(f"Override for container named {override.get('name')} is not a container in the "
                          "TaskDefinition.")
    tags = check_tags(params.get("tags"))
    propagate = params.get("propagateTags")
    if propagate not in (None, "NONE", "TASK_DEFINITION", "SERVICE"):
        raise invalid("propagateTags must be one of TASK_DEFINITION, SERVICE, NONE.")
    if propagate == "SERVICE":
        raise invalid("The task must be launched by a service to propagate tags from the service.")
    if propagate == "TASK_DEFINITION":
        keys = {t["key"] for t in tags}
        tags = [dict(t) for t in definition_tags if t["key"] not in keys] + tags
        check_tags(tags)
    family = definition["taskDefinitionArn"].rsplit("/", 1)[-1].rsplit(":", 1)[0]
    platform = params.get("platformVersion")
    return {"count": count, "startedBy": started_by, "group": params.get("group") or f"family:{family}",
            "overrides": overrides, "launchType": launch_type, "capacityProviderName": provider,
            "platformVersion": ("1.4.0" if platform in (None, "LATEST") else platform)
            if launch_type == "FARGATE" else None,
            "tags": tags, "networkConfiguration": network,
            "cpu": str(overrides.get("cpu") or definition.get("cpu") or "") or None,
            "memory": str(overrides.get("memory") or definition.get("memory") or "") or None,
            "enableExecuteCommand": bool(params.get("enableExecuteCommand"))}


def choose_capacity_provider(strategy: List[Dict[str, Any]], associated: List[str]) -> Optional[str]:
    """The provider a task lands on: the one with a base, else the first with weight (None: no strategy)."""
    if not strategy:
        return None
    for item in strategy:
        name = item.get("capacityProvider")
        if name not in associated:
            raise invalid(f"The specified capacity provider strategy cannot contain a capacity provider that is "
                          f"not associated with the cluster ({name}). Associate the capacity provider with the "
                          "cluster or specify a valid capacity provider and try again.")
        if not 0 <= int(item.get("weight", 0)) <= 1000 or not 0 <= int(item.get("base", 0)) <= 100000:
            raise invalid("The capacity provider strategy has a weight or base out of range.")
    if sum(1 for item in strategy if item.get("base")) > 1:
        raise invalid("Only one capacity provider in a capacity provider strategy can have a base defined.")
    if all(not item.get("weight") for item in strategy) and not any(item.get("base") for item in strategy):
        raise invalid("At least one capacity provider in a capacity provider strategy must have a weight "
                      "greater than zero.")
    based = [item for item in strategy if item.get("base")]
    chosen = based[0] if based else next(item for item in strategy if item.get("weight"))
    return str(chosen["capacityProvider"])


def check_tags(tags: Any) -> List[Dict[str, str]]:
    tags = tags or []
    if not isinstance(tags, list) or len(tags) > 50:
        raise invalid("A resource can have at most 50 tags.")
    checked = []
    for tag in tags:
        key, value = tag.get("key"), tag.get("value", "")
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or len(str(value)) > 256:
            raise invalid("Tag keys must be 1 to 128 characters and values at most 256 characters.")
        if key.lower().startswith("aws:"):
            raise invalid("Tag keys may not begin with aws:, which is reserved for AWS use.")
        checked.append({"key": key, "value": str(value)})
    return checked


def is_task_arn(arn: Any) -> bool:
    return isinstance(arn, str) and arn.startswith("arn:") and ":task/" in arn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FrontServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a runner killed mid-request, Ctrl-C) is no error to print."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def front_handler(sim: LocalEcs) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            try:
                sim._serve(self)
            except (ConnectionError, TimeoutError):
                self.close_connection = True

        do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_POST

    return Handler


def answer_json(handler: http.server.BaseHTTPRequestHandler, status: int, answer: Dict[str, Any]) -> None:
    send(handler, status, [("Content-Type", JSON_TYPE), ("x-amzn-RequestId", str(uuid.uuid4()))],
         json.dumps(answer).encode())


def send(handler: http.server.BaseHTTPRequestHandler, status: int, headers: List[Tuple[str, str]],
         payload: bytes) -> None:
    handler.send_response(status)
    for key, value in headers:
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(payload)


def hang_up(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class AwslogsWriter:
    """What one task's awslogs containers print: a line every LOG_LINE_SECONDS while RUNNING, then
    the line a job prints as it exits. Streams are named as ECS names them: PREFIX/CONTAINER/TASK_ID."""

    def __init__(self, state: TaskState) -> None:
        self.state = state
        self.targets = []
        task_id = state.task.id
        for definition in state.definitions:
            config = definition.get("logConfiguration") or {}
            options = config.get("options") or {}
            if config.get("logDriver") == "awslogs" and options.get("awslogs-group") and \
                    options.get("awslogs-stream-prefix"):
                stream = f"{options['awslogs-stream-prefix']}/{definition['name']}/{task_id}"
                self.targets.append((definition["name"], options["awslogs-group"], stream))
        self.step = 0
        self.next_at: Optional[float] = None
        self.finished = False

    def lines(self, now: float) -> List[Tuple[str, str, str]]:
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

