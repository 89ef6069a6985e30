#!/bin/bash
# VM tier, device plugin: `spiderpool-agent device-plugin` on real igb VFs and Soft-RoCE, driven by
# tests' fake-kubelet: registration, a VF pool and shared `spidernet.io/rdma`, Allocate, health
# following VF links, and VFs created while running. Runs as root in the guest of hack/vm-test.sh.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; tail -n 20 /tmp/kubelet.log /tmp/agent.log >&2 || true; exit 1; }
inv() { spiderpool-agent inventory -o json; }
. /guest/lib.sh
# wait_for DESCRIPTION SECONDS JQ-FILTER: until the kubelet log holds a line the filter selects.
wait_for() { if kubelet_saw "$2" "$3"; then echo "ok: $1"; else fail "$1 (within $2 s)"; fi; }
# The latest device list of a resource.
latest() { jq -c "select(.event == \"devices\" and .resource == \"$1\")" /tmp/kubelet.log | tail -n 1; }

pf=$(inv | jq -r '.nics[0].name')
pf_pci=$(inv | jq -r '.nics[0].pciAddress')
ip link set "$pf" up
echo 3 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
for _ in $(seq 50); do
    [ "$(inv | jq '[.nics[0].sriov.vfs[] | select(.name != null)] | length')" = 3 ] && break
    sleep 0.2
done
vf0=$(inv | jq -r '.nics[0].sriov.vfs[0].name')
vf1=$(inv | jq -r '.nics[0].sriov.vfs[1].name')
vf1_pci=$(inv | jq -r '.nics[0].sriov.vfs[1].pciAddress')
ip link set "$vf0" up
modprobe crc32_generic
modprobe rdma_rxe
modprobe rdma_ucm
rdma link add rxe0 type rxe netdev "$vf0"

start_device_plugin "resources:
- resourceName: rdma
  kind: rdma
  rdmaHcaMax: 4
  selectors: {pfNames: [\"$pf#0\"]}
- resourceName: igb_vfs
  selectors: {drivers: [igbvf]}"

wait_for "spidernet.io/rdma registered" 10 '.event == "register" and .resource == "spidernet.io/rdma" and .version == "v1beta1"'
wait_for "4 healthy shared RDMA slots" 5 \
    '.event == "devices" and .resource == "spidernet.io/rdma" and (.devices | length) == 4 and all(.devices[]; .health == "Healthy")'
wait_for "Allocate of a slot hands out rxe0's uverbs and rdma_cm" 5 \
    '.event == "allocate" and .resource == "spidernet.io/rdma" and (.devices | index("/dev/infiniband/rdma_cm")) != null and any(.devices[]; test("uverbs"))'
wait_for "VF pool of the two VFs without RDMA" 5 \
    ".event == \"devices\" and .resource == \"spidernet.io/igb_vfs\" and (.devices | length) == 2 and (.devices | map(.id) | index(\"$vf1_pci\")) != null"
wait_for "Allocate of a VF sets PCIDEVICE_SPIDERNET_IO_IGB_VFS" 5 \
    '.event == "allocate" and .resource == "spidernet.io/igb_vfs" and (.envs.PCIDEVICE_SPIDERNET_IO_IGB_VFS | length) > 0'

# Link health: up, then down -> Unhealthy, then up -> Healthy; five times, for the latency figure.
health_of() { latest spidernet.io/igb_vfs | jq -r ".devices[] | select(.id == \"$vf1_pci\") | .health"; }
# until_health STATE: waits up to 2 s, prints the ms it took from the kubelet log's stamp.
until_health() {
    local since=$1 want=$2 t
    for _ in $(seq 40); do
        t=$(jq -r "select(.event == \"devices\" and .resource == \"spidernet.io/igb_vfs\" and .t >= $since
                   and any(.devices[]; .id == \"$vf1_pci\" and .health == \"$want\")) | .t" /tmp/kubelet.log | head -n 1)
        [ -n "$t" ] && { echo $((t - since)); return 0; }
        sleep 0.05
    done
    fail "$vf1 did not turn $want within 2 s"
}
ip link set "$vf1" up
sleep 1.5
delays=()
for round in 1 2 3 4 5; do
    down_at=$(now_ms)
    ip link set "$vf1" down
    delays+=("$(until_health "$down_at" Unhealthy)")
    up_at=$(now_ms)
    ip link set "$vf1" up
    until_health "$up_at" Healthy > /dev/null
    sleep 0.5
done
echo "ok: $vf1 down -> Unhealthy and up -> Healthy, 5 rounds"
sorted=$(printf '%s\n' "${delays[@]}" | sort -n | tr '\n' ' ')
echo "figure: link down -> Unhealthy in ms (5 rounds, sorted): $sorted"

# More VFs while running: the pool grows without a restart (the kernel wants 0 in between).
rdma link delete rxe0
echo 0 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
echo 5 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
wait_for "5 VFs in the pool after sriov_numvfs 3 -> 5" 15 \
    '.event == "devices" and .resource == "spidernet.io/igb_vfs" and (.devices | length) == 5'

# A VF inside a pod (its netdev moved to another netns) still counts after a plugin restart.
vf_pod=$(inv | jq -r '[.nics[0].sriov.vfs[] | select(.name != null)][1].name')
ip netns add pod1
ip link set "$vf_pod" netns pod1
kill -TERM "$agent"
wait "$agent" || true
restart_at=$(now_ms)
spiderpool-agent device-plugin --config /tmp/dp.yaml 2>> /tmp/agent.log &
agent=$!
wait_for "registered again after a restart" 10 \
    ".event == \"register\" and .resource == \"spidernet.io/igb_vfs\" and .t >= $restart_at"
registered_at=$(jq -r "select(.event == \"register\" and .resource == \"spidernet.io/igb_vfs\" and .t >= $restart_at) | .t" /tmp/kubelet.log | head -n 1)
echo "figure: plugin start -> registered with kubelet in $((registered_at - restart_at)) ms"
wait_for "after a restart the pool still has 5 VFs, the one in a pod included" 10 \
    ".event == \"devices\" and .resource == \"spidernet.io/igb_vfs\" and .t >= $restart_at and (.devices | length) == 5"

kill -TERM "$agent"
wait "$agent" || true
[ -z "$(ls "$dir"/spidernet.io_* 2>/dev/null)" ] || fail "plugin sockets left after SIGTERM"
echo "ok: sockets removed on SIGTERM"
echo "device plugin VM tier passed"
