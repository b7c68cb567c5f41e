#!/usr/bin/env bash
# The build's checks before `docker build`: nothing is built or pushed when one fails.
# - every variable the build and the YAML files need is set and non-empty (STAGE="" is an error);
# - run-task.yaml and the digest-pinned register-task.yaml are valid requests;
# - the ecsbatch wheel builds, and the lock for the target still matches its dependencies.
# Leaves .release-build/{register-task.yaml,ecsbatch-*.whl} for the later steps.
set -euo pipefail
python="${PYTHON:-python3}"
build=.release-build
fail() { echo "build: error: $*" >&2; exit 1; }

[ "${#TAG}" -eq 7 ] || fail "CODEBUILD_RESOLVED_SOURCE_VERSION '${CODEBUILD_RESOLVED_SOURCE_VERSION:-}' gives no 7-character tag"
required=(APPLICATION_NAME AWS_ACCOUNT_ID AWS_REGION ECR_REPOSITORY BATCH_SERVER_PYTHON BATCH_SERVER_PLATFORM IMAGE_CONTEXT)
mapfile -t named < <("$python" deploy/release.py placeholders run-task.yaml register-task.yaml)
missing=()
for name in "${required[@]}" "${named[@]}"; do
  case "$name" in IMAGE_TAG | IMAGE_DIGEST) continue ;; esac
  [ -n "${!name:-}" ] || missing+=("$name")
done
[ "${#missing[@]}" -eq 0 ] || fail "set these build variables, each non-empty: ${missing[*]}"

rm -rf "$build" && mkdir -p "$build"
"$python" deploy/release.py render-appspec appspec.yml "$build/appspec.yml" "$APPLICATION_NAME"
"$python" deploy/release.py register-file register-task.yaml "$build/register-task.yaml"
ecsbatch validate run-task.yaml "$build/register-task.yaml" --tag "$TAG" \
  --var IMAGE_DIGEST="sha256:$(printf '0%.0s' {1..64})"

"$python" -m pip wheel --quiet --no-deps --wheel-dir "$build" .
case "$BATCH_SERVER_PLATFORM" in
  *_x86_64) arch=x86_64 ;;
  *_aarch64) arch=aarch64 ;;
  *) fail "BATCH_SERVER_PLATFORM '$BATCH_SERVER_PLATFORM' is neither an x86_64 nor an aarch64 manylinux platform" ;;
esac
"$python" deploy/release.py check-lock "$build"/ecsbatch-*.whl "deploy/locks/py${BATCH_SERVER_PYTHON}-${arch}.txt" ||
  fail "the lock does not fit this build (above)"
echo "build: preflight passed for $APPLICATION_NAME, tag $TAG, Python $BATCH_SERVER_PYTHON on $arch" >&2
