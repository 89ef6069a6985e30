#!/bin/bash
# Guest self-test for hack/vm-test.sh: the things the project's VM tests rely on.
# Run: hack/vm-test.sh hack/vm/selftest.sh
set -euo pipefail

fail() {
    echo "selftest: FAIL: $*" >&2
    exit 1
}
ok() { echo "selftest: ok: $*"; }
# wait_for SECONDS CMD...: true once CMD succeeds, polling every 0.1 s.
wait_for() {
    local n=$(($1 * 10))
    shift
    until "$@"; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.1
    done
}
netdev_of() {
    local n
    for n in "$1"/net/*; do [ -e "$n" ] && echo "${n##*/}" && return; done
}
has_netdev() { [ -n "$(netdev_of "$1")" ]; }

ip -V | grep -q iproute2 || fail "ip is not iproute2's (busybox's applet?)"
ok "ip is iproute2's"

# SR-IOV PFs.
pfs=()
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x8086 ] && [ "$(cat "$d/device")" = 0x10c9 ] && pfs+=("$d")
done
[ ${#pfs[@]} -eq 2 ] || fail "want 2 igb PFs (8086:10c9), found ${#pfs[@]}"
for pf in "${pfs[@]}"; do
    [ "$(cat "$pf/sriov_totalvfs")" = 7 ] || fail "$pf: sriov_totalvfs=$(cat "$pf/sriov_totalvfs"), want 7"
    [ "$(basename "$(readlink "$pf/driver")")" = igb ] || fail "$pf: driver is not igb"
    has_netdev "$pf" || fail "$pf: no netdev"
done
ok "2 igb PFs with sriov_totalvfs=7: ${pfs[*]##*/}"

# VFs: the PF must be up or igbvf finds its mailbox in reset.
pf=${pfs[0]}
pf_dev=$(netdev_of "$pf")
ip link set "$pf_dev" up
echo 3 >"$pf/sriov_numvfs"
[ "$(cat "$pf/sriov_numvfs")" = 3 ] || fail "sriov_numvfs did not become 3"
vf_devs=()
for i in 0 1 2; do
    wait_for 10 test -e "$pf/virtfn$i" || fail "no $pf/virtfn$i"
    vf=$(readlink -f "$pf/virtfn$i")
    [ "$(cat "$vf/vendor"):$(cat "$vf/device")" = 0x8086:0x10ca ] || fail "$vf is not an igb VF (8086:10ca)"
    [ "$(readlink -f "$vf/physfn")" = "$(readlink -f "$pf")" ] || fail "$vf/physfn does not point at $pf"
    wait_for 10 test -e "$vf/driver" || fail "$vf: no driver bound"
    [ "$(basename "$(readlink "$vf/driver")")" = igbvf ] || fail "$vf: driver is not igbvf"
    wait_for 10 has_netdev "$vf" || fail "$vf: no netdev under $vf/net"
    vf_devs+=("$(netdev_of "$vf")")
done
ok "3 VFs (igbvf) on $pf_dev: ${vf_devs[*]}"

# Soft-RoCE on a VF.
modprobe crc32_generic
modprobe crc32_pclmul 2>/dev/null || echo "selftest: note: crc32_pclmul not loadable on this CPU model"
modprobe rdma_rxe
ip link set "${vf_devs[0]}" up
rdma link add rxe0 type rxe netdev "${vf_devs[0]}"
port_active() { grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; }
wait_for 10 port_active || fail "rxe0 port 1 state: $(cat /sys/class/infiniband/rxe0/ports/1/state 2>&1)"
wait_for 5 test -c /dev/infiniband/uverbs0 || fail "no /dev/infiniband/uverbs0"
rdma link show | grep -q "rxe0/1 state ACTIVE" || fail "rdma link show: $(rdma link show)"
ibv_devinfo -d rxe0 | grep -q PORT_ACTIVE || fail "ibv_devinfo: $(ibv_devinfo -d rxe0 2>&1)"
ok "rxe0 on ${vf_devs[0]} is ACTIVE, uverbs0 present, ibv_devinfo sees it"

# Bond (active-backup) of two VFs, VLAN on top; checked through iproute2's JSON with jq.
ip link add bond-st type bond mode active-backup miimon 100
ip link set "${vf_devs[1]}" down
ip link set "${vf_devs[2]}" down
ip link set "${vf_devs[1]}" master bond-st
ip link set "${vf_devs[2]}" master bond-st
ip link set bond-st up
ip link add link bond-st name bond-st.100 type vlan id 100
ip link set bond-st.100 up
[ "$(ip -d -j link show bond-st | jq -r '.[0].linkinfo.info_data.mode')" = active-backup ] || fail "bond mode: $(ip -d link show bond-st)"
[ "$(ip -d -j link show bond-st.100 | jq -r '.[0].linkinfo.info_data.id')" = 100 ] || fail "vlan: $(ip -d link show bond-st.100)"
[ "$(ip -j link show master bond-st | jq length)" = 2 ] || fail "bond slaves: $(ip link show master bond-st)"
ok "bond-st (active-backup, 2 VF slaves) with VLAN 100"

# Network namespaces as the CNI plugins use them.
ip netns add sp-test
ip link add sp-dummy type dummy
ip link set sp-dummy netns sp-test
ip netns exec sp-test ip link show sp-dummy >/dev/null || fail "netns"
ok "netns (/run/netns) with a link moved in"

[ "$(echo '{"a":[1,2,3]}' | jq '.a | add')" = 6 ] || fail "jq"
ok "jq"

# The project's binaries: all their libraries are present (the loader resolves them without running them).
for b in /opt/spiderpool/bin/*; do
    [ -e "$b" ] || continue
    /lib64/ld-linux-x86-64.so.2 --list "$b" >/dev/null || fail "$b: $(/lib64/ld-linux-x86-64.so.2 --list "$b" 2>&1)"
    ok "$b loads"
done
echo "selftest: all passed"
