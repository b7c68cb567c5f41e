#!/usr/bin/env bash
# CodeDeploy BeforeInstall: empty the staging directory, so that the files CodeDeploy copies next
# are exactly this revision's.
set -euo pipefail
root="${ECSBATCH_ROOT:-/opt/ecsbatch}"
rm -rf "$root/staging"
mkdir -p "$root/staging" "$root/releases"
echo "ecsbatch ${LIFECYCLE_EVENT:-BeforeInstall}: staging emptied for deployment ${DEPLOYMENT_ID:-manual}"
