#!/usr/bin/env bash
# The chart against the control-plane tier's real API server:
#   helm lint and helm template for the default values and every charts/spiderpool/ci/*-values.yaml;
#   every rendered object applied with server-side dry-run;
#   helm install, then helm upgrade with changed values;
#   rdma-resource-inject: pods dry-run against the installed MutatingAdmissionPolicy;
#   RBAC: what each ServiceAccount may and may not do (kubectl auth can-i --as, i.e. SubjectAccessReviews).
# usage: hack/test-chart.sh KUBECONFIG   (hack/test.sh runs it after hack/control-plane.sh up)
set -euo pipefail
cd "$(dirname "$0")/.."
kubeconfig=${1:?usage: hack/test-chart.sh KUBECONFIG}
helm=$(hack/control-plane.sh helm)
kubectl="$(hack/control-plane.sh bin)/kubectl --kubeconfig $kubeconfig"
chart=charts/spiderpool
ns=spiderpool-chart-test
release=sp
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HELM_CACHE_HOME=$work/helm-cache HELM_CONFIG_HOME=$work/helm-config HELM_DATA_HOME=$work/helm-data

failures=0
run() { # run DESCRIPTION CMD...: runs CMD; a failure is counted and shown, the checks go on
    local desc=$1; shift
    if "$@" >"$work/out" 2>&1; then
        echo "  ok    $desc"
    else
        echo "  FAIL  $desc"
        sed 's/^/        /' "$work/out" | head -20
        failures=$((failures + 1))
    fi
}

$kubectl apply --server-side --force-conflicts -f "$chart/crds/" -f tests/fixtures/crds/servicemonitor-stub.yaml -f tests/fixtures/crds/calico-ippool-stub.yaml >/dev/null
$kubectl wait --for condition=established --timeout=30s crd --all >/dev/null
# The cluster tests apply the admission policies themselves; the chart must own them here.
$kubectl delete validatingadmissionpolicybinding,validatingadmissionpolicy spiderpool-ipv6-ranges \
    spiderpool-pool-inside-subnet spiderpool-subnet-covers-pools spiderpool-subnets-disjoint --ignore-not-found >/dev/null
$kubectl create namespace "$ns" --dry-run=client -o yaml | $kubectl apply -f - >/dev/null

