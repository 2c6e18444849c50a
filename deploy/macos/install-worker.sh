#!/bin/sh
# Installs (or upgrades) a Manifold worker on this Mac as a launchd agent of the logged-in user:
#
#   sh deploy/macos/install-worker.sh --coordinator https://build-coordinator.example:7700 \
#       --name mac-anna --ca-cert ca.pem --cert worker-mac-anna.pem --key worker-mac-anna.key \
#       [--binary ./manifold-worker] [--slots 1] [--docker-host unix://$HOME/.docker/run/docker.sock]
#
# Copies the binary, the launcher and the certificates to ~/Library/Application Support/Manifold,
# writes ~/Library/LaunchAgents/dev.manifold.worker.plist and loads it. The agent waits for Docker
# Desktop's socket before it starts the worker. An agent already running is drained first (SIGTERM:
# its running jobs finish, however long that takes), so an upgrade loses no job.
# --no-load writes the files without touching launchd (used by the tests, and to review them).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
label=dev.manifold.worker
prefix="$HOME/Library/Application Support/Manifold"
agents="$HOME/Library/LaunchAgents"
logs="$HOME/Library/Logs"
coordinator= name=$(hostname -s 2>/dev/null || hostname) slots=1 ca= cert= key= binary= load=yes
docker_host="unix://$HOME/.docker/run/docker.sock"
die() { echo "install-worker: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) coordinator=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --ca-cert) ca=$2; shift 2 ;;
    --cert) cert=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --docker-host) docker_host=$2; shift 2 ;;
    --no-load) load=no; shift ;;
    *) die "unknown argument \`$1\`: see the comment at the top of $0" ;;
  esac
done
[ -n "$coordinator" ] || die "--coordinator URL is required, e.g. https://build-coordinator.example:7700"
case "$slots" in ''|*[!0-9]*|0) die "--slots \`$slots\` is not a positive number" ;; esac
case "$name" in ''|*[!A-Za-z0-9._-]*) die "--name \`$name\` may hold only letters, digits, '.', '_' and '-'" ;; esac
for f in "$ca" "$cert" "$key"; do
  [ -n "$f" ] || die "--ca-cert, --cert and --key are required (\`manifold-coordinator dev-ca --worker $name\` makes them)"
  [ -r "$f" ] || die "cannot read \`$f\`"
done
if [ -z "$binary" ]; then
  binary=$(command -v manifold-worker 2>/dev/null || true)
  [ -n "$binary" ] || die "no manifold-worker on PATH: pass --binary PATH"
fi
[ -x "$binary" ] || die "--binary \`$binary\` is not an executable file"
# The plist is XML: refuse values that would need escaping rather than escape them.
for v in "$coordinator" "$docker_host" "$HOME"; do
  case "$v" in *[\<\>\&\"@|]*) die "\`$v\` holds one of < > & \" @ |, which the plist cannot take as is" ;; esac
done

if [ "$load" = yes ]; then
  domain="gui/$(id -u)"
  if launchctl print "$domain/$label" >/dev/null 2>&1; then
    # Drain the running worker: SIGTERM, then wait for it to exit (launchd kills it only after the
    # plist's ExitTimeOut). KeepAlive does not restart a worker that exits 0.
    echo "install-worker: draining the running worker (its jobs finish first)" >&2
    launchctl kill TERM "$domain/$label" 2>/dev/null || true
    while launchctl print "$domain/$label" 2>/dev/null | grep -q 'pid = '; do sleep 5; done
    launchctl bootout "$domain/$label" 2>/dev/null || true
  fi
fi

mkdir -p "$prefix/bin" "$prefix/certs" "$prefix/cache" "$agents" "$logs"
cp "$binary" "$prefix/bin/manifold-worker.new" && mv "$prefix/bin/manifold-worker.new" "$prefix/bin/manifold-worker"
cp "$here/manifold-worker-launch" "$prefix/bin/manifold-worker-launch"
chmod 755 "$prefix/bin/manifold-worker" "$prefix/bin/manifold-worker-launch"
cp "$ca" "$prefix/certs/ca.pem"
cp "$cert" "$prefix/certs/worker.pem"
(umask 077 && cp "$key" "$prefix/certs/worker.key")
chmod 600 "$prefix/certs/worker.key"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@NAME@|$name|g" -e "s|@SLOTS@|$slots|g" \
    -e "s|@CACHE@|$prefix/cache|g" -e "s|@COORDINATOR@|$coordinator|g" \
    -e "s|@DOCKER_HOST@|$docker_host|g" -e "s|@LOGS@|$logs|g" \
    "$here/$label.plist" >"$agents/$label.plist.new"
mv "$agents/$label.plist.new" "$agents/$label.plist"
echo "install-worker: wrote $agents/$label.plist" >&2

if [ "$load" = yes ]; then
  plutil -lint "$agents/$label.plist" >/dev/null
  launchctl bootstrap "gui/$(id -u)" "$agents/$label.plist"
  echo "install-worker: loaded $label; it starts once Docker Desktop answers. Log: $logs/manifold-worker.log" >&2
fi
