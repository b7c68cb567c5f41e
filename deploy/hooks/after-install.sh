#!/usr/bin/env bash
# CodeDeploy AfterInstall: install the staged release into a new versioned directory, check it,
# and only then switch the `current` symlink to it, atomically (a rename over the old link).
# - A job started earlier keeps running on its own release: nothing in it is changed.
# - A failed install removes its half-made directory and leaves `current` untouched.
# - The last ECSBATCH_KEEP_RELEASES releases (default 5) stay for rollback.
# Everything is installed offline, from the release's wheelhouse.
set -euo pipefail
root="${ECSBATCH_ROOT:-/opt/ecsbatch}"
python="${ECSBATCH_PYTHON:-python3}"
keep="${ECSBATCH_KEEP_RELEASES:-5}"
staging="$root/staging"

release_id="$(date -u +%Y%m%dT%H%M%SZ)-${DEPLOYMENT_ID:-manual}"
release="$root/releases/$release_id"
installed=no
cleanup() {
  if [ "$installed" != yes ]; then
    rm -rf "$release"
    echo "ecsbatch AfterInstall: install failed; current is unchanged" >&2
  fi
}
trap cleanup EXIT

mkdir -p "$root/releases"
mkdir "$release"
cp -R "$staging/." "$release/"
# Created at its final path: the scripts' shebangs name this release, never `current`.
"$python" -m venv "$release/venv"
"$release/venv/bin/python" -m pip install --quiet --no-index --find-links "$release/wheelhouse" ecsbatch
"$release/venv/bin/ecsbatch" --version
"$release/venv/bin/ecsbatch" validate "$release/run-task.yaml"
installed=yes

ln -sfn "releases/$release_id" "$root/current.next"
mv -Tf "$root/current.next" "$root/current"
echo "ecsbatch AfterInstall: current -> releases/$release_id"

current_target="$(readlink -f "$root/current")"
find "$root/releases" -mindepth 1 -maxdepth 1 -type d | sort | head -n "-$keep" |
  while read -r old; do
    if [ "$(readlink -f "$old")" != "$current_target" ]; then
      rm -rf "$old"
      echo "ecsbatch AfterInstall: removed old release ${old##*/}"
    fi
  done
