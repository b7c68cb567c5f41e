#!/usr/bin/env bash
# CodeDeploy ValidateService: as the jobs' user (ECSBATCH_JOB_USER, default nobody), the installed
# ecsbatch starts, and the deployed run-task.yaml is a valid RunTask request. A release that only
# root can read fails here, in CodeDeploy, not at the next night's run.
# shellcheck source=deploy/hooks/common.sh
. "$(dirname "$0")/common.sh"
user="${ECSBATCH_JOB_USER:-nobody}"
ecsbatch="$root/current/venv/bin/ecsbatch"
cd /
as_user() {
  if [ "$(id -un)" = "$user" ]; then
    "$@"
  elif [ "$(id -u)" -eq 0 ]; then
    runuser -u "$user" -- "$@"
  else
    die "the hooks run as $(id -un), who cannot check as $user: run the agent as root, or set ECSBATCH_JOB_USER=$(id -un)"
  fi
}
as_user "$ecsbatch" --version
as_user "$ecsbatch" validate "$root/current/run-task.yaml"
say "$(readlink "$root/current") is live for deployment ${DEPLOYMENT_ID:-manual}, checked as $user"
