#!/bin/bash
# VM tier with the API server, guest side (`hack/vm-test.sh --cluster` this script and
# node-policies.host.sh): `spiderpool-agent run` and the controller run here against the host's
# kube-apiserver. The host creates two SpiderNetworkNodePolicies with kubectl; here they become real
# VFs, a bond with a VLAN and the RDMA netns mode on this kernel, with the node's state in its
# SpiderNodeInventory and the counts in `kubectl get spidernetworknodepolicies`. Then, from here:
# drift made by hand is corrected; an edit lowering numVfs waits while a "pod" (a namespace holding
# a VF's netdev) has a VF; a deleted policy's bond and VLAN stay while a macvlan in a pod uses them
# (also across an agent restart) and go once unused; its VFs go back to 0. The host side reads the
# outcome through the API server.
set -euo pipefail

node=$(cat /etc/spiderpool/node-name)
fail() {
    echo "FAIL: $*" >&2
    kubectl get spidernetworknodepolicies -o wide >&2 || :
    kubectl get spidernodeinventory "$node" -o jsonpath='{.status.policies}' >&2 || :
    echo >&2
    tail -n 40 /tmp/agent.log >&2 || :
    tail -n 10 /tmp/controller.log >&2 || :
    exit 1
}
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
wait_for() { # SECONDS WHAT CMD...
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "waited ${limit}s for: $what"
        sleep 0.2
    done
}
state() { kubectl get spidernodeinventory "$node" -o json | jq -c --arg p "$1" '.status.policies[$p] // empty'; }
phase_is() { [ "$(state "$1" | jq -r .phase)" = "$2" ]; }
reason_has() { state "$1" | jq -e --arg s "$2" '.reason | contains($s)'; }
gone() { [ -z "$(state "$1")" ]; }
numvfs() { cat "/sys/bus/pci/devices/$pf0_pci/sriov_numvfs"; }
numvfs_is() { [ "$(numvfs)" = "$1" ]; }
counts_are() { # POLICY MATCHED APPLIED
    kubectl get spidernetworknodepolicy "$1" -o json | jq -e --argjson m "$2" --argjson a "$3" \
        '.status.matched == $m and .status.applied == $a and .status.observedGeneration == .metadata.generation'
}
link_exists() { ip link show "$1" >/dev/null 2>&1; }
link_gone() { ! ip link show "$1" >/dev/null 2>&1; }
mtu_is() { [ "$(cat "/sys/class/net/$1/mtu")" = "$2" ]; }

