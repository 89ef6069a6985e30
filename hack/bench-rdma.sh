#!/usr/bin/env bash
# RDMA between two pods against the same test between two host-namespace processes on the same
# Soft-RoCE devices and GIDs (Debian's 7.2 kernel under QEMU/TCG: slow in absolute terms, so the
# ratio is the figure): perftest's ib_send_lat (typical latency) and ib_send_bw (average
# bandwidth), 64-byte messages, rounds alternating pod and host. Root; builds what it needs.
# usage: hack/bench-rdma.sh [ROUNDS] [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/spiderpool-rs/target}
cargo build --quiet --locked -p spiderpool-agent -p spiderpool-ipam --bins
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
source hack/lib.sh
# The plugin static, as it ships.
plugins=$(static_plugins debug)
strip -o "$bin/spiderpool-agent" "$CARGO_TARGET_DIR/debug/spiderpool-agent"
strip -o "$bin/spiderpool" "$plugins/spiderpool"
cp /usr/lib/cni/macvlan "$bin/" 2>/dev/null || { echo "bench-rdma: no /usr/lib/cni/macvlan (apt-get install containernetworking-plugins)" >&2; exit 1; }
log=$(mktemp)
SPIDERPOOL_BIN_DIR=$bin VM_KERNEL=7.2 VM_TIMEOUT=1200 hack/vm-test.sh hack/vm/bench-rdma.sh "${1:-5}" "${2:-300}" | tee "$log" |
    grep -E '^(pod|host) |FAIL' || :
awk '
    $1 == "pod" || $1 == "host" { v[$1, $2] = v[$1, $2] " " $3; n[$1, $2]++ }
    function median(s,   a, k, i, j, t) {
        k = split(s, a, " ")
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    END {
        if (!n["pod", "lat_usec"] || !n["host", "lat_usec"]) { print "bench-rdma: no measurements"; exit 1 }
        lp = median(v["pod", "lat_usec"]); lh = median(v["host", "lat_usec"])
        bp = median(v["pod", "bw_MBps"]); bh = median(v["host", "bw_MBps"])
        printf "| path | ib_send_lat typical (median of %d) | ib_send_bw average (median of %d) |\n", n["pod", "lat_usec"], n["pod", "bw_MBps"]
        printf "|---|---|---|\n| pod to pod | %.2f us | %.2f MB/s |\n| host ns, same devices | %.2f us | %.2f MB/s |\n", lp, bp, lh, bh
        printf "| pod / host | %.3f | %.3f |\n", lp / lh, bp / bh
    }' "$log"
rm -f "$log"
