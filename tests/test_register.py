"""`ecsbatch register` and `ecsbatch validate`, end to end over HTTP against the local endpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import REPO, assert_one_line_error, offline_env, run_cli

VARIABLES = {"AWS_ACCOUNT_ID": "123456789012", "TASK_ROLE_NAME": "batch-task", "EXECUTION_ROLE_NAME": "batch-exec",
             "ECR_REPOSITORY": "batch-job", "STAGE": "test", "FLUENTD_HOST": "fluentd.internal"}


@pytest.fixture
def project(job, tmp_path):
    """The shipped YAML files in a work directory, with a family of this test's own."""
    for name in ("run-task.yaml", "register-task.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    job.env.update(VARIABLES)
    return tmp_path


def register(job, project, *args, env=None):
    return run_cli(["register"] + list(args), env or job.env, cwd=project)


def latest_definition(job):
    return job.ecs.client("ecs").describe_task_definition(taskDefinition=job.family)["taskDefinition"]


def test_the_tag_lands_in_the_image_and_stdout_is_the_arn(job, project):
    result = register(job, project, "--tag", "1a2b3c4")
    assert result.code == 0, result
    definition = latest_definition(job)
    assert result.stdout == definition["taskDefinitionArn"] + "\n"
    image = definition["containerDefinitions"][0]["image"]
    assert image == "123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/batch-job:1a2b3c4"
    assert definition["revision"] == 2  # the job fixture registered revision 1


def test_an_unchanged_rerun_registers_nothing_and_a_new_tag_registers_the_next_revision(job, project):
    first = register(job, project, "--tag", "1a2b3c4")
    calls = len(job.ecs.calls("RegisterTaskDefinition"))
    again = register(job, project, "--tag", "1a2b3c4")
    assert again.code == 0 and again.stdout == first.stdout
    assert "nothing registered" in again.stderr
    assert len(job.ecs.calls("RegisterTaskDefinition")) == calls
    newer = register(job, project, "--tag", "5d6e7f8")
    assert newer.stdout.strip().endswith(f"{job.family}:3")
    forced = register(job, project, "--tag", "5d6e7f8", "--force")
    assert forced.stdout.strip().endswith(f"{job.family}:4")


def test_a_changed_variable_registers_a_new_revision(job, project):
    register(job, project, "--tag", "1a2b3c4")
    changed = register(job, project, "--tag", "1a2b3c4", "--var", "STAGE=production")
    assert changed.stdout.strip().endswith(f"{job.family}:3")


def test_json_says_whether_it_registered(job, project):
    first = json.loads(register(job, project, "--tag", "1a2b3c4", "--json").stdout)
    again = json.loads(register(job, project, "--tag", "1a2b3c4", "--json").stdout)
    assert first["registered"] is True and again["registered"] is False
    assert first["revision"] == again["revision"] == 2 and first["family"] == job.family


@pytest.mark.parametrize("tag", ["", "a b", "a:b", "a\nb", "abc1234\n", "-abc", ".abc", "x" * 129, "a/b", "tag$"],
                         ids=["empty", "space", "colon", "newline", "trailing-newline", "leading-dash", "leading-dot",
                              "129-chars", "slash", "dollar"])
def test_bad_tags_exit_2_before_any_call(tmp_path, tripwire, tag):
    shutil.copy(REPO / "register-task.yaml", tmp_path / "register-task.yaml")
    result = run_cli(["register", "--tag", tag], offline_env(tripwire, **VARIABLES), cwd=tmp_path)
    assert result.code == 2, result
    assert "is not a valid image tag" in result.stderr and "Traceback" not in result.stderr
    assert tripwire.connections == 0


def test_the_longest_valid_tag_is_accepted(tmp_path, tripwire):
    shutil.copy(REPO / "register-task.yaml", tmp_path / "register-task.yaml")
    tag = "A" + "b" * 127
    result = run_cli(["register", "--tag", tag, "--dry-run"], offline_env(tripwire, TASK_FAMILY="f", **VARIABLES),
                     cwd=tmp_path)
    assert result.code == 0, result
    assert yaml.safe_load(result.stdout)["containerDefinitions"][0]["image"].endswith(":" + tag)


def test_an_unresolved_variable_is_named(tmp_path, tripwire):
    shutil.copy(REPO / "register-task.yaml", tmp_path / "register-task.yaml")
    env = offline_env(tripwire, TASK_FAMILY="f", **{k: v for k, v in VARIABLES.items() if k != "ECR_REPOSITORY"})
    result = run_cli(["register", "--tag", "1a2b3c4"], env, cwd=tmp_path)
    assert_one_line_error(result, 2, "${ECR_REPOSITORY} (at containerDefinitions[0].image)")
    assert tripwire.connections == 0


@pytest.mark.parametrize("evil", [
    "x\n    essential: false",
    "x\"}, {\"name\": \"EVIL\", \"value\": \"1\"",
    "${IMAGE_TAG}",
    "'; rm -rf /; echo '",
    "[1, 2]",
])
def test_a_variable_cannot_change_the_structure(job, project, evil):
    result = register(job, project, "--tag", "1a2b3c4", "--var", f"STAGE={evil}")
    assert result.code == 0, result
    app = latest_definition(job)["containerDefinitions"][0]
    assert app["environment"] == [{"name": "STAGE", "value": evil}]
    assert app["essential"] is True


def test_pin_keeps_every_other_byte_and_run_launches_exactly_that_revision(job, project):
    run_file = project / "run-task.yaml"
    before = run_file.read_text()
    result = register(job, project, "--tag", "1a2b3c4", "--pin", "run-task.yaml")
    assert result.code == 0, result
    after = run_file.read_text()
    pinned = f"{job.family}:2"
    assert after == before.replace("taskDefinition: ${TASK_FAMILY}", f"taskDefinition: {pinned}")
    assert "# `ecsbatch register --pin run-task.yaml` replaces this" in after
    # A newer revision appears; the pinned file must still launch revision 2.
    register(job, project, "--tag", "9f9f9f9")
    ran = run_cli(["run", "-f", str(run_file), "--poll-interval", "0.2"], dict(job.env, STAGE="test"))
    assert ran.code == 0, ran
    assert job.only_task().task_definition_arn == result.stdout.strip()


def test_pin_refuses_a_file_it_cannot_pin_before_registering(job, project):
    (project / "bad.yaml").write_text("taskDefinition:\n  nested: true\n")
    calls = len(job.ecs.calls("RegisterTaskDefinition"))
    result = register(job, project, "--tag", "1a2b3c4", "--pin", "bad.yaml")
    assert_one_line_error(result, 2, "cannot pin")
    assert len(job.ecs.calls("RegisterTaskDefinition")) == calls


def test_aws_refusal_is_125_with_its_message(job, project, proxy):
    from localecs.proxy import Fault

    proxy.add(Fault("deny", "RegisterTaskDefinition", times=1))
    result = register(job, project, "--tag", "1a2b3c4", "--force", env=dict(job.env, AWS_ENDPOINT_URL=proxy.url))
    assert_one_line_error(result, 125, "RegisterTaskDefinition: AccessDeniedException")


def test_dry_run_is_offline(tmp_path, tripwire):
    shutil.copy(REPO / "register-task.yaml", tmp_path / "register-task.yaml")
    result = run_cli(["register", "--tag", "1a2b3c4", "--dry-run"],
                     offline_env(tripwire, TASK_FAMILY="nightly", **VARIABLES), cwd=tmp_path)
    assert result.code == 0, result
    assert yaml.safe_load(result.stdout)["family"] == "nightly"
    assert tripwire.connections == 0


def test_validate_passes_the_shipped_files_offline(tmp_path, tripwire):
    env = offline_env(tripwire, TASK_FAMILY="nightly", ECS_CLUSTER="batch", SUBNET_ID="subnet-1",
                      SECURITY_GROUP_ID="sg-1", **VARIABLES)
    result = run_cli(["validate", str(REPO / "run-task.yaml"), str(REPO / "register-task.yaml"), "--tag", "1a2b3c4"],
                     env)
    assert result.code == 0, result
    assert "valid RunTask request" in result.stderr and "valid RegisterTaskDefinition request" in result.stderr
    assert tripwire.connections == 0


def test_validate_lists_every_problem_in_every_file(tmp_path, tripwire):
    (tmp_path / "run-task.yaml").write_text("clustr: batch\ntaskDefinition: x\ncount: 2\n")
    (tmp_path / "register-task.yaml").write_text(
        "family: f\ncontainerDefinitions:\n  - name: app\n    imag: x\n    memory: '512'\n")
    result = run_cli(["validate"], offline_env(tripwire), cwd=tmp_path)
    assert result.code == 2, result
    errors = "\n".join(result.error_lines)
    for fragment in ("run-task.yaml: unknown key 'clustr'", "run-task.yaml: count must be 1",
                     "register-task.yaml: unknown key 'imag' in containerDefinitions[0]: did you mean 'image'?",
                     "containerDefinitions[0].memory must be int, not str '512'"):
        assert fragment in errors
    assert "Traceback" not in result.stderr
    assert tripwire.connections == 0
