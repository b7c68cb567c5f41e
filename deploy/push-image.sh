#!/usr/bin/env bash
# Prints the registry's manifest digest (sha256:…) of $IMAGE_REPOSITORY:$TAG, building and pushing
# the image only when ECR does not hold that tag yet. A build of a commit that an earlier pipeline
# already pushed (develop, then main) reuses that image: production runs the bits the test ran,
# and immutable tags never see a second push.
# The digest is ECR's imageDigest, the one ECS pulls by; never the local image id (docker's .Id,
# --iidfile), which no registry knows. Everything but the digest goes to stderr.
set -euo pipefail
image="$IMAGE_REPOSITORY:$TAG"
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT
registry_digest() {
  aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
    --image-ids "imageTag=$TAG" --query 'imageDetails[0].imageDigest' --output text 2>"$errors"
}

if digest="$(registry_digest)"; then
  echo "build: $image is already in ECR as $digest: reused, nothing built or pushed" >&2
else
  if ! grep -q ImageNotFoundException "$errors"; then
    cat "$errors" >&2
    echo "build: error: cannot tell whether ECR holds $image (above)" >&2
    exit 1
  fi
  docker build --tag "$image" "$IMAGE_CONTEXT" >&2
  docker push "$image" >&2
  digest="$(registry_digest)" || { cat "$errors" >&2; exit 1; }
fi
if ! [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "build: error: ECR gave no manifest digest for $image (got '$digest')" >&2
  exit 1
fi
echo "$digest"
