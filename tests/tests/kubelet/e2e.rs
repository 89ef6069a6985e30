//! End to end on a real kubelet: the chart installed from the project's image (agent, controller,
//! Multus built from the Go module proxy), the node's default network from a plain conflist, and
//! pods with a macvlan NIC from a SpiderMultusConfig and a `spidernet.io/rdma` device.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::Value;
use spiderpool_api::crd::ipam::{SpiderEndpoint, SpiderIPPool};

use super::*;
use crate::e2e_node::E2eNode;

pub const RDMA: &str = "spidernet.io/rdma";
/// Spiderpool's annotation (pod) and label (SpiderMultusConfig) of RDMA resource injection.
pub const INJECT: &str = "cni.spidernet.io/rdma-resource-inject";
/// The fixture's HCA the rdma resource shares (cx6dx: mlx5_0 on PF 0000:3b:00.0).
pub const HCA_PCI: &str = "0000:3b:00.0";
pub const HCA_NODES: [&str; 4] = [
    "/dev/infiniband/uverbs0",
    "/dev/infiniband/issm0",
    "/dev/infiniband/umad0",
    "/dev/infiniband/rdma_cm",
];

/// A pod on the macvlan network with one RDMA share; `extra` merged into its annotations.
pub fn rdma_pod_template(network: &str, extra: Value) -> Value {
    let mut annotations = json!({"k8s.v1.cni.cncf.io/networks": network});
    if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    json!({
        "metadata": {"labels": {"app": "e2e"}, "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {RDMA: "1"}}}]
        }
    })
}

/// Runs `script` with the container's shell; its output (exit status 0 asserted).
async fn sh(cri: &mut CriNode, container: &str, script: &str) -> String {
    let (code, out) = cri.exec(container, &["/bin/sh", "-c", script]).await.unwrap();
    assert_eq!(code, 0, "`{script}` in the pod failed: {out}");
    out
}

/// The running pod's first container ID.
async fn container_of(pods: &Api<Pod>, name: &str) -> String {
    let pod = pods.get(name).await.unwrap();
    let id = pod.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    id.trim_start_matches("containerd://").to_string()
}

/// The addresses of `pool` held on `NODE` (its SpiderIPClaims, or its status), with the pod
/// each is held for.
pub async fn pool_holders(pools: &Api<SpiderIPPool>, pool: &str) -> Vec<(String, String)> {
    let client = pools.clone().into_client();
    spiderpool_e2e::cluster::pool_holders(&client, pool)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.node.as_deref() == Some(NODE))
        .map(|(ip, e)| (ip, e.pod))
        .collect()
}

