#!/bin/bash
# Guest side of hack/bench-rdma.sh (Debian's 7.2 kernel): RDMA between two pods, each with a
# macvlan NIC made by Debian's macvlan CNI with the spiderpool IPAM and a Soft-RoCE device on it,
# measured with perftest's ib_send_lat and ib_send_bw from inside the pods, and again by two
# processes in the host's namespace on the same devices and GIDs (their out-of-band exchange over
# loopback). ROUNDS alternating rounds; one line per measurement: `path test value`.
set -euo pipefail
rounds=${1:-5}
iters=${2:-300}
bin=/opt/spiderpool/bin
fail() { echo "FAIL: $*" >&2; exit 1; }
modprobe rdma_rxe
modprobe rdma_ucm
pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
ip link set "$pf" up
macvlan=$(jq -nc --arg m "$pf" '{cniVersion: "1.0.0", name: "rdma-net", type: "macvlan", master: $m, mode: "bridge",
    ipam: {type: "spiderpool", dataDir: "/run/spiderpool/bench", pools: [{name: "b", subnet: "10.9.0.0/24", ips: ["10.9.0.10-10.9.0.11"]}]}}')
declare -A ip gid
for pod in pod1 pod2; do
    ip netns add "$pod"
    out=$(echo "$macvlan" | CNI_COMMAND=ADD CNI_CONTAINERID="ctr-$pod" CNI_NETNS="/run/netns/$pod" CNI_IFNAME=net1 \
        CNI_PATH=$bin "$bin/macvlan") || fail "macvlan ADD $pod: $out"
    ip[$pod]=$(echo "$out" | jq -r '.ips[0].address' | cut -d/ -f1)
    ip netns exec "$pod" rdma link add "rx$pod" type rxe netdev net1
done
sleep 1
for pod in pod1 pod2; do
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${ip[$pod]//./ })
    for i in $(seq 0 31); do
        [ "$(cat "/sys/class/infiniband/rx$pod/ports/1/gids/$i" 2>/dev/null)" = "$want" ] && { gid[$pod]=$i; break; }
    done
    [ -n "${gid[$pod]:-}" ] || fail "no GID for ${ip[$pod]} on rx$pod"
done
# run PATH TEST: one measurement; server in pod2 (or the host), client in pod1 (or the host).
run() {
    local in1=() in2=() peer=${ip[pod2]} out
    if [ "$1" = pod ]; then in1=(ip netns exec pod1) in2=(ip netns exec pod2); else peer=127.0.0.1; fi
    "${in2[@]}" timeout 120 "$2" -d rxpod2 -x "${gid[pod2]}" -n "$iters" -s 64 > /tmp/server.out 2>&1 &
    sleep 1
    out=$("${in1[@]}" timeout 120 "$2" -d rxpod1 -x "${gid[pod1]}" -n "$iters" -s 64 "$peer" 2>&1) || fail "$1 $2: $out"
    wait $! || :
    case $2 in
    # t_typical (usec)
    ib_send_lat) echo "$out" | awk -v p="$1" '$1 == 64 && NF >= 5 {print p, "lat_usec", $5}' ;;
    # BW average (MB/s)
    ib_send_bw) echo "$out" | awk -v p="$1" '$1 == 64 && NF >= 4 {print p, "bw_MBps", $4}' ;;
    esac
}
for r in $(seq "$rounds"); do
    for path in pod host; do
        run "$path" ib_send_lat
        run "$path" ib_send_bw
    done
done
