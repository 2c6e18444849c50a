#!/usr/bin/env bash
# Brings up the real components a local Manifold farm (and its system tests) run against, on this
# machine only, all on loopback:
#   * Docker daemon #1 (the default /var/run/docker.sock; started if none answers): the native amd64 "machine";
#   * Docker daemon #2 at $MANIFOLD_ARM_DOCKER (unix socket), with its own bridge: the arm64 "machine",
#     whose RUN steps execute under qemu-user-static (our stand-in for an ARM server or Mac in tests);
#   * QEMU binfmt for aarch64;
#   * the CNCF distribution registry (Debian's docker-registry) on 127.0.0.1:$MANIFOLD_REGISTRY_PORT;
#   * a multi-arch base image $REGISTRY/base/busybox:1 (linux/amd64 + linux/arm64), built from Debian's
#     static busybox packages, since no public registry is reachable.
# Idempotent: what already runs is left alone. Prints the environment to use as `export` lines.
set -euo pipefail

STATE=${MANIFOLD_DEV_DIR:-/var/tmp/manifold-dev}
REGISTRY_PORT=${MANIFOLD_REGISTRY_PORT:-5000}
REGISTRY=127.0.0.1:$REGISTRY_PORT
ARM_DIR=${MANIFOLD_ARM_DIR:-/var/tmp/md2}
ARM_SOCK=$ARM_DIR/docker.sock
mkdir -p "$STATE" "$ARM_DIR"

log() { echo "dev-env: $*" >&2; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out after ${secs}s waiting for $what"; return 1
}

# --- Docker daemon #1 ------------------------------------------------------------------------------
if ! docker -H unix:///var/run/docker.sock info >/dev/null 2>&1; then
  log "starting dockerd (default socket)"
  if ! ip link show docker0 >/dev/null 2>&1; then
    ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up
  fi
  nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  wait_for 60 "dockerd" docker -H unix:///var/run/docker.sock info
fi

# --- QEMU binfmt for arm64 -------------------------------------------------------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
fi

# --- Docker daemon #2 (arm64 under QEMU) -----------------------------------------------------------
if ! docker -H "unix://$ARM_SOCK" info >/dev/null 2>&1; then
  log "starting second dockerd at $ARM_SOCK"
  if ! ip link show br-m1 >/dev/null 2>&1; then
    ip link add br-m1 type bridge && ip addr add 172.31.0.1/16 dev br-m1 && ip link set br-m1 up
  fi
  nohup dockerd --data-root "$ARM_DIR/data" --exec-root "$ARM_DIR/x" --pidfile "$ARM_DIR/pid" \
    -H "unix://$ARM_SOCK" --bridge=br-m1 --iptables=false --ip-masq=false \
    >"$STATE/dockerd2.log" 2>&1 &
  wait_for 60 "second dockerd" docker -H "unix://$ARM_SOCK" info
fi

# --- Registry --------------------------------------------------------------------------------------
if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  log "starting docker-registry on $REGISTRY"
  mkdir -p "$STATE/registry"
  cat >"$STATE/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
  wait_for 30 "registry" curl -fsS "http://$REGISTRY/v2/"
fi

# --- Multi-arch base image -------------------------------------------------------------------------
BASE=$REGISTRY/base/busybox:1
if ! skopeo inspect --raw --tls-verify=false "docker://$BASE" 2>/dev/null | grep -q manifest.list; then
  log "making $BASE (linux/amd64 + linux/arm64) from Debian's busybox-static"
  work=$(mktemp -d)
  mkroot() { # mkroot BUSYBOX DIR
    mkdir -p "$2/bin" "$2/tmp" "$2/etc"
    cp "$1" "$2/bin/busybox"
    for app in sh echo cat uname ls mkdir cp rm sleep true false env test grep sed head tail wc printf date id touch dd sha256sum; do
      ln -sf busybox "$2/bin/$app"
    done
    tar -C "$2" -cf "$(dirname "$2")/rootfs.tar" .
    printf 'FROM scratch\nADD rootfs.tar /\nENV PATH=/bin\nCMD ["sh"]\n' >"$(dirname "$2")/Dockerfile"
  }
  mkdir -p "$work/amd64" "$work/arm64"
  mkroot /bin/busybox "$work/amd64/root"
  if [ ! -f "$STATE/busybox-arm64" ]; then
    (cd "$work" && apt-get download busybox-static:arm64 >/dev/null 2>&1 || { apt-get update -qq && apt-get download busybox-static:arm64; })
    dpkg-deb -x "$work"/busybox-static_*_arm64.deb "$work/deb"
    cp "$work/deb/bin/busybox" "$STATE/busybox-arm64"
  fi
  mkroot "$STATE/busybox-arm64" "$work/arm64/root"
  # Each base is built (classic builder, FROM scratch honours --platform) and pushed from the daemon
  # of its own architecture, then merged with the docker CLI's manifest commands.
  DOCKER_BUILDKIT=0 docker -H unix:///var/run/docker.sock build -q --platform linux/amd64 -t "$BASE-x86_64" "$work/amd64" >/dev/null
  docker -H unix:///var/run/docker.sock push -q "$BASE-x86_64" >/dev/null
  DOCKER_BUILDKIT=0 docker -H "unix://$ARM_SOCK" build -q --platform linux/arm64 -t "$BASE-aarch64" "$work/arm64" >/dev/null
  docker -H "unix://$ARM_SOCK" push -q "$BASE-aarch64" >/dev/null
  export DOCKER_CONFIG=$work/dockercfg
  mkdir -p "$DOCKER_CONFIG"
  docker manifest create --insecure "$BASE" "$BASE-x86_64" "$BASE-aarch64" >/dev/null
  docker manifest push --insecure --purge "$BASE" >/dev/null
  rm -rf "$work"
fi

cat <<EOF
export MANIFOLD_TEST_REGISTRY=$REGISTRY
export MANIFOLD_TEST_BASE_IMAGE=$BASE
export MANIFOLD_TEST_AMD64_DOCKER=unix:///var/run/docker.sock
export MANIFOLD_TEST_ARM64_DOCKER=unix://$ARM_SOCK
EOF
