//! The controller: GC and StatefulSet addresses, leader election, SpiderCoordinator CIDRs into the plugin.

use super::*;

/// Pod deleted → its address is back within the GC period; a StatefulSet pod recreated keeps its
/// address; scaled below its ordinal, the address is released.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_gc_releases_deleted_pods_and_statefulset_pods_keep_their_ip() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("gc-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.201.0.0/24", "ips": ["10.201.0.10-10.201.0.50"], "gateway": "10.201.0.1"}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("gc", json!({})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&cluster.kubeconfig, "node-a", dir.path()).unwrap();
    let _controller = Controller::start(
        &cluster.kubeconfig,
        "ctl-gc",
        &format!("lease-{u}"),
        15721,
        dir.path(),
    )
    .unwrap();
    let conf = netconf(&agent.socket, &[&pool], &[]);

    // A plain pod: ADD, then its object is deleted without a DEL (a node lost mid-way).
    let uids = cluster
        .pods(&ns, "plain", 1, |_| "node-a".into(), json!({}))
        .await
        .unwrap();
    let out = cni("ADD", &conf, &ns, "plain-0", &uids[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    let plain_ip = first_ip(&out).unwrap();
    assert!(allocations(&cluster, &pool).await.contains_key(&plain_ip));
    cluster.delete_pod(&ns, "plain-0").await.unwrap();
    // GC runs every second; a round over every pool of a busy test cluster takes a few.
    let released = eventually(Duration::from_secs(30), || async {
        (!allocations(&cluster, &pool).await.contains_key(&plain_ip)).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "GC did not release {plain_ip}: {}",
        _controller.log_text()
    );
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), &ns);
    let gone = eventually(Duration::from_secs(30), || async {
        endpoints
            .get_opt("plain-0")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "endpoint of the deleted pod was not removed");

    // A StatefulSet pod: its address follows the name across a delete and recreate.
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns);
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/x"}]}}}
    }))
    .unwrap();
    let set = sets.create(&PostParams::default(), &set).await.unwrap();
    let owner = json!({"labels": {"app": "web"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": set.metadata.uid, "controller": true}]});
    let first = cluster
        .pods(&ns, "web", 1, |_| "node-a".into(), owner.clone())
        .await
        .unwrap();
    let out = cni("ADD", &conf, &ns, "web-0", &first[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    let web_ip = first_ip(&out).unwrap();
    let out = cni("DEL", &conf, &ns, "web-0", &first[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    cluster.delete_pod(&ns, "web-0").await.unwrap();
    // Several GC rounds pass while the pod is gone: the address stays held for web-0.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = allocations(&cluster, &pool).await;
    assert_eq!(
        held.get(&web_ip).map(|a| a.pod.as_str()),
        Some(format!("{ns}/web-0").as_str())
    );
    // It comes back on another node, whose agent takes the address's claim over.
    let dir_b = tempfile::tempdir().unwrap();
    let agent_b = Agent::start(&cluster.kubeconfig, "node-b", dir_b.path()).unwrap();
    let conf_b = netconf(&agent_b.socket, &[&pool], &[]);
    let second = cluster
        .pods(&ns, "web", 1, |_| "node-b".into(), owner)
        .await
        .unwrap();
    assert_ne!(first[0], second[0]);
    let out = cni("ADD", &conf_b, &ns, "web-0", &second[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert_eq!(
        first_ip(&out).unwrap(),
        web_ip,
        "the recreated StatefulSet pod keeps its address on another node"
    );
    // One holder of the address: the claim taken over by node-b's agent.
    let holders = || async {
        spiderpool_e2e::cluster::pool_holders(&cluster.client, &pool)
            .await
            .expect("holders read")
            .into_iter()
            .map(|(ip, e)| (ip, e.pod_uid, e.node.unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let deduplicated = eventually(Duration::from_secs(30), || async {
        let now = holders().await;
        (now == [(web_ip.clone(), second[0].clone(), "node-b".to_string())]).then_some(())
    })
    .await;
    assert!(
        deduplicated.is_some(),
        "node-a's stale entry stayed: {:?} {}",
        holders().await,
        _controller.log_text()
    );

    // Scaled to zero and the pod gone: released.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    cluster.delete_pod(&ns, "web-0").await.unwrap();
    let released = eventually(Duration::from_secs(30), || async {
        allocations(&cluster, &pool).await.is_empty().then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "scaled-down StatefulSet pod kept its address: {}",
        _controller.log_text()
    );
}

/// Two controllers: one leads; killed, the other takes over once the lease expires.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_controller_leader_election_fails_over() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let lease_name = format!("lease-{u}");
    let dir = tempfile::tempdir().unwrap();
    let mut a = Controller::start(&cluster.kubeconfig, "ctl-a", &lease_name, 15731, dir.path()).unwrap();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "default");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    // b starts once a holds the lease (a fixed head start lost to a busy machine once).
    let first = eventually(Duration::from_secs(10), || async {
        leases.get_opt(&lease_name).await.unwrap().and_then(holder)
    })
    .await
    .expect("someone leads");
    assert_eq!(first, "ctl-a");
    let b = Controller::start(&cluster.kubeconfig, "ctl-b", &lease_name, 15732, dir.path()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        a.metrics().contains("spiderpool_controller_leader 1"),
        "{}",
        a.metrics()
    );
    assert!(
        b.metrics().contains("spiderpool_controller_leader 0"),
        "{}",
        b.metrics()
    );
    a.kill();
    let next = eventually(Duration::from_secs(15), || async {
        leases
            .get_opt(&lease_name)
            .await
            .unwrap()
            .and_then(holder)
            .filter(|h| h == "ctl-b")
    })
    .await;
    assert!(next.is_some(), "ctl-b did not take over: {}", b.log_text());
    let leading = eventually(Duration::from_secs(5), || async {
        b.metrics()
            .contains("spiderpool_controller_leader 1")
            .then_some(())
    })
    .await;
    assert!(leading.is_some());
}

/// podCIDRType against a real API server: each source (kubeadm-config, Calico IPPools,
/// cilium-config, none, auto) and the service CIDR from the ServiceCIDR API the API server keeps;
/// then the agent hands the status to the coordinator plugin, which routes the cluster's CIDRs
/// through veth0, and refuses a pod while the SpiderCoordinator is NotReady.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up (and root for the plugin part)"]
async fn cluster_coordinator_cidrs_follow_pod_cidr_type_into_the_plugin() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, DynamicObject};
    let cluster = Cluster::connect().await.unwrap();
    let coordinators: Api<SpiderCoordinator> = Api::all(cluster.client.clone());
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "kube-system");
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(cluster.client.clone());
    let dp = DeleteParams::default();
    let _ = coordinators.delete("default", &dp).await;
    for cm in ["kubeadm-config", "cilium-config"] {
        let _ = config_maps.delete(cm, &dp).await;
    }
    // A run that failed half-way may have left the Calico stub behind: start without it.
    let _ = crds.delete("ippools.crd.projectcalico.org", &dp).await;
    let gone = eventually(Duration::from_secs(30), || async {
        crds.get_opt("ippools.crd.projectcalico.org")
            .await
            .ok()
            .and_then(|c| c.is_none().then_some(()))
    })
    .await;
    assert!(
        gone.is_some(),
        "the Calico stub CRD from an earlier run is not going away"
    );
    let set_type = |t: &'static str| {
        let coordinators = coordinators.clone();
        async move {
            coordinators
                .patch(
                    "default",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"podCIDRType": t}})),
                )
                .await
                .unwrap();
        }
    };
    coordinators
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
                "metadata": {"name": "default"},
                "spec": {"mode": "auto", "podCIDRType": "cluster", "hijackCIDR": ["172.31.0.0/16"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // The API server was started with --service-cluster-ip-range 10.0.0.0/24: its ServiceCIDR.
    let service = vec!["10.0.0.0/24".to_string()];

    // cluster, without any source: NotReady, saying what it looked for.
    let s = coordinator_status(&cluster, |s| s.phase.as_deref() == Some("NotReady"))
        .await
        .unwrap();
    assert!(
        s.reason.as_deref().unwrap_or_default().contains("kubeadm-config"),
        "{s:?}"
    );

    // cluster, with kubeadm's ConfigMap (dual stack); the ServiceCIDR API wins over its serviceSubnet.
    let create_config_map = |name: &str, data: Value| {
        let config_maps = config_maps.clone();
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
        async move { config_maps.create(&PostParams::default(), &cm).await.unwrap() }
    };
    create_config_map("kubeadm-config", json!({
        "ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16,fd00:244::/56\n  serviceSubnet: 10.96.0.0/12\n"}))
    .await;
    let s = coordinator_status(&cluster, |s| s.phase.as_deref() == Some("Synced"))
        .await
        .unwrap();
    assert_eq!(s.overlay_pod_cidr, ["10.244.0.0/16", "fd00:244::/56"]);
    assert_eq!(s.service_cidr, service);
    assert_eq!(s.reason, None);

    // calico: NotReady without its CRD; with it, the enabled pools only.
    set_type("calico").await;
    let s = coordinator_status(&cluster, |s| s.phase.as_deref() == Some("NotReady"))
        .await
        .unwrap();
    assert!(
        s.reason.as_deref().unwrap_or_default().contains("Calico"),
        "{s:?}"
    );
    let stub: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_yaml_ng::from_str(include_str!("../../fixtures/crds/calico-ippool-stub.yaml")).unwrap();
    crds.patch(
        "ippools.crd.projectcalico.org",
        &PatchParams::apply("spiderpool-e2e").force(),
        &Patch::Apply(&stub),
    )
    .await
    .unwrap();
    let gvk = kube::api::GroupVersionKind::gvk("crd.projectcalico.org", "v1", "IPPool");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "ippools");
    let calico: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &ar);
    let pool = |name: &str, spec: Value| {
        serde_json::from_value::<DynamicObject>(json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec}))
        .unwrap()
    };
    let created = eventually(Duration::from_secs(10), || async {
        calico
            .create(
                &PostParams::default(),
                &pool("default-ipv4-ippool", json!({"cidr": "192.168.0.0/16"})),
            )
            .await
            .ok()
    })
    .await;
    assert!(created.is_some(), "the Calico IPPool CRD is not served");
    calico
        .create(
            &PostParams::default(),
            &pool("old", json!({"cidr": "10.10.0.0/16", "disabled": true})),
        )
        .await
        .unwrap();
    let s = coordinator_status(&cluster, |s| s.phase.as_deref() == Some("Synced"))
        .await
        .unwrap();
    assert_eq!(s.overlay_pod_cidr, ["192.168.0.0/16"]);

    // auto: Calico is there, so Calico.
    set_type("auto").await;
    let s = coordinator_status(&cluster, |s| s.overlay_pod_cidr == ["192.168.0.0/16"])
        .await
        .unwrap();
    assert_eq!(s.phase.as_deref(), Some("Synced"));

    // cilium: NotReady without cilium-config; its cluster-pool CIDRs with it.
    set_type("cilium").await;
    coordinator_status(&cluster, |s| {
        s.phase.as_deref() == Some("NotReady")
            && s.reason.as_deref().unwrap_or_default().contains("cilium-config")
    })
    .await
    .unwrap();
    create_config_map(
        "cilium-config",
        json!({
        "ipam": "cluster-pool", "cluster-pool-ipv4-cidr": "10.128.0.0/12 10.144.0.0/12"}),
    )
    .await;
    let s = coordinator_status(&cluster, |s| s.phase.as_deref() == Some("Synced"))
        .await
        .unwrap();
    assert_eq!(s.overlay_pod_cidr, ["10.128.0.0/12", "10.144.0.0/12"]);

    // none: no pod CIDR, the service CIDR still.
    set_type("none").await;
    let s = coordinator_status(&cluster, |s| s.overlay_pod_cidr.is_empty())
        .await
        .unwrap();
    assert_eq!(
        (s.phase.as_deref(), s.service_cidr.clone()),
        (Some("Synced"), service.clone())
    );

    // The plugin: back to `cluster` (kubeadm's pod CIDRs); an agent answers the coordinator
    // through its socket and the pod gets the cluster's CIDRs through veth0.
    set_type("cluster").await;
    coordinator_status(&cluster, |s| {
        s.overlay_pod_cidr == ["10.244.0.0/16", "fd00:244::/56"]
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&cluster.kubeconfig, "node-coordinator", dir.path()).unwrap();
    let topo = spiderpool_e2e::Topology::new("cc", &["10.6.0.1/16", "fd00:6::1/64"]).unwrap();
    spiderpool_e2e::ip(&topo.node, &["addr", "add", "10.6.0.254/16", "dev", "up0"]).unwrap();
    spiderpool_e2e::ip(
        &topo.node,
        &["addr", "add", "fd00:6::fe/64", "dev", "up0", "nodad"],
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let macvlan = json!({"cniVersion": "1.0.0", "name": "underlay", "type": "macvlan", "master": "up0",
        "mode": "bridge", "ipam": {"type": "spiderpool", "dataDir": data.path(), "pools": [
            {"name": "v4", "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.6.0.1"},
            {"name": "v6", "subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::20"], "gateway": "fd00:6::1"}]}});
    let add_pod = |name: &str| {
        let pod = topo.pod(name).unwrap();
        let inv = spiderpool_cni::exec::Invocation::new(
            "ADD",
            &format!("ctr-{name}"),
            pod.path().to_str().unwrap(),
            "net1",
        );
        let out = topo.exec("macvlan", &inv, &macvlan).unwrap();
        assert!(out.success, "macvlan ADD: {}", out.stdout);
        let coordinator = json!({"cniVersion": "1.0.0", "name": "underlay", "type": "coordinator",
            "agentSocket": agent.socket, "prevResult": out.json()});
        let out = topo.exec("coordinator", &inv, &coordinator).unwrap();
        (pod, inv, coordinator, out)
    };
    let (pod, inv, coordinator, out) = add_pod("a");
    assert!(out.success, "coordinator ADD: {}", out.stdout);
    let routes = spiderpool_e2e::ip(&pod, &["-4", "route", "show"]).unwrap();
    for cidr in ["10.244.0.0/16", "10.0.0.0/24", "172.31.0.0/16"] {
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with(cidr) && l.contains("dev veth0")),
            "{cidr} through veth0: {routes}"
        );
    }
    let routes6 = spiderpool_e2e::ip(&pod, &["-6", "route", "show"]).unwrap();
    assert!(
        routes6
            .lines()
            .any(|l| l.starts_with("fd00:244::/56") && l.contains("dev veth0")),
        "{routes6}"
    );
    let del = spiderpool_cni::exec::Invocation {
        command: "DEL".into(),
        ..inv.clone()
    };
    assert!(topo.exec("coordinator", &del, &coordinator).unwrap().success);
    assert!(topo.exec("macvlan", &del, &macvlan).unwrap().success);

    // NotReady (kubeadm-config gone): ADD refuses with code 11 and the reason; DEL still works.
    config_maps.delete("kubeadm-config", &dp).await.unwrap();
    coordinator_status(&cluster, |s| s.phase.as_deref() == Some("NotReady"))
        .await
        .unwrap();
    // The agent's cache follows the watch.
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let refused = eventually(Duration::from_secs(10), || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (pod, inv, coordinator, out) = add_pod(&format!("b{n}"));
        let del = spiderpool_cni::exec::Invocation {
            command: "DEL".into(),
            ..inv.clone()
        };
        assert!(
            topo.exec("coordinator", &del, &coordinator).unwrap().success,
            "DEL while NotReady"
        );
        assert!(topo.exec("macvlan", &del, &macvlan).unwrap().success);
        drop(pod);
        (!out.success).then_some(out)
    })
    .await
    .expect("ADD refused while the SpiderCoordinator is NotReady");
    let err = refused.json();
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("kubeadm-config"), "{err}");
    assert!(spiderpool_e2e::store_records(data.path()).is_empty());

    // Leave the cluster as found (the chart tier installs its own `default`).
    drop(agent);
    coordinators.delete("default", &dp).await.unwrap();
    config_maps.delete("cilium-config", &dp).await.unwrap();
    crds.delete("ippools.crd.projectcalico.org", &dp).await.unwrap();
}

