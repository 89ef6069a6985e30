#!/bin/bash
# VM tier, the agent's `verbs` and `udev` features (the guest's spiderpool-agent-verbs-udev, built
# with both; spiderpool-agent is the default build) on Debian's 6.12 kernel:
# - verbs: a Soft-RoCE device is usable through libibverbs; with its /dev/infiniband/uverbs node
#   gone (an agent container without the device mounted) sysfs still says ACTIVE, the inventory
#   says UNUSABLE and why, and the device plugin turns the shared RDMA resource Unhealthy, then
#   Healthy again when the node is back;
# - udev: with a rescan period of 10 minutes, an RDMA device made or deleted and VFs created show in
#   the device plugin's ListAndWatch within 2 s, woken by libudev's events; the default build, which
#   has only link events, misses the RDMA device.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; tail -n 20 /tmp/kubelet.log /tmp/agent.log >&2 || true; exit 1; }
full=spiderpool-agent-verbs-udev
. /guest/lib.sh
# wait_for DESCRIPTION SECONDS JQ-FILTER: whether the kubelet log holds such a line within SECONDS.
wait_for() { kubelet_saw "$2" "$3" && echo "ok: $1"; }
rdma_devices() { # the latest device list of spidernet.io/rdma
    jq -c 'select(.event == "devices" and .resource == "spidernet.io/rdma")' /tmp/kubelet.log | tail -n 1
}
start_plugin() { # AGENT RESYNC_MS
    : > /tmp/kubelet.log
    fake-kubelet /var/lib/kubelet/device-plugins > /tmp/kubelet.log 2>&1 &
    kubelet=$!
    sleep 0.3
    "$1" device-plugin --resync-ms "$2" 2> /tmp/agent.log &
    agent=$!
    wait_for "$1 registered spidernet.io/rdma" 10 '.event == "register" and .resource == "spidernet.io/rdma"' ||
        fail "$1 did not register"
}
stop_plugin() {
    kill "$agent" "$kubelet"
    wait "$agent" "$kubelet" 2>/dev/null || true
}
mkdir -p /var/lib/kubelet/device-plugins

pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
pf_pci=$(spiderpool-agent inventory -o json | jq -r '.nics[0].pciAddress')
ip link set "$pf" up
modprobe crc32_generic
modprobe rdma_rxe
modprobe rdma_ucm
rdma link add rxe0 type rxe netdev "$pf"

echo "--- verbs: what a process that opens the device finds, beside what sysfs says"
"$full" inventory -o json | jq -c '.rdmaDevices[] | {name, state: .ports[0].state, verbs}'
[ "$("$full" inventory -o json | jq -r '.rdmaDevices[] | select(.name == "rxe0") | .verbs.usable')" = true ] ||
    fail "rxe0 is not usable through verbs"
[ "$(spiderpool-agent inventory -o json | jq -c '.rdmaDevices[] | select(.name == "rxe0") | .verbs')" = null ] ||
    fail "the default build checked verbs"
