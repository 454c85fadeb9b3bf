# krab: one executable, one Makefile. `make run` starts a single-node cluster on this machine;
# `make test` runs every test (what CI runs).
CARGO ?= cargo
DATA_DIR ?= /var/lib/krab

.PHONY: build release run test lint fmt bench-store bench-api bench-pods bench-net bench-scheduler clean deps-build deps-test deps-run

deps-build:
	packaging/deps.sh build

deps-test:
	packaging/deps.sh build test

deps-run:
	packaging/deps.sh build run

build: deps-build
	$(CARGO) build

release: deps-build
	$(CARGO) build --release

# Starts a single-node cluster in the foreground (as root: it owns /var/lib/krab).
run: deps-run release
	./target/release/krab server --data-dir $(DATA_DIR)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# The whole suite: unit tests, then integration tests against the real binary, etcdctl and
# etcd-server.
test: deps-test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test -- --test-threads=2

# Puts/s and latency against Debian's etcd 3.4 through the same client, RSS and disk writes.
bench-store: deps-test release
	$(CARGO) run --release --example bench_store

# The API server over HTTPS: creates/s and latency, LIST of 10k pods, 100 watchers, RSS.
bench-api: deps-build release
	$(CARGO) run --release --example bench_api

# Pod startup p50/p99 (100 pods, 10 at a time) and server+agent/containerd RSS; needs root.
bench-pods: deps-test release
	$(CARGO) run --release --example bench_pods

# Scheduler throughput against 100 simulated nodes, 3,000 pods from Deployments, RSS.
bench-scheduler: deps-build release
	$(CARGO) run --release --example bench_scheduler

bench-net: deps-build
	$(CARGO) run --release --example bench_net

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
