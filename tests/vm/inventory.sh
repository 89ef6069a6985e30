#!/bin/bash
# VM tier, inventory: real igb PFs and VFs, netlink VF settings and Soft-RoCE, as
# `spiderpool-agent inventory` sees them. Runs as root inside the guest of hack/vm-test.sh.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
inv() { spiderpool-agent inventory -o json; }
check() { # DESCRIPTION JQ-EXPRESSION (must print true)
    local got
    got=$(inv | jq -r "$2") || fail "$1: jq failed"
    [ "$got" = true ] || { inv | jq . >&2; fail "$1"; }
    echo "ok: $1"
}

spiderpool-agent inventory
check "two igb PFs 8086:10c9, 7 VFs possible, none configured" \
    '[.nics[] | select(.vendorId == "8086" and .deviceId == "10c9" and .driver == "igb"
        and .sriov.totalVfs == 7 and .sriov.numVfs == 0)] | length == 2'

pf=$(inv | jq -r '.nics[0].name')
pf_pci=$(inv | jq -r '.nics[0].pciAddress')
# The root complex as DRA's deviceattribute library derives it: the first directory under
# /sys/devices of the function's real path.
root=$(readlink -f "/sys/bus/pci/devices/$pf_pci" | cut -d/ -f4)
check "pcieRoot $root, from the real PCI tree" ".nics[0].pcieRoot == \"$root\" and (\"$root\" | test(\"^pci[0-9a-f]{4}:[0-9a-f]{2}$\"))"
check "no GPUs on this machine, and none near a NIC" '(.gpus // []) == [] and all(.nics[]; (.gpus // []) == [])'
ip link property add dev "$pf" altname sp-uplink0
check "altnames from netlink" '.nics[0].altNames == ["sp-uplink0"]' 
# igbvf finds the PF still in reset unless the PF is up first.
ip link set "$pf" up
echo 3 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
# igbvf binds asynchronously: wait for the three VF netdevs.
for _ in $(seq 50); do
    [ "$(inv | jq '[.nics[0].sriov.vfs[] | select(.name != null)] | length')" = 3 ] && break
    sleep 0.2
done
spiderpool-agent inventory
check "3 VFs under $pf with driver igbvf, PCI addresses and netdevs" \
    '.nics[0].sriov.numVfs == 3 and ([.nics[0].sriov.vfs[] | select(.driver == "igbvf"
        and (.pciAddress | test("^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]$")) and .name != null)] | length == 3)
        and ([.nics[0].sriov.vfs[].vfId] == [0, 1, 2])'
check "VFs are not NICs of their own" '(.nics | length) == 2'

# Netlink-only VF settings, as the PF holds them.
ip link set "$pf" vf 1 mac 02:00:00:aa:bb:01 vlan 100 spoofchk off trust on
check "VF 1 MAC, VLAN, trust and spoof check from netlink" \
    '.nics[0].sriov.vfs[1] | .mac == "02:00:00:aa:bb:01" and .vlan == 100 and .trust == true and .spoofChk == false'

vf=$(inv | jq -r '.nics[0].sriov.vfs[0].name')
ip link set "$vf" up
# rdma_rxe needs a crc32 it does not list (TCG's CPU has no PCLMUL: the generic one it is).
modprobe crc32_generic
modprobe rdma_rxe
modprobe rdma_ucm 2>/dev/null || true
rdma link add rxe0 type rxe netdev "$vf"
for _ in $(seq 50); do
    [ "$(cat /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null)" = "4: ACTIVE" ] && break
    sleep 0.2
done
spiderpool-agent inventory
check "rxe0: port 1 ACTIVE, Ethernet, on $vf, with its uverbs node" \
    ".rdmaDevices[] | select(.name == \"rxe0\") | .pciAddress == null and .ports[0].state == \"ACTIVE\"
        and .ports[0].linkLayer == \"Ethernet\" and .ports[0].netdev == \"$vf\"
        and any(.charDevices[]; test(\"^/dev/infiniband/uverbs[0-9]+$\"))"
check "the VF that carries rxe0 names it" '.nics[0].sriov.vfs[0].rdmaDevice == "rxe0"'
for node in $(inv | jq -r '.rdmaDevices[] | select(.name == "rxe0") | .charDevices[]'); do
    [ -c "$node" ] || fail "$node is not a character device in the guest"
done
echo "ok: every listed char device exists"
spiderpool-agent inventory -o yaml | grep -q "rdmaDevices:" || fail "YAML output"
check "a real kernel's sysfs gives no warnings" '.warnings == []'
check "node facts" '.node.cpus == 2 and .node.kernel != null and .node.memoryBytes > 0 and .node.rdmaNetnsMode == "shared"' 
echo "inventory VM tier passed"