/// A pod stuck terminating past its grace period on a node that does not report Ready keeps its
/// address (it may still run there, cut off); once the node is Ready again the address goes back.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_a_pod_on_a_partitioned_node_keeps_its_address() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let node = format!("node-part-{u}");
    let pool = format!("part-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.209.0.0/24", "ips": ["10.209.0.10-10.209.0.20"]}),
    )
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node}})).unwrap(),
        )
        .await
        .unwrap();
    let set_ready = |status: &'static str| {
        let nodes = nodes.clone();
        let node = node.clone();
        async move {
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": status,
                "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            nodes
                .patch_status(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    set_ready("Unknown").await;
    let ns = cluster.namespace("part", json!({})).await.unwrap();
    // A finalizer keeps the pod object terminating, as a kubelet that never confirms would.
    let uids = cluster
        .pods(
            &ns,
            "p",
            1,
            |_| node.clone(),
            json!({"finalizers": ["spiderpool.test/hold"]}),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&cluster.kubeconfig, &node, dir.path()).unwrap();
    let conf = netconf(&agent.socket, &[&pool], &[]);
    let out = cni("ADD", &conf, &ns, "p-0", &uids[0], "net1");
    let ip = first_ip(&out).unwrap_or_else(|| panic!("{}", out.stdout));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    pods.delete("p-0", &kube::api::DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    // Past grace (1 s) and the controller's margin.
    tokio::time::sleep(Duration::from_secs(
        (spiderpool_controller::gc::TERMINATING_MARGIN_SECS + 3) as u64,
    ))
    .await;
    controller_once(&cluster);
    assert!(
        allocations(&cluster, &pool).await.contains_key(&ip),
        "released while its node is not Ready"
    );
    set_ready("True").await;
    controller_once(&cluster);
    assert!(
        !allocations(&cluster, &pool).await.contains_key(&ip),
        "kept after its node came back Ready"
    );
    let unhold = json!({"metadata": {"finalizers": null}});
    pods.patch("p-0", &PatchParams::default(), &Patch::Merge(&unhold))
        .await
        .unwrap();
    let _ = nodes.delete(&node, &Default::default()).await;
}
