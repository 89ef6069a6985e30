#!/bin/bash
# VM tier, ifacer: the CNI plugin makes a bond of both igb PFs with VLAN 100 on the host, through
# the exec protocol, idempotently; Debian's ipvlan (with our IPAM) then runs on top in a pod
# netns; DEL leaves the shared host interfaces. Runs as root in the guest of hack/vm-test.sh.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
bin=/opt/spiderpool/bin
# cni PLUGIN COMMAND NETNS IFNAME < netconf: runs a plugin as a runtime would.
cni() {
    CNI_COMMAND=$2 CNI_CONTAINERID=ctr1 CNI_NETNS=$3 CNI_IFNAME=$4 CNI_PATH=$bin "$bin/$1"
}
[ -x "$bin/ipvlan" ] || fail "Debian's ipvlan plugin is not in the guest"
pf0=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
pf1=$(spiderpool-agent inventory -o json | jq -r '.nics[1].name')
conf=$(jq -nc --arg a "$pf0" --arg b "$pf1" '{cniVersion: "1.0.0", name: "bond-net", type: "ifacer",
    interfaces: [$a, $b], vlanID: 100, bond: {name: "sp_bond0", mode: 1, options: "miimon=100"}}')

out=$(echo "$conf" | cni ifacer ADD /var/run/netns/none eth0) || fail "ADD: $out"
[ "$(cut -d' ' -f1 /sys/class/net/sp_bond0/bonding/mode)" = active-backup ] || fail "bond mode"
[ "$(cat /sys/class/net/sp_bond0/bonding/miimon)" = 100 ] || fail "miimon"
for pf in "$pf0" "$pf1"; do grep -qw "$pf" /sys/class/net/sp_bond0/bonding/slaves || fail "$pf not enslaved"; done
ip -d -j link show sp_bond0.100 | jq -e '.[0].linkinfo.info_data.id == 100 and .[0].ifalias == "spiderpool:ifacer"' > /dev/null \
    || fail "sp_bond0.100"
echo "ok: ADD made sp_bond0 (active-backup, miimon 100, $pf0 $pf1) and VLAN sp_bond0.100"
before=$(ip -j link show | jq -c '[.[] | {ifname, ifindex}]')
out=$(echo "$conf" | cni ifacer ADD /var/run/netns/none eth0) || fail "second ADD: $out"
[ "$(ip -j link show | jq -c '[.[] | {ifname, ifindex}]')" = "$before" ] || fail "a second ADD changed links"
echo "ok: a repeated ADD changes nothing"
prev='{"cniVersion":"1.0.0","ips":[{"address":"10.9.9.9/24"}]}'
out=$(echo "$conf" | jq -c --argjson p "$prev" '. + {prevResult: $p}' | cni ifacer ADD /var/run/netns/none eth0)
echo "$out" | jq -e '.ips[0].address == "10.9.9.9/24"' > /dev/null || fail "prevResult not passed through: $out"
echo "ok: prevResult passes through"

# Debian's ipvlan with our IPAM on top of the VLAN, into a pod netns.
ip netns add pod1
ipvlan=$(jq -nc --arg d /run/spiderpool/vm '{cniVersion: "1.0.0", name: "ipvlan-net", type: "ipvlan",
    master: "sp_bond0.100", mode: "l2", ipam: {type: "spiderpool", dataDir: $d,
    pools: [{name: "v100", subnet: "10.100.0.0/24", ips: ["10.100.0.10-10.100.0.20"], gateway: "10.100.0.1"}]}}')
out=$(echo "$ipvlan" | cni ipvlan ADD /run/netns/pod1 net1) || fail "ipvlan ADD: $out"
ip -n pod1 -j addr show net1 | jq -e '.[0].addr_info[] | select(.local == "10.100.0.10")' > /dev/null || fail "pod address"
ip -n pod1 -d -j link show net1 | jq -e '.[0].linkinfo.info_kind == "ipvlan"' > /dev/null || fail "not ipvlan"
echo "ok: ipvlan on sp_bond0.100 in pod1 with 10.100.0.10 from spiderpool"
echo "$ipvlan" | cni ipvlan DEL /run/netns/pod1 net1 > /dev/null || fail "ipvlan DEL"

echo "$conf" | cni ifacer DEL "" eth0 > /dev/null || fail "ifacer DEL"
[ -e /sys/class/net/sp_bond0.100 ] && [ -e /sys/class/net/sp_bond0 ] || fail "DEL removed shared host interfaces"
echo "ok: DEL leaves the bond and the VLAN"

bad=$(echo "$conf" | jq -c '.interfaces = ["nosuch0"] | .bond.name = "sp_bond1"')
if out=$(echo "$bad" | cni ifacer ADD /var/run/netns/none eth0); then fail "a missing interface was accepted"; fi
echo "$out" | jq -e '.code == 7 and (.msg | contains("nosuch0"))' > /dev/null || fail "error JSON: $out"
[ ! -e /sys/class/net/sp_bond1 ] || fail "a failed ADD left a bond behind"
echo "ok: a missing interface is a code 7 error and leaves nothing"

# A NIC that carries one of the node's addresses (as a management or storage NIC does) is never
# enslaved: a dummy stands in for it (the guest's own user-network NIC has no route to lose).
ip link add sp_mgmt0 type dummy
ip addr add 192.0.2.10/24 dev sp_mgmt0
ip link set sp_mgmt0 up
bad=$(echo "$conf" | jq -c '.interfaces = ["sp_mgmt0"] | .bond.name = "sp_bond2" | del(.vlanID)')
if out=$(echo "$bad" | cni ifacer ADD /var/run/netns/none eth0); then fail "a NIC carrying the node's address was enslaved"; fi
echo "$out" | jq -e '.code == 7 and (.msg | contains("carries the node'"'"'s address 192.0.2.10/24"))' > /dev/null || fail "error JSON: $out"
[ ! -e /sys/class/net/sp_bond2 ] || fail "a refused ADD left a bond behind"
[ ! -e /sys/class/net/sp_mgmt0/master ] || fail "sp_mgmt0 was enslaved"
ip -j addr show sp_mgmt0 | jq -e '.[0].addr_info | any(.local == "192.0.2.10")' > /dev/null || fail "sp_mgmt0 lost its address"
ip link del sp_mgmt0
echo "ok: a NIC carrying the node's address is refused with code 7 and keeps it"
echo "ifacer VM tier passed"
