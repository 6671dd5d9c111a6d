#!/usr/bin/env bash
# Installs Debian's Mosquitto broker when missing. Nothing is started here:
# tests and the demo run their own broker processes with their own config
# files, on ports they choose.
set -euo pipefail
command -v mosquitto >/dev/null 2>&1 && exit 0
[ -x /usr/sbin/mosquitto ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "mosquitto: missing and not root: install it (apt-get install -y mosquitto)" >&2
  exit 1
fi
apt-get update -qq
# policy-rc.d keeps the package from starting a system-wide broker on 1883.
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
[ "$created" -eq 1 ] && rm -f "$policy"
exit 0
