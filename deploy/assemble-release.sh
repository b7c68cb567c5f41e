#!/usr/bin/env bash
# Assembles release_to_batch_server/ for CodeDeploy (the buildspec's last step):
#   appspec.yml, deploy/hooks/, run-task.yaml rendered and pinned, release.json, and a wheelhouse
#   of ecsbatch and its dependencies built for the batch server's Python and platform, so that
#   the server installs offline.
# It builds in a temporary directory and renames it into place as its last act: a failed build
# never leaves a half-assembled release for CodeBuild to upload.
#
# Usage: deploy/assemble-release.sh [OUTPUT_DIR]   (run from the repository root, after
#        `ecsbatch register --pin run-task.yaml`)
# Environment: BATCH_SERVER_PYTHON (default 3.9), BATCH_SERVER_PLATFORM (default
#        manylinux2014_x86_64), TAG (the image tag, recorded in release.json), and the
#        variables that run-task.yaml's placeholders name.
set -euo pipefail

out="${1:-release_to_batch_server}"
server_python="${BATCH_SERVER_PYTHON:-3.9}"
server_platform="${BATCH_SERVER_PLATFORM:-manylinux2014_x86_64}"
python="${PYTHON:-python3}"

work="$(mktemp -d "${out%/}.partial.XXXXXX")"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/wheelhouse" "$work/deploy/hooks"
cp appspec.yml "$work/"
cp deploy/hooks/*.sh "$work/deploy/hooks/"
# Rendered here, with this pipeline's variables, so that the batch server needs none of them.
{
  echo "# Rendered by the build for tag ${TAG:-unknown}; edit run-task.yaml in the repository instead."
  ecsbatch run --dry-run -f run-task.yaml
} > "$work/run-task.yaml"

# The server's Python may differ from the build's: PyYAML's compiled wheel must match the
# server's, so every dependency is fetched as a wheel for that Python and platform.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheelhouse" .
"$python" -m pip download --quiet --only-binary=:all: --implementation cp \
  --python-version "$server_python" --platform "$server_platform" \
  --dest "$work/wheelhouse" "$work"/wheelhouse/ecsbatch-*.whl

printf '{"tag": "%s", "commit": "%s", "python": "%s", "platform": "%s", "built_at": "%s"}\n' \
  "${TAG:-}" "${CODEBUILD_RESOLVED_SOURCE_VERSION:-}" "$server_python" "$server_platform" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$work/release.json"

rm -rf "$out"
mv "$work" "$out"
trap - EXIT
echo "assembled $out: $(find "$out" -type f | wc -l) files, $(du -sh "$out" | cut -f1)" >&2
