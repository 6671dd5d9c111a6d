#!/usr/bin/env bash
# Installs what this project needs on a Debian machine, when it is missing.
set -euo pipefail
need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
# The fault tests run an aranya whose clock is an hour ahead.
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
# arhat intercepts the traffic for cluster Services with an nftables table.
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "deps: Go >= 1.26 is required to build the test-bed control plane (k8s.io/kubernetes v1.37)" >&2
  exit 1
fi
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 26 ]; then
  echo "deps: Go $(go env GOVERSION) is too old: Kubernetes v1.37 needs go >= 1.26" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: Rust (cargo, 1.95) is required; install it with rustup" >&2
  exit 1
fi
# `make test` lints while it builds, with clippy's driver as the compiler.
if ! command -v clippy-driver >/dev/null 2>&1 || ! command -v rustfmt >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup component add clippy rustfmt
  else
    echo "deps: clippy and rustfmt are required: rustup component add clippy rustfmt" >&2
    exit 1
  fi
fi
