#!/usr/bin/env bash
# Brings up the real components a local Manifold farm (and its system tests) run against, on this
# machine only, all on loopback:
#   * Docker daemon #1 (the default /var/run/docker.sock; started if none answers): the native amd64 "machine";
#   * Docker daemon #2 at $MANIFOLD_ARM_DOCKER (unix socket), with its own bridge: the arm64 "machine",
#     whose RUN steps execute under qemu-user-static (our stand-in for an ARM server or Mac in tests);
#   * Docker daemons #3 and #4: the same amd64 and arm64 machines with the containerd image store
#     (Docker Desktop's and Docker Engine 29's default), so the build path is tested in both modes;
#   * Docker daemon #5 at $MANIFOLD_TEST_PRUNE_DOCKER: amd64, graphdriver, for the tests that prune
#     the build cache (the other four keep theirs: tests assert CACHED steps on them);
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
CD_AMD64_DIR=${MANIFOLD_CD_AMD64_DIR:-/var/tmp/md3}
CD_ARM64_DIR=${MANIFOLD_CD_ARM64_DIR:-/var/tmp/md4}
PRUNE_DIR=${MANIFOLD_PRUNE_DIR:-/var/tmp/md5}
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

# --- Docker daemons ---------------------------------------------------------------------------------
# start_daemon NAME SOCKET_DIR BRIDGE CIDR STORE: a daemon of its own (data, exec root, bridge), with
# STORE = graphdriver (overlay2) or containerd (the containerd image store, Docker Desktop's default).
start_daemon() {
  local name=$1 dir=$2 bridge=$3 cidr=$4 store=$5
  local sock=$dir/docker.sock
  if docker -H "unix://$sock" info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd $name ($store image store) at $sock"
  mkdir -p "$dir"
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge && ip addr add "$cidr" dev "$bridge" && ip link set "$bridge" up
  fi
  local snapshotter=false
  [ "$store" = containerd ] && snapshotter=true
  printf '{"features": {"containerd-snapshotter": %s}}\n' "$snapshotter" >"$dir/daemon.json"
  nohup dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/x" \
    --pidfile "$dir/pid" -H "unix://$sock" --bridge="$bridge" --iptables=false --ip-masq=false \
    >"$STATE/dockerd-$name.log" 2>&1 &
  wait_for 90 "dockerd $name" docker -H "unix://$sock" info
}

# #1, the default socket: the native amd64 "machine", graphdriver. Started only where none answers.
if ! docker -H unix:///var/run/docker.sock info >/dev/null 2>&1; then
  log "starting dockerd (default socket, graphdriver image store)"
  if ! ip link show docker0 >/dev/null 2>&1; then
    ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up
  fi
  nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  wait_for 90 "dockerd" docker -H unix:///var/run/docker.sock info
fi

# --- QEMU binfmt for arm64 -------------------------------------------------------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
fi

# #2: the arm64 "machine" (RUN steps under QEMU), graphdriver.
start_daemon arm64 "$ARM_DIR" br-m1 172.31.0.1/16 graphdriver
# #3 and #4: the same two machines with the containerd image store.
start_daemon cd-amd64 "$CD_AMD64_DIR" br-m3 172.30.0.1/16 containerd
start_daemon cd-arm64 "$CD_ARM64_DIR" br-m4 172.29.0.1/16 containerd
# #5: an amd64 machine whose build cache the prune tests may empty.
start_daemon prune "$PRUNE_DIR" br-m5 172.28.0.1/16 graphdriver

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
export MANIFOLD_TEST_CD_AMD64_DOCKER=unix://$CD_AMD64_DIR/docker.sock
export MANIFOLD_TEST_CD_ARM64_DOCKER=unix://$CD_ARM64_DIR/docker.sock
export MANIFOLD_TEST_PRUNE_DOCKER=unix://$PRUNE_DIR/docker.sock
EOF
