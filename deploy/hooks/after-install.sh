#!/usr/bin/env bash
# CodeDeploy AfterInstall: install the staged release into a new release directory, check it, and
# only then switch the `current` symlink to it, atomically (a rename over the old link).
# - The server's Python must be the one the release was built for (release.json), else nothing
#   is installed and one line names both versions.
# - Everything is installed offline, from the release's wheelhouse, held to the lock's hashes.
# - A job started earlier keeps running on its own release: nothing in it is changed.
# - A failed install removes only the directory this run created; `current` is untouched.
# - Pruning keeps current, the previous release, the last ECSBATCH_KEEP_RELEASES (default 5), and
#   every release that a running process still uses.
# shellcheck source=deploy/hooks/common.sh
. "$(dirname "$0")/common.sh"
python="${ECSBATCH_PYTHON:-python3}"
keep="${ECSBATCH_KEEP_RELEASES:-5}"
staging="$root/staging"
[ -f "$staging/release.json" ] || die "$staging holds no release.json: nothing to install"

command -v "$python" > /dev/null || die "no $python on this server: install Python, or set ECSBATCH_PYTHON"
read -r want have < <("$python" -c '
import json, sys
want = json.load(open(sys.argv[1]))["python"]
print(want, "%d.%d.%d" % sys.version_info[:3])' "$staging/release.json")
if [ "${have%.*}" != "$want" ]; then
  die "this release was built for Python $want, but the server's $python is Python $have: build with BATCH_SERVER_PYTHON=${have%.*}, or set ECSBATCH_PYTHON to a Python $want"
fi

release=""
cleanup() {
  if [ -n "$release" ]; then
    rm -rf "$release"
    echo "ecsbatch $event ($ECSBATCH_APPLICATION): install failed; current is unchanged" >&2
  fi
}
trap cleanup EXIT
# A new directory every time (mktemp -d fails rather than reuse one): a colliding name can never
# make this run delete a directory that it did not create.
release="$(mktemp -d "$root/releases/$(date -u +%Y%m%dT%H%M%SZ)-${DEPLOYMENT_ID:-manual}.XXXXXX")"
release_id="${release##*/}"
cp -R "$staging/." "$release/"
# Created at its final path: the scripts' shebangs name this release, never `current`.
"$python" -m venv "$release/venv"
pip=("$release/venv/bin/python" -m pip --disable-pip-version-check --no-cache-dir)
"${pip[@]}" install --quiet --no-index --no-deps --require-hashes --find-links "$release/wheelhouse" \
  -r "$release/requirements.txt"
"${pip[@]}" install --quiet --no-index --no-deps "$release"/wheelhouse/ecsbatch-*.whl
"${pip[@]}" check > /dev/null
# ecsbatch's own console script in place of pip's (see console-script.py). Where a shebang
# cannot name the venv's python (a space, a relative path, over the 127 bytes that older
# kernels read: bytes, whatever the locale), pip wrote a /bin/sh wrapper instead: that one stays.
script="$release/venv/bin/ecsbatch"
if [[ "$release" == /* && "$release" != *[[:space:]]* ]] && (( $(printf %s "$release" | wc -c) + 18 <= 127 )); then
  { printf '#!%s\n' "$release/venv/bin/python"; cat "$hooks/console-script.py"; } > "$script.new"
  chmod 755 "$script.new"
  mv -f "$script.new" "$script"
fi
sed "s|^root=.*|root=$(printf '%q' "$root")|" "$release/start-ECS.sh" > "$release/start-ECS.sh.new"
mv -f "$release/start-ECS.sh.new" "$release/start-ECS.sh"
# Explicit modes, whatever the agent's umask and the archive's: readable by every user, and
# writable by none but the owner.
chmod -R u+rwX,go+rX,go-w "$release"
chmod 755 "$release/start-ECS.sh"
"$release/venv/bin/ecsbatch" --version > /dev/null
"$release/venv/bin/ecsbatch" validate "$release/run-task.yaml"

if [ -n "${ECSBATCH_SHIM_PATH:-}" ]; then
  shim="$prefix$ECSBATCH_SHIM_PATH"
  mkdir -p "$(dirname "$shim")"
  cp "$release/start-ECS.sh" "$shim.ecsbatch-new"
  chmod 755 "$shim.ecsbatch-new"
  mv -f "$shim.ecsbatch-new" "$shim"
  say "start-ECS.sh shim at $ECSBATCH_SHIM_PATH"
fi

previous="$(readlink "$root/current" || true)"
ln -sfn "releases/$release_id" "$root/current.next"
mv -Tf "$root/current.next" "$root/current"
release=""
say "current -> releases/$release_id"

# Only directories with this hook's naming and a release.json are ever pruned.
mapfile -t candidates < <(find "$root/releases" -mindepth 1 -maxdepth 1 -type d \
  -regextype posix-extended -regex '.*/[0-9]{8}T[0-9]{6}Z-[^/]+\.[A-Za-z0-9]{6}' | sort | head -n "-$keep")
old=()
for dir in "${candidates[@]}"; do
  case "releases/${dir##*/}" in "releases/$release_id" | "$previous") continue ;; esac
  [ -f "$dir/release.json" ] && old+=("$dir")
done
if [ "${#old[@]}" -gt 0 ]; then
  mapfile -t in_use < <("$python" "$hooks/releases-in-use.py" "${old[@]}")
  for dir in "${old[@]}"; do
    if printf '%s\n' "${in_use[@]}" | grep -qxF -- "$dir"; then
      say "kept old release ${dir##*/}: a running process uses it, or that cannot be known"
    else
      rm -rf "$dir"
      say "removed old release ${dir##*/}"
    fi
  done
fi
