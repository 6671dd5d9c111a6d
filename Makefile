# The two set-up commands: `make up` (demo) and `make test` (every test).
SHELL := /bin/bash
# Slow things are cached outside the clone, reused by later runs on this machine:
# the Go build and module caches, the control-plane binary, cargo's target dir.
CACHE ?= $(HOME)/.cache/aranya
export ARANYA_CACHE := $(CACHE)
export CARGO_TARGET_DIR ?= $(CACHE)/cargo-target
CARGO ?= cargo

.PHONY: up down test deps build kube lint unit e2e clean

up: deps build kube
	@scripts/up.sh "$(CARGO_TARGET_DIR)/debug/demo"

down:
	@scripts/down.sh

test: deps lint build kube
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

deps:
	@scripts/deps.sh

build:
	$(CARGO) build --workspace --bins

# The test-bed control plane binary (cached under $(CACHE)/bin).
kube:
	@testbed/kube/build.sh >/dev/null

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf .local
