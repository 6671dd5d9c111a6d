#!/usr/bin/env bash
# The pod network's parts: Debian's CNI plugins (arhat runs loopback, bridge,
# host-local, firewall and portmap from /usr/lib/cni) and iptables, which the
# plugins and arhat's masquerade rule use. Installed when missing (needs root then).
set -euo pipefail
missing=()
for plugin in loopback bridge host-local firewall portmap; do
  [ -x "/usr/lib/cni/$plugin" ] || { missing+=(containernetworking-plugins); break; }
done
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "cni: ${missing[*]} missing and not root: install them (apt-get install -y ${missing[*]})" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
