# The two set-up commands: `make up` (demo) and `make test` (every test).
SHELL := /bin/bash
# Slow things are cached outside the clone, reused by later runs on this machine:
# the Go build and module caches, the control-plane binary, cargo's target dir.
CACHE ?= $(HOME)/.cache/aranya
export ARANYA_CACHE := $(CACHE)
export CARGO_TARGET_DIR ?= $(CACHE)/cargo-target
CARGO ?= cargo
# Binaries built from another checkout of the same commit are reused from the
# shared target dir (cargo fingerprints by relative path and mtime), so paths
# into the repository are given at run time, never taken from the build.
export ARANYA_REPO := $(CURDIR)
export ARANYA_KUBE_SRC := $(CURDIR)/testbed/kube

HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/host: //p')
# The pod sandbox's process, linked statically so the infra image needs nothing else.
export ARANYA_PAUSE_BINARY ?= $(CARGO_TARGET_DIR)/static/$(HOST_TRIPLE)/release/pause

.PHONY: up down test bench chaos fuzz deps docker cni mosquitto build build-all kube pause lint fmt clean

# `make up TRANSPORT=mqtt`: the device reaches aranya through the demo's own
# Mosquitto (.local/mosquitto, persistence on) instead of gRPC.
TRANSPORT ?= grpc
up: deps docker cni mosquitto build kube pause
	@scripts/up.sh "$(CARGO_TARGET_DIR)/debug/demo" "$(TRANSPORT)"

down:
	@scripts/down.sh

# Every set-up step and test, timed; prints where the time went at the end
# (scripts/times.sh; the figures stay in $(CACHE)/timings).
test:
	@scripts/test.sh

# Pod start through aranya/arhat vs the same containers created directly,
# kubectl logs vs docker logs of one container, port-forward vs direct TCP and
# kubectl exec vs docker exec, the session layer over gRPC vs loopback TCP,
# and the Node's return to Ready after partitions vs a fresh agent (release
# builds; the partitions need root and iptables).
bench: deps docker cni mosquitto kube pause
	$(CARGO) build --release --workspace --bins
	$(CARGO_TARGET_DIR)/release/bench-pods --pods 20
	$(CARGO_TARGET_DIR)/release/bench-logs --mib 100
	$(CARGO_TARGET_DIR)/release/bench-streams --mib 100
	$(CARGO_TARGET_DIR)/release/bench-reconnect --outages 10
	$(CARGO_TARGET_DIR)/release/bench-relay --mib 100
	$(CARGO) bench -p connectivity --bench throughput
	$(CARGO) bench -p connectivity --bench handshake

# The fault-injection tests, ARANYA_CHAOS_ROUNDS times each (5 by default;
# `make test` runs each once), then a table of what they saw (root, iptables).
chaos: deps docker cni mosquitto build kube pause
	@scripts/chaos.sh

# Every decoder that reads network bytes, fuzzed to 10 M executions each
# (FUZZ_RUNS=...; nightly toolchain and cargo-fuzz installed if missing).
# Not part of `make test`: over two hours on 2 cores (the SPDY target alone
# some 90 minutes).
fuzz:
	@scripts/fuzz.sh

deps:
	@scripts/deps.sh

# A Docker engine on the default socket (installed and started if absent; needs root then).
docker:
	@scripts/docker.sh

# The pod network's CNI plugins and iptables (installed if absent; needs root then).
cni:
	@scripts/cni.sh

# Debian's Mosquitto broker (installed if absent; needs root then). Tests and
# the demo start their own broker processes.
mosquitto:
	@scripts/mosquitto.sh

build:
	$(CARGO) build --workspace --bins

# The test-bed control plane binary (cached under $(CACHE)/bin).
kube:
	@testbed/kube/build.sh >/dev/null

pause:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build -p pause --release \
	  --target $(HOST_TRIPLE) --target-dir $(CARGO_TARGET_DIR)/static

lint: fmt
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all -- --check

# Every target the tests run, linted as it compiles when clippy's driver is
# the workspace's compiler (scripts/test.sh): the same lints as `make lint`
# without a second pass over the dependencies.
build-all:
	$(CARGO) build --workspace --all-targets

clean:
	rm -rf .local
