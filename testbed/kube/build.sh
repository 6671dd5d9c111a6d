#!/usr/bin/env bash
# Builds the multi-call control-plane binary to $1 (default: the cache path printed last)
# unless it already exists, and prints its path as the last line of stdout.
# Go's build and module caches live outside the clone so later runs on this machine reuse them.
# Concurrent callers should serialize on a lock (the Rust test bed flocks <cache>/bin/.build.lock);
# the temporary output name is per-process anyway, and the final rename is atomic.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/version.env"
cache="${ARANYA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aranya}"
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOCACHE="${GOCACHE_OVERRIDE:-$cache/go-build}" GOMODCACHE="${GOMODCACHE_OVERRIDE:-$cache/go-mod}"
export GOFLAGS=-mod=readonly
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
out="${1:-$cache/bin/kube-${K8S_VERSION}-$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16)}"
if [ -x "$out" ] && [ -z "${ARANYA_KUBE_REBUILD:-}" ]; then
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: the Go toolchain (go >= 1.26) is not on PATH; it is needed to build $out" >&2
  exit 3
fi
mkdir -p "$(dirname "$out")"
cd "$here"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -o "$tmp" -ldflags "-s -w \
  -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=${minor} \
  -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}" .
mv "$tmp" "$out"
echo "$out"
