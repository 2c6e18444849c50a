#!/usr/bin/env bash
# One command from a clone to a multi-arch image on a local farm:
#   registry + Docker daemons (deploy/dev-env.sh), a coordinator, a native worker and, where QEMU
#   is available, an emulated arm64 worker; then builds examples/hello for linux/amd64,linux/arm64.
# The farm is secured as a real one is: a development CA (`manifold-coordinator dev-ca`) signs the
# coordinator's TLS certificate and each worker's client certificate, and the CLI uses an admin
# token (`manifold-coordinator issue-token`) kept in $RUN/cli.toml.
# Everything listens on 127.0.0.1. Processes stay up afterwards; `deploy/quickstart.sh stop` ends them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${MANIFOLD_QUICKSTART_DIR:-/var/tmp/manifold-quickstart}
mkdir -p "$RUN"

if [ "${1:-}" = stop ]; then
  for p in "$RUN"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; rm -f "$p"; done
  exit 0
fi

# What a fresh clone lacks is installed first (Debian's packages, via .ci/install; needs root).
missing=()
for c in dockerd docker-registry skopeo protoc etcd curl qemu-aarch64-static; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "quickstart: ${missing[*]} missing: installing Debian's packages (bash .ci/install)" >&2
  if [ "$(id -u)" = 0 ]; then bash .ci/install
  elif command -v sudo >/dev/null 2>&1; then sudo bash .ci/install
  else echo "quickstart: run \`bash .ci/install\` as root first" >&2; exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "quickstart: cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }

eval "$(bash deploy/dev-env.sh)"
PROFILE=${MANIFOLD_PROFILE:-release}   # MANIFOLD_PROFILE=debug skips the optimised build
if [ "$PROFILE" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi
BIN=target/$PROFILE
export MANIFOLD_COORDINATOR=https://127.0.0.1:7700
CERTS=$RUN/certs
if [ ! -f "$CERTS/worker-local-arm64-emulated.pem" ]; then
  "$BIN/manifold-coordinator" dev-ca --dir "$CERTS" --worker local-amd64 --worker local-arm64-emulated >/dev/null
fi
if [ ! -f "$RUN/coordinator.toml" ] || [ ! -f "$RUN/cli.toml" ]; then
  issued=$("$BIN/manifold-coordinator" issue-token --name quickstart --admin)
  printf '%s\n' "$issued" | sed -n '/^\[\[token\]\]/,$p' >"$RUN/coordinator.toml"
  umask 077
  printf 'coordinator = "%s"\nca_cert = "%s"\ntoken = "%s"\n' "$MANIFOLD_COORDINATOR" "$CERTS/ca.pem" \
    "$(printf '%s\n' "$issued" | sed -n 's/^token: //p')" >"$RUN/cli.toml"
  umask 022
fi
export MANIFOLD_CONFIG=$RUN/cli.toml
worker_tls() { # worker_tls NAME
  echo --ca-cert "$CERTS/ca.pem" --cert "$CERTS/worker-$1.pem" --key "$CERTS/worker-$1.key"
}

start() { # start NAME COMMAND...
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then return; fi
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

start coordinator "$BIN/manifold-coordinator" --listen 127.0.0.1:7700 --state-dir "$RUN/state" \
  --config "$RUN/coordinator.toml" --tls-cert "$CERTS/coordinator.pem" --tls-key "$CERTS/coordinator.key" \
  --client-ca "$CERTS/ca.pem"
sleep 1
# shellcheck disable=SC2046 # worker_tls prints flags
start worker-amd64 "$BIN/manifold-worker" --name local-amd64 --docker-host "$MANIFOLD_TEST_AMD64_DOCKER" \
  --cache-dir "$RUN/cache-amd64" $(worker_tls local-amd64)
platforms=linux/amd64
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  # shellcheck disable=SC2046
  start worker-arm64 "$BIN/manifold-worker" --name local-arm64-emulated --platform linux/arm64 \
    --docker-host "$MANIFOLD_TEST_ARM64_DOCKER" --cache-dir "$RUN/cache-arm64" $(worker_tls local-arm64-emulated)
  platforms=linux/amd64,linux/arm64
fi
for _ in $(seq 1 50); do
  "$BIN/manifold" workers 2>/dev/null | grep -q local-amd64 && break; sleep 0.2
done
"$BIN/manifold" workers
"$BIN/manifold" build -t "$MANIFOLD_TEST_REGISTRY/examples/hello:latest" --platform "$platforms" --arch-tags examples/hello
echo
echo "# the CLI's coordinator, CA and token: export MANIFOLD_CONFIG=$RUN/cli.toml"
echo "skopeo inspect --raw --tls-verify=false docker://$MANIFOLD_TEST_REGISTRY/examples/hello:latest"
skopeo inspect --raw --tls-verify=false "docker://$MANIFOLD_TEST_REGISTRY/examples/hello:latest"
