#!/usr/bin/env bash
# CodeDeploy BeforeInstall: make this application's install root, and an empty staging directory,
# so that the files CodeDeploy copies next are exactly this revision's.
# shellcheck source=deploy/hooks/common.sh
. "$(dirname "$0")/common.sh"
if [ -n "${APPLICATION_NAME:-}" ] && [ "$APPLICATION_NAME" != "$ECSBATCH_APPLICATION" ]; then
  say "CodeDeploy application $APPLICATION_NAME; installing under $root, as the build named it"
fi
mkdir -p "$root/releases"
chmod 755 "$root" "$root/releases"
rm -rf "$root/staging"
mkdir -m 755 "$root/staging"
say "staging emptied for deployment ${DEPLOYMENT_ID:-manual}"
