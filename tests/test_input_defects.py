"""Bad input found by an adversarial pass: each one exits 2 with one line, before any AWS call.

Every CLI case runs against the tripwire: no credentials, every endpoint counting connections.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ecsbatch
from conftest import REPO, assert_one_line_error, ecsbatch_command, offline_env, run_cli

GOOD = """\
cluster: batch
taskDefinition: nightly:3
launchType: FARGATE
"""
LOL = '"lol"'
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{','.join([('*' + previous) if previous else LOL] * 9)}]\n"
    for previous, name in zip([""] + list("abcdefgh"), "abcdefghi"))
REGISTER_VARIABLES = {"TASK_FAMILY": "nightly", "AWS_ACCOUNT_ID": "123456789012", "TASK_ROLE_NAME": "batch-task",
                      "EXECUTION_ROLE_NAME": "batch-exec", "ECR_REPOSITORY": "batch-job", "STAGE": "test",
                      "FLUENTD_HOST": "fluentd.internal"}


def deep_block(levels: int) -> str:
    return "overrides:\n" + "".join("  " * n + "- \n" for n in range(1, levels)) + "  " * levels + "- x\n"


def run_with(tmp_path, tripwire, text, *args):
    run_file = tmp_path / "run-task.yaml"
    run_file.write_text(text)
    return run_cli(["run", "-f", str(run_file)] + list(args), offline_env(tripwire), cwd=tmp_path)


def test_the_alias_bomb_is_the_one_from_the_report():
    assert len(ALIAS_BOMB.encode()) < 400 and ALIAS_BOMB.count("*") == 72


@pytest.mark.parametrize("text, args, fragments", [
    (GOOD, ["--poll-interval", "inf"], ["--poll-interval", "0.05<=x<=600"]),
    (GOOD, ["--poll-interval", "1e308"], ["--poll-interval", "0.05<=x<=600"]),
    (GOOD, ["--poll-interval", "nan"], ["--poll-interval", "'nan' is not a number of seconds"]),
    (GOOD, ["--poll-interval", "601"], ["--poll-interval", "0.05<=x<=600"]),
    (GOOD, ["--timeout", ""], ["--timeout", "bad duration ''"]),
    (GOOD, ["--timeout", "9" * 400], ["--timeout", "at most 8784h", "(400 characters)"]),
    (GOOD, ["--timeout", "8785h"], ["--timeout", "at most 8784h"]),
    (GOOD, ["--cluster", ""], ["--cluster", "must not be empty"]),
    (GOOD, ["--cluster", " "], ["--cluster", "must not be empty"]),
    (GOOD.replace("cluster: batch", 'cluster: ""'), [], ["cluster is empty"]),
    (GOOD, ["--job-key", ""], ["--job-key", "must not be empty"]),
    (deep_block(500), [], ["run-task.yaml:", "nested deeper than 64 levels"]),
    (GOOD + "overrides: " + "[" * 500 + "]" * 500 + "\n", [], ["run-task.yaml:4:", "nested deeper than 64 levels"]),
    (GOOD + "count: true\n", [], ["count must be a number, not bool True"]),
    (GOOD + "overrides:\n  containerOverrides:\n    - {name: app, memory: yes}\n", [],
     ["overrides.containerOverrides[0].memory must be a number, not bool True"]),
    (GOOD + "cluster: other\n", [], ["run-task.yaml:4:1", "duplicate key 'cluster'", "first at line 1",
                                      "again at line 4"]),
    (GOOD + "tags:\n  - {key: a, value: b, key: c}\n", [], ["duplicate key 'key'", "line 5"]),
    (ALIAS_BOMB + GOOD, [], ["more than 100000 values once aliases are expanded"]),
    ("a: &a [*a]\n" + GOOD, [], ["run-task.yaml:1:", "an alias refers to a node that contains it"]),
    ("a: &a [x]\nb: &b [*a]\n" + "".join(f"c{n}: &c{n} [*{'b' if n == 0 else f'c{n - 1}'}]\n" for n in range(80))
     + GOOD, [], ["nested deeper than 64 levels once aliases are followed"]),
    (GOOD + "group: a\x00b\n", [], ["run-task.yaml:4:9", "YAML does not allow the character '\\x00'"]),
], ids=lambda value: repr(value)[:30])
def test_bad_input_is_one_line_and_exit_2_before_any_call(tmp_path, tripwire, text, args, fragments):
    result = run_with(tmp_path, tripwire, text, *args)
    assert_one_line_error(result, 2, *fragments)
    assert tripwire.connections == 0
    assert result.stdout == ""


def test_merge_keys_are_not_duplicates(tmp_path, tripwire):
    text = GOOD + "x-base: &base {name: app, cpu: 1}\noverrides:\n  containerOverrides:\n    - <<: *base\n      cpu: 2\n"
    result = run_with(tmp_path, tripwire, text.replace("x-base", "group"), "--dry-run")
    assert "duplicate" not in result.stderr


def test_shared_aliases_of_a_sane_size_still_work(tmp_path, tripwire):
    text = GOOD + ("overrides:\n  containerOverrides:\n    - name: app\n      environment: &env\n"
                   "        - {name: A, value: '1'}\n    - name: sidecar\n      environment: *env\n")
    result = run_with(tmp_path, tripwire, text, "--dry-run")
    assert result.code == 0, result
    overrides = yaml.safe_load(result.stdout)["overrides"]["containerOverrides"]
    assert overrides[0]["environment"] == overrides[1]["environment"] == [{"name": "A", "value": "1"}]


@pytest.mark.parametrize("text, fragment", [
    (GOOD + "group: " + "x" * 2_000_000 + "\n", None),  # valid: --dry-run echoes it as data, not as an error
    (GOOD + "overrides:\n  containerOverrides:\n    - name: app\n      environment:\n        - name: N\n"
     "          value: ['" + "x" * 2_000_000 + "']\n", "environment[0].value must be str, not list"),
    (GOOD + "startedBy: '" + "y" * 1_000_000 + "'\n", "startedBy 'yyy"),
    (GOOD + "overrides:\n  ? " + "z" * 1_000_000 + "\n  : 1\n", "unknown key 'zzz"),
], ids=["long-valid-value", "long-wrong-type", "long-started-by", "long-unknown-key"])
def test_errors_echo_a_cut_value_not_a_whole_one(tmp_path, tripwire, text, fragment):
    result = run_with(tmp_path, tripwire, text, "--dry-run")
    if fragment is None:
        assert result.code == 0
        return
    line = assert_one_line_error(result, 2, fragment, "characters)")
    assert len(line) < 1000


@pytest.mark.parametrize("command", [
    ["run", "-f", "run-task.yaml", "--job-key"],
    ["stop", "--cluster", "batch", "--job-key"],
])
def test_job_key_with_bytes_that_are_not_utf8_is_bad_input(tmp_path, tripwire, command):
    (tmp_path / "run-task.yaml").write_text(GOOD)
    argv = [os.fsencode(part) for part in ecsbatch_command() + command] + [b"nightly-\xff\xfe-2026"]
    done = subprocess.run(argv, env=offline_env(tripwire), cwd=tmp_path, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "--job-key" in stderr and "not UTF-8" in stderr
    assert tripwire.connections == 0


@pytest.mark.parametrize("option", [b"-e", b"--var"])
def test_env_and_var_values_with_bytes_that_are_not_utf8_are_bad_input(tmp_path, tripwire, option):
    (tmp_path / "run-task.yaml").write_text(GOOD)
    argv = [os.fsencode(part) for part in ecsbatch_command() + ["run", "-f", "run-task.yaml"]] + \
        [option, b"NAME=caf\xe9"]
    done = subprocess.run(argv, env=offline_env(tripwire), cwd=tmp_path, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and stderr.count("\n") == 1, stderr
    assert "'NAME' holds bytes that are not UTF-8 text (at character 9)" in stderr
    assert tripwire.connections == 0


@pytest.mark.parametrize("command", [
    ["status", "--cluster", ""],
    ["stop", "--cluster", "", "--started-by", "nightly"],
    ["wait", "--cluster", "", "0123456789abcdef"],
    ["logs", "--cluster", "", "0123456789abcdef"],
    ["stop", "--started-by", "nightly", "--timeout", ""],
    ["stop", "--started-by", "nightly", "--poll-interval", "nan"],
    ["logs", "--poll-interval", "inf", "0123456789abcdef"],
    ["wait", "--timeout", "", "0123456789abcdef"],
])
def test_every_command_refuses_an_empty_cluster_and_bad_numbers(tripwire, command):
    result = run_cli(command, offline_env(tripwire))
    assert_one_line_error(result, 2, "Invalid value")
    assert tripwire.connections == 0


def test_logs_has_no_f_because_f_is_file_elsewhere(tripwire):
    result = run_cli(["logs", "-f", "0123456789abcdef"], offline_env(tripwire))
    assert_one_line_error(result, 2, "No such option", "-f")
    assert tripwire.connections == 0


# ---- register --pin: checked before anything is registered --------------------------------------------


def unprivileged(command):
    """Root ignores file modes; drop every capability so that a read-only file is read-only."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes cannot be tested")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all"] + command


