#!/usr/bin/env bash
# Pod creation to Running on a real kubelet with containerd 1.7 (CDI): pods with a VF from a DRA
# claim (spiderpool-agent run's kubelet plugin) beside pods with a VF from its device plugin,
# alternating, p50/p99 and their ratio (tests/tests/kubelet/bench.rs). Root; builds what it needs
# as hack/test.sh does.
# usage: hack/bench-dra.sh [PODS_EACH] [KUBELET_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/spiderpool-rs/target}
cargo build --quiet --locked --workspace --bins
# The binaries as hack/test.sh runs them: the CNI plugins static, as they ship.
source hack/lib.sh
bin_dir=$(shipped_bins debug)
hack/control-plane.sh scheduling >/dev/null
containerd=$(hack/control-plane.sh containerd)
kubelet=$(K8S_VERSION=${2:-1.34.3} hack/control-plane.sh kubelet)
kubeconfig=$(hack/control-plane.sh up)
echo "$(nproc) CPUs; $("$kubelet" --version); $("$containerd/containerd" --version)"
SPIDERPOOL_TEST_KUBECONFIG=$kubeconfig SPIDERPOOL_TEST_KUBELET=$kubelet SPIDERPOOL_BIN_DIR="$bin_dir" \
    SPIDERPOOL_TEST_CONTAINERD_CDI=$containerd SPIDERPOOL_BENCH_PODS=${1:-20} \
    cargo test --quiet --locked -p spiderpool-e2e --features control-plane --test kubelet -- \
    --ignored --nocapture --exact bench::bench_pod_startup_dra_vf_vs_device_plugin_vf 2>&1 |
    grep -v "File system loop"