uverbs=$(basename "$(dirname "$(grep -l '^rxe0$' /sys/class/infiniband_verbs/*/ibdev | head -n 1)")")
[ -c "/dev/infiniband/$uverbs" ] || fail "no /dev/infiniband/$uverbs"
echo "ok: rxe0 usable through verbs ($uverbs); the default build does not check"

mv "/dev/infiniband/$uverbs" /tmp/uverbs-away
"$full" inventory | sed -n '/^RDMA/,/^$/p'
json=$("$full" inventory -o json | jq -c '.rdmaDevices[] | select(.name == "rxe0")')
echo "$json"
[ "$(echo "$json" | jq -r '.ports[0].state')" = ACTIVE ] || fail "sysfs no longer says ACTIVE: $json"
[ "$(echo "$json" | jq -r '.verbs.usable')" = false ] || fail "rxe0 without its uverbs node counted usable: $json"
echo "$json" | jq -r '.verbs.reason' | grep -q 'libibverbs does not list it' || fail "no reason given: $json"
"$full" inventory | grep -q 'UNUSABLE: libibverbs does not list it' || fail "the table does not say UNUSABLE"
echo "ok: sysfs says ACTIVE, the inventory says UNUSABLE and why"
mv /tmp/uverbs-away "/dev/infiniband/$uverbs"

echo "--- verbs: the device plugin's health follows it"
start_plugin "$full" 1000
wait_for "shared RDMA Healthy" 10 '.event == "devices" and .resource == "spidernet.io/rdma" and (.devices | length) > 0 and all(.devices[]; .health == "Healthy")' ||
    fail "shared RDMA not Healthy: $(rdma_devices)"
mv "/dev/infiniband/$uverbs" /tmp/uverbs-away
wait_for "shared RDMA Unhealthy without the uverbs node" 5 '.event == "devices" and .resource == "spidernet.io/rdma" and (.devices | length) > 0 and all(.devices[]; .health == "Unhealthy")' ||
    fail "shared RDMA stayed Healthy: $(rdma_devices)"
mv /tmp/uverbs-away "/dev/infiniband/$uverbs"
n=$(wc -l < /tmp/kubelet.log)
for _ in $(seq 100); do
    tail -n +"$((n + 1))" /tmp/kubelet.log | jq -e 'select(.event == "devices" and .resource == "spidernet.io/rdma" and all(.devices[]; .health == "Healthy"))' > /dev/null 2>&1 && break
    sleep 0.05
done
tail -n +"$((n + 1))" /tmp/kubelet.log | jq -e 'select(.event == "devices" and .resource == "spidernet.io/rdma" and all(.devices[]; .health == "Healthy"))' > /dev/null ||
    fail "shared RDMA did not come back Healthy: $(rdma_devices)"
echo "ok: Healthy again with the uverbs node back"
stop_plugin

echo "--- udev: events wake a device plugin whose rescan period is 10 minutes"
rdma link delete rxe0
# devices_after T0 COUNT SECONDS: a device list of spidernet.io/rdma with COUNT devices sent after T0.
devices_after() {
    wait_for "$4" "$3" ".event == \"devices\" and .resource == \"spidernet.io/rdma\" and .t >= $1 and (.devices | length) == $2"
}
start_plugin "$full" 600000
grep -q 'watching device events (kernel events from libudev)' /tmp/agent.log || fail "no device events watched"
sleep 1
t0=$(now_ms)
rdma link add rxe0 type rxe netdev "$pf"
devices_after "$t0" 100 2 "an RDMA device made: 100 shared slots" || fail "rxe0 made: no device list within 2 s"
took=$(($(jq -r "select(.event == \"devices\" and .t >= $t0) | .t" /tmp/kubelet.log | head -n 1) - t0))
echo "ok: rxe0 advertised ${took} ms after it was made"
grep -q 'device event: add infiniband/rxe0' /tmp/agent.log || fail "the agent did not log the udev event"
t0=$(now_ms)
rdma link delete rxe0
devices_after "$t0" 0 2 "an RDMA device deleted: no slots" || fail "rxe0 deleted: still advertised after 2 s"
echo "ok: rxe0 withdrawn $(($(jq -r "select(.event == \"devices\" and .t >= $t0) | .t" /tmp/kubelet.log | head -n 1) - t0)) ms after it was deleted"
t0=$(now_ms)
echo 2 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
for _ in $(seq 40); do grep -q 'device event: add pci/' /tmp/agent.log && break; sleep 0.05; done
grep 'device event: .* pci/' /tmp/agent.log | head -n 2
grep -q 'device event: add pci/' /tmp/agent.log || fail "VFs created: no pci add event within 2 s"
echo "ok: VFs created: pci add events $(($(now_ms) - t0)) ms or less after"
echo 0 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
stop_plugin

echo "--- the default build (link events only) misses an RDMA device being made"
start_plugin spiderpool-agent 600000
sleep 1
t0=$(now_ms)
rdma link add rxe0 type rxe netdev "$pf"
if devices_after "$t0" 100 3 "default build: rxe0 advertised"; then
    fail "the default build saw rxe0 within 3 s: then the udev test above proves nothing"
fi
echo "ok: the default build did not see rxe0 within 3 s (its next rescan is 10 minutes away)"
stop_plugin
echo "PASS: verbs-udev"
