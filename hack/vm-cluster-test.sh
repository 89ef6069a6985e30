#!/usr/bin/env bash
# Usage: hack/vm-cluster-test.sh GUEST_SCRIPT KUBECONFIG
# Runs GUEST_SCRIPT in the hack/vm-test.sh guest (a real kernel with SR-IOV PFs) against the API
# server of KUBECONFIG, one on the host's loopback as `hack/control-plane.sh up` starts it. The
# guest reaches it through QEMU's user network, where 10.0.2.2 is the host's loopback (the
# server certificate names that address), on a third NIC so the igb PFs stay free to be bonded.
# The guest gets kubectl beside the project's binaries, and a kubeconfig for that address as the
# script's first argument.
# Environment: SPIDERPOOL_BIN_DIR (the project's binaries for the guest) and what hack/vm-test.sh takes.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 GUEST_SCRIPT KUBECONFIG" >&2; exit 125; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
script=$1 kubeconfig=$2
kubectl=$("$repo/hack/control-plane.sh" bin)/kubectl
[ -x "$kubectl" ] || { echo "vm-cluster-test: no kubectl at $kubectl (hack/control-plane.sh build)" >&2; exit 125; }
server=$("$kubectl" --kubeconfig "$kubeconfig" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
case $server in
https://127.0.0.1:*) port=${server##*:} ;;
*) echo "vm-cluster-test: the API server must listen on the host's loopback, not $server" >&2; exit 125 ;;
esac
guest_kubeconfig=$(sed "s#server: https://127.0.0.1:$port\$#server: https://10.0.2.2:$port#" "$kubeconfig")
bin=$(mktemp -d "${TMPDIR:-/tmp}/vm-cluster-bin.XXXXXX")
trap 'rm -rf "$bin"' EXIT
if [ -n "${SPIDERPOOL_BIN_DIR:-}" ]; then cp -a "$SPIDERPOOL_BIN_DIR"/. "$bin"/; fi
strip -o "$bin/kubectl" "$kubectl" 2>/dev/null || cp "$kubectl" "$bin/kubectl"
VM_MGMT_NIC=1 VM_MEM=${VM_MEM:-2G} SPIDERPOOL_BIN_DIR=$bin "$repo/hack/vm-test.sh" "$script" "$guest_kubeconfig"
