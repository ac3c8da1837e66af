# sidestream: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

WASM := target/wasm32-wasip1/wasm-release/sidestream_filter.wasm

.PHONY: istio-sha help deps deps-run deps-bench filter build lint test unit-test integration-test run bench schema clean

help:
	@echo "make run    start the whole stack on loopback (etcd, control plane, Redis, push servers, Envoy + filter)"
	@echo "make test   install what is missing, build everything, run every test"
	@echo "make bench  run the benchmarks and rewrite BENCHMARKS.md"
	@echo "make filter build the Wasm filter to $(WASM)"

deps:
	@scripts/install-deps.sh test

deps-run:
	@scripts/install-deps.sh run

deps-bench:
	@scripts/install-deps.sh bench

## The Wasm module Envoy loads.
filter:
	scripts/build-filter.sh

## Native binaries (debug) plus the filter: what the tests start.
build: filter
	cargo build --workspace --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit-test:
	cargo test --workspace --lib --bins

integration-test: build
	cargo test --workspace --tests

test: deps build
	cargo test --workspace --no-fail-fast
	$(MAKE) --no-print-directory lint

run: deps-run filter
	cargo build --release --workspace --bins
	scripts/run-stack.sh

bench: deps-bench filter
	cargo build --release --workspace --bins
	scripts/bench.sh

## Fill istio/wasm-plugin's sha256 from the built module: make istio-sha URL=https://...
istio-sha: filter
	scripts/istio-sha.sh --write "$(URL)"

clean:
	cargo clean
	rm -rf .run
