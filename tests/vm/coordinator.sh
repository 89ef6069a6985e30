#!/bin/bash
# VM tier, coordinator with ipvlan (the host kernel of the netns tier has no ipvlan): Debian's
# ipvlan + spiderpool + coordinator on an igb PF whose QEMU user network answers for its gateway
# 10.0.2.2; the pod reaches its node through veth0, CHECK passes, DEL twice leaves the node clean.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
bin=/opt/spiderpool/bin
cni() { # PLUGIN COMMAND NETNS IFNAME < netconf
    CNI_COMMAND=$2 CNI_CONTAINERID=ctr-vm CNI_NETNS=$3 CNI_IFNAME=$4 CNI_PATH=$bin "$bin/$1"
}
pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
ip link set "$pf" up
ip addr add 10.0.2.15/24 dev "$pf" # the node's address on the uplink
ip netns add pod1
ipvlan=$(jq -nc --arg m "$pf" '{cniVersion: "1.0.0", name: "ipvlan-net", type: "ipvlan", master: $m, mode: "l2",
    ipam: {type: "spiderpool", dataDir: "/run/spiderpool-coord",
    pools: [{name: "slirp", subnet: "10.0.2.0/24", ips: ["10.0.2.100-10.0.2.110"], gateway: "10.0.2.2"}]}}')
result=$(echo "$ipvlan" | cni ipvlan ADD /run/netns/pod1 net1) || fail "ipvlan ADD: $result"
coord=$(jq -nc --argjson p "$result" '{cniVersion: "1.0.0", name: "ipvlan-net", type: "coordinator", prevResult: $p}')
out=$(echo "$coord" | cni coordinator ADD /run/netns/pod1 net1) || fail "coordinator ADD: $out"
echo "ok: ADD passed the conflict check and found gateway 10.0.2.2 answering"
ip -n pod1 link show veth0 > /dev/null || fail "no veth0 in the pod"
ip -n pod1 route get 10.0.2.15 | grep -q "dev veth0" || fail "the node is not routed through veth0"
ip netns exec pod1 ping -c 1 -W 2 10.0.2.15 > /dev/null || fail "the pod cannot reach its node"
echo "ok: the ipvlan pod reaches its node (10.0.2.15) through veth0"
echo "$coord" | cni coordinator CHECK /run/netns/pod1 net1 > /dev/null || fail "CHECK"
echo "ok: CHECK"
for ns in /run/netns/pod1 ""; do
    echo "$coord" | cni coordinator DEL "$ns" net1 > /dev/null || fail "coordinator DEL ($ns)"
    echo "$ipvlan" | cni ipvlan DEL "$ns" net1 > /dev/null || fail "ipvlan DEL ($ns)"
done
[ -z "$(ip -o link show | grep -o 'veth[0-9a-f]\{11\}')" ] || fail "a node veth is left"
[ -z "$(ip route show table 500)" ] || fail "routes left in table 500"
ip rule show | grep -q "lookup 500" && fail "rules left"
echo "ok: DEL twice leaves no veth, route or rule on the node"
echo "coordinator VM tier passed"
