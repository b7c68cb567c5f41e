#!/usr/bin/env bash
# Assembles release_to_batch_server/ for CodeDeploy (the buildspec's last step):
#   appspec.yml        rendered for APPLICATION_NAME: the files go to /opt/ecsbatch/<application>/staging
#   deploy/hooks/      the hooks, and release.env naming the application and its install root
#   run-task.yaml      rendered and pinned here, then escaped so that `run` on the server gives back
#                      exactly this rendering (a `$${HOME}` in the repository stays `${HOME}`)
#   start-ECS.sh       the compatibility shim (see the README's cutover section)
#   requirements.txt   the lock for the server's Python and platform, with hashes
#   wheelhouse/        ecsbatch and exactly the locked wheels, so that the server installs offline
#   release.json       what was built: application, tag, commit, image digest, Python, platform
# It builds in a temporary directory and renames it into place as its last act: a failed build
# never leaves a half-assembled release for CodeBuild to upload.
#
# Usage: deploy/assemble-release.sh [OUTPUT_DIR]   (from the repository root, after
#        deploy/preflight.sh and `ecsbatch register --pin run-task.yaml`)
# Environment: APPLICATION_NAME, BATCH_SERVER_PYTHON (default 3.9), BATCH_SERVER_PLATFORM
#        (default manylinux2014_x86_64), TAG, IMAGE_REPOSITORY, IMAGE_DIGEST, and the variables
#        that run-task.yaml's placeholders name.
set -euo pipefail

out="${1:-release_to_batch_server}"
server_python="${BATCH_SERVER_PYTHON:-3.9}"
server_platform="${BATCH_SERVER_PLATFORM:-manylinux2014_x86_64}"
python="${PYTHON:-python3}"
build=.release-build
case "$server_platform" in
  *_x86_64) arch=x86_64 ;;
  *_aarch64) arch=aarch64 ;;
  *) echo "build: error: BATCH_SERVER_PLATFORM '$server_platform' is neither x86_64 nor aarch64" >&2; exit 1 ;;
esac
lock="deploy/locks/py${server_python}-${arch}.txt"
application="${APPLICATION_NAME:?set APPLICATION_NAME}"

mkdir -p "$build"
if ! compgen -G "$build/ecsbatch-*.whl" > /dev/null; then
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$build" .
fi
wheel="$(echo "$build"/ecsbatch-*.whl)"
"$python" deploy/release.py check-lock "$wheel" "$lock"

work="$(mktemp -d "${out%/}.partial.XXXXXX")"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

mkdir -p "$work/wheelhouse" "$work/deploy/hooks"
"$python" deploy/release.py render-appspec appspec.yml "$work/appspec.yml" "$application"
cp deploy/hooks/*.sh deploy/hooks/*.py "$work/deploy/hooks/"
printf 'ECSBATCH_APPLICATION=%q\nECSBATCH_INSTALL_ROOT=%q\n' "$application" "/opt/ecsbatch/$application" \
  > "$work/deploy/hooks/release.env"
cp deploy/start-ECS.sh "$work/start-ECS.sh"
cp "$lock" "$work/requirements.txt"

# Rendered once, here, with this pipeline's variables; escaped so that the server renders nothing.
ecsbatch run --dry-run -f run-task.yaml > "$build/run-task.rendered.yaml"
"$python" deploy/release.py escape-run-file "$build/run-task.rendered.yaml" "$work/run-task.yaml" \
  "# Rendered by the build for ${application}, tag ${TAG:-unknown}; edit run-task.yaml in the repository instead.
# Already final: every \${ is written \$\${, so \`ecsbatch run\` substitutes nothing.
"

# Exactly the locked files, for the server's Python and platform (never this machine's): pip
# evaluates markers against the interpreter running it, so the lock, resolved for the target,
# decides what is shipped, and --require-hashes holds pip to it.
cp "$wheel" "$work/wheelhouse/"
"$python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: --implementation cp \
  --python-version "$server_python" --platform "$server_platform" \
  --dest "$work/wheelhouse" -r "$lock"

"$python" - "$work/release.json" "$application" "$server_python" "$server_platform" <<'PY'
import datetime, json, os, sys
path, application, python, platform = sys.argv[1:]
repository, digest = os.environ.get("IMAGE_REPOSITORY", ""), os.environ.get("IMAGE_DIGEST", "")
release = {
    "application": application, "tag": os.environ.get("TAG", ""),
    "commit": os.environ.get("CODEBUILD_RESOLVED_SOURCE_VERSION", ""),
    "image": f"{repository}@{digest}" if repository and digest else "",
    "python": python, "platform": platform,
    "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
}
with open(path, "w", encoding="utf-8") as handle:
    json.dump(release, handle, indent=2)
    handle.write("\n")
PY

rm -rf "$out"
mv "$work" "$out"
trap - EXIT
echo "assembled $out: $(find "$out" -type f | wc -l) files, $(du -sh "$out" | cut -f1)" >&2
