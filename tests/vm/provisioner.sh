#!/bin/bash
# VM tier, provisioner: `spiderpool-agent apply` on real igb PFs: VFs with trust/spoofchk, an
# active-backup bond of both PFs with VLAN 100, idempotence, lowering numVfs, and apply times.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
inv() { spiderpool-agent inventory -o json; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
pf0=$(inv | jq -r '.nics[0].name')
pf1=$(inv | jq -r '.nics[1].name')
pf0_pci=$(inv | jq -r '.nics[0].pciAddress')

policy() { # NUMVFS PF-NAMES...
    local n=$1; shift
    local names
    names=$(printf '"%s",' "$@")
    cat <<YAML
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetworkNodePolicy
metadata: {name: vm-pfs}
spec:
  nicSelector: {pfNames: [${names%,}]}
  numVfs: $n
  vf: {trust: true, spoofChk: false}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetworkNodePolicy
metadata: {name: vm-bond}
spec:
  bonds:
  - name: bond0
    mode: active-backup
    options: {miimon: "100"}
    mtu: 9000
    members: [$pf0, $pf1]
    vlans: [{id: 100}]
YAML
}

policy 4 "$pf0" > /tmp/p1.yaml
start=$(now_ms)
spiderpool-agent apply -f /tmp/p1.yaml | tee /tmp/apply1.log
echo "figure: first apply (PF0 4 VFs + bond + VLAN) took $(( $(now_ms) - start )) ms"

[ "$(cat "/sys/bus/pci/devices/$pf0_pci/sriov_numvfs")" = 4 ] || fail "sriov_numvfs is not 4"
echo "ok: $pf0 has 4 VFs"
ip -d -j link show "$pf0" | jq -e '[.[0].vfinfo_list[] | select(.trust == true and .spoofchk == false)] | length == 4' > /dev/null \
    || { ip -d -j link show "$pf0" | jq '.[0].vfinfo_list'; fail "VF trust/spoofchk"; }
echo "ok: all 4 VFs trust on, spoofchk off (ip -d -j link)"
[ "$(cut -d' ' -f1 /sys/class/net/bond0/bonding/mode)" = active-backup ] || fail "bond0 mode"
[ "$(cat /sys/class/net/bond0/bonding/miimon)" = 100 ] || fail "bond0 miimon"
for pf in "$pf0" "$pf1"; do grep -qw "$pf" /sys/class/net/bond0/bonding/slaves || fail "$pf not in bond0"; done
for l in bond0 "$pf0" "$pf1"; do [ "$(cat "/sys/class/net/$l/mtu")" = 9000 ] || fail "$l mtu $(cat "/sys/class/net/$l/mtu")"; done
echo "ok: bond0 active-backup, miimon 100, MTU 9000 (slaves too), slaves $pf0 $pf1"
ip -d -j link show bond0.100 | jq -e '.[0].linkinfo.info_kind == "vlan" and .[0].linkinfo.info_data.id == 100
    and (.[0].ifalias | startswith("spiderpool:"))' > /dev/null || fail "bond0.100"
echo "ok: bond0.100 is VLAN 100 on bond0, marked as ours"

start=$(now_ms)
spiderpool-agent apply -f /tmp/p1.yaml | tee /tmp/apply2.log
echo "figure: no-op apply took $(( $(now_ms) - start )) ms"
grep -q "^plan (0 actions)" /tmp/apply2.log || fail "a second apply planned something"
grep -q "^applied 0 actions" /tmp/apply2.log || fail "a second apply did something"
echo "ok: applying again does nothing"

# Drift: someone turns trust off; the agent's watch loop turns it back on.
ip link set "$pf0" vf 0 trust off
spiderpool-agent apply -f /tmp/p1.yaml --watch 1 > /tmp/watch.log 2>&1 &
watcher=$!
for _ in $(seq 30); do
    ip -d -j link show "$pf0" | jq -e '.[0].vfinfo_list[0].trust == true' > /dev/null && break
    sleep 0.2
done
kill "$watcher"
wait "$watcher" || fail "apply --watch did not exit 0 on SIGTERM (it stops after the round it is in)"
ip -d -j link show "$pf0" | jq -e '.[0].vfinfo_list[0].trust == true' > /dev/null || fail "drift not corrected"
echo "ok: drift (trust turned off by hand) corrected by apply --watch, which stops cleanly on SIGTERM"

# A VF kubelet gave to a pod blocks lowering numVfs (its checkpoint says so) unless forced.
policy 2 "$pf0" > /tmp/p2.yaml
vf1_pci=$(inv | jq -r '.nics[0].sriov.vfs[1].pciAddress')
mkdir -p /var/lib/kubelet/device-plugins
cat > /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint <<JSON
{"Data":{"PodDeviceEntries":[{"PodUID":"p1","ContainerName":"c","ResourceName":"spidernet.io/igb_vfs",
 "DeviceIDs":{"-1":["$vf1_pci"]},"AllocResp":""}],"RegisteredDevices":{}},"Checksum":0}
JSON
spiderpool-agent apply -f /tmp/p2.yaml > /tmp/apply-busy.log
grep -q "pending: numVfs 4 -> 2 needs all VFs removed, and 1 in use: $vf1_pci" /tmp/apply-busy.log || { cat /tmp/apply-busy.log; fail "in-use VF did not block"; }
[ "$(cat "/sys/bus/pci/devices/$pf0_pci/sriov_numvfs")" = 4 ] || fail "VFs changed while in use"
echo "ok: lowering waits while kubelet's checkpoint holds a VF"
rm /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
spiderpool-agent apply -f /tmp/p2.yaml > /tmp/apply3.log
[ "$(cat "/sys/bus/pci/devices/$pf0_pci/sriov_numvfs")" = 2 ] || { cat /tmp/apply3.log; fail "lowering to 2"; }
ip -d -j link show "$pf0" | jq -e '[.[0].vfinfo_list[] | select(.trust == true)] | length == 2' > /dev/null || fail "settings after lowering"
echo "ok: lowered to 2 VFs, settings reapplied"

# deviceType vfio-pci: the VFs leave igbvf for vfio-pci (with their /dev/vfio groups).
modprobe vfio-pci
sed -e 's/  vf: {trust: true, spoofChk: false}/  vf: {trust: true, spoofChk: false}\n  deviceType: vfio-pci/' /tmp/p2.yaml > /tmp/p2v.yaml
spiderpool-agent apply -f /tmp/p2v.yaml > /tmp/apply-vfio.log || { cat /tmp/apply-vfio.log; fail "vfio apply"; }
for vf in $(inv | jq -r '.nics[0].sriov.vfs[].pciAddress'); do
    [ "$(basename "$(readlink "/sys/bus/pci/devices/$vf/driver")")" = vfio-pci ] || { cat /tmp/apply-vfio.log; fail "$vf not on vfio-pci"; }
    group=$(basename "$(readlink "/sys/bus/pci/devices/$vf/iommu_group")")
    [ -c "/dev/vfio/$group" ] || fail "/dev/vfio/$group missing for $vf"
done
spiderpool-agent apply -f /tmp/p2v.yaml > /tmp/apply-vfio2.log
grep -q "^plan (0 actions)" /tmp/apply-vfio2.log || { cat /tmp/apply-vfio2.log; fail "vfio policy not idempotent"; }
echo "ok: deviceType vfio-pci binds the VFs (with /dev/vfio groups), idempotent"

# igb cannot set a VF's link state: the PF's status says so, with the kernel's reason.
sed -e 's/  vf: {trust: true, spoofChk: false}/  vf: {trust: true, spoofChk: false, linkState: enable}/' /tmp/p2v.yaml > /tmp/p2s.yaml
if spiderpool-agent apply -f /tmp/p2s.yaml > /tmp/apply-state.log; then fail "an unsupported link state was reported as applied"; fi
grep -q "^  $pf0: failed: .*link state.*Operation not supported" /tmp/apply-state.log || { cat /tmp/apply-state.log; fail "link state status"; }
echo "ok: an unsupported vf.linkState is a failed status with the kernel's reason"

# A bond nobody marked is left alone.
ip link add bond9 type bond mode balance-rr
sed 's/name: bond0/name: bond9/' /tmp/p2.yaml > /tmp/p3.yaml
if spiderpool-agent apply -f /tmp/p3.yaml > /tmp/apply4.log; then fail "a foreign bond was accepted"; fi
grep -q "bond9: failed: bond9 exists and was not created by spiderpool" /tmp/apply4.log || { cat /tmp/apply4.log; fail "foreign bond status"; }
[ "$(cut -d' ' -f1 /sys/class/net/bond9/bonding/mode)" = balance-rr ] || fail "bond9 was changed"
echo "ok: a foreign bond is reported and left alone"
ip link del bond9

# The benchmark case: both PFs x 7 VFs, with the bond and VLAN (from a node without them).
ip link del bond0
echo 0 > "/sys/bus/pci/devices/$pf0_pci/sriov_numvfs"
policy 7 "$pf0" "$pf1" > /tmp/p4.yaml
start=$(now_ms)
spiderpool-agent apply -f /tmp/p4.yaml > /tmp/apply5.log || { cat /tmp/apply5.log; fail "2 x 7 VFs"; }
echo "figure: apply 2 PFs x 7 VFs + bond + VLAN took $(( $(now_ms) - start )) ms ($(grep '^applied' /tmp/apply5.log))"
start=$(now_ms)
spiderpool-agent apply -f /tmp/p4.yaml > /tmp/apply6.log
echo "figure: no-op reconcile of it took $(( $(now_ms) - start )) ms ($(grep '^applied' /tmp/apply6.log))"
[ "$(inv | jq '[.nics[] | select(.sriov.numVfs == 7)] | length')" = 2 ] || fail "not 2 x 7 VFs"
# The RDMA subsystem's netns mode, through RDMA netlink; `rdma system show` is the witness.
modprobe ib_core
rdma system show | grep -q "netns shared" || fail "the guest does not start in shared mode: $(rdma system show)"
cat > /tmp/p5.yaml <<YAML
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetworkNodePolicy
metadata: {name: rdma-mode}
spec:
  rdma: {netnsMode: exclusive}
YAML
spiderpool-agent apply -f /tmp/p5.yaml > /tmp/apply-rdma.log || { cat /tmp/apply-rdma.log; fail "rdma netns apply"; }
rdma system show | grep -q "netns exclusive" || fail "rdma system show: $(rdma system show)"
[ "$(inv | jq -r .node.rdmaNetnsMode)" = exclusive ] || fail "inventory does not see exclusive"
spiderpool-agent apply -f /tmp/p5.yaml > /tmp/apply-rdma2.log
grep -q "^plan (0 actions)" /tmp/apply-rdma2.log || { cat /tmp/apply-rdma2.log; fail "rdma mode not idempotent"; }
sed -i 's/exclusive/shared/' /tmp/p5.yaml
spiderpool-agent apply -f /tmp/p5.yaml > /dev/null && rdma system show | grep -q "netns shared" || fail "back to shared"
echo "ok: rdma.netnsMode exclusive and back (rdma system show agrees; the inventory reads it from netlink)"
echo "provisioner VM tier passed"
