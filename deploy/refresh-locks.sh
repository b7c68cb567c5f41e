#!/usr/bin/env bash
# Resolves ecsbatch's runtime dependencies for every supported batch-server target, with hashes,
# into deploy/locks/py<VERSION>-<ARCH>.txt. Run it after any change to pyproject.toml's
# `dependencies` (the build refuses a stale lock and says so), or to take newer upstream releases;
# then commit the locks. The build itself never resolves: it downloads exactly what a lock names.
#
# Usage: deploy/refresh-locks.sh   (from the repository root; needs uv, a dev dependency, and PyPI)
# Markers are evaluated for the target, not for this machine: boto3's and botocore's pins for
# Python 3.9 (urllib3 < 1.27, boto3 < 1.43, click < 8.2) land in the 3.9 locks only.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
uv="${UV:-$(command -v uv || echo "$(dirname "$("$python" -c 'import sys; print(sys.executable)')")/uv")}"
versions=(3.9 3.10 3.11 3.12 3.13)
architectures=(x86_64 aarch64)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work" .
wheel="$(echo "$work"/ecsbatch-*.whl)"
"$python" deploy/release.py requirements "$wheel" > "$work/requirements.in"

for version in "${versions[@]}"; do
  for arch in "${architectures[@]}"; do
    lock="deploy/locks/py${version}-${arch}.txt"
    "$uv" pip compile --quiet --no-header --no-annotate --generate-hashes --only-binary :all: \
      --python-version "$version" --python-platform "${arch}-manylinux_2_17" \
      --output-file "$lock.new" "$work/requirements.in"
    "$python" deploy/release.py stamp-lock "$wheel" "$lock.new" \
      "# ecsbatch's runtime dependencies for CPython ${version} on ${arch} manylinux2014, with hashes. Made by deploy/refresh-locks.sh; do not edit."
    mv "$lock.new" "$lock"
    echo "refreshed $lock"
  done
done
