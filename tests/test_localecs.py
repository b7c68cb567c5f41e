"""localecs itself: the lifecycle under an injected clock (tables), and the endpoint on the wire.

The wire tests talk to the session's endpoint with boto3, as ecsbatch does, and check the shapes
and the rules that ecsbatch relies on and that issue 13's tests will: capacity failures, tasks that
fail to start, Spot interruptions, tags, ListTasks' filters and pages, idempotent RunTask.
"""

from __future__ import annotations

import threading
import uuid

import botocore.exceptions
import pytest

from localecs import (CAPACITY_UNAVAILABLE, SPOT_INTERRUPTED, Container, Plan, Task, TaskState, capacity_failures,
                      failed_to_start, plan_from_command, spot_interruption)
from localecs.lifecycle import advance, request_stop


# -- the lifecycle, with an injected clock ---------------------------------------------------------
def state_for(plan: Plan) -> TaskState:
    arn = "arn:aws:ecs:ap-northeast-1:123456789012:task/batch/0123456789abcdef0123456789abcdef"
    task = Task(task_arn=arn, cluster_arn="arn:aws:ecs:ap-northeast-1:123456789012:cluster/batch",
                task_definition_arn="arn:aws:ecs:ap-northeast-1:123456789012:task-definition/job:1",
                created_at=1_800_000_000.0,
                containers=[Container("app", f"{arn}/app", arn), Container("sidecar", f"{arn}/s", arn, essential=False)])
    return TaskState(task, plan, now=100.0)


def seen(task: Task) -> tuple:
    return (task.last_status, task.desired_status, task.stop_code,
            tuple((c.name, c.last_status, c.exit_code) for c in task.containers))


BASE = Plan(provisioning=1, pending=1, running=2)
LIFE = {
    "just launched": (BASE, [], 0.5, ("PROVISIONING", "RUNNING", None, (("app", "PENDING", None),
                                                                         ("sidecar", "PENDING", None)))),
    "pending": (BASE, [], 1.5, ("PENDING", "RUNNING", None, (("app", "PENDING", None), ("sidecar", "PENDING", None)))),
    "running": (BASE, [], 2.5, ("RUNNING", "RUNNING", None, (("app", "RUNNING", None), ("sidecar", "RUNNING", None)))),
    "exited": (BASE, [], 4.0, ("STOPPED", "STOPPED", "EssentialContainerExited",
                               (("app", "STOPPED", 0), ("sidecar", "STOPPED", 137)))),
    "exit codes by name": (Plan(provisioning=1, pending=1, running=2, exit_code=3, exit_codes={"sidecar": 0}), [],
                           4.0, ("STOPPED", "STOPPED", "EssentialContainerExited",
                                 (("app", "STOPPED", 3), ("sidecar", "STOPPED", 0)))),
    "stop while running: deactivating": (BASE, [3.0], 3.1, ("DEACTIVATING", "STOPPED", "UserInitiated",
                                                            (("app", "RUNNING", None), ("sidecar", "RUNNING", None)))),
    "stop while running: stopped, SIGTERM codes": (BASE, [3.0], 3.5, ("STOPPED", "STOPPED", "UserInitiated", (
        ("app", "STOPPED", 143), ("sidecar", "STOPPED", 143)))),
    "stop while pending: no exit codes": (BASE, [1.5], 2.5, ("STOPPED", "STOPPED", "UserInitiated", (
        ("app", "STOPPED", None), ("sidecar", "STOPPED", None)))),
    "failed to start": (failed_to_start(provisioning=1, pending=1), [], 2.5, ("STOPPED", "STOPPED", "TaskFailedToStart", (
        ("app", "STOPPED", None), ("sidecar", "STOPPED", None)))),
    "spot: running before the reclaim": (spot_interruption(running=2, provisioning=1, pending=1), [], 3.5,
                                         ("RUNNING", "RUNNING", None, (("app", "RUNNING", None),
                                                                       ("sidecar", "RUNNING", None)))),
    "spot: deactivating": (spot_interruption(running=2, provisioning=1, pending=1), [], 4.1,
                           ("DEACTIVATING", "STOPPED", "SpotInterruption", (("app", "RUNNING", None),
                                                                            ("sidecar", "RUNNING", None)))),
    "spot: stopped, SIGTERM codes": (spot_interruption(running=2, provisioning=1, pending=1), [], 4.5, (
        "STOPPED", "STOPPED", "SpotInterruption", (("app", "STOPPED", 143), ("sidecar", "STOPPED", 143)))),
    "spot: killed without codes": (spot_interruption(running=2, exit_code=None, provisioning=1, pending=1), [], 4.5, (
        "STOPPED", "STOPPED", "SpotInterruption", (("app", "STOPPED", None), ("sidecar", "STOPPED", None)))),
    "a stop after STOPPED changes nothing": (BASE, [5.0], 5.5, ("STOPPED", "STOPPED", "EssentialContainerExited",
                                                                (("app", "STOPPED", 0), ("sidecar", "STOPPED", 137)))),
}


