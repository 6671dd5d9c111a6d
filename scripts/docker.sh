#!/usr/bin/env bash
# Makes sure a Docker engine answers on the default socket: installs Debian's
# docker.io (and busybox-static for locally built test images, docker-registry
# and htpasswd for pull tests) when missing,
# and starts dockerd when it is not running. Containers fail with
# "setrlimit: operation not permitted" in sandboxes whose hard limits are
# below Docker's defaults, so the daemon gets default ulimits within them;
# /etc/docker/daemon.json is honoured (dockerd reads it itself), and the
# json-file log driver keeps `docker logs` working.
set -euo pipefail
sock=/var/run/docker.sock
log="${ARANYA_CACHE:-$HOME/.cache/aranya}/dockerd.log"

answers() { docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
# A real image registry (with htpasswd auth) for pull tests.
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "docker: ${missing[*]} missing and not root: install them (apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# A client from elsewhere on PATH may not be Debian's; use the package's.
[ -x /usr/bin/docker ] && docker() { /usr/bin/docker "$@"; }

if answers; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "docker: no engine answers on $sock and starting dockerd needs root" >&2
  exit 1
fi
mkdir -p "$(dirname "$log")"
nofile_hard=$(ulimit -Hn); nproc_hard=$(ulimit -Hu)
lim() { local want=$1 hard=$2; if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then echo "$want"; else echo "$hard"; fi; }
nofile=$(lim 1048576 "$nofile_hard"); nproc=$(lim 65536 "$nproc_hard")
args=(--default-ulimit "nofile=${nofile}:${nofile}" --default-ulimit "nproc=${nproc}:${nproc}")
if [ ! -f /etc/docker/daemon.json ] || ! grep -q '"log-driver"' /etc/docker/daemon.json; then
  args+=(--log-driver json-file)
fi
setsid nohup dockerd "${args[@]}" >>"$log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if answers; then
    exit 0
  fi
  sleep 1
done
echo "docker: dockerd did not answer within 60s; see $log" >&2
tail -n 20 "$log" >&2
exit 1
