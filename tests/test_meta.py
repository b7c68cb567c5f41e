"""Promises about the module itself: Python 3.9 syntax, a light start, the shipped files, packaging."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_cli


@pytest.mark.parametrize("path", ["ecsbatch.py", "localecs/__init__.py", "localecs/lifecycle.py", "localecs/proxy.py"])
def test_syntax_is_python_3_9(path):
    ast.parse((REPO / path).read_text(), filename=path, feature_version=(3, 9))


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"], ["register", "-h"]])
def test_version_and_help_do_not_import_boto3(args):
    done = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "ecsbatch.py")] + args,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {"boto3", "botocore"} & imported


def test_version_is_the_package_version():
    result = run_cli(["--version"], {})
    assert result.code == 0 and result.stdout.strip().startswith("ecsbatch ")


def test_every_command_has_an_example_in_its_help():
    import ecsbatch

    for name, command in ecsbatch.cli.commands.items():
        assert "Example:" in (command.help or ""), name


def test_module_reads_top_down_in_the_documented_order():
    text = (REPO / "ecsbatch.py").read_text()
    contents = text[:text.index('"""', 3)]
    listed = re.findall(r"^  (\d)\. (\w[\w ]*):", contents, re.M)
    assert [number for number, _ in listed] == [str(i) for i in range(1, len(listed) + 1)]
    headings = [re.search(rf"^# {number}\. ([\w ]+):", text, re.M) for number, _ in listed]
    assert all(headings), "every section in the table of contents has its heading"
    assert [h.group(1).lower() for h in headings] == [name.lower() for _, name in listed]
    positions = [h.start() for h in headings]
    assert positions == sorted(positions)
