#!/usr/bin/env bash
# Usage: hack/vm-cluster-test.sh GUEST_SCRIPT HOST_SCRIPT   (also: hack/vm-test.sh --cluster ...)
# The VM tier with the API server. Brings the control plane up on the host (or uses $KUBECONFIG),
# applies the chart's CRDs, creates a Node object for the guest (labelled
# spiderpool.spidernet.io/vm=true), and boots the hack/vm-test.sh guest (a real kernel with SR-IOV
# PFs) with /etc/spiderpool/kubeconfig reaching that API server and its node name in
# /etc/spiderpool/node-name; kubectl is on its PATH beside the project's binaries. The guest
# reaches the host's loopback through QEMU's user network (10.0.2.2 there; the server certificate
# names it) on a third NIC, so the igb PFs stay free to be bonded; nothing leaves the machine.
# HOST_SCRIPT runs on the host at the same time with KUBECONFIG and SPIDERPOOL_VM_NODE set; the run
# passes when both exit 0.
# Environment: SPIDERPOOL_BIN_DIR (the project's binaries for the guest), KUBECONFIG (an API server
# on the host's loopback; default: hack/control-plane.sh up, and down afterwards), and what
# hack/vm-test.sh takes.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 GUEST_SCRIPT HOST_SCRIPT" >&2; exit 125; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
guest_script=$1 host_script=$2
[ -f "$host_script" ] || { echo "vm-cluster-test: no host script $host_script" >&2; exit 125; }
kubectl=$("$repo/hack/control-plane.sh" bin)/kubectl
[ -x "$kubectl" ] || { echo "vm-cluster-test: no kubectl at $kubectl (hack/control-plane.sh build)" >&2; exit 125; }
work=$(mktemp -d "${TMPDIR:-/tmp}/vm-cluster.XXXXXX")
started_control_plane=false
cleanup() {
    rm -rf "$work"
    if $started_control_plane; then "$repo/hack/control-plane.sh" down >/dev/null 2>&1 || :; fi
}
trap cleanup EXIT
if [ -z "${KUBECONFIG:-}" ]; then
    KUBECONFIG=$("$repo/hack/control-plane.sh" up)
    started_control_plane=true
fi
export KUBECONFIG
server=$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
case $server in
https://127.0.0.1:*) port=${server##*:} ;;
*) echo "vm-cluster-test: the API server must listen on the host's loopback, not $server" >&2; exit 125 ;;
esac
node=spiderpool-vm
"$kubectl" apply --server-side --force-conflicts -f "$repo/charts/spiderpool/crds/" >/dev/null
"$kubectl" delete node "$node" --ignore-not-found >/dev/null
# A report left by an earlier run would look like this run's agent.
"$kubectl" delete spidernodeinventory "$node" --ignore-not-found >/dev/null
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $node
  labels: {spiderpool.spidernet.io/vm: "true"}
YAML
sed "s#server: https://127.0.0.1:$port\$#server: https://10.0.2.2:$port#" "$KUBECONFIG" >"$work/kubeconfig"
echo "$node" >"$work/node-name"
mkdir "$work/bin"
if [ -n "${SPIDERPOOL_BIN_DIR:-}" ]; then cp -a "$SPIDERPOOL_BIN_DIR"/. "$work/bin"/; fi
strip -o "$work/bin/kubectl" "$kubectl" 2>/dev/null || cp "$kubectl" "$work/bin/kubectl"

PATH=$(dirname "$kubectl"):$PATH SPIDERPOOL_VM_NODE=$node timeout "${VM_TIMEOUT:-600}" bash "$host_script" \
    > >(sed -u 's/^/host: /') 2>&1 &
host_pid=$!
guest_rc=0
VM_MGMT_NIC=1 VM_MEM=${VM_MEM:-2G} SPIDERPOOL_BIN_DIR=$work/bin \
    VM_FILES="$work/kubeconfig:/etc/spiderpool/kubeconfig $work/node-name:/etc/spiderpool/node-name" \
    "$repo/hack/vm-test.sh" "$guest_script" || guest_rc=$?
if [ "$guest_rc" != 0 ]; then
    # The host side waits for the guest's steps: it cannot pass now.
    kill "$host_pid" 2>/dev/null || :
fi
host_rc=0
wait "$host_pid" || host_rc=$?
"$kubectl" delete node "$node" --ignore-not-found >/dev/null || :
echo "vm-cluster-test: guest exited $guest_rc, host script exited $host_rc"
[ "$guest_rc" = 0 ] && [ "$host_rc" = 0 ]
