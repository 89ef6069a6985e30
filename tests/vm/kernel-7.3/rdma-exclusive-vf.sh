#!/bin/bash
# VM tier, exclusive RDMA with VFs on Debian experimental's 7.3 kernel (VM_KERNEL=7.3): two pods each
# get an igb VF from Debian's host-device with the spiderpool IPAM, make Soft-RoCE on it inside the
# pod (exclusive mode puts that device in the host's RDMA namespace), and the project's `rdma` step
# moves it into the pod. Inside, each pod sees only its own device, the host sees neither, RDMA RC
# traffic runs between the VF pods, a third pod asking for a held device is refused with code 102
# and leaks nothing, and DEL gives the devices back. (The VM's igbvf has no RDMA function of its own;
# a VF netdev moved into a pod deletes an rxe made on it in the host.)
set -euo pipefail
. /guest/lib.sh

fail() { echo "FAIL: $*" >&2; tail -n 20 /tmp/srv.log >&2 || true; exit 1; }
bin=/opt/spiderpool/bin
cni() { # PLUGIN COMMAND POD NETNS < netconf
    CNI_COMMAND=$2 CNI_CONTAINERID="ctr-$3" CNI_NETNS=$4 CNI_IFNAME=net1 CNI_PATH=$bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=ai;K8S_POD_NAME=$3" "$bin/$1"
}
modprobe rdma_rxe
modprobe rdma_ucm
# Exclusive mode can only be set while no other network namespace exists.
rdma system set netns exclusive
[ "$(rdma system show | awk '{print $2}')" = exclusive ] || fail "not in exclusive mode"
pf=$(spiderpool-agent inventory -o json | jq -r '.nics[0].name')
ip link set "$pf" up

pf_pci=$(spiderpool-agent inventory -o json | jq -r '.nics[0].pciAddress')
echo 2 > "/sys/bus/pci/devices/$pf_pci/sriov_numvfs"
for _ in $(seq 50); do
    [ "$(spiderpool-agent inventory -o json | jq '[.nics[0].sriov.vfs[] | select(.name != null)] | length')" = 2 ] && break
    sleep 0.2
done
declare -A vfname
for i in 0 1; do
    n=$(spiderpool-agent inventory -o json | jq -r ".nics[0].sriov.vfs[$i].name")
    ip link set "$pf" vf "$i" mac "$(cat /sys/class/net/$n/address)"
    vfname[pod$((i+1))]=$n
done
rdma_conf() { jq -nc --argjson p "$(cat "/tmp/$1.result")" '{cniVersion: "1.0.0", name: "rdma-net", type: "rdma", prevResult: $p}'; }
declare -A ip
for pod in pod1 pod2; do
    ip netns add "$pod"
    conf=$(jq -nc --arg d "${vfname[$pod]}" '{cniVersion: "1.0.0", name: "vf-net", type: "host-device", device: $d,
        ipam: {type: "spiderpool", dataDir: "/run/spiderpool/vf-excl",
               pools: [{name: "vf", subnet: "10.9.0.0/24", ips: ["10.9.0.10-10.9.0.12"]}]}}')
    out=$(echo "$conf" | cni host-device ADD "$pod" "/run/netns/$pod") || fail "host-device ADD $pod: $out"
    echo "$out" > "/tmp/$pod.result"
    ip[$pod]=$(echo "$out" | jq -r '.ips[0].address' | cut -d/ -f1)
    ip netns exec "$pod" ip link set net1 up
    ip netns exec "$pod" rdma link add "rx$pod" type rxe netdev net1
    rdma dev show "rx$pod" > /dev/null || fail "rx$pod not in the host's namespace"
    out=$(rdma_conf "$pod" | cni rdma ADD "$pod" "/run/netns/$pod") || fail "rdma ADD $pod: $out"
    [ "$(ip netns exec "$pod" rdma dev | awk '{print $2}')" = "rx$pod:" ] || fail "$pod sees: $(ip netns exec "$pod" rdma dev)"
    if rdma dev show "rx$pod" > /dev/null 2>&1; then fail "the host still sees rx$pod"; fi
done
echo "ok: each VF pod holds only its own RDMA device; the host sees neither"
ip netns exec pod1 ping -c 2 -W 2 "${ip[pod2]}" > /dev/null || fail "no IP between the VF pods"
out=$(rc_pingpong pod1 "${ip[pod1]}" rxpod1 pod2 "${ip[pod2]}" rxpod2) || fail "RDMA between the pods: $out"
echo "ok: 200 RDMA RC exchanges between the pods, each on the device it holds: $(echo "$out" | grep iters)"

ip netns add pod3
cp /tmp/pod1.result /tmp/pod3.result
if out=$(rdma_conf pod3 | cni rdma ADD pod3 /run/netns/pod3); then fail "pod3 got a device: $out"; fi
[ "$(echo "$out" | jq .code)" = 102 ] || fail "pod3's error: $out"
[ -z "$(ip netns exec pod3 rdma dev)" ] || fail "pod3 sees an RDMA device"
[ ! -e /var/lib/cni/spiderpool/rdma/ctr-pod3-net1 ] || fail "a record for pod3"
echo "ok: pod3 refused: $(echo "$out" | jq -r .msg)"
ip netns del pod3
for pod in pod1 pod2; do
    rdma_conf "$pod" | cni rdma DEL "$pod" "/run/netns/$pod" > /dev/null || fail "rdma DEL $pod"
    rdma dev show "rx$pod" > /dev/null || fail "rx$pod did not come back to the host"
    [ -z "$(ip netns exec "$pod" rdma dev)" ] || fail "$pod still sees a device"
    rdma_conf "$pod" | cni rdma DEL "$pod" "/run/netns/$pod" > /dev/null || fail "rdma DEL twice $pod"
done
echo "ok: DEL gives both devices back to the host (DEL twice is fine)"
echo "PASS: rdma-exclusive-vf"
