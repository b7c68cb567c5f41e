#!/usr/bin/env bash
# CodeDeploy ValidateService: the installed ecsbatch starts, and the deployed run-task.yaml is a
# valid RunTask request. A bad deploy fails here, in CodeDeploy, not at the next night's run.
set -euo pipefail
root="${ECSBATCH_ROOT:-/opt/ecsbatch}"
"$root/current/venv/bin/ecsbatch" --version
"$root/current/venv/bin/ecsbatch" validate "$root/current/run-task.yaml"
echo "ecsbatch ValidateService: $(readlink "$root/current") is live for deployment ${DEPLOYMENT_ID:-manual}"