@pytest.mark.parametrize("plan, stops, at, expected", LIFE.values(), ids=list(LIFE))
def test_lifecycle_under_an_injected_clock(plan, stops, at, expected):
    state = state_for(plan)
    moments = sorted({round(100.0 + t / 10, 3) for t in range(0, int(at * 10) + 1)} | {100.0 + s for s in stops})
    for now in moments:
        if any(abs(now - (100.0 + s)) < 1e-9 for s in stops):
            request_stop(state, now, "operator", "UserInitiated")
        advance(state, now)
    assert seen(state.task) == expected


def test_timestamps_follow_the_injected_clock():
    state = state_for(BASE)
    for now in (100.0, 101.0, 102.0, 103.0, 104.0):
        advance(state, now)
    task = state.task
    assert (task.created_at, task.started_at, task.stopped_at) == (1_800_000_000.0, 1_800_000_002.0, 1_800_000_004.0)
    assert state.done and state.stopped_monotonic == 104.0


def test_the_first_stop_request_wins():
    state = state_for(spot_interruption(running=2, provisioning=1, pending=1))
    for now in (100.0, 102.0, 104.0):
        advance(state, now)
    request_stop(state, 104.1, "ecsbatch: --timeout expired", "UserInitiated")
    advance(state, 105.0)
    assert (state.task.stop_code, state.task.stopped_reason) == ("SpotInterruption", SPOT_INTERRUPTED)


DEMO = {
    "exit 3": (["exit", "3"], dict(exit_code=3, running=0.5)),
    "sleep then exit": (["sh", "-c", "sleep 2; exit 1"], dict(exit_code=1, running=2.0)),
    "fail-to-start": (["fail-to-start"], dict(stop_code="TaskFailedToStart", exit_code=None)),
    "host-terminated": (["host-terminated"], dict(stop_code=None, exit_code=None)),
    "spot-interruption": (["sleep", "5", "spot-interruption"], dict(stop_code="SpotInterruption", interrupted=True,
                                                                    running=5.0)),
}


@pytest.mark.parametrize("command, expected", DEMO.values(), ids=list(DEMO))
def test_the_demo_language(command, expected):
    plan = plan_from_command(command, Plan())
    assert {k: getattr(plan, k) for k in expected} == expected


def test_capacity_failures_for_the_first_launches():
    then = Plan(exit_code=4)
    plans = capacity_failures(2, then=then, reason=CAPACITY_UNAVAILABLE)
    assert [p.failures for p in plans[:2]] == [[{"reason": CAPACITY_UNAVAILABLE}]] * 2
    assert plans[2] is then and plans[2].failures is None


# -- on the wire ------------------------------------------------------------------------------------
@pytest.fixture
def ecs_api(job):
    return job.ecs.client("ecs")


def run(job, ecs_api, **extra):
    request = dict(cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE",
                   networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]]}})
    request.update(extra)
    return ecs_api.run_task(**request)


def wait_done(job, arn):
    while not job.ecs.states[arn].done:
        threading.Event().wait(0.02)


def error_of(call, *args, **kwargs):
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(*args, **kwargs)
    return caught.value.response["Error"]


