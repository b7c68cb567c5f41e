#!/usr/bin/env bash
# start-ECS.sh, the compatibility shim for Hinemos jobs that still call the old script:
#   start-ECS.sh [RUN_TASK_YAML] [ecsbatch run options...]
# exec's this application's installed ecsbatch on RUN_TASK_YAML, or on the current release's
# run-task.yaml when none is given. The exit code, signals and output are ecsbatch's own.
# The old release's run-task.yaml is deleted by CodeDeploy on the first ecsbatch deploy: a
# missing file named run-task.yaml is taken to be that one, and the current release's is run.
# AfterInstall writes the application's install root into `root` when it installs this file.
root=/opt/ecsbatch/APPLICATION
release="$(readlink -f "$root/current")" || release=""
if [ -z "$release" ] || [ ! -x "$release/venv/bin/ecsbatch" ]; then
  echo "start-ECS.sh: error: no ecsbatch release is installed under $root: deploy one first" >&2
  exit 125
fi
run_file="$release/run-task.yaml"
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  run_file="$1"
  shift
fi
if [ ! -e "$run_file" ] && [ "${run_file##*/}" = run-task.yaml ]; then
  echo "start-ECS.sh: $run_file is gone; running $release/run-task.yaml" >&2
  run_file="$release/run-task.yaml"
fi
exec "$release/venv/bin/ecsbatch" run -f "$run_file" "$@"