# --- the management NIC and the API server on the host's loopback -------------------------------
export KUBECONFIG=/etc/spiderpool/kubeconfig
modprobe virtio_net
mgmt=""
for _ in $(seq 100); do
    mgmt=$(grep -l '52:54:00:00:00:03' /sys/class/net/*/address 2>/dev/null | head -n1 | cut -d/ -f5) || :
    [ -n "$mgmt" ] && break
    sleep 0.1
done
[ -n "$mgmt" ] || fail "no management NIC (VM_MGMT_NIC=1)"
ip addr add 10.0.2.15/24 dev "$mgmt"
ip link set "$mgmt" up
wait_for 60 "the API server at 10.0.2.2 (QEMU user network)" kubectl get --raw /readyz
echo "ok: the API server answers through $mgmt"

pfs=$(spiderpool-agent inventory -o json | jq -c '[.nics[] | select(.driver == "igb")] | sort_by(.pciAddress)')
pf0=$(jq -r '.[0].name' <<<"$pfs")
pf0_pci=$(jq -r '.[0].pciAddress' <<<"$pfs")
pf1=$(jq -r '.[1].name' <<<"$pfs")
[ -n "$pf0" ] && [ "$pf1" != null ] || fail "two igb PFs expected: $pfs"

# The driver alone: what no agent can make faster (the host times kubectl apply -> Applied).
start=$(now_ms)
echo 4 >"/sys/bus/pci/devices/$pf0_pci/sriov_numvfs"
driver_up=$(($(now_ms) - start))
start=$(now_ms)
echo 0 >"/sys/bus/pci/devices/$pf0_pci/sriov_numvfs"
echo "figure: the igb driver alone: 0 -> 4 VFs ${driver_up} ms, 4 -> 0 $(($(now_ms) - start)) ms"

spiderpool-controller --lease-namespace default --metrics-addr 127.0.0.1:5721 >/tmp/controller.log 2>&1 &
controller=$!
wait_for 60 "the CRDs established" kubectl wait --for condition=established --timeout 2s \
    crd/spidernetworknodepolicies.spiderpool.spidernet.io crd/spidernodeinventories.spiderpool.spidernet.io
modprobe ib_core
modprobe ib_uverbs
mkdir -p /run/spiderpool
start_agent() {
    spiderpool-agent run --node-name "$node" --device-plugin=false --node-policy-resync=5 \
        --inventory-interval 5 --socket /run/spiderpool/agent.sock >>/tmp/agent.log 2>&1 &
    agent=$!
}
start_agent
wait_for 60 "the agent's SpiderNodeInventory" kubectl get spidernodeinventory "$node"

# --- the host's policies become the node's configuration ------------------------------------------
wait_for 300 "vm-vfs (created on the host) Applied on the node" phase_is vm-vfs Applied
wait_for 60 "vm-bond Applied on the node" phase_is vm-bond Applied
wait_for 60 "the controller's counts" counts_are vm-vfs 1 1
wait_for 60 "the controller's counts" counts_are vm-bond 1 1
kubectl get spidernetworknodepolicies -o wide

numvfs_is 4 || fail "sriov_numvfs $(numvfs), not 4"
ip -d -j link show "$pf0" | jq -e '[.[0].vfinfo_list[] | select(.trust == true)] | length == 4' >/dev/null || fail "VF trust"
grep -qw "$pf1" /sys/class/net/bond0/bonding/slaves || fail "$pf1 not in bond0"
[ "$(cut -d' ' -f1 /sys/class/net/bond0/bonding/mode)" = active-backup ] || fail "bond0 mode"
mtu_is bond0 9000 || fail "bond0 mtu"
ip -d -j link show bond0.100 | jq -e '.[0].linkinfo.info_data.id == 100 and .[0].ifalias == "spiderpool:vm-bond"' >/dev/null ||
    fail "bond0.100"
rdma system show | grep -q 'netns exclusive' || fail "rdma netns mode: $(rdma system show)"
state vm-vfs | jq -e --arg pf "$pf0" '.createdVfs == [$pf] and .generation == 1' >/dev/null || fail "vm-vfs state $(state vm-vfs)"
kubectl get events -n default --field-selector reason=Applied -o json |
    jq -e --arg n "$node" '[.items[] | select(.note // .message | contains("node " + $n))] | length >= 2' >/dev/null ||
    fail "no Applied Events naming $node"
echo "ok: $pf0 has 4 trusted VFs, bond0 ($pf1, MTU 9000) with bond0.100 marked vm-bond, RDMA netns exclusive; Applied 1/1 and Events"

# --- drift ---------------------------------------------------------------------------------------
start=$(now_ms)
ip link del bond0.100
wait_for 30 "bond0.100 back" link_exists bond0.100
echo "figure: bond0.100 deleted by hand -> back in $(($(now_ms) - start)) ms (link event)"
ip link set bond0 mtu 1500
wait_for 30 "bond0 MTU 9000 again" mtu_is bond0 9000
start=$(now_ms)
echo 0 >"/sys/bus/pci/devices/$pf0_pci/sriov_numvfs"
wait_for 30 "4 VFs again" numvfs_is 4
echo "ok: drift corrected (VLAN deleted, MTU changed, VFs removed by hand: back in $(($(now_ms) - start)) ms)"

# --- a lowering that would take a VF from a pod waits ---------------------------------------------
vf1_pci=$(basename "$(readlink "/sys/bus/pci/devices/$pf0_pci/virtfn1")")
wait_for 30 "VF 1's netdev" ls "/sys/bus/pci/devices/$vf1_pci/net"
vf1_net=$(ls "/sys/bus/pci/devices/$vf1_pci/net")
ip netns add pod1
ip link set "$vf1_net" netns pod1
kubectl patch spidernetworknodepolicy vm-vfs --type merge -p '{"spec":{"numVfs":2}}'
wait_for 30 "vm-vfs Pending naming $vf1_pci" reason_has vm-vfs "$vf1_pci"
phase_is vm-vfs Pending || fail "vm-vfs $(state vm-vfs)"
sleep 6 # a resync later: still waiting
numvfs_is 4 || fail "the VFs were lowered while one is in a pod"
echo "ok: numVfs 4 -> 2 waits while $vf1_pci is in a pod: $(state vm-vfs | jq -r .reason)"
ip netns del pod1
wait_for 60 "2 VFs once the pod let go" numvfs_is 2
wait_for 30 "vm-vfs Applied at generation 2" bash -c "kubectl get spidernodeinventory $node -o json |
    jq -e '.status.policies[\"vm-vfs\"] | .phase == \"Applied\" and .generation == 2'"
echo "ok: lowered to 2 once the VF came back"

# --- a deleted policy: what it made stays while used, goes when unused ----------------------------
ip netns add pod2
ip link add link bond0.100 name mv0 type macvlan mode bridge
ip link set mv0 netns pod2
kubectl delete spidernetworknodepolicy vm-bond
wait_for 30 "vm-bond Removing, waiting on the pod's macvlan" reason_has vm-bond "macvlan mv0 in /run/netns/pod2"
phase_is vm-bond Removing || fail "vm-bond $(state vm-bond)"
link_exists bond0.100 && link_exists bond0 || fail "removed while in use"
echo "ok: vm-bond deleted: $(state vm-bond | jq -r .reason)"
# The agent restarted mid-removal carries on from its report.
kill "$agent"
wait "$agent" || :
start_agent
sleep 3
link_exists bond0.100 || fail "bond0.100 removed by the restarted agent while in use"
ip netns del pod2
wait_for 60 "bond0.100 removed" link_gone bond0.100
wait_for 30 "bond0 removed" link_gone bond0
wait_for 30 "vm-bond gone from the report" gone vm-bond
link_exists "$pf1" || fail "$pf1 is gone"
kubectl get events -n default --field-selector reason=Removed -o json |
    jq -e --arg n "$node" '[.items[] | select((.note // .message) | contains("node " + $n))] | length >= 1' >/dev/null ||
    fail "no Removed Event naming $node"
echo "ok: bond0 and bond0.100 removed once unused (after an agent restart), $pf1 left in place, Removed Event"

start=$(now_ms)
kubectl delete spidernetworknodepolicy vm-vfs
wait_for 60 "VFs back to 0" numvfs_is 0
wait_for 30 "vm-vfs gone from the report" gone vm-vfs
echo "ok: vm-vfs deleted: $pf0 back to 0 VFs in $(($(now_ms) - start)) ms"

kill "$agent" "$controller" 2>/dev/null || :
echo "PASS: node policies from the API server on a real kernel"