def test_run_task_answers_in_ecs_shape(job, ecs_api):
    job.ecs.plans.append(Plan(running=0.2, exit_code=3, reasons={"app": "bad row"}))
    answer = run(job, ecs_api, startedBy="nightly", group="batch:nightly", tags=[{"key": "stage", "value": "dev"}],
                 overrides={"containerOverrides": [{"name": "app", "command": ["run"]}]})
    assert answer["failures"] == []
    (task,) = answer["tasks"]
    assert task["taskArn"].startswith(f"arn:aws:ecs:ap-northeast-1:123456789012:task/{job.cluster}/")
    assert len(task["taskArn"].rsplit("/", 1)[-1]) == 32
    assert task["clusterArn"].endswith(f":cluster/{job.cluster}") and task["taskDefinitionArn"] == job.definition_arn
    assert (task["lastStatus"], task["desiredStatus"], task["launchType"]) == ("PROVISIONING", "RUNNING", "FARGATE")
    assert (task["startedBy"], task["group"]) == ("nightly", "batch:nightly")
    assert task["overrides"]["containerOverrides"] == [{"name": "app", "command": ["run"]}]
    assert task["tags"] == [{"key": "stage", "value": "dev"}]
    assert [c["name"] for c in task["containers"]] == ["app", "log-router"]
    wait_done(job, task["taskArn"])
    described = ecs_api.describe_tasks(cluster=job.cluster, tasks=[task["taskArn"]])["tasks"][0]
    assert "tags" not in described
    assert (described["lastStatus"], described["desiredStatus"], described["stopCode"]) == (
        "STOPPED", "STOPPED", "EssentialContainerExited")
    assert described["stoppedReason"] == "Essential container in task exited"
    app, sidecar = described["containers"]
    assert (app["name"], app["exitCode"], app["reason"], app["lastStatus"]) == ("app", 3, "bad row", "STOPPED")
    assert (sidecar["name"], sidecar["exitCode"]) == ("log-router", 137)
    assert described["createdAt"] <= described["startedAt"] <= described["stoppedAt"]
    with_tags = ecs_api.describe_tasks(cluster=job.cluster, tasks=[task["taskArn"]], include=["TAGS"])["tasks"][0]
    assert with_tags["tags"] == [{"key": "stage", "value": "dev"}]


def test_group_defaults_to_the_family(job, ecs_api):
    task = run(job, ecs_api)["tasks"][0]
    assert task["group"] == f"family:{job.family}"
    assert "startedBy" not in task


def test_describe_tasks_names_unknown_tasks_missing(job, ecs_api):
    known = run(job, ecs_api)["tasks"][0]["taskArn"]
    unknown = known.rsplit("/", 1)[0] + "/" + "0" * 32
    answer = ecs_api.describe_tasks(cluster=job.cluster, tasks=[known.rsplit("/", 1)[-1], unknown])
    assert [t["taskArn"] for t in answer["tasks"]] == [known]
    assert answer["failures"] == [{"arn": unknown, "reason": "MISSING"}]
    job.ecs.forget(known)
    assert ecs_api.describe_tasks(cluster=job.cluster, tasks=[known])["failures"] == [{"arn": known, "reason": "MISSING"}]


def test_a_task_of_another_cluster_is_missing(job, ecs_api):
    other = f"other-{uuid.uuid4().hex[:6]}"
    ecs_api.create_cluster(clusterName=other)
    arn = run(job, ecs_api)["tasks"][0]["taskArn"]
    assert ecs_api.describe_tasks(cluster=other, tasks=[arn])["failures"][0]["reason"] == "MISSING"


BAD_RUNS = {
    "unknown cluster": (dict(cluster="nosuch"), "ClusterNotFoundException", "Cluster not found"),
    "unknown definition": (dict(taskDefinition="nosuch-family"), "InvalidParameterException", "TaskDefinition"),
    "launch type and strategy": (dict(capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}]),
                                 "InvalidParameterException", "both a launch type and capacity provider strategy"),
    "awsvpc without network": (dict(networkConfiguration=None), "InvalidParameterException", "Network Configuration"),
    "override of a container that is not there": (
        dict(overrides={"containerOverrides": [{"name": "nosuch", "command": ["x"]}]}),
        "InvalidParameterException", "nosuch is not a container"),
    "reserved tag key": (dict(tags=[{"key": "aws:x", "value": "1"}]), "InvalidParameterException", "aws:"),
    "startedBy too long": (dict(startedBy="x" * 37), "InvalidParameterException", "startedBy"),
}


