"""--debug never prints a secret: credentials, signatures, or environment values in any body."""

from __future__ import annotations

import re

import pytest

import ecsbatch
from conftest import APP, SIDECAR, Plan

ACCESS_KEY = "ASIAQWERTYUIOPASDFGH"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaDmFwLW5vcnRoZWFzdC0xIkcwRQIhAOExampleToken+abc="
SIGNATURE = re.compile(r"(?i)signature\s*[=:]\s*[0-9a-f]{64}")


def test_debug_prints_no_credential_signature_or_environment_value(job):
    job.register([dict(APP, environment=[{"name": "DB_PASSWORD", "value": "definition-secret-4711"}],
                       secrets=[{"name": "API_KEY", "valueFrom": "arn:aws:ssm:ap-northeast-1:123456789012:parameter/k"}]),
                  SIDECAR])
    env = dict(job.env, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_SESSION_TOKEN=SESSION_TOKEN)
    result = job.run("--debug", "-e", "SECRET=cli-secret-0815", "-e", "OTHER=with\nnewline-secret",
                     plan=Plan(running=0.5, exit_code=0), env=env)
    assert result.code == 0, result.stderr[-3000:]
    log = result.stderr
    for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, "cli-secret-0815", "newline-secret",
                   "definition-secret-4711"):
        assert secret not in log, secret
    assert not SIGNATURE.search(log)
    assert not re.search(r"(?i)x-amz-security-token(?:': b'|:)(?!<redacted>)", log)
    # Still a useful wire log: the operations, the names, the ARNs and the redaction marks.
    for fragment in ("RunTask", "DescribeTasks", "DescribeTaskDefinition", '"name": "SECRET"', "DB_PASSWORD",
                     "arn:aws:ssm:ap-northeast-1:123456789012:parameter/k", "<redacted>", "Response body"):
        assert fragment in log, fragment


@pytest.mark.parametrize("text, hidden, kept", [
    ("{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/ap-northeast-1/ecs/aws4_request, "
     "SignedHeaders=host, Signature=" + "a" * 64 + "', 'X-Amz-Security-Token': b'TOKEN123'}",
     ["AKIDEXAMPLE", "a" * 64, "TOKEN123"], ["Authorization", "X-Amz-Security-Token"]),
    ("CanonicalRequest:\nPOST\n/\n\nhost:ecs\nx-amz-security-token:TOKEN123\n\nhost;x-amz-security-token\n" + "b" * 64,
     ["TOKEN123"], ["x-amz-security-token:<redacted>", "b" * 64]),
    ("Signature:\n" + "c" * 64, ["c" * 64], ["Signature:"]),
    ("https://x/?X-Amz-Credential=AKID%2F2026&X-Amz-Signature=" + "d" * 64 + "&X-Amz-Security-Token=T0K",
     ["AKID%2F2026", "d" * 64, "T0K"], ["X-Amz-Signature="]),
    ("found key AKIAIOSFODNN7EXAMPLE in env", ["AKIAIOSFODNN7EXAMPLE"], ["found key"]),
])
def test_redact_debug_text(text, hidden, kept):
    redacted = ecsbatch.redact_debug_text(text)
    for value in hidden:
        assert value not in redacted
    for value in kept:
        assert value in redacted


def test_redact_body_hides_environment_values_and_keeps_the_rest():
    body = (b'{"overrides": {"containerOverrides": [{"name": "app", "environment": [{"name": "A", "value": "s1"}]}]},'
            b' "tags": [{"key": "k", "value": "v"}], "containerDefinitions": [{"environment": [{"name": "B", '
            b'"value": "s2"}], "secrets": [{"name": "C", "valueFrom": "arn:x"}]}]}')
    redacted = ecsbatch.redact_body(body)
    assert isinstance(redacted, bytes)
    assert b"s1" not in redacted and b"s2" not in redacted
    for kept in (b'"name": "A"', b'"value": "v"', b"arn:x", b'"name": "B"'):
        assert kept in redacted
    assert ecsbatch.redact_body(b"not json {") == b"not json {"
    assert ecsbatch.redact_body(None) is None


def test_known_secrets_are_replaced_wherever_they_appear():
    assert ecsbatch.redact_debug_text("x=supersecretvalue;", {"supersecretvalue", ""}) == "x=<redacted>;"
