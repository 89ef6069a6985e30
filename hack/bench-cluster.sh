#!/usr/bin/env bash
# Cluster-mode allocation throughput against a real kube-apiserver + etcd (hack/control-plane.sh),
# ours and Whereabouts' side by side in one run (tests/src/bin/bench-cluster.rs): PODS pods over
# AGENTS agents, CONCURRENCY plugin processes at a time, one range of exactly PODS addresses.
# usage: hack/bench-cluster.sh [PODS] [AGENTS] [CONCURRENCY] [PEERS] [ACTIVE]
#   PEERS default spiderpool,whereabouts (also: floor, per pod one plugin process and one
#   SpiderEndpoint, no IPAM, over the agents' HTTP/2 client: what the machine allows at all; floor-claim, the floor plus one small
#   object per address, named by it: the least a claim-per-address IPAM costs; floor-objects, the agent's own
#   claim and endpoint written by one client: our objects' cost without our agents'); ACTIVE: the pods run on that many of
#   the AGENTS' nodes (default all); the other agents only watch
# SPIDERPOOL_BENCH_PPROF=DIR saves the API server's CPU profile of each phase (go tool pprof -top);
# SPIDERPOOL_BENCH_PERF=DIR records the whole machine with perf during each phase (perf report -i DIR/PEER-PHASE.perf.data --sort comm);
# SPIDERPOOL_BENCH_TRACE=FILE appends one line per call (peer verb index start-ms latency-ms ok);
# SPIDERPOOL_BENCH_KEEP=1 keeps the agents' logs (SPIDERPOOL_TEST_AGENT_LOG sets their filter).
# SPIDERPOOL_BENCH_IN_FLIGHT=N starts our agents with --ipam-in-flight N (default: theirs, 8; 0: no limit).
# SPIDERPOOL_BENCH_ROUNDS=N runs the peers N times, every other round in reverse order, and ends with
# each peer's and phase's wall time and p99/p50 as min/median/max (one run here varies by ±15 %).
# Each peer runs on a fresh control plane (hack/control-plane.sh down, then up): one already running stops.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run: a release build beside it would be a second multi-GB target.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/spiderpool-rs/target}
source hack/lib.sh
cargo build --release --quiet --locked -p spiderpool-agent -p spiderpool-ipam -p spiderpool-e2e --bins
target_dir=$(cargo_target_dir)
# The plugin as it ships (static), unless SPIDERPOOL_BENCH_BIN_DIR names other binaries.
bin_dir=${SPIDERPOOL_BENCH_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
    bin_dir=$(shipped_bins release)
fi
peers=${4:-spiderpool,whereabouts}
if [[ ,$peers, == *,whereabouts,* ]]; then
    WHEREABOUTS_DIR=$(hack/control-plane.sh whereabouts)
    export WHEREABOUTS_DIR
fi
echo "$(nproc) CPUs; kube-apiserver $(basename "$(hack/control-plane.sh bin)") on loopback"
# A fresh API server and etcd for each peer: an earlier peer's pools would hold the range, and a
# server that has served one peer's burst (its heap, its watch cache, etcd's history) costs the
# next peer more (measured: the second of two equal peers 0.1-0.4 ms/op more API server CPU).
IFS=, read -ra each <<<"$peers"
rounds=${SPIDERPOOL_BENCH_ROUNDS:-1}
results=$(mktemp)
trap 'rm -f "$results" "$results.rows"' EXIT
for ((round = 1; round <= rounds; round++)); do
    order=("${each[@]}")
    # Reversed every other round: a machine that speeds up or slows down during the rounds favours
    # no peer.
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#each[@]} - 1; i >= 0; i--)); do order+=("${each[i]}"); done
    fi
    ((rounds == 1)) || echo "--- round $round of $rounds: ${order[*]}"
    for peer in "${order[@]}"; do
        hack/control-plane.sh down >/dev/null
        kubeconfig=$(hack/control-plane.sh up)
        SPIDERPOOL_TEST_KUBECONFIG=$kubeconfig SPIDERPOOL_BIN_DIR="$bin_dir" \
            "$target_dir/release/bench-cluster" "${1:-1000}" "${2:-10}" "${3:-${1:-1000}}" "$peer" "${5:-${2:-10}}" |
            tee -a "$results"
    done
done
((rounds > 1)) || exit 0
# min/median/max of column 3 (wall s) and 4 (p99/p50) of the lines "PEER PHASE wall ratio".
echo "--- over $rounds rounds"
printf '%-13s %-9s %22s %22s\n' ipam phase "wall s min/med/max" "p99/p50 min/med/max"
# The table's rows: "PEER PHASE wall per-s p50 p99 max failed cpu KiB".
awk '($2 == "allocate" || $2 == "release") && $3 ~ /^[0-9.]+$/ && $5 > 0 {printf "%s %s %s %.2f\n", $1, $2, $3, $6 / $5}' "$results" >"$results.rows"
spread() { # min/median/max of the numbers on stdin
    sort -n | awk '{v[NR] = $1} END {printf "%s/%s/%s", v[1], v[int((NR + 1) / 2)], v[NR]}'
}
for key in $(awk '{print $1 "," $2}' "$results.rows" | sort -u); do
    rows=$(awk -v p="${key%,*}" -v f="${key#*,}" '$1 == p && $2 == f' "$results.rows")
    printf '%-13s %-9s %22s %22s\n' "${key%,*}" "${key#*,}" \
        "$(awk '{print $3}' <<<"$rows" | spread)" "$(awk '{print $4}' <<<"$rows" | spread)"
done