@pytest.mark.parametrize("change, code, fragment", BAD_RUNS.values(), ids=list(BAD_RUNS))
def test_run_task_checks_what_ecs_checks(job, ecs_api, change, code, fragment):
    before = len(job.ecs.tasks())
    request = dict(cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE",
                   networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]]}})
    request.update(change)
    request = {k: v for k, v in request.items() if v is not None}
    if "capacityProviderStrategy" in change:
        request["launchType"] = "FARGATE"
    error = error_of(ecs_api.run_task, **request)
    assert error["Code"] == code and fragment in error["Message"], error
    assert len(job.ecs.tasks()) == before


def test_an_inactive_definition_is_refused(job, ecs_api):
    ecs_api.deregister_task_definition(taskDefinition=job.definition_arn)
    error = error_of(ecs_api.run_task, cluster=job.cluster, taskDefinition=job.definition_arn, launchType="FARGATE",
                     networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]]}})
    assert error["Code"] == "ClientException" and "inactive" in error["Message"]


def test_capacity_provider_strategy(job, ecs_api):
    network = {"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]]}}
    on_spot = ecs_api.run_task(cluster=job.cluster, taskDefinition=job.family, networkConfiguration=network,
                               capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}])
    (task,) = on_spot["tasks"]
    assert (task["capacityProviderName"], task["launchType"]) == ("FARGATE_SPOT", "FARGATE")
    based = ecs_api.run_task(cluster=job.cluster, taskDefinition=job.family, networkConfiguration=network,
                             capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1},
                                                       {"capacityProvider": "FARGATE", "base": 1, "weight": 0}])
    assert based["tasks"][0]["capacityProviderName"] == "FARGATE"
    error = error_of(ecs_api.run_task, cluster=job.cluster, taskDefinition=job.family, networkConfiguration=network,
                     capacityProviderStrategy=[{"capacityProvider": "nosuch", "weight": 1}])
    assert error["Code"] == "InvalidParameterException" and "not associated with the cluster" in error["Message"]


def test_client_token_makes_run_task_idempotent(job, ecs_api):
    token = str(uuid.uuid4())
    first = run(job, ecs_api, clientToken=token, startedBy="once")["tasks"][0]["taskArn"]
    again = run(job, ecs_api, clientToken=token, startedBy="once")["tasks"]
    assert [t["taskArn"] for t in again] == [first]
    assert len(job.tasks()) == 1
    error = error_of(ecs_api.run_task, cluster=job.cluster, taskDefinition=job.family, launchType="FARGATE",
                     clientToken=token, startedBy="twice",
                     networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]]}})
    assert error["Code"] == "ConflictException"
    assert len(job.tasks()) == 1


