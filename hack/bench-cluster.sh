#!/usr/bin/env bash
# Cluster-mode allocation throughput against a real kube-apiserver + etcd (hack/control-plane.sh):
# 1000 pods over 10 agents, all at once, one pool of exactly 1000 (tests/src/bin/bench-cluster.rs).
# usage: hack/bench-cluster.sh [PODS] [AGENTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run: a release build beside it would be a second multi-GB target.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/spiderpool-rs/target}
cargo build --release --quiet --locked -p spiderpool-agent -p spiderpool-ipam -p spiderpool-e2e --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
kubeconfig=$(hack/control-plane.sh up)
echo "$(nproc) CPUs; kube-apiserver $(basename "$(hack/control-plane.sh bin)") on loopback"
SPIDERPOOL_TEST_KUBECONFIG=$kubeconfig SPIDERPOOL_BIN_DIR="$target_dir/release" \
    "$target_dir/release/bench-cluster" "${1:-1000}" "${2:-10}" "${3:-${1:-1000}}"
