#!/bin/bash
# VM tier, coordinator with ipvlan (the host kernel of the netns tier has no ipvlan): Debian's
# ipvlan + spiderpool + coordinator on an igb PF whose QEMU user network answers for its gateway
# 10.0.2.2 (the pod reaches its node through veth0, CHECK passes, DEL twice leaves the node clean),
# then the netns tier's two-NIC case with ipvlan on veth uplinks to gateway namespaces.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
bin=/opt/spiderpool/bin
cni() { # PLUGIN COMMAND NETNS IFNAME < netconf (container ID: $CNI_CONTAINERID, default ctr-vm)
    CNI_COMMAND=$2 CNI_CONTAINERID=${CNI_CONTAINERID:-ctr-vm} CNI_NETNS=$3 CNI_IFNAME=$4 CNI_PATH=$bin "$bin/$1"
}
pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
ip link set "$pf" up
ip addr add 10.0.2.15/24 dev "$pf" # the node's address on the uplink
ip netns add pod1
ipvlan=$(jq -nc --arg m "$pf" '{cniVersion: "1.0.0", name: "ipvlan-net", type: "ipvlan", master: $m, mode: "l2",
    ipam: {type: "spiderpool", dataDir: "/run/spiderpool/coord",
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
# The netns tier's two-NIC case with ipvlan: each NIC on its own uplink (a veth to a gateway
# namespace), NIC 2 answers a client behind its gateway by its own table.
setup_uplink() { # UPLINK GWNS GW-CIDR [CLIENT]
    ip netns add "$2"
    ip link add "$1" type veth peer name eth0 netns "$2"
    ip link set "$1" up
    ip -n "$2" addr add "$3" dev eth0
    ip -n "$2" link set eth0 up
    ip -n "$2" link set lo up
    [ -z "${4:-}" ] || ip -n "$2" addr add "$4" dev lo
}
setup_uplink up1 gw1 10.6.0.1/16
setup_uplink up2 gw2 10.7.0.1/24 172.16.2.1/32
ip addr add 10.6.0.254/16 dev up1
ip netns add pod2
pools_a='[{"name": "a", "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.6.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]}]'
pools_b='[{"name": "b", "subnet": "10.7.0.0/24", "ips": ["10.7.0.10-10.7.0.20"], "gateway": "10.7.0.1"}]'
nic() { # NAME MASTER POOLS
    jq -nc --arg n "$1" --arg m "$2" --argjson p "$3" '{cniVersion: "1.0.0", name: $n, type: "ipvlan", master: $m,
        mode: "l2", ipam: {type: "spiderpool", dataDir: "/run/spiderpool/coord2", pools: $p}}'
}
chain() { # NETCONF IFNAME
    local r c
    r=$(echo "$1" | CNI_CONTAINERID=pod2 cni ipvlan ADD /run/netns/pod2 "$2") || fail "ipvlan ADD $2: $r"
    c=$(jq -nc --argjson p "$r" '{cniVersion: "1.0.0", name: "n", type: "coordinator", prevResult: $p}')
    echo "$c" | CNI_CONTAINERID=pod2 cni coordinator ADD /run/netns/pod2 "$2" > /dev/null || fail "coordinator ADD $2"
    echo "$r"
}
chain "$(nic net-a up1 "$pools_a")" net1 > /dev/null
r2=$(chain "$(nic net-b up2 "$pools_b")" net2)
ip2=$(echo "$r2" | jq -r '.ips[0].address' | cut -d/ -f1)
for target in 10.6.0.1 10.7.0.1 10.6.0.254; do
    ip netns exec pod2 ping -c 1 -W 2 "$target" > /dev/null || fail "pod2 cannot reach $target"
done
echo "ok: two ipvlan NICs reach both gateways, and the node through veth0"
ip netns exec gw2 ping -c 1 -W 2 -I 172.16.2.1 "$ip2" > /dev/null || fail "no answer to the client behind gateway 2"
ip -n pod2 rule show | grep -q "from $ip2 lookup" || fail "no rule from $ip2"
echo "ok: a request arriving on NIC 2 ($ip2) is answered through NIC 2"
echo "coordinator VM tier passed"
