#!/usr/bin/env bash
# Build the image, start it on a random-weight vit_t checkpoint, wait until Docker reports it
# healthy, check /health and a token-guarded call, then time `docker stop` (SIGTERM).
# Needs a Docker daemon and the network (base image, PyTorch CPU wheel). Run from anywhere:
#   docker/smoke-test.sh [IMAGE_TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-mobile-sam:smoke}"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
name="mobile-sam-smoke-$$"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"$python" -c "
import sys, torch
from mobile_sam.build import build_sam
torch.save(build_sam('vit_t').state_dict(), sys.argv[1])" "$work/vit_t.pt"
chmod -R a+rX "$work"

docker build -q -t "$tag" .
docker run -d --name "$name" -p 127.0.0.1::8000 -v "$work:/models:ro" \
    -e MOBILE_SAM_MODEL=/models/vit_t.pt -e MOBILE_SAM_TOKEN=smoke "$tag" >/dev/null
port="$(docker port "$name" 8000/tcp | head -n1 | sed 's/.*://')"

for _ in $(seq 120); do
    status="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
    [ "$status" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || { docker logs "$name"; exit 1; }
    sleep 2
done
[ "$status" = healthy ] || { echo "container not healthy: $status"; docker logs "$name"; exit 1; }

curl -fsS "http://127.0.0.1:$port/health" >/dev/null
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/images/x/embedding")"
[ "$code" = 401 ] || { echo "expected 401 without the token, got $code"; exit 1; }
[ "$(docker exec "$name" id -u)" != 0 ] || { echo "the server runs as root"; exit 1; }

start="$(date +%s)"
docker stop -t 10 "$name" >/dev/null
took=$(( $(date +%s) - start ))
[ "$took" -le 5 ] || { echo "docker stop took ${took} s (more than 5)"; exit 1; }
echo "docker smoke test: healthy, 401 without token, non-root, stopped in ${took} s"
