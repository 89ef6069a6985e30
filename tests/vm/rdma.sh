#!/bin/bash
# VM tier, RDMA and VFs inside pods (Debian's 6.12 kernel): a VF handed out by the device plugin's
# Allocate (its device-info file) moved into a pod by Debian's host-device with the spiderpool
# IPAM and the coordinator chained, as Multus runs it with the VF's PCI address; two such pods
# reach each other and the gateway; DEL gives each VF back under its own name and leaks nothing.
# Then the project's `rdma` step: refused in shared netns mode; in exclusive mode it finds the
# Soft-RoCE device of the pod's VF and the kernel refuses to move it (EOPNOTSUPP), which the
# plugin reports as a CNI error and leaves nothing behind.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; tail -n 20 /tmp/kubelet.log /tmp/agent.log >&2 || true; exit 1; }
bin=/opt/spiderpool/bin
cni() { # PLUGIN COMMAND CONTAINER NETNS IFNAME < netconf
    CNI_COMMAND=$2 CNI_CONTAINERID=$3 CNI_NETNS=$4 CNI_IFNAME=$5 CNI_PATH=$bin "$bin/$1"
}
inv() { spiderpool-agent inventory -o json; }

pf=$(inv | jq -r '.nics[0].name')
pf_pci=$(inv | jq -r '.nics[0].pciAddress')
ip link set "$pf" up
ip addr add 10.0.2.15/24 dev "$pf"
echo 2 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
for _ in $(seq 50); do
    [ "$(inv | jq '[.nics[0].sriov.vfs[] | select(.name != null)] | length')" = 2 ] && break
    sleep 0.2
done
# The PF learns each VF's own MAC as its administrative one (it drops frames from any other, and
# igbvf takes a MAC set on the PF only when it probes again); a Soft-RoCE GUID follows the MAC.
declare -A vf_name vf_mac
for i in 0 1; do
    bdf=$(inv | jq -r ".nics[0].sriov.vfs[$i].pciAddress")
    vf_name[$bdf]=$(inv | jq -r ".nics[0].sriov.vfs[$i].name")
    vf_mac[$bdf]=$(cat "/sys/class/net/${vf_name[$bdf]}/address")
    ip link set "$pf" vf "$i" mac "${vf_mac[$bdf]}"
done
modprobe crc32_generic
modprobe rdma_rxe
modprobe rdma_ucm

# The device plugin hands out a VF; its Allocate writes the device-info file Multus reads.
. /guest/lib.sh
start_device_plugin "resources:
- resourceName: igb_vfs
  selectors: {drivers: [igbvf]}"
vf_a=$(first_allocation | jq -r .id)
[ -n "$vf_a" ] || fail "the device plugin allocated no VF"
info=/var/run/k8s.cni.cncf.io/devinfo/dp/spidernet.io-igb_vfs-$vf_a-device.json
[ "$(jq -r '.pci."pci-address"' "$info")" = "$vf_a" ] || fail "device-info file $info: $(cat "$info" 2>&1)"
echo "ok: Allocate handed out VF $vf_a and wrote $info"
kill "$agent"
for bdf in "${!vf_name[@]}"; do [ "$bdf" = "$vf_a" ] || vf_b=$bdf; done
# Soft-RoCE on the second VF: it does not survive the VF's move into a pod (below).
rdma link add rxe0 type rxe netdev "${vf_name[$vf_b]}"

# The chain Multus runs for a network with resourceName: host-device gets the VF's PCI address
# (pciBusID; Multus also sets deviceID), spiderpool allocates, the coordinator routes.
ipam='{"type": "spiderpool", "dataDir": "/run/spiderpool/rdma",
       "pools": [{"name": "vfs", "subnet": "10.0.2.0/24", "ips": ["10.0.2.120-10.0.2.121"], "gateway": "10.0.2.2"}]}'