/// `net1`'s global addresses inside the pod (v4 and v6, without prefix lengths).
async fn net1_addrs(cri: &mut CriNode, container: &str) -> Vec<String> {
    let out = sh(cri, container, "ip addr show dev net1").await;
    out.lines()
        .map(str::trim)
        .filter(|l| (l.starts_with("inet ") || l.starts_with("inet6 ")) && !l.contains("scope link"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.split('/').next())
        .map(String::from)
        .collect()
}

/// The chart from the image, Multus from the Go module proxy, a real kubelet and containerd:
/// a pod naming a SpiderMultusConfig's network and asking for `spidernet.io/rdma` runs with its
/// NIC configured as the pool, the annotations and the coordinator say; a Deployment scaled
/// 0 → 10 → 0 gets and returns distinct addresses; nothing is left on the node afterwards.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "kubelet tier: needs root, hack/control-plane.sh up, kubelet, scheduling, helm and multus"]
async fn kubelet_pod_with_macvlan_nic_and_rdma_from_the_chart() {
    let mut e = E2eNode::up().await;
    let (cluster, host, kubelet) = (&e.cluster, &e.host, &e.kubelet);
    let (ns, pools, v4, v6) = (&e.ns, &e.pools, &e.v4, &e.v6);
    let cri = &mut e.cri;

    let before = host.snapshot();

    // One pod with the annotations Spiderpool users write.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let extra_route = host.extra_route();
    let mut pod = rdma_pod_template(
        "macvlan-e2e",
        json!({
            "ipam.spidernet.io/routes": json!([{"dst": extra_route, "gw": host.gateway(4)}]).to_string(),
            "ipam.spidernet.io/dns": json!({"nameservers": [host.gateway(4)], "search": ["e2e.example"]}).to_string(),
        }),
    );
    pod["metadata"]["name"] = json!("rdma-pod");
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let (phase, reason, message) = settle(&pods, "rdma-pod").await;
    assert_eq!(
        phase,
        "Running",
        "{reason} {message}\nkubelet:\n{}\ncontainerd:\n{}",
        kubelet
            .daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("rdma-pod"))
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .join("\n"),
        cri.log().lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "e2e ({}): rdma-pod Running {:?} after creation",
        kubelet.version,
        started.elapsed()
    );
    let c = container_of(&pods, "rdma-pod").await;

    // net1: one address of each family from the pools.
    let addrs = net1_addrs(cri, &c).await;
    let v4_addr = addrs
        .iter()
        .find(|a| !a.contains(':'))
        .cloned()
        .unwrap_or_default();
    let v6_addr = addrs
        .iter()
        .find(|a| a.contains(':'))
        .cloned()
        .unwrap_or_default();
    assert!(
        v4_addr.starts_with(&host.prefix(4)),
        "net1 has no address from {v4}: {addrs:?}"
    );
    assert!(
        v6_addr.starts_with(&host.prefix(6)),
        "net1 has no address from {v6}: {addrs:?}"
    );

    // The annotation's route, and policy routing for net1's addresses.
    let routes = sh(cri, &c, "ip route show table all; ip -6 route show table all").await;
    assert!(
        routes.lines().any(|l| l.starts_with(&extra_route)
            && l.contains(&format!("via {}", host.gateway(4)))
            && l.contains("dev net1")),
        "no route {extra_route} via the gateway on net1:\n{routes}"
    );
    // eth0 (the default network) has the default route: net1's IPv4 address gets a table of
    // its own with a rule. eth0 has no IPv6, so net1's IPv6 stays in the main table (its subnet;
    // as in Spiderpool, only the default-route NIC gets a default route from the IPAM).
    let rules = sh(cri, &c, "ip rule").await;
    assert!(
        rules
            .lines()
            .any(|l| l.contains(&format!("from {v4_addr} lookup"))),
        "no policy rule for net1's {v4_addr}:\n{rules}"
    );
    let v6_routes = sh(cri, &c, "ip -6 route show").await;
    let v6_subnet = host.pool_spec(6)["subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        v6_routes
            .lines()
            .any(|l| l.starts_with(&format!("{v6_subnet} dev net1"))),
        "no IPv6 subnet route on net1:\n{v6_routes}"
    );
    // The node through veth0 (underlay coordinator), the gateway over net1.
    let node_ip = host.node_ip();
    let via = sh(cri, &c, &format!("ip route get {node_ip}")).await;
    assert!(
        via.contains("dev veth0"),
        "the node {node_ip} is not reached through veth0: {via}"
    );
    sh(cri, &c, &format!("ping -c 1 -W 2 {node_ip}")).await;
    sh(cri, &c, &format!("ping -c 1 -W 2 -I net1 {}", host.gateway(4))).await;
    // IPv6 needs DAD on net1 first.
    let ping6 = format!(
        "for i in 1 2 3 4 5 6 7 8; do ping -6 -c 1 -W 1 -I net1 {} && exit 0; sleep 0.5; done; exit 1",
        host.gateway(6)
    );
    sh(cri, &c, &ping6).await;

    // The device plugin's device nodes.
    let devices = sh(cri, &c, "ls /dev/infiniband").await;
    for node in HCA_NODES {
        let name = node.trim_start_matches("/dev/infiniband/");
        assert!(
            devices.split_whitespace().any(|d| d == name),
            "{node} not in the pod: {devices}"
        );
    }

    // What Multus reports (routes and DNS of the result) and what the API says the pod holds.
    let status_anno = pods
        .get("rdma-pod")
        .await
        .unwrap()
        .annotations()
        .get("k8s.v1.cni.cncf.io/network-status")
        .cloned()
        .unwrap_or_default();
    let status: Value = serde_json::from_str(&status_anno).unwrap_or(Value::Null);
    let net1 = status
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["interface"] == "net1")
        .cloned()
        .unwrap_or_else(|| panic!("no net1 in network-status: {status_anno}"));
    assert_eq!(net1["dns"]["nameservers"], json!([host.gateway(4)]), "{net1}");
    assert_eq!(net1["dns"]["search"], json!(["e2e.example"]), "{net1}");
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), ns);
    let ep = serde_json::to_value(endpoints.get("rdma-pod").await.unwrap())
        .unwrap()
        .to_string();
    for addr in [&v4_addr, &v6_addr] {
        assert!(
            ep.contains(addr.as_str()),
            "SpiderEndpoint rdma-pod does not name {addr}: {ep}"
        );
    }
    for (pool, addr) in [(&v4, &v4_addr), (&v6, &v6_addr)] {
        let holders = pool_holders(pools, pool).await;
        assert!(
            holders.contains(&(addr.clone(), format!("{ns}/rdma-pod"))),
            "pool {pool} does not hold {addr} for rdma-pod: {holders:?}"
        );
    }

    // A pod that names neither network nor device, only the injection group: the chart's
    // MutatingAdmissionPolicy adds both, and it runs like the first.
    let inject_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "inject-pod", "labels": {"app": "e2e"}, "annotations": {INJECT: "e2e-rdma"}},
        "spec": {"terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                 "command": ["/bin/sleep", "3600"]}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &inject_pod).await.unwrap();
    let networks = created.annotations().get("k8s.v1.cni.cncf.io/networks").cloned();
    assert_eq!(
        networks.as_deref(),
        Some(format!("{ns}/macvlan-e2e").as_str()),
        "networks not injected"
    );
    let limits = created
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].resources.clone())
        .and_then(|r| r.limits);
    assert_eq!(
        limits.as_ref().and_then(|l| l.get(RDMA)).map(|q| q.0.as_str()),
        Some("1"),
        "{RDMA} not injected: {limits:?}"
    );
    let (phase, reason, message) = settle(&pods, "inject-pod").await;
    assert_eq!(phase, "Running", "inject-pod: {reason} {message}");
    let c = container_of(&pods, "inject-pod").await;
    let inject_addrs = net1_addrs(cri, &c).await;
    assert_eq!(inject_addrs.len(), 2, "inject-pod's net1: {inject_addrs:?}");
    let devices = sh(cri, &c, "ls /dev/infiniband").await;
    assert!(
        devices.contains("uverbs0"),
        "no RDMA device in inject-pod: {devices}"
    );

    // A Deployment 0 → 10 → 0.
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let template = rdma_pod_template("macvlan-e2e", json!({}));
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "scale"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "e2e"}}, "template": template}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let scale = |n: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch(
                    "scale",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
                .unwrap();
        }
    };
    let scaled = || async {
        pods.list(&ListParams::default().labels("app=e2e"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| !matches!(p.metadata.name.as_deref(), Some("rdma-pod" | "inject-pod")))
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    scale(10).await;
    let running = eventually(Duration::from_secs(180), || async {
        let all = scaled().await;
        let names: BTreeSet<String> = all
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (names.len() == 10).then_some(names)
    })
    .await;
    let Some(running) = running else {
        panic!(
            "10 replicas did not run in 180 s: {:?}",
            scaled()
                .await
                .iter()
                .map(|p| (
                    p.metadata.name.clone(),
                    p.status.as_ref().and_then(|s| s.phase.clone())
                ))
                .collect::<Vec<_>>()
        );
    };
    eprintln!(
        "e2e ({}): 10 replicas Running {:?} after scaling up",
        kubelet.version,
        started.elapsed()
    );
    let mut held = BTreeSet::new();
    for name in &running {
        let c = container_of(&pods, name).await;
        for addr in net1_addrs(cri, &c).await {
            assert!(held.insert(addr.clone()), "{addr} given twice (again to {name})");
        }
    }
    assert_eq!(held.len(), 20, "10 pods, one v4 and one v6 each: {held:?}");
    let holders = [pool_holders(pools, v4).await, pool_holders(pools, v6).await].concat();
    for addr in &held {
        assert!(
            holders.iter().any(|(ip, _)| ip == addr),
            "{addr} is in a pod but not held by the pool"
        );
    }
    let started = Instant::now();
    scale(0).await;
    let gone = eventually(Duration::from_secs(120), || async {
        scaled().await.is_empty().then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the replicas were not gone 120 s after scaling to 0"
    );
    eprintln!(
        "e2e ({}): 10 replicas gone {:?} after scaling down",
        kubelet.version,
        started.elapsed()
    );
    for name in ["rdma-pod", "inject-pod"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
        let gone = eventually(Duration::from_secs(60), || async {
            pods.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        assert!(gone.is_some(), "{name} was not gone 60 s after its deletion");
    }

    // Every address back, no SpiderEndpoint, nothing of the pods on the node. A pod with a zero
    // grace period leaves the API at once; kubelet stops its sandbox (CNI DEL) right after.
    let started = Instant::now();
    let released = eventually(Duration::from_secs(60), || async {
        let left = [pool_holders(pools, v4).await, pool_holders(pools, v6).await].concat();
        let eps = endpoints.list(&ListParams::default()).await.ok()?;
        (left.is_empty() && eps.items.is_empty()).then_some(())
    })
    .await;
    let left = [pool_holders(pools, v4).await, pool_holders(pools, v6).await].concat();
    assert!(
        released.is_some(),
        "addresses still held 60 s after every pod went: {left:?}"
    );
    eprintln!(
        "e2e ({}): every address back {:?} after the last pod went",
        kubelet.version,
        started.elapsed()
    );
    let mut pod_addrs: Vec<String> = held.into_iter().collect();
    pod_addrs.extend([v4_addr, v6_addr]);
    pod_addrs.extend(inject_addrs);
    // The last sandboxes' DELs may still be running: the node settles within seconds.
    let _ = eventually(Duration::from_secs(30), || async {
        host.snapshot()
            .left_since(&before, &pod_addrs)
            .is_empty()
            .then_some(())
    })
    .await;
    host.snapshot().assert_nothing_left_since(&before, &pod_addrs);

    deployments
        .delete("scale", &DeleteParams::default())
        .await
        .unwrap();
    e.down().await;
}