# helm template checks kubeVersion against this (it cannot ask a server).
server_version=$($kubectl get --raw /version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
echo "API server $server_version"
value_sets=(default)
for f in "$chart"/ci/*-values.yaml; do value_sets+=("$f"); done
for values in "${value_sets[@]}"; do
    name=$(basename "$values" -values.yaml)
    args=()
    [ "$values" = default ] || args=(-f "$values")
    echo "values: $name"
    run "helm lint" "$helm" lint --strict "$chart" "${args[@]}"
    run "helm template" "$helm" template "$release" "$chart" -n "$ns" --kube-version "$server_version" "${args[@]}" --output-dir "$work/rendered-$name"
    if [ -d "$work/rendered-$name" ]; then
        count=$(cat "$work/rendered-$name"/*/templates/*.yaml | grep -c '^kind:')
        run "server-side dry-run of $count rendered objects" \
            $kubectl apply --dry-run=server --server-side -R -f "$work/rendered-$name/spiderpool/templates"
    fi
done

echo "device plugin config (full values: a ConfigMap and the agent's flag; default: neither)"
run "full values: ConfigMap and --device-plugin-config" bash -c "grep -q 'name: $release-agent-device-plugin' $work/rendered-full/spiderpool/templates/agent-config.yaml && grep -q -- '--device-plugin-config=' $work/rendered-full/spiderpool/templates/agent-daemonset.yaml"
run "default values: built-in config" bash -c "[ ! -e $work/rendered-default/spiderpool/templates/agent-config.yaml ] && ! grep -q -- '--device-plugin-config' $work/rendered-default/spiderpool/templates/agent-daemonset.yaml"
run "Multus by default: its DaemonSet wraps the default network, kubeconfig at the host's CNI config path" bash -c "grep -q -- '--multus-conf-file=auto' $work/rendered-default/spiderpool/templates/multus.yaml && grep -q -- '--multus-kubeconfig-file-host=/etc/cni/net.d/multus.d/multus.kubeconfig' $work/rendered-default/spiderpool/templates/multus.yaml"
run "multus.enabled=false: no Multus" bash -c "! $helm template $release $chart -n $ns --kube-version $server_version --set multus.enabled=false | grep -q 'multus-cni'"
run "agent updates surge (maxSurge 1, maxUnavailable 0) with a per-container readiness probe" bash -c "grep -A2 'rollingUpdate' $work/rendered-default/spiderpool/templates/agent-daemonset.yaml | grep -q 'maxSurge: 1' && grep -q 'probe, --ready-file' $work/rendered-default/spiderpool/templates/agent-daemonset.yaml"

run "dra.deviceClasses=true: the two DeviceClasses, accepted by the API server (server-side dry-run)" bash -c \
    "$helm template $release $chart -n $ns --kube-version $server_version --api-versions resource.k8s.io/v1/DeviceClass --set dra.deviceClasses=true --show-only templates/dra-device-classes.yaml > $work/dra.yaml && [ \$(grep -c '^kind: DeviceClass' $work/dra.yaml) = 2 ] && $kubectl apply --dry-run=server --server-side -f $work/dra.yaml"
run "default values: no DeviceClass" bash -c "! grep -rq 'kind: DeviceClass' $work/rendered-default/"

echo "install and upgrade"
run "helm install" "$helm" install "$release" "$chart" -n "$ns" --kubeconfig "$kubeconfig" --wait=false
run "helm upgrade (controller replicas 3, gcInterval 10)" "$helm" upgrade "$release" "$chart" -n "$ns" \
    --kubeconfig "$kubeconfig" --set controller.replicas=3 --set controller.gcInterval=10
run "upgrade took effect" bash -c "[ \"\$($kubectl -n $ns get deploy $release-controller -o jsonpath='{.spec.replicas}')\" = 3 ]"
run "SpiderCoordinator default created" $kubectl get spidercoordinator default

echo "rdma-resource-inject: pods created with server-side dry-run come back mutated by the chart's MutatingAdmissionPolicy"
# A namespace per run: nothing deletes namespaces in this control plane (no namespace controller).
inject_ns=$ns-inject-$$
$kubectl create namespace "$inject_ns" --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
$kubectl apply -n "$inject_ns" -f - >/dev/null <<'EOF'
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderMultusConfig
metadata: {name: gpu1-net, labels: {cni.spidernet.io/rdma-resource-inject: gpu}}
spec: {cniType: sriov, sriov: {resourceName: spidernet.io/gpu1nic, enableRdma: true}}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderMultusConfig
metadata: {name: gpu2-net, labels: {cni.spidernet.io/rdma-resource-inject: gpu}}
spec: {cniType: macvlan, macvlan: {master: [eth0], rdmaResourceName: spidernet.io/rdma}}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderMultusConfig
metadata: {name: storage-net, labels: {cni.spidernet.io/rdma-resource-inject: storage}}
spec: {cniType: sriov, sriov: {resourceName: spidernet.io/storage}}
EOF
# The API server applies a policy once per matching SpiderMultusConfig, in an order it does not fix
# (seen both ways in CI), so the networks a group adds are compared as a set after what the pod named.
injected() { # injected ANNOTATIONS_JSON LIMITS_JSON WANT_NETWORKS WANT_LIMITS: what a dry-run pod becomes
    local pod got want
    pod=$(printf '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":%s},"spec":{"containers":[{"name":"c","image":"x","resources":{"limits":%s}},{"name":"d","image":"x"}]}}' "$1" "$2")
    got=$(echo "$pod" | $kubectl create -n "$inject_ns" --dry-run=server -o json -f - |
        OWN="$1" python3 -c '
import json, os, sys
p = json.load(sys.stdin)
own = json.loads(os.environ["OWN"]).get("k8s.v1.cni.cncf.io/networks", "")
nets = p["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/networks", "")
if nets.startswith(own) and nets != own:
    added = sorted(n for n in nets[len(own):].split(",") if n)
    nets = ",".join(([own] if own else []) + added)
print(nets)
print(json.dumps(p["spec"]["containers"][0]["resources"].get("limits", {}), sort_keys=True))
print(json.dumps(p["spec"]["containers"][1].get("resources", {})))')
    want=$(printf '%s\n%s\n{}' "$3" "$4")
    [ "$got" = "$want" ] || { printf 'got:\n%s\nwant:\n%s\n' "$got" "$want"; return 1; }
}
run "group gpu: both gpu networks and their resources, in the first container only" \
    injected '{"cni.spidernet.io/rdma-resource-inject":"gpu"}' '{}' "$inject_ns/gpu1-net,$inject_ns/gpu2-net" '{"spidernet.io/gpu1nic": "1", "spidernet.io/rdma": "1"}'
run "networks already named (short and long form) are not added twice; other limits kept" \
    injected "{\"cni.spidernet.io/rdma-resource-inject\":\"gpu\",\"k8s.v1.cni.cncf.io/networks\":\"gpu1-net, $inject_ns/gpu2-net\"}" '{"cpu":"1"}' "gpu1-net, $inject_ns/gpu2-net" '{"cpu": "1", "spidernet.io/gpu1nic": "1", "spidernet.io/rdma": "1"}'
run "group storage: its network after the pod's own" \
    injected '{"cni.spidernet.io/rdma-resource-inject":"storage","k8s.v1.cni.cncf.io/networks":"mine"}' '{}' "mine,$inject_ns/storage-net" '{"spidernet.io/storage": "1"}'
run "a group no SpiderMultusConfig has: nothing" injected '{"cni.spidernet.io/rdma-resource-inject":"none"}' '{}' "" '{}'
run "no annotation: nothing" injected '{}' '{}' "" '{}'
$kubectl delete -n "$inject_ns" spidermultusconfigs --all >/dev/null

echo "RBAC (kubectl auth can-i --as: SubjectAccessReviews against the API server)"
agent=system:serviceaccount:$ns:$release-agent
controller=system:serviceaccount:$ns:$release-controller
can() { # can yes|no WHO VERB RESOURCE [flags...]
    local want=$1 who=$2; shift 2
    local got
    got=$($kubectl auth can-i --as "$who" "$@" 2>/dev/null || true)
    [ "$got" = "$want" ] || { echo "$who $*: want $want, got $got"; return 1; }
}
for verb in get list watch; do
    run "agent may $verb spiderippools" can yes "$agent" "$verb" spiderippools.spiderpool.spidernet.io
done
run "agent may read spiderippools/status" can yes "$agent" get spiderippools.spiderpool.spidernet.io --subresource=status
run "agent may not patch spiderippools/status" can no "$agent" patch spiderippools.spiderpool.spidernet.io --subresource=status
run "agent may update spiderippoolregistries" can yes "$agent" update spiderippoolregistries.spiderpool.spidernet.io
run "agent may create spiderippoolregistries" can yes "$agent" create spiderippoolregistries.spiderpool.spidernet.io
run "agent may not delete spiderippoolregistries" can no "$agent" delete spiderippoolregistries.spiderpool.spidernet.io
run "agent may create spiderendpoints" can yes "$agent" create spiderendpoints.spiderpool.spidernet.io -n default
run "agent may delete spiderendpoints" can yes "$agent" delete spiderendpoints.spiderpool.spidernet.io -n default
for verb in create delete update list; do
    run "agent may $verb spideripclaims (its own node's: the admission policy)" can yes "$agent" "$verb" spideripclaims.spiderpool.spidernet.io
done
run "agent may not watch spideripclaims" can no "$agent" watch spideripclaims.spiderpool.spidernet.io
run "agent may create resourceslices (its own node's: the admission policy)" can yes "$agent" create resourceslices.resource.k8s.io
run "agent may not create resourceclaims" can no "$agent" create resourceclaims.resource.k8s.io -n default
run "agent may get resourceclaims (the DRA plugin reads their allocation)" can yes "$agent" get resourceclaims.resource.k8s.io -n default
run "agent may not list resourceclaims" can no "$agent" list resourceclaims.resource.k8s.io --all-namespaces
run "agent may not change resourceclaims' status" can no "$agent" patch resourceclaims.resource.k8s.io --subresource=status -n default
run "agent may create spidernodeinventories" can yes "$agent" create spidernodeinventories.spiderpool.spidernet.io
run "agent may patch spidernodeinventories/status" can yes "$agent" patch spidernodeinventories.spiderpool.spidernet.io --subresource=status
run "agent may watch pods" can yes "$agent" watch pods --all-namespaces
run "agent may not read secrets" can no "$agent" get secrets --all-namespaces
run "agent may not list secrets" can no "$agent" list secrets -n "$ns"
run "agent may not change pool specs" can no "$agent" update spiderippools.spiderpool.spidernet.io
run "agent may not delete pools" can no "$agent" delete spiderippools.spiderpool.spidernet.io
run "agent may not write pods" can no "$agent" delete pods -n default
run "agent may not touch leases" can no "$agent" update leases.coordination.k8s.io -n "$ns"
run "agent may not change CRDs" can no "$agent" patch customresourcedefinitions.apiextensions.k8s.io
run "agent may watch spidernetworknodepolicies" can yes "$agent" watch spidernetworknodepolicies.spiderpool.spidernet.io
run "agent may watch nodes" can yes "$agent" watch nodes
run "agent may create events" can yes "$agent" create events.events.k8s.io -n default
run "agent may not change policies" can no "$agent" patch spidernetworknodepolicies.spiderpool.spidernet.io
run "agent may not write policy status" can no "$agent" patch spidernetworknodepolicies.spiderpool.spidernet.io --subresource=status
run "agent may not delete events" can no "$agent" delete events.events.k8s.io -n default

run "controller may patch spiderippools/status" can yes "$controller" patch spiderippools.spiderpool.spidernet.io --subresource=status
run "controller may patch spiderippools (the finalizer)" can yes "$controller" patch spiderippools.spiderpool.spidernet.io
run "controller may update spiderippoolregistries" can yes "$controller" update spiderippoolregistries.spiderpool.spidernet.io
run "controller may delete spiderendpoints" can yes "$controller" delete spiderendpoints.spiderpool.spidernet.io -n default
run "controller may delete spideripclaims (GC)" can yes "$controller" delete spideripclaims.spiderpool.spidernet.io
run "controller may not create spideripclaims" can no "$controller" create spideripclaims.spiderpool.spidernet.io
run "controller may list statefulsets" can yes "$controller" list statefulsets.apps --all-namespaces
run "controller may list nodes" can yes "$controller" list nodes
# SpiderSubnet auto-pools: the applications watched, pools created, resized and deleted.
for kind in deployments.apps replicasets.apps daemonsets.apps jobs.batch cronjobs.batch; do
    run "controller may watch $kind" can yes "$controller" watch "$kind" --all-namespaces
done
run "controller may create spiderippools (auto-pools)" can yes "$controller" create spiderippools.spiderpool.spidernet.io
run "controller may delete spiderippools (auto-pools)" can yes "$controller" delete spiderippools.spiderpool.spidernet.io
run "controller may patch spidersubnets/status" can yes "$controller" patch spidersubnets.spiderpool.spidernet.io --subresource=status
run "controller may not change subnet specs" can no "$controller" patch spidersubnets.spiderpool.spidernet.io
run "controller may not change deployments" can no "$controller" patch deployments.apps -n default
run "agent may get replicasets (a pod's Deployment)" can yes "$agent" get replicasets.apps -n default
run "agent may get jobs (a pod's CronJob)" can yes "$agent" get jobs.batch -n default
run "agent may not list deployments" can no "$agent" list deployments.apps --all-namespaces
run "agent may not create pools" can no "$agent" create spiderippools.spiderpool.spidernet.io
run "controller may not change nodes" can no "$controller" patch nodes
run "controller may update its lease" can yes "$controller" update leases.coordination.k8s.io -n "$ns"
for crd in charts/spiderpool/crds/*.spiderpool.spidernet.io.yaml; do
    crd=$(basename "$crd" .yaml)
    run "controller may apply its CRD $crd" can yes "$controller" patch "customresourcedefinitions.apiextensions.k8s.io/$crd"
done
# Multus's CRD comes with the chart (helm installs it once); the controller does not apply it.
run "controller may not patch the NAD CRD" can no "$controller" patch customresourcedefinitions.apiextensions.k8s.io/network-attachment-definitions.k8s.cni.cncf.io
run "controller may not patch other CRDs" can no "$controller" patch customresourcedefinitions.apiextensions.k8s.io/ippools.crd.projectcalico.org
run "controller may not create other CRDs" can no "$controller" create customresourcedefinitions.apiextensions.k8s.io/foos.example.com
run "controller may patch spidercoordinators/status" can yes "$controller" patch spidercoordinators.spiderpool.spidernet.io --subresource=status
run "controller may list servicecidrs" can yes "$controller" list servicecidrs.networking.k8s.io
run "controller may list calico ippools" can yes "$controller" list ippools.crd.projectcalico.org
run "controller may read kubeadm-config" can yes "$controller" get configmaps/kubeadm-config -n kube-system
run "controller may read cilium-config" can yes "$controller" get configmaps/cilium-config -n kube-system
run "controller may not read other kube-system configmaps" can no "$controller" get configmaps/coredns -n kube-system
run "controller may not change coordinator specs" can no "$controller" update spidercoordinators.spiderpool.spidernet.io
run "controller may not read secrets" can no "$controller" get secrets --all-namespaces
run "controller may not create spiderendpoints" can no "$controller" create spiderendpoints.spiderpool.spidernet.io -n default
run "controller may not write inventories" can no "$controller" patch spidernodeinventories.spiderpool.spidernet.io --subresource=status
run "controller may not change pool specs" can no "$controller" update spiderippools.spiderpool.spidernet.io
run "controller may not take leases elsewhere" can no "$controller" update leases.coordination.k8s.io -n kube-system
run "controller may not delete pods" can no "$controller" delete pods -n default
run "controller may patch spidernetworknodepolicies/status" can yes "$controller" patch spidernetworknodepolicies.spiderpool.spidernet.io --subresource=status
run "controller may watch spidernodeinventories" can yes "$controller" watch spidernodeinventories.spiderpool.spidernet.io
run "controller may watch nodes" can yes "$controller" watch nodes
run "controller may not change policy specs" can no "$controller" patch spidernetworknodepolicies.spiderpool.spidernet.io
run "controller may watch spidermultusconfigs" can yes "$controller" watch spidermultusconfigs.spiderpool.spidernet.io --all-namespaces
run "controller may not change spidermultusconfigs" can no "$controller" patch spidermultusconfigs.spiderpool.spidernet.io -n default
run "controller may apply NADs" can yes "$controller" patch network-attachment-definitions.k8s.cni.cncf.io -n default
run "controller may delete NADs" can yes "$controller" delete network-attachment-definitions.k8s.cni.cncf.io -n default
run "controller may create events" can yes "$controller" create events.events.k8s.io -n default
run "agent may not write NADs" can no "$agent" patch network-attachment-definitions.k8s.cni.cncf.io -n default
multus=system:serviceaccount:$ns:$release-multus
run "multus may read NADs" can yes "$multus" get network-attachment-definitions.k8s.cni.cncf.io -n default
run "multus may update pods/status (network-status)" can yes "$multus" update pods --subresource=status -n default
run "multus may not write NADs" can no "$multus" patch network-attachment-definitions.k8s.cni.cncf.io -n default
run "multus may not change pod specs" can no "$multus" patch pods -n default
run "multus may not read secrets" can no "$multus" get secrets -n default

"$helm" uninstall "$release" -n "$ns" --kubeconfig "$kubeconfig" >/dev/null || true
if [ "$failures" -gt 0 ]; then
    echo "chart: $failures check(s) failed" >&2
    exit 1
fi
echo "chart: every check passed"