add_pod() { # NAME VF
    ip netns add "$1"
    local hd coord result out
    hd=$(jq -nc --arg pci "$2" --argjson ipam "$ipam" \
        '{cniVersion: "1.0.0", name: "vf-net", type: "host-device", pciBusID: $pci, deviceID: $pci, ipam: $ipam}')
    result=$(echo "$hd" | cni host-device ADD "ctr-$1" "/run/netns/$1" net1) || fail "host-device ADD $1: $result"
    coord=$(jq -nc --argjson p "$result" '{cniVersion: "1.0.0", name: "vf-net", type: "coordinator", prevResult: $p}')
    out=$(echo "$coord" | cni coordinator ADD "ctr-$1" "/run/netns/$1" net1) || fail "coordinator ADD $1: $out"
    echo "$result" > "/tmp/$1.result"
}
del_pod() { # NAME VF NETNS
    local hd coord
    hd=$(jq -nc --arg pci "$2" --argjson ipam "$ipam" \
        '{cniVersion: "1.0.0", name: "vf-net", type: "host-device", pciBusID: $pci, deviceID: $pci, ipam: $ipam}')
    coord=$(jq -nc --argjson p "$(cat "/tmp/$1.result")" '{cniVersion: "1.0.0", name: "vf-net", type: "coordinator", prevResult: $p}')
    echo "$coord" | cni coordinator DEL "ctr-$1" "$3" net1 > /dev/null || fail "coordinator DEL $1"
    echo "$hd" | cni host-device DEL "ctr-$1" "$3" net1 > /dev/null || fail "host-device DEL $1"
}
add_pod pod1 "$vf_a"
add_pod pod2 "$vf_b"
ip_of() { jq -r '.ips[0].address' "/tmp/$1.result" | cut -d/ -f1; }
[ "$(ip -n pod1 -j link show net1 | jq -r '.[0].address')" = "${vf_mac[$vf_a]}" ] || fail "pod1's net1 is not VF $vf_a"
[ -z "$(ls "/sys/bus/pci/devices/$vf_a/net/" 2>/dev/null)" ] || fail "VF $vf_a is still on the host"
ip netns exec pod1 ping -c 2 -W 3 "$(ip_of pod2)" > /dev/null || fail "pod1 cannot reach pod2 across VFs of one PF"
ip netns exec pod2 ping -c 2 -W 3 "$(ip_of pod1)" > /dev/null || fail "pod2 cannot reach pod1"
ip netns exec pod1 ping -c 1 -W 3 10.0.2.2 > /dev/null || fail "pod1 cannot reach the gateway"
echo "ok: pods on VFs $vf_a and $vf_b of $pf reach each other and the gateway 10.0.2.2"
if rdma dev show rxe0 > /dev/null 2>&1; then fail "rxe0 outlived its netdev's move"; fi
echo "ok: the kernel removed rxe0 when its VF netdev moved into pod2 (Soft-RoCE follows no netdev across namespaces)"

# rdma in shared mode: refused, saying why.
[ "$(rdma system show | awk '{print $2}')" = shared ] || fail "not in shared mode at start"
rdma_conf() { jq -nc --argjson p "$(cat "/tmp/$1.result")" '{cniVersion: "1.0.0", name: "vf-net", type: "rdma", prevResult: $p}'; }
if out=$(rdma_conf pod1 | cni rdma ADD ctr-pod1 /run/netns/pod1 net1); then fail "rdma ADD in shared mode: $out"; fi
[ "$(echo "$out" | jq .code)" = 102 ] && echo "$out" | jq -r .msg | grep -q "shared netns mode" || fail "shared mode error: $out"
echo "ok: rdma in shared mode: $(echo "$out" | jq -r .msg | cut -c1-110)..."

del_pod pod1 "$vf_a" /run/netns/pod1
del_pod pod2 "$vf_b" /run/netns/pod2
ip netns del pod1
ip netns del pod2
sleep 1
for bdf in "$vf_a" "$vf_b"; do
    name=$(ls "/sys/bus/pci/devices/$bdf/net/" 2>/dev/null)
    [ "$name" = "${vf_name[$bdf]}" ] || fail "VF $bdf came back as '$name', not ${vf_name[$bdf]}"
done
echo "ok: DEL gave VFs $vf_a and $vf_b back as ${vf_name[$vf_a]} and ${vf_name[$vf_b]}"

