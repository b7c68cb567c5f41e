#!/usr/bin/env bash
# The shell loop that ecsbatch replaces, as the original article describes it: aws CLI + jq, a new
# aws CLI process for every describe-tasks poll, the first container's exit code handed back.
# aws CLI v1 has no --cli-input-yaml, so the YAML is turned into JSON first. POLL sets the sleep.
# Usage: AWS_ENDPOINT_URL=... POLL=2 bench/start-ECS.sh run-task.yaml
set -u
yaml=${1:-run-task.yaml}
json=$(python3 -c 'import sys,json,yaml;print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' "$yaml") || exit 1
cluster=$(echo "$json" | jq -r .cluster)
out=$(aws ecs run-task --cli-input-json "$json") || exit 1
arn=$(echo "$out" | jq -r '.tasks[0].taskArn')
[ "$arn" != "null" ] || { echo "run-task failed: $out" >&2; exit 1; }
while true; do
  d=$(aws ecs describe-tasks --cluster "$cluster" --tasks "$arn")
  st=$(echo "$d" | jq -r '.tasks[0].lastStatus')
  [ "$st" = "STOPPED" ] && break
  sleep "${POLL:-5}"
done
code=$(echo "$d" | jq -r '.tasks[0].containers[0].exitCode')
echo "task $arn stopped, exit code $code"
exit "$code"
