"""Bad input exits 2 with one line, and nothing at all reaches AWS: every endpoint is a tripwire."""

from __future__ import annotations

import pytest
import yaml

from conftest import assert_one_line_error, offline_env, run_cli

GOOD = """\
cluster: batch
taskDefinition: nightly:3
launchType: FARGATE
networkConfiguration:
  awsvpcConfiguration:
    subnets: [subnet-1]
"""


@pytest.mark.parametrize("text, extra_args, fragments", [
    (None, [], ["request file", "not found"]),
    ("", [], ["is empty"]),
    ("# only a comment\n", [], ["is empty"]),
    ("cluster: [batch\n", [], ["run-task.yaml:2:1", "YAML syntax error"]),
    ("cluster: batch\n  taskDefinition: x\n", [], ["run-task.yaml:2:", "YAML syntax error"]),
    ("- cluster: batch\n", [], ["top level must be a mapping", "not a list"]),
    ("just a string\n", [], ["not a str"]),
    (GOOD.replace("cluster:", "clustr:"), [], ["unknown key 'clustr'", "did you mean 'cluster'?"]),
    (GOOD + "overrides:\n  containerOverrides:\n    - nam: app\n", [],
     ["unknown key 'nam' in overrides.containerOverrides[0]", "did you mean 'name'?"]),
    (GOOD + "overrides:\n  containerOverrides:\n    - name: app\n      environment:\n        - {name: N, value: 3}\n",
     [], ["overrides.containerOverrides[0].environment[0].value must be str, not int 3", "quote it in YAML"]),
    (GOOD.replace("taskDefinition: nightly:3\n", ""), [], ["missing required key 'taskDefinition'"]),
    (GOOD + "count: 2\n", [], ["count must be 1"]),
    (GOOD + "clientToken: fixed\n", [], ["remove clientToken"]),
    (GOOD + "startedBy: has spaces\n", [], ["startedBy 'has spaces'"]),
    (GOOD.replace("batch", "${NO_SUCH_VARIABLE}"), [], ["unresolved ${NO_SUCH_VARIABLE} (at cluster)", "--var"]),
    (GOOD.replace("batch", "${broken"), [], ["malformed placeholder at cluster"]),
    (GOOD, ["--timeout", "soon"], ["bad duration 'soon'"]),
    (GOOD, ["--timeout", "0"], ["more than zero"]),
    (GOOD, ["-e", "NOEQUALS"], ["-e/--env 'NOEQUALS'", "NAME=VALUE"]),
    (GOOD, ["--var", "1BAD=x"], ["--var '1BAD=x'"]),
    (GOOD, ["--started-by", "x" * 37], ["--started-by", "1-36"]),
    (GOOD, ["--poll-interval", "fast"], ["'fast' is not a valid float", "ecsbatch run --help"]),
    (GOOD, ["--no-such-option"], ["No such option", "ecsbatch run --help"]),
], ids=lambda value: None)
def test_bad_input_is_one_line_and_exit_2_with_no_call(tmp_path, tripwire, text, extra_args, fragments):
    run_file = tmp_path / "run-task.yaml"
    if text is not None:
        run_file.write_text(text)
    result = run_cli(["run", "-f", str(run_file)] + extra_args, offline_env(tripwire), cwd=tmp_path)
    assert_one_line_error(result, 2, *fragments)
    assert tripwire.connections == 0
    assert result.stdout == ""


def test_unreadable_bytes_are_bad_input(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_bytes(b"cluster: \xff\xfe\n")
    result = run_cli(["run", "-f", str(run_file)], offline_env(tripwire))
    assert_one_line_error(result, 2, "cannot read")


def test_every_problem_is_listed_not_just_the_first(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(GOOD.replace("cluster:", "clustr:") + "count: 2\nlaunchTyp: EC2\n")
    result = run_cli(["run", "-f", str(run_file)], offline_env(tripwire))
    line = assert_one_line_error(result, 2, "'clustr'", "'launchTyp'", "count must be 1")
    assert "did you mean 'launchType'?" in line


def test_dry_run_prints_the_rendered_request_and_makes_no_call(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(GOOD.replace("batch", "${CLUSTER_NAME}"))
    result = run_cli(["run", "-f", str(run_file), "--dry-run", "--var", "CLUSTER_NAME=from-var",
                      "-e", "DATE=2026-11-28", "--", "python", "job.py"],
                     offline_env(tripwire, CLUSTER_NAME="from-environment"))
    assert result.code == 0, result
    request = yaml.safe_load(result.stdout)
    assert request["cluster"] == "from-var"
    assert request["startedBy"] == "ecsbatch"
    (override,) = request["overrides"]["containerOverrides"]
    assert override == {"name": "the first essential container of nightly:3",
                        "environment": [{"name": "DATE", "value": "2026-11-28"}], "command": ["python", "job.py"]}
    assert "clientToken" not in request
    assert tripwire.connections == 0


def test_environment_fills_placeholders_that_var_does_not(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(GOOD.replace("batch", "${CLUSTER_NAME}") + "group: $${literal}\n")
    result = run_cli(["run", "-f", str(run_file), "--dry-run"], offline_env(tripwire, CLUSTER_NAME="from-env"))
    assert result.code == 0, result
    request = yaml.safe_load(result.stdout)
    assert request["cluster"] == "from-env"
    assert request["group"] == "${literal}"


def test_no_credentials_is_125_in_one_line(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(GOOD)
    env = offline_env(tripwire)
    del env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    result = run_cli(["run", "-f", str(run_file)], env)
    assert_one_line_error(result, 125, "no AWS credentials found")


def test_no_region_is_125_in_one_line(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(GOOD)
    env = offline_env(tripwire)
    del env["AWS_REGION"]
    result = run_cli(["run", "-f", str(run_file)], env)
    assert_one_line_error(result, 125, "no AWS region", "--region")
    assert tripwire.connections == 0


def test_unknown_profile_is_125_in_one_line(tmp_path, tripwire):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(GOOD)
    result = run_cli(["run", "-f", str(run_file), "--profile", "no-such-profile"], offline_env(tripwire))
    assert_one_line_error(result, 125, "no-such-profile", "could not be found")
    assert tripwire.connections == 0


def test_status_checks_its_key_before_any_aws_contact(tripwire):
    result = run_cli(["status", "--started-by", "has spaces"], offline_env(tripwire))
    assert_one_line_error(result, 2, "--started-by 'has spaces'")
    assert tripwire.connections == 0
