#!/bin/bash
# VM tier, exclusive RDMA on Debian experimental's 7.3 kernel (hack/test.sh runs tests/vm/kernel-7.3/
# with VM_KERNEL=7.3): its Soft-RoCE can leave the host's namespace (rxe_disassociate_ucontext),
# which released kernels refuse (tests/vm/rdma.sh). Two pods get macvlan NICs (Debian's macvlan CNI,
# the spiderpool IPAM) and a Soft-RoCE device on each NIC; the project's `rdma` step moves each
# pod's device into the pod. Inside, `rdma dev` shows only its own device and RDMA RC traffic runs
# between the pods; the host no longer sees the devices; a third pod asking for a held device is
# refused and leaks nothing; the agent's counters name the pods; DEL gives the devices back.
set -euo pipefail
. /guest/lib.sh

fail() { echo "FAIL: $*" >&2; tail -n 20 /tmp/srv.log >&2 || true; exit 1; }
bin=/opt/spiderpool/bin
cni() { # PLUGIN COMMAND POD NETNS < netconf
    CNI_COMMAND=$2 CNI_CONTAINERID="ctr-$3" CNI_NETNS=$4 CNI_IFNAME=net1 CNI_PATH=$bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=ai;K8S_POD_NAME=$3" "$bin/$1"
}
modprobe rdma_rxe
modprobe rdma_ucm
# Exclusive mode can only be set while no other network namespace exists.
rdma system set netns exclusive
[ "$(rdma system show | awk '{print $2}')" = exclusive ] || fail "not in exclusive mode"
pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
ip link set "$pf" up

macvlan=$(jq -nc --arg m "$pf" '{cniVersion: "1.0.0", name: "rdma-net", type: "macvlan", master: $m, mode: "bridge",
    ipam: {type: "spiderpool", dataDir: "/run/spiderpool/rdma-excl",
           pools: [{name: "rdma", subnet: "10.9.0.0/24", ips: ["10.9.0.10-10.9.0.12"]}]}}')
rdma_conf() { jq -nc --argjson p "$(cat "/tmp/$1.result")" '{cniVersion: "1.0.0", name: "rdma-net", type: "rdma", prevResult: $p}'; }
declare -A ip
for pod in pod1 pod2; do
    ip netns add "$pod"
    out=$(echo "$macvlan" | cni macvlan ADD "$pod" "/run/netns/$pod") || fail "macvlan ADD $pod: $out"
    echo "$out" > "/tmp/$pod.result"
    ip[$pod]=$(echo "$out" | jq -r '.ips[0].address' | cut -d/ -f1)
    # Made from inside the pod, on its NIC: exclusive mode puts it in the host's RDMA namespace.
    ip netns exec "$pod" rdma link add "rx$pod" type rxe netdev net1
    rdma dev show "rx$pod" > /dev/null || fail "rx$pod is not in the host's namespace before the rdma step"
    out=$(rdma_conf "$pod" | cni rdma ADD "$pod" "/run/netns/$pod") || fail "rdma ADD $pod: $out"
    [ "$(ip netns exec "$pod" rdma dev | awk '{print $2}')" = "rx$pod:" ] || fail "$pod sees: $(ip netns exec "$pod" rdma dev)"
    if rdma dev show "rx$pod" > /dev/null 2>&1; then fail "the host still sees rx$pod"; fi
    # Repeated ADD: nothing moves, nothing changes.
    rdma_conf "$pod" | cni rdma ADD "$pod" "/run/netns/$pod" > /dev/null || fail "repeated rdma ADD $pod"
    rdma_conf "$pod" | cni rdma CHECK "$pod" "/run/netns/$pod" > /dev/null || fail "rdma CHECK $pod"
done
echo "ok: each pod holds only its own RDMA device (rxpod1, rxpod2); the host sees neither"

out=$(rc_pingpong pod1 "${ip[pod1]}" rxpod1 pod2 "${ip[pod2]}" rxpod2) || fail "RDMA between the pods: $out"
echo "ok: 200 RDMA RC exchanges between the pods, each on the device it holds: $(echo "$out" | grep iters)"

# A third pod that asks for pod1's device (its prevResult names pod1's NIC) is refused: the device
# is not in the host's namespace any more.
ip netns add pod3
cp /tmp/pod1.result /tmp/pod3.result
if out=$(rdma_conf pod3 | cni rdma ADD pod3 /run/netns/pod3); then fail "pod3 got a device: $out"; fi
[ "$(echo "$out" | jq .code)" = 102 ] || fail "pod3's error: $out"
[ -z "$(ip netns exec pod3 rdma dev)" ] || fail "pod3 sees an RDMA device"
[ ! -e /var/lib/cni/spiderpool/rdma/ctr-pod3-net1 ] || fail "a record for pod3"
[ "$(ip netns exec pod1 rdma dev | awk '{print $2}')" = "rxpod1:" ] || fail "pod1 lost its device"
echo "ok: pod3 refused: $(echo "$out" | jq -r .msg)"
ip netns del pod3

# The agent's counters read the moved devices inside the pods and name them.
metrics=$(spiderpool-agent rdma-counters)
for pod in pod1 pod2; do
    line=$(echo "$metrics" | grep -F "spiderpool_agent_rdma_port_hw_counter_total{device=\"rx$pod\",port=\"1\",counter=\"rcvd_pkts\",netns=\"$pod\",pod_namespace=\"ai\",pod_name=\"$pod\"}" || :)
    [ -n "$line" ] && [ "${line##* }" -ge 200 ] || fail "rx$pod's rcvd_pkts not attributed to ai/$pod: $(echo "$metrics" | grep "rx$pod" | head -n 3)"
done
echo "ok: rdma-counters: $(echo "$metrics" | grep -F 'device="rxpod1",port="1",counter="rcvd_pkts"')"
[ "$(spiderpool-agent inventory -o json | jq -r '.rdmaDevices[] | select(.name == "rxpod2") | .netns')" = pod2 ] ||
    fail "the inventory does not list rxpod2 in pod2"
echo "ok: the inventory lists the moved devices with their pods' namespaces"

# DEL with the namespace gives the device back; DEL without it (the runtime lost it) only forgets.
rdma_conf pod1 | cni rdma DEL pod1 /run/netns/pod1 > /dev/null || fail "rdma DEL pod1"
rdma dev show rxpod1 > /dev/null || fail "rxpod1 did not come back to the host"
[ -z "$(ip netns exec pod1 rdma dev)" ] || fail "pod1 still sees a device"
rdma_conf pod1 | cni rdma DEL pod1 /run/netns/pod1 > /dev/null || fail "rdma DEL pod1 twice"
echo "ok: DEL gave rxpod1 back to the host; DEL twice is fine"
rdma link del rxpod1
echo "$macvlan" | cni macvlan DEL pod1 /run/netns/pod1 > /dev/null || fail "macvlan DEL pod1"
ip netns del pod1
ip netns del pod2
sleep 1
rdma_conf pod2 | cni rdma DEL pod2 "" > /dev/null || fail "rdma DEL pod2 without a netns"
echo "$macvlan" | cni macvlan DEL pod2 "" > /dev/null || fail "macvlan DEL pod2 without a netns"
[ -z "$(ls /var/lib/cni/spiderpool/rdma/ 2>/dev/null)" ] || fail "records left: $(ls /var/lib/cni/spiderpool/rdma/)"
rdma system set netns shared
echo "PASS: exclusive RDMA: devices moved into pods, traffic between them, refusal, counters, return"