# Exclusive mode (only switchable with no other namespace): the rdma step finds the pod VF's
# Soft-RoCE device by the GUID its MAC gives and asks the kernel to move it.
rdma system set netns exclusive
[ "$(rdma system show | awk '{print $2}')" = exclusive ] || fail "exclusive mode not set"
# The pool has two addresses: both pods get one again, so DEL released both.
add_pod pod3 "$vf_b"
add_pod pod4 "$vf_a"
echo "ok: the pool's two addresses were released by DEL and handed out again"
# Soft-RoCE made on the pod's VF from inside the pod's namespace belongs to the host's RDMA
# namespace even in exclusive mode: the pod sees none, and the rdma step must move it.
ip netns exec pod3 rdma link add rxe0 type rxe netdev net1
rdma dev show rxe0 > /dev/null || fail "rxe0 is not in the host's namespace"
[ -z "$(ip netns exec pod3 rdma dev)" ] || fail "pod3 sees rxe0 before the rdma step"
echo "ok: Soft-RoCE made from inside the pod lands in the host's RDMA namespace"
if out=$(rdma_conf pod3 | cni rdma ADD ctr-pod3 /run/netns/pod3 net1); then fail "rdma ADD of rxe0: $out"; fi
echo "$out" | jq -r .msg | grep -q "the kernel cannot move RDMA device rxe0" || fail "exclusive-mode error: $out"
echo "ok: rdma in exclusive mode found rxe0 by the pod VF's MAC; the kernel refused: $(echo "$out" | jq -r .msg)"
rdma dev show rxe0 > /dev/null || fail "rxe0 left the host's namespace"
[ -z "$(ls /var/lib/cni/spiderpool/rdma/ 2>/dev/null)" ] || fail "rdma kept state after a failed ADD"
[ -z "$(ip netns exec pod3 rdma dev)" ] || fail "pod3 sees an RDMA device"
rdma_conf pod3 | cni rdma DEL ctr-pod3 /run/netns/pod3 net1 > /dev/null || fail "rdma DEL"
rdma_conf pod3 | cni rdma DEL ctr-pod3 "" net1 > /dev/null || fail "rdma DEL without a netns"
# With the VF's PCI address (Multus' deviceID): igbvf has no RDMA function of its own.
conf=$(rdma_conf pod3 | jq -c --arg d "$vf_b" '. + {deviceID: $d}')
if out=$(echo "$conf" | cni rdma ADD ctr-pod3 /run/netns/pod3 net1); then fail "rdma ADD by deviceID: $out"; fi
echo "$out" | jq -r .msg | grep -q "no RDMA device of PCI device $vf_b" || fail "deviceID error: $out"
echo "ok: by deviceID: $(echo "$out" | jq -r .msg)"
rdma link del rxe0
del_pod pod3 "$vf_b" /run/netns/pod3
ip netns del pod3
# A runtime that lost the namespace: the kernel hands a dead namespace's VF back to the host
# under its pod name (host-device has nothing to rename it from), and DEL still releases it.
ip netns del pod4
sleep 1
name=$(ls "/sys/bus/pci/devices/$vf_a/net/" 2>/dev/null)
[ -n "$name" ] || fail "VF $vf_a did not come back from the deleted namespace"
del_pod pod4 "$vf_a" ""
add_pod pod5 "$vf_a"
del_pod pod5 "$vf_a" /run/netns/pod5
ip netns del pod5
echo "ok: DEL without a namespace: VF $vf_a came back as $name, its address was released and it serves the next pod"
# The kernel refuses a mode change (EBUSY) while a network namespace other than the host's exists,
# and a deleted one goes asynchronously: CI once ran this right after `ip netns del pod5` and failed.
for _ in $(seq 50); do rdma system set netns shared 2>/dev/null && break; sleep 0.2; done
[ "$(rdma system show | awk '{print $2}')" = shared ] || fail "RDMA netns mode not back to shared"
echo "PASS: VFs in pods through a CNI chain; the rdma step's refusals on a real kernel"
