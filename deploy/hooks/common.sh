# shellcheck shell=bash
# Sourced by every hook. Sets umask 022 (the hooks' files must be readable by the jobs' user,
# whatever the agent's umask), reads release.env (written by the build) and the site's
# configuration, and defines `root`, `say` and `die`.
#
# The application is the build's APPLICATION_NAME, recorded in release.env: the appspec's
# destination was rendered from it, so it is the only name under which this release's files lie.
# CodeDeploy's own APPLICATION_NAME (the CodeDeploy application) is only reported.
#
# Site configuration, optional: /etc/ecsbatch/<application>.env, a bash file of assignments:
#   ECSBATCH_PYTHON=python3          the server's Python for the release's venv
#   ECSBATCH_JOB_USER=nobody         ValidateService runs ecsbatch as this user (the jobs' user)
#   ECSBATCH_SHIM_PATH=              also install the start-ECS.sh shim at this path
#   ECSBATCH_KEEP_RELEASES=5         releases kept besides current, the previous and any in use
# ECSBATCH_DEPLOY_PREFIX (empty on a server) is a directory under which the appspec's absolute
# paths lie, for rehearsals.
set -euo pipefail
umask 022
hooks="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
. "$hooks/release.env"
prefix="${ECSBATCH_DEPLOY_PREFIX:-}"
config="$prefix/etc/ecsbatch/$ECSBATCH_APPLICATION.env"
if [ -r "$config" ]; then
  # shellcheck source=/dev/null
  . "$config"
fi
# shellcheck disable=SC2034  # used by the hooks that source this file
root="$prefix$ECSBATCH_INSTALL_ROOT"
event="${LIFECYCLE_EVENT:-manual}"
say() { echo "ecsbatch $event ($ECSBATCH_APPLICATION): $*"; }
die() {
  echo "ecsbatch $event ($ECSBATCH_APPLICATION): error: $*" >&2
  exit 1
}
