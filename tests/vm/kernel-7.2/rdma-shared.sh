#!/bin/bash
# VM tier, shared RDMA between pods on Debian's 7.2 kernel (hack/test.sh runs tests/vm/kernel-7.2/
# with VM_KERNEL=7.2; 6.12's rxe has one UDP socket, in the host's namespace, and sends nothing for
# a GID whose netdev is in a pod).
# Two pods get macvlan NICs on the Soft-RoCE uplink through Debian's macvlan CNI with the
# spiderpool IPAM; the device plugin hands out the uplink's RDMA device (its uverbs and rdma_cm).
# 1. The Spiderpool design (macvlan on the RDMA uplink, shared mode) is what real RoCE NICs do in
#    hardware; Soft-RoCE sends from the pod's GID but has no receiver for a macvlan: the test
#    shows the traffic failing and the uplink device receiving nothing.
# 2. What Soft-RoCE does run: a device made in each pod's namespace on its own NIC (shared mode,
#    7.2's per-namespace sockets): RDMA RC traffic between the pods over their GIDs, counted by
#    both devices and shown by `spiderpool-agent rdma-counters` (what `run` serves on /metrics)
#    with the pod namespace holding each.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; tail -n 20 /tmp/kubelet.log /tmp/agent.log /tmp/srv.log >&2 || true; exit 1; }
bin=/opt/spiderpool/bin
cni() { # PLUGIN COMMAND CONTAINER NETNS IFNAME < netconf
    CNI_COMMAND=$2 CNI_CONTAINERID=$3 CNI_NETNS=$4 CNI_IFNAME=$5 CNI_PATH=$bin "$bin/$1"
}
counter() { cat "/sys/class/infiniband/$1/ports/1/hw_counters/$2"; }
# gid_index DEVICE IPV4: the RoCE v2 GID of that address on DEVICE's port 1 (both pods call their
# NIC net1, so the GID's netdev name says nothing; its address does).
gid_index() {
    local d=/sys/class/infiniband/$1/ports/1 want i
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${2//./ })
    for i in $(seq 0 31); do
        [ "$(cat "$d/gids/$i" 2>/dev/null)" = "$want" ] || continue
        [ "$(cat "$d/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ] && { echo "$i"; return 0; }
    done
    return 1
}
# pingpong DEVICE_A DEVICE_B: ibv_rc_pingpong from pod1 (DEVICE_A) to pod2 (DEVICE_B), 200 RC
# exchanges over the pods' own GIDs; prints the client's output.
pingpong() {
    local ga gb server rc
    ga=$(gid_index "$1" "$ip1") || fail "no GID of $ip1 on $1"
    gb=$(gid_index "$2" "$ip2") || fail "no GID of $ip2 on $2"
    ip netns exec pod2 timeout 30 ibv_rc_pingpong -d "$2" -g "$gb" -n 200 > /tmp/srv.log 2>&1 &
    server=$!
    sleep 1
    rc=0
    ip netns exec pod1 timeout 30 ibv_rc_pingpong -d "$1" -g "$ga" -n 200 "$ip2" 2>&1 || rc=1
    wait "$server" || rc=1
    return $rc
}

modprobe rdma_rxe
modprobe rdma_ucm
pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
pf_pci=$(spiderpool-agent inventory -o json | jq -r '.nics[0].pciAddress')
ip link set "$pf" up
rdma link add rxe0 type rxe netdev "$pf"
[ "$(rdma system show | awk '{print $2}')" = shared ] || fail "not in shared mode"

. /guest/lib.sh
start_device_plugin "resources:
- resourceName: rdma
  kind: rdma
  rdmaHcaMax: 4
  selectors: {pciAddresses: [\"$pf_pci\"]}"
uverbs=$(first_allocation | jq -r '.devices[] | select(test("uverbs"))' | head -n 1)
[ -n "$uverbs" ] || fail "the device plugin handed out no uverbs device"
[ "$(cat "/sys/class/infiniband_verbs/$(basename "$uverbs")/ibdev")" = rxe0 ] || fail "$uverbs is not rxe0's"
echo "ok: the device plugin hands out rxe0 ($uverbs and /dev/infiniband/rdma_cm)"
kill "$agent"

macvlan=$(jq -nc --arg m "$pf" '{cniVersion: "1.0.0", name: "rdma-net", type: "macvlan", master: $m, mode: "bridge",
    ipam: {type: "spiderpool", dataDir: "/run/spiderpool/rdma-shared",
           pools: [{name: "rdma", subnet: "10.9.0.0/24", ips: ["10.9.0.10-10.9.0.11"]}]}}')
for pod in pod1 pod2; do
    ip netns add "$pod"
    out=$(echo "$macvlan" | cni macvlan ADD "ctr-$pod" "/run/netns/$pod" net1) || fail "macvlan ADD $pod: $out"
    echo "$out" > "/tmp/$pod.result"
done
ip1=$(jq -r '.ips[0].address' /tmp/pod1.result | cut -d/ -f1)
ip2=$(jq -r '.ips[0].address' /tmp/pod2.result | cut -d/ -f1)
ip netns exec pod1 ping -c 1 -W 3 "$ip2" > /dev/null || fail "pod1 cannot reach pod2 ($ip2)"
g1=$(gid_index rxe0 "$ip1") && g2=$(gid_index rxe0 "$ip2") || fail "rxe0 has no GID for a pod's address"
echo "ok: rxe0's GID table holds both pods' addresses ($ip1 at $g1, $ip2 at $g2)"

sent=$(counter rxe0 sent_pkts) rcvd=$(counter rxe0 rcvd_pkts)
if out=$(pingpong rxe0 rxe0); then fail "RDMA over macvlans on the rxe uplink passed; the kernel changed, update this test: $out"; fi
[ "$(counter rxe0 sent_pkts)" -gt "$sent" ] || fail "rxe0 sent nothing"
[ "$(counter rxe0 rcvd_pkts)" = "$rcvd" ] || fail "rxe0 received something: $(counter rxe0 rcvd_pkts)"
echo "ok: shown: Soft-RoCE over macvlans on its uplink sends ($(counter rxe0 sent_pkts) packets) and receives none; the RC exchange fails"

for pod in pod1 pod2; do
    ip netns exec "$pod" rdma link add "rx$pod" type rxe netdev net1
done
out=$(pingpong rxpod1 rxpod2) || fail "RDMA between the pods' own Soft-RoCE devices: $out"
echo "$out" | grep -q "200 iters in" || fail "no iterations reported: $out"
for d in rxpod1 rxpod2; do
    [ "$(counter "$d" rcvd_pkts)" -ge 200 ] && [ "$(counter "$d" sent_pkts)" -ge 200 ] || fail "$d counted $(counter "$d" sent_pkts) sent, $(counter "$d" rcvd_pkts) received"
done
echo "ok: 200 RDMA RC exchanges between the pods over their own GIDs: $(echo "$out" | grep iters)"
echo "ok: counters: rxpod1 sent $(counter rxpod1 sent_pkts) received $(counter rxpod1 rcvd_pkts); rxpod2 sent $(counter rxpod2 sent_pkts) received $(counter rxpod2 rcvd_pkts)"

# The agent's metrics: each pod's device with the namespace holding its netdev; the uplink's
# device, shared by every pod, with none.
metrics=$(spiderpool-agent rdma-counters)
for pod in pod1 pod2; do
    line=$(echo "$metrics" | grep -F "spiderpool_agent_rdma_port_hw_counter_total{device=\"rx$pod\",port=\"1\",counter=\"rcvd_pkts\",netns=\"$pod\"" || :)
    [ -n "$line" ] && [ "${line##* }" -ge 200 ] || fail "no rcvd_pkts of rx$pod held by $pod in the metrics: $(echo "$metrics" | grep "rx$pod" | head -n 3)"
done
echo "$metrics" | grep -F 'device="rxe0",port="1",counter="sent_pkts",netns=""' | grep -qv ' 0$' ||
    fail "rxe0's sent_pkts missing or attributed: $(echo "$metrics" | grep rxe0 | head -n 3)"
echo "ok: rdma-counters: $(echo "$metrics" | grep -F 'device="rxpod1",port="1",counter="rcvd_pkts"')"
for pod in pod1 pod2; do
    held=$(spiderpool-agent inventory -o json | jq -r ".rdmaDevices[] | select(.name == \"rx$pod\") | .netns")
    [ "$held" = "$pod" ] || fail "the inventory says rx$pod is held by '$held'"
done
spiderpool-agent inventory | grep -E '^(RDMA|rx)'
echo "ok: the inventory names the namespace holding each pod's device"

for pod in pod1 pod2; do
    rdma link del "rx$pod"
    echo "$macvlan" | cni macvlan DEL "ctr-$pod" "/run/netns/$pod" net1 > /dev/null || fail "macvlan DEL $pod"
    ip netns del "$pod"
done
echo "PASS: shared RDMA between pods on Soft-RoCE: what the kernel runs and what it does not"