@pytest.fixture
def shipped(tmp_path):
    for name in ("run-task.yaml", "register-task.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def register_offline(project, tripwire, *args):
    command = unprivileged(ecsbatch_command() + ["register", "--tag", "1a2b3c4"] + list(args))
    done = subprocess.run(command, env=offline_env(tripwire, **REGISTER_VARIABLES), cwd=project, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    from conftest import Result

    return Result(done.returncode, done.stdout, done.stderr)


def test_pin_into_a_read_only_file_fails_before_registering(shipped, tripwire):
    (shipped / "run-task.yaml").chmod(0o444)
    result = register_offline(shipped, tripwire, "--pin", "run-task.yaml")
    assert_one_line_error(result, 2, "--pin file run-task.yaml is read-only")
    assert tripwire.connections == 0


def test_pin_into_a_read_only_directory_fails_before_registering(shipped, tripwire):
    pinned = shipped / "ro"
    pinned.mkdir()
    shutil.copy(shipped / "run-task.yaml", pinned / "run-task.yaml")
    pinned.chmod(0o555)
    try:
        result = register_offline(shipped, tripwire, "--pin", "ro/run-task.yaml")
    finally:
        pinned.chmod(0o755)
    assert_one_line_error(result, 2, "--pin file ro/run-task.yaml", "cannot write in its directory")
    assert tripwire.connections == 0
    assert sorted(os.listdir(pinned)) == ["run-task.yaml"]


@pytest.mark.parametrize("text, fragment", [
    ("taskDefinition: a\ntaskDefinition: b\n", "duplicate key 'taskDefinition'"),
    ("taskDefinition: x\nother: " + "[" * 300 + "]" * 300 + "\n", "nested deeper than 64 levels"),
    (ALIAS_BOMB + "taskDefinition: x\n", "more than 100000 values"),
], ids=["duplicate", "deep", "alias-bomb"])
def test_pin_reads_its_file_with_the_same_careful_loader(shipped, tripwire, text, fragment):
    (shipped / "pinned.yaml").write_text(text)
    result = register_offline(shipped, tripwire, "--pin", "pinned.yaml")
    assert_one_line_error(result, 2, "pinned.yaml", fragment)
    assert tripwire.connections == 0


def test_pin_follows_a_symlink_and_pins_its_target(job, tmp_path):
    from test_register import VARIABLES

    for name in ("run-task.yaml", "register-task.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    release = tmp_path / "releases" / "r1"
    release.mkdir(parents=True)
    (tmp_path / "run-task.yaml").rename(release / "run-task.yaml")
    (release / "run-task.yaml").chmod(0o640)
    (tmp_path / "run-task.yaml").symlink_to(release / "run-task.yaml")
    job.env.update(VARIABLES)
    result = run_cli(["register", "--tag", "1a2b3c4", "--pin", "run-task.yaml"], job.env, cwd=tmp_path)
    assert result.code == 0, result
    assert (tmp_path / "run-task.yaml").is_symlink()
    assert f"taskDefinition: {job.family}:2" in (release / "run-task.yaml").read_text()
    assert stat.S_IMODE((release / "run-task.yaml").stat().st_mode) == 0o640
    assert sorted(os.listdir(release)) == ["run-task.yaml"]


def test_the_temporary_file_is_exclusive_unguessable_and_has_its_final_mode_at_once(tmp_path):
    target = tmp_path / "run-task.yaml"
    target.write_text("taskDefinition: x\n")
    old = os.umask(0o077)
    try:
        first, first_name = ecsbatch.create_beside(str(target), 0o644)
        second, second_name = ecsbatch.create_beside(str(target), 0o644)
    finally:
        os.umask(old)
    os.close(first)
    os.close(second)
    assert first_name != second_name and os.path.dirname(first_name) == str(tmp_path)
    assert str(os.getpid()) not in os.path.basename(first_name)
    assert stat.S_IMODE(os.lstat(first_name).st_mode) == 0o644  # not the umask's 0600, no chmod after writing


def test_the_temporary_file_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    import secrets

    target, victim = tmp_path / "run-task.yaml", tmp_path / "victim"
    target.write_text("taskDefinition: x\n")
    victim.write_text("keep me\n")
    names = iter(["planted", "free"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".run-task.yaml.ecsbatch-planted.tmp").symlink_to(victim)
    ecsbatch.write_atomically(str(target), "taskDefinition: y\n")
    assert victim.read_text() == "keep me\n"
    assert target.read_text() == "taskDefinition: y\n" and not target.is_symlink()


# ---- the command line itself -----------------------------------------------------------------------------


def test_bare_ecsbatch_prints_help_on_stderr_and_exits_2(tripwire):
    result = run_cli([], offline_env(tripwire))
    assert result.code == 2, result
    assert result.stdout == ""
    assert "Usage: ecsbatch" in result.stderr and "Commands:" in result.stderr and "run" in result.stderr
    assert "error" not in result.stderr and "Traceback" not in result.stderr


def test_help_still_exits_0_on_stdout():
    result = run_cli(["--help"], {})
    assert result.code == 0 and "Usage: ecsbatch" in result.stdout


def test_the_shipped_files_validate_with_the_example_variables():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ECS_", "TASK_", "SUBNET_", "STAGE"))}
    result = run_cli(["validate", "--var-file", "examples/variables.env", "--tag", "1a2b3c4"], env, cwd=REPO)
    assert result.code == 0, result
    assert result.stderr.count("valid ") == 2


def test_var_wins_over_var_file_and_var_file_over_the_environment(tmp_path, tripwire):
    (tmp_path / "vars.env").write_text("# a comment\n\nexport CLUSTER_NAME=from-file\nGROUP=a=b \"c\"\n")
    (tmp_path / "run-task.yaml").write_text(GOOD.replace("batch", "${CLUSTER_NAME}") + "group: ${GROUP}\n")
    env = offline_env(tripwire, CLUSTER_NAME="from-env", GROUP="from-env")
    run = ["run", "-f", "run-task.yaml", "--dry-run", "--var-file", "vars.env"]
    from_file = yaml.safe_load(run_cli(run, env, cwd=tmp_path).stdout)
    assert from_file["cluster"] == "from-file" and from_file["group"] == 'a=b "c"'
    from_var = yaml.safe_load(run_cli(run + ["--var", "CLUSTER_NAME=from-var"], env, cwd=tmp_path).stdout)
    assert from_var["cluster"] == "from-var"


def test_a_bad_var_file_line_names_the_file_and_line(tmp_path, tripwire):
    (tmp_path / "vars.env").write_text("A=1\nnot a pair\n")
    result = run_cli(["validate", "--var-file", "vars.env"], offline_env(tripwire), cwd=tmp_path)
    assert_one_line_error(result, 2, "vars.env:2: expected NAME=VALUE")


def test_region_wording_agrees_everywhere(tmp_path, tripwire):
    (tmp_path / "run-task.yaml").write_text(GOOD)
    env = offline_env(tripwire)
    del env["AWS_REGION"]
    result = run_cli(["run", "-f", "run-task.yaml"], env, cwd=tmp_path)
    line = assert_one_line_error(result, 125, "no AWS region", "--region", "AWS_REGION", "AWS_DEFAULT_REGION",
                                 "profile")
    help_text = run_cli(["run", "--help"], {}).stdout
    assert "AWS_REGION, else AWS_DEFAULT_REGION, else the profile" in " ".join(help_text.split())
    readme = (REPO / "README.md").read_text()
    assert "`--region`, then `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the profile's `region`" in readme
    assert "| `no AWS region: " in readme
    assert line.split("error: ", 1)[1].split(":")[0] == "no AWS region"


def test_aws_region_wins_over_aws_default_region(tmp_path, tripwire):
    (tmp_path / "run-task.yaml").write_text(GOOD)
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    env = offline_env(tripwire, AWS_REGION="ap-northeast-1", AWS_DEFAULT_REGION="us-east-1",
                      AWS_CONFIG_FILE=str(config), AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="x" * 40)
    code = ("import ecsbatch; print(ecsbatch.make_client('ecs', None, None).meta.region_name); "
            "import os; del os.environ['AWS_REGION']; "
            "print(ecsbatch.make_client('ecs', None, None).meta.region_name)")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == ["ap-northeast-1", "us-east-1"], done.stderr


def test_aws_max_attempts_counts_every_attempt_as_the_aws_cli_does(tripwire):
    env = offline_env(tripwire, AWS_MAX_ATTEMPTS="3", AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
                      AWS_SECRET_ACCESS_KEY="x" * 40)
    result = run_cli(["status", "--cluster", "batch"], env)
    assert result.code == 125, result
    assert tripwire.count("ListTasks") == 3


def test_a_failing_credential_process_is_a_whole_sentence(tmp_path, tripwire):
    script = tmp_path / "creds.sh"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    talking = tmp_path / "talking.sh"
    talking.write_text("#!/bin/sh\necho 'token expired: run sso login' >&2\nexit 1\n")
    talking.chmod(0o755)
    for process, said in ((script, "it failed without saying why"), (talking, "token expired: run sso login")):
        config = tmp_path / "config"
        config.write_text(f"[default]\nregion = ap-northeast-1\ncredential_process = {process}\n")
        env = offline_env(tripwire, AWS_CONFIG_FILE=str(config))
        del env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        result = run_cli(["status", "--cluster", "batch"], env)
        line = assert_one_line_error(result, 125, "credential_process", said, "run it by hand")
        assert not line.rstrip().endswith(":")


# ---- pure functions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("abc", "'abc'"),
    ("a\x00b\nc", "'a\\x00b\\nc'"),
    ("\udcff", "'\\udcff'"),
    ("日本", "'日本'"),
    (3, "3"),
    ("x" * 200, "'" + "x" * 120 + "'... (200 characters)"),
    (["y"] * 100, str(["y"] * 100)[:120] + "... (500 characters)"),
])
def test_shown(value, expected):
    assert ecsbatch.shown(value) == expected


@pytest.mark.parametrize("text, expected", [
    ("a\nb\tc", "a b c"),
    ("a\x00b", "a\\x00b"),
    ("x" * 600, "x" * 480 + "... (600 characters)"),
])
def test_clipped(text, expected):
    assert ecsbatch.clipped(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("A=1\n", {"A": "1"}),
    ("# c\n\n  B = x\n", None),
    ("export C=a=b\nC=2\n", {"C": "2"}),
    ("D='q'\n", {"D": "'q'"}),
    ("E=\n", {"E": ""}),
])
def test_parse_variables_file(text, expected):
    if expected is None:
        with pytest.raises(ecsbatch.InputError):
            ecsbatch.parse_variables_file(text, "f")
    else:
        assert ecsbatch.parse_variables_file(text, "f") == expected


@pytest.mark.parametrize("request_, problems", [
    ({"taskDefinition": "x", "count": True}, ["count must be a number, not bool True"]),
    ({"taskDefinition": "x", "count": 1}, []),
    ({"taskDefinition": "x", "overrides": {"containerOverrides": [{"name": "a", "cpu": False}]}},
     ["overrides.containerOverrides[0].cpu must be a number, not bool False"]),
    ({"taskDefinition": "x", "enableExecuteCommand": True}, []),
])
def test_bools_where_numbers_belong(request_, problems):
    found = [p for p in ecsbatch.shape_problems("RunTask", request_) if "bool" in p]
    assert [p.split(" (")[0] for p in found] == problems
