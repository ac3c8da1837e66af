# sidestream: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

WASM := target/wasm32-wasip1/wasm-release/sidestream_filter.wasm
WASM_IMAGE := target/wasm-image/sidestream-filter.oci.tar
# Where the filter's image will be pushed (make wasm-image IMAGE=...).
IMAGE ?= example.invalid/sidestream/sidestream-filter:0.1.0

.PHONY: istio-sha wasm-image help deps deps-run deps-bench deps-fuzz fuzz fuzz-smoke soak filter build lint test unit-test integration-test run bench schema clean

help:
	@echo "make run    start the whole stack on loopback (etcd, control plane, Redis, limiter, push servers, Envoy + filter)"
	@echo "make test   install what is missing, build everything, run every test"
	@echo "make bench  run the benchmarks and rewrite BENCHMARKS.md"
	@echo "make soak   the whole stack under load while every process is killed at random, SOAK_SECONDS (default 600)"
	@echo "make fuzz   run every fuzz target for FUZZ_SECONDS (default 60) and print executions and coverage"
	@echo "make filter build the Wasm filter to $(WASM)"
	@echo "make wasm-image [IMAGE=registry/repository:tag]"
	@echo "           pack it as an OCI image (Istio's Wasm image format) to $(WASM_IMAGE)"
	@echo "           and pin istio/wasm-plugin-sidestream.yaml to oci://IMAGE by its digest"

deps:
	@scripts/install-deps.sh test

deps-run:
	@scripts/install-deps.sh run

deps-bench:
	@scripts/install-deps.sh bench

deps-fuzz:
	@scripts/install-deps.sh fuzz

## The Wasm module Envoy loads.
filter:
	scripts/build-filter.sh

## Native binaries (debug) plus the filter: what the tests start (and the
## push server's gRPC example client, which tests/tests/api_docs.rs runs).
build: filter
	cargo build --workspace --bins --examples

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit-test:
	cargo test --workspace --lib --bins

integration-test: build
	cargo test --workspace --tests

test: deps build
	cargo test --workspace --no-fail-fast
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory lint

## Coverage-guided fuzzing (fuzz/, cargo-fuzz): every target for FUZZ_SECONDS
## each (FUZZ_JOBS at a time), then a table of executions and coverage per
## target; a crash fails it. The smoke is a short run of every target.
fuzz: deps-fuzz
	scripts/fuzz.sh

fuzz-smoke:
	scripts/fuzz.sh --smoke

## The soak (tests/tests/soak.rs; make test runs it for 60 s): publishing,
## subscribers on SSE, WebSocket and gRPC coming and going, config changes,
## and every process SIGKILLed and restarted at random for SOAK_SECONDS;
## SOAK_SEED replays a run's kills, SOAK_REDIS_AOF=0 runs Redis without
## persistence (resets instead of history). See docs/operations.md.
soak: deps build
	SOAK_SECONDS=$${SOAK_SECONDS:-600} cargo test -p sidestream-tests --test soak -- --nocapture

run: deps-run filter
	cargo build --release --workspace --bins
	scripts/run-stack.sh

bench: deps-bench filter
	cargo build --release --workspace --bins
	scripts/bench.sh

## Fill istio/wasm-plugin's sha256 from the built module: make istio-sha URL=https://...
istio-sha: filter
	scripts/istio-sha.sh --write "$(URL)"

## The filter as an OCI image in Istio's Wasm image format (compat variant), as
## an OCI archive; the WasmPlugin then loads oci://$(IMAGE), pinned by the
## image's manifest digest. Push it with skopeo, oras or crane (docs/istio.md).
wasm-image: filter
	cargo run -q -p sidestream-wasm-image -- --module $(WASM) --out $(WASM_IMAGE) --image "$(IMAGE)"
	WASM_IMAGE=$(WASM_IMAGE) scripts/istio-sha.sh --write "oci://$(IMAGE)"

clean:
	cargo clean
	rm -rf .run