def test_concurrent_requests_with_one_token_start_one_task(job, ecs_api):
    token = str(uuid.uuid4())
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(run(job, ecs_api, clientToken=token)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({a["tasks"][0]["taskArn"] for a in answers}) == 1 and len(job.tasks()) == 1


def test_capacity_failures_for_the_first_launches_then_a_task(job, ecs_api):
    job.ecs.plans.extend(capacity_failures(2, then=Plan(running=0.1)))
    answers = [run(job, ecs_api, clientToken=str(uuid.uuid4())) for _ in range(3)]
    for failed in answers[:2]:
        assert failed["tasks"] == []
        (failure,) = failed["failures"]
        assert failure["reason"] == "RESOURCE:CPU" and ":container-instance/" in failure["arn"]
    assert len(answers[2]["tasks"]) == 1 and answers[2]["failures"] == []
    job.ecs.plans.extend(capacity_failures(1, reason=CAPACITY_UNAVAILABLE))
    assert run(job, ecs_api)["failures"] == [{"reason": CAPACITY_UNAVAILABLE}]


def test_a_failed_launch_repeats_its_answer_for_its_token(job, ecs_api):
    job.ecs.plans.extend(capacity_failures(1, then=Plan()))
    token = str(uuid.uuid4())
    assert run(job, ecs_api, clientToken=token)["tasks"] == []
    assert run(job, ecs_api, clientToken=token)["failures"][0]["reason"] == "RESOURCE:CPU"
    assert len(job.ecs.plans) == 1 and job.tasks() == []


def test_task_failed_to_start_for_capacity(job, ecs_api):
    job.ecs.plans.append(failed_to_start(provisioning=0.05, pending=0.05))
    arn = run(job, ecs_api)["tasks"][0]["taskArn"]
    wait_done(job, arn)
    task = ecs_api.describe_tasks(cluster=job.cluster, tasks=[arn])["tasks"][0]
    assert (task["stopCode"], task["stoppedReason"]) == ("TaskFailedToStart", CAPACITY_UNAVAILABLE)
    assert "startedAt" not in task and all("exitCode" not in c for c in task["containers"])


def test_spot_interruption_mid_run(job, ecs_api):
    job.ecs.plans.append(spot_interruption(running=0.2, provisioning=0.05, pending=0.05))
    arn = ecs_api.run_task(cluster=job.cluster, taskDefinition=job.family,
                           capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
                           networkConfiguration={"awsvpcConfiguration": {"subnets": [job.env["SUBNET_ID"]]}}
                           )["tasks"][0]["taskArn"]
    statuses = set()
    while not job.ecs.states[arn].done:
        statuses.add(ecs_api.describe_tasks(cluster=job.cluster, tasks=[arn])["tasks"][0]["lastStatus"])
    task = ecs_api.describe_tasks(cluster=job.cluster, tasks=[arn])["tasks"][0]
    assert (task["stopCode"], task["stoppedReason"], task["capacityProviderName"]) == (
        "SpotInterruption", SPOT_INTERRUPTED, "FARGATE_SPOT")
    assert [c["exitCode"] for c in task["containers"]] == [143, 143]
    assert "RUNNING" in statuses and "stoppingAt" in task


def test_stop_task_goes_through_deactivating(job, ecs_api):
    job.ecs.plans.append(Plan(provisioning=0.05, pending=0.05, running=60, stop_delay=0.5))
    arn = run(job, ecs_api)["tasks"][0]["taskArn"]
    while job.ecs.task(arn).last_status != "RUNNING":
        threading.Event().wait(0.02)
    stopped = ecs_api.stop_task(cluster=job.cluster, task=arn, reason="operator cleanup")["task"]
    assert (stopped["desiredStatus"], stopped["stopCode"], stopped["stoppedReason"]) == (
        "STOPPED", "UserInitiated", "operator cleanup")
    wait_done(job, arn)
    task = ecs_api.describe_tasks(cluster=job.cluster, tasks=[arn])["tasks"][0]
    assert task["lastStatus"] == "STOPPED" and [c["exitCode"] for c in task["containers"]] == [143, 143]
    assert [c["params"]["reason"] for c in job.ecs.calls("StopTask") if c["params"]["task"] == arn] == [
        "operator cleanup"]
    error = error_of(ecs_api.stop_task, cluster=job.cluster, task="0" * 32)
    assert error["Code"] == "InvalidParameterException" and "not found" in error["Message"]


def test_list_tasks_filters_and_pages(job, ecs_api):
    key = f"list-{uuid.uuid4().hex[:8]}"
    job.ecs.plans.extend(Plan(running=60) for _ in range(5))
    arns = [run(job, ecs_api, startedBy=key)["tasks"][0]["taskArn"] for _ in range(5)]
    ecs_api.stop_task(cluster=job.cluster, task=arns[0])
    running = ecs_api.list_tasks(cluster=job.cluster, startedBy=key)["taskArns"]
    assert running == arns[1:]
    assert ecs_api.list_tasks(cluster=job.cluster, startedBy=key, desiredStatus="STOPPED")["taskArns"] == arns[:1]
    assert set(arns[1:]) <= set(ecs_api.list_tasks(cluster=job.cluster, family=job.family)["taskArns"])
    assert ecs_api.list_tasks(cluster=job.cluster, family="nosuch")["taskArns"] == []
    first = ecs_api.list_tasks(cluster=job.cluster, startedBy=key, maxResults=3)
    assert first["taskArns"] == arns[1:4] and first["nextToken"]
    second = ecs_api.list_tasks(cluster=job.cluster, startedBy=key, maxResults=3, nextToken=first["nextToken"])
    assert second["taskArns"] == arns[4:] and "nextToken" not in second
    paged = [a for page in ecs_api.get_paginator("list_tasks").paginate(
        cluster=job.cluster, startedBy=key, PaginationConfig={"PageSize": 2}) for a in page["taskArns"]]
    assert paged == arns[1:]
    assert error_of(ecs_api.list_tasks, cluster="nosuch")["Code"] == "ClusterNotFoundException"
    for arn in arns[1:]:
        ecs_api.stop_task(cluster=job.cluster, task=arn)


def test_task_tags_through_tag_resource(job, ecs_api):
    arn = run(job, ecs_api, tags=[{"key": "a", "value": "1"}])["tasks"][0]["taskArn"]
    ecs_api.tag_resource(resourceArn=arn, tags=[{"key": "b", "value": "2"}, {"key": "a", "value": "3"}])
    assert ecs_api.list_tags_for_resource(resourceArn=arn)["tags"] == [{"key": "b", "value": "2"},
                                                                       {"key": "a", "value": "3"}]
    ecs_api.untag_resource(resourceArn=arn, tagKeys=["b"])
    assert ecs_api.describe_tasks(cluster=job.cluster, tasks=[arn], include=["TAGS"])["tasks"][0]["tags"] == [
        {"key": "a", "value": "3"}]


def test_propagate_tags_from_the_task_definition(job, ecs_api):
    ecs_api.tag_resource(resourceArn=job.definition_arn, tags=[{"key": "team", "value": "sales"}])
    task = run(job, ecs_api, propagateTags="TASK_DEFINITION", tags=[{"key": "stage", "value": "dev"}])["tasks"][0]
    assert task["tags"] == [{"key": "team", "value": "sales"}, {"key": "stage", "value": "dev"}]


def test_everything_else_goes_to_moto_unchanged(job, ecs_api):
    definition = ecs_api.describe_task_definition(taskDefinition=job.family)["taskDefinition"]
    assert definition["taskDefinitionArn"] == job.definition_arn
    assert job.ecs.calls("DescribeTaskDefinition")[-1]["params"] == {"taskDefinition": job.family}
    assert job.cluster in [c["clusterName"] for c in ecs_api.describe_clusters(clusters=[job.cluster])["clusters"]]
    assert job.ecs.client("ec2").describe_subnets(SubnetIds=[job.env["SUBNET_ID"]])["Subnets"]
    error = error_of(ecs_api.describe_task_definition, taskDefinition="nosuch-family")
    assert error["Code"] == "ClientException"


def test_describe_tasks_answers_consistent_snapshots(job, ecs_api):
    """A task is never seen STOPPED without the exit codes its plan gives (a race of the past)."""
    job.ecs.plans.extend(Plan(provisioning=0.01, pending=0.01, running=0.05 * (n % 4), exit_code=n % 3)
                         for n in range(12))
    arns = [run(job, ecs_api)["tasks"][0]["taskArn"] for _ in range(12)]
    job.ecs.plans.append(Plan(provisioning=0.01, pending=0.01, running=60, stop_delay=0.05))
    stopping = run(job, ecs_api)["tasks"][0]["taskArn"]
    while job.ecs.task(stopping).last_status != "RUNNING":
        threading.Event().wait(0.01)
    ecs_api.stop_task(cluster=job.cluster, task=stopping)
    bad = []
    while not all(job.ecs.states[a].done for a in arns + [stopping]):
        for task in ecs_api.describe_tasks(cluster=job.cluster, tasks=arns + [stopping])["tasks"]:
            containers = task["containers"]
            if task["lastStatus"] == "STOPPED" and any("exitCode" not in c for c in containers):
                bad.append(task)
            if task["lastStatus"] != "STOPPED" and any(c["lastStatus"] == "STOPPED" for c in containers):
                bad.append(task)
    assert bad == []
