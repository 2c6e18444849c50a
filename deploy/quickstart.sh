#!/usr/bin/env bash
# One command from a clone to a multi-arch image on a local farm:
#   registry + Docker daemons (deploy/dev-env.sh), a coordinator, a native worker and, where QEMU
#   is available, an emulated arm64 worker; then builds examples/hello for linux/amd64,linux/arm64.
# Everything listens on 127.0.0.1. Processes stay up afterwards; `deploy/quickstart.sh stop` ends them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${MANIFOLD_QUICKSTART_DIR:-/var/tmp/manifold-quickstart}
mkdir -p "$RUN"

if [ "${1:-}" = stop ]; then
  for p in "$RUN"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; rm -f "$p"; done
  exit 0
fi

eval "$(bash deploy/dev-env.sh)"
PROFILE=${MANIFOLD_PROFILE:-release}   # MANIFOLD_PROFILE=debug skips the optimised build
if [ "$PROFILE" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi
BIN=target/$PROFILE
export MANIFOLD_COORDINATOR=http://127.0.0.1:7700

start() { # start NAME COMMAND...
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then return; fi
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

start coordinator "$BIN/manifold-coordinator" --listen 127.0.0.1:7700 --state-dir "$RUN/state"
sleep 1
start worker-amd64 "$BIN/manifold-worker" --name local-amd64 --docker-host "$MANIFOLD_TEST_AMD64_DOCKER" --cache-dir "$RUN/cache-amd64"
platforms=linux/amd64
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  start worker-arm64 "$BIN/manifold-worker" --name local-arm64-emulated --platform linux/arm64 \
    --docker-host "$MANIFOLD_TEST_ARM64_DOCKER" --cache-dir "$RUN/cache-arm64"
  platforms=linux/amd64,linux/arm64
fi
for _ in $(seq 1 50); do
  "$BIN/manifold" workers 2>/dev/null | grep -q local-amd64 && break; sleep 0.2
done
"$BIN/manifold" workers
"$BIN/manifold" build -t "$MANIFOLD_TEST_REGISTRY/examples/hello:latest" --platform "$platforms" --arch-tags examples/hello
echo
echo "skopeo inspect --raw --tls-verify=false docker://$MANIFOLD_TEST_REGISTRY/examples/hello:latest"
skopeo inspect --raw --tls-verify=false "docker://$MANIFOLD_TEST_REGISTRY/examples/hello:latest"
