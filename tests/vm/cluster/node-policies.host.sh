#!/bin/bash
# VM tier with the API server, host side of tests/vm/cluster/node-policies.sh (run by
# `hack/vm-test.sh --cluster`): once the guest's agent reports its node, creates the two policies
# with kubectl and times kubectl apply -> Applied in the node's report and in the controller's
# counts; then waits for the guest to edit, drift and delete them, and checks from here what the
# API server holds: the policies' Events name the node, and the node reports nothing once the
# guest deleted them.
set -euo pipefail
node=$SPIDERPOOL_VM_NODE
fail() {
    echo "FAIL: $*" >&2
    kubectl get spidernetworknodepolicies -o wide >&2 || :
    kubectl get spidernodeinventory "$node" -o jsonpath='{.status.policies}' >&2 || :
    exit 1
}
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
wait_for() { # SECONDS WHAT CMD...
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "waited ${limit}s for: $what"
        sleep 0.1
    done
}
report() { kubectl get spidernodeinventory "$node" -o json; }
has_pfs() { report | jq -e '[.status.nics[]? | select(.driver == "igb")] | length == 2'; }
both_applied() {
    report | jq -e '.status.policies["vm-vfs"].phase == "Applied" and .status.policies["vm-bond"].phase == "Applied"'
}
counted() {
    kubectl get spidernetworknodepolicies vm-vfs vm-bond -o json |
        jq -e '[.items[] | select(.status.applied == 1 and .status.matched == 1)] | length == 2'
}
# Absence read from a list that succeeded: a kubectl that fails (the API server slow under load)
# prints nothing, which must not read as "deleted".
no_policies() {
    local names
    names=$(kubectl get spidernetworknodepolicy -o name) || return 1
    ! grep -q -e /vm-vfs -e /vm-bond <<<"$names"
}
reports_none() { report | jq -e '(.status.policies // {}) | length == 0'; }
events_name_node() { # REASON
    kubectl get events -n default --field-selector "reason=$1" -o json |
        jq -e --arg n "$node" '[.items[] | select((.note // .message) | contains("node " + $n))] | length >= 1'
}

kubectl delete spidernetworknodepolicy vm-vfs vm-bond --ignore-not-found >/dev/null
wait_for 300 "the guest's agent reporting $node with its two igb PFs" has_pfs
pfs=$(report | jq -c '[.status.nics[] | select(.driver == "igb")] | sort_by(.pciAddress)')
pf0=$(jq -r '.[0].name' <<<"$pfs")
pf1=$(jq -r '.[1].name' <<<"$pfs")

start=$(now_ms)
echo "applying at $(date -u +%FT%T.%6NZ)"
kubectl apply -f - <<YAML
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetworkNodePolicy
metadata: {name: vm-vfs}
spec:
  nodeSelector: {spiderpool.spidernet.io/vm: "true"}
  nicSelector: {pfNames: [$pf0]}
  numVfs: 4
  vf: {trust: true}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetworkNodePolicy
metadata: {name: vm-bond}
spec:
  nodeSelector: {spiderpool.spidernet.io/vm: "true"}
  bonds:
  - name: bond0
    mode: active-backup
    options: {miimon: "100"}
    mtu: 9000
    members: [$pf1]
    vlans: [{id: 100}]
  rdma: {netnsMode: exclusive}
YAML
wait_for 300 "both policies Applied in $node's report" both_applied
applied=$(($(now_ms) - start))
wait_for 60 "the controller's counts (matched 1, applied 1)" counted
echo "figure: kubectl apply -> both policies Applied in the node's report ${applied} ms, counted by the controller $(($(now_ms) - start)) ms (guest under TCG; the guest prints the igb driver's own 0 -> 4 VF time)"
kubectl get spidernetworknodepolicies -o wide
echo "what the node did, by its Events (time, policy, changes):"
kubectl get events -n default --field-selector reason=Applied -o json |
    jq -r '.items | sort_by(.eventTime)[] | "  \(.eventTime) \(.involvedObject.name): \(.message)"' 
events_name_node Applied || fail "no Applied Event naming $node"
echo "ok: read from the host: Applied on $node, counted 1/1, Applied Events name the node"

wait_for 500 "the guest to delete both policies" no_policies
wait_for 120 "$node to report no policy once what they made is removed" reports_none
events_name_node Removed || fail "no Removed Event naming $node"
events_name_node Pending || fail "no Pending Event (the waiting lowering) naming $node"
echo "ok: read from the host: the lowering's Pending and the removal's Removed Events name $node; it reports no policy"
