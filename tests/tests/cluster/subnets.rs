//! SpiderSubnet auto-pools against the real API server: a pool made for a Deployment from its
//! pod template's annotations, grown as it scales, gone with it; a StatefulSet keeping its
//! addresses; pools that leave their subnet refused at `kubectl apply`.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use spiderpool_api::crd::SpiderSubnet;
use spiderpool_api::crd::auto_pool::{self as keys, ControlledIPPools};

use super::*;

async fn create_subnet(cluster: &Cluster, name: &str, spec: Value) -> kube::Result<SpiderSubnet> {
    let api: Api<SpiderSubnet> = Api::all(cluster.client.clone());
    let obj: SpiderSubnet = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("subnet object");
    api.create(&PostParams::default(), &obj).await
}

/// The auto-pools of application `ns/name`.
async fn app_pools(cluster: &Cluster, ns: &str, name: &str) -> Vec<SpiderIPPool> {
    let api: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let lp = ListParams::default().labels(&format!(
        "{}={ns},{}={name}",
        keys::LABEL_APP_NAMESPACE,
        keys::LABEL_APP_NAME
    ));
    api.list(&lp).await.expect("pools list").items
}

/// The number of addresses a pool's `ips` lists.
fn size(pool: &SpiderIPPool) -> u128 {
    spiderpool_ipam::range::set_of_entries(pool.spec.ips.iter().map(String::as_str)).len()
}

async fn controlled(cluster: &Cluster, subnet: &str) -> (ControlledIPPools, i64, i64) {
    let api: Api<SpiderSubnet> = Api::all(cluster.client.clone());
    let st = api
        .get_status(subnet)
        .await
        .expect("subnet reads")
        .status
        .unwrap_or_default();
    let map = st
        .controlled_ip_pools
        .as_deref()
        .map(|t| serde_json::from_str(t).expect("controlledIPPools is JSON"))
        .unwrap_or_default();
    (
        map,
        st.allocated_ip_count.unwrap_or(-1),
        st.total_ip_count.unwrap_or(-1),
    )
}

/// A subnet, a namespace, a controller of its own and an agent on node `node-<prefix>`.
struct Setup {
    cluster: Cluster,
    u: String,
    subnet: String,
    ns: String,
    agent: Agent,
    _controller: Controller,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(prefix: &str, subnet_spec: Value, controller_port: u16) -> Setup {
        let cluster = Cluster::connect().await.expect("cluster");
        let u = unique();
        let subnet = format!("sub-{u}");
        // This test's CIDR is its own: a subnet an earlier, failed run left behind goes first.
        let subnets: Api<SpiderSubnet> = Api::all(cluster.client.clone());
        for old in subnets
            .list(&ListParams::default())
            .await
            .expect("subnets list")
            .items
        {
            if Some(old.spec.subnet.as_str()) == subnet_spec["subnet"].as_str() {
                let _ = subnets.delete(&old.name_any(), &DeleteParams::default()).await;
            }
        }
        let pools: Api<SpiderIPPool> = Api::all(cluster.client.clone());
        for old in pools
            .list(&ListParams::default())
            .await
            .expect("pools list")
            .items
        {
            if Some(old.spec.subnet.as_str()) == subnet_spec["subnet"].as_str() {
                let unfinalized = json!({"metadata": {"finalizers": null}});
                let _ = pools
                    .patch(
                        &old.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&unfinalized),
                    )
                    .await;
                let _ = pools.delete(&old.name_any(), &DeleteParams::default()).await;
            }
        }
        create_subnet(&cluster, &subnet, subnet_spec)
            .await
            .expect("subnet");
        let ns = cluster.namespace(prefix, json!({})).await.expect("namespace");
        let dir = tempfile::tempdir().expect("temp dir");
        let id = format!("{prefix}-{u}");
        let controller = Controller::start(&cluster.kubeconfig, &id, &id, controller_port, dir.path())
            .expect("controller");
        let agent = Agent::start(&cluster.kubeconfig, &format!("node-{prefix}"), dir.path()).expect("agent");
        Setup {
            cluster,
            u,
            subnet,
            ns,
            agent,
            _controller: controller,
            _dir: dir,
        }
    }
}

fn ip_key(ip: &str) -> u128 {
    spiderpool_ipam::range::ip_to_key(ip.parse().expect("an IP"))
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true}])
}

/// A Deployment of 3 with `+2` gets a pool of 5 from the subnet; scaled to 6 the pool grows to 8
/// and the first pods keep their addresses; a pod of another application naming the pool is
/// refused; deleted, the pool stays terminating until its pods release it, then goes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_auto_pool_follows_its_deployment() {
    let t = Setup::start(
        "auto",
        json!({"subnet": "10.220.0.0/16", "ips": ["10.220.0.1-10.220.0.40"], "gateway": "10.220.255.254",
               "routes": [{"dst": "172.30.0.0/16", "gw": "10.220.255.254"}]}),
        15799,
    )
    .await;
    let (cluster, subnet, ns, agent) = (&t.cluster, &t.subnet, &t.ns, &t.agent);

    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {
                    (keys::ANNOTATION_SUBNET): format!(r#"{{"ipv4": ["{subnet}"]}}"#),
                    (keys::ANNOTATION_IP_NUMBER): "+2",
                }},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:3.10"}]}
            }
        }
    }))
    .unwrap();
    let deploy = deployments.create(&PostParams::default(), &deploy).await.unwrap();
    let duid = deploy.metadata.uid.clone().unwrap();

    let pool = eventually(Duration::from_secs(30), || async {
        app_pools(cluster, ns, "web")
            .await
            .into_iter()
            .find(|p| size(p) == 5)
    })
    .await
    .expect("a 5-address pool for the Deployment");
    let name = pool.metadata.name.clone().unwrap();
    let suffix: String = duid.rsplit('-').next().unwrap().chars().take(5).collect();
    assert_eq!(name, format!("auto4-web-eth0-{suffix}"));
    // The lowest free addresses (a fresh API server: the subnet's first five).
    let first_five = spiderpool_ipam::range::set_of_entries(pool.spec.ips.iter().map(String::as_str));
    assert!(
        first_five
            .ranges()
            .iter()
            .all(|r| r.start >= ip_key("10.220.0.1") && r.end <= ip_key("10.220.0.40")),
        "{:?}",
        pool.spec.ips
    );
    assert_eq!(pool.spec.gateway.as_deref(), Some("10.220.255.254"));
    assert_eq!(pool.spec.routes.len(), 1, "routes from the subnet");
    let labels = pool.metadata.labels.clone().unwrap();
    for (k, v) in [
        (keys::LABEL_OWNER_SUBNET, subnet.as_str()),
        (keys::LABEL_APP_GV, "apps_v1"),
        (keys::LABEL_APP_KIND, "Deployment"),
        (keys::LABEL_APP_UID, duid.as_str()),
        (keys::LABEL_INTERFACE, "eth0"),
        (keys::LABEL_RECLAIM, "true"),
        (keys::LABEL_IP_VERSION, "IPv4"),
        (keys::LABEL_CIDR, "10-220-0-0-16"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let affinity = pool.spec.pod_affinity.clone().unwrap().match_labels.unwrap();
    assert_eq!(affinity[keys::AFFINITY_APP_KIND], "Deployment");
    assert_eq!(&affinity[keys::AFFINITY_APP_NAMESPACE], ns);
    let status = eventually(Duration::from_secs(20), || async {
        let s = controlled(cluster, subnet).await;
        (s.1 == 5).then_some(s)
    })
    .await
    .expect("the subnet counts the pool");
    assert_eq!(
        status.0[&name].application.as_deref(),
        Some(format!("apps_v1_Deployment_{ns}_web").as_str())
    );
    assert_eq!(status.2, 40, "totalIPCount");

    // The Deployment's ReplicaSet and its pods, as kube-controller-manager would make them.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), ns);
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "ownerReferences": owner("apps/v1", "Deployment", "web", &duid)},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": deploy.spec.clone().unwrap().template}
    }))
    .unwrap();
    let rs = replica_sets.create(&PostParams::default(), &rs).await.unwrap();
    let rs_owner = json!({"labels": {"app": "web"}, "ownerReferences": owner("apps/v1", "ReplicaSet", "web-abc", &rs.metadata.uid.unwrap()),
                          "annotations": deploy.spec.clone().unwrap().template.metadata.unwrap().annotations});
    let uids = cluster
        .pods(ns, "web", 6, |_| "node-auto".into(), rs_owner)
        .await
        .unwrap();
    let conf = netconf(&agent.socket, &[], &[]);
    let add = |i: usize| cni("ADD", &conf, ns, &format!("web-{i}"), &uids[i], "eth0");
    let mut first: Vec<String> = Vec::new();
    for i in 0..3 {
        let out = add(i);
        assert!(out.success, "ADD web-{i}: {}", out.stderr);
        first.push(first_ip(&out).unwrap());
    }
    assert!(first.iter().all(|ip| ip.starts_with("10.220.0.")), "{first:?}");

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await
        .unwrap();
    // The new pods' ADDs wait for the pool to grow rather than fail.
    let more: Vec<_> = run_parallel(3, 3, |i| add(i + 3));
    let grown = app_pools(cluster, ns, "web").await;
    assert_eq!(grown.len(), 1);
    assert_eq!(size(&grown[0]), 8, "{:?}", grown[0].spec.ips);
    let mut all = first.clone();
    for (i, out) in more.iter().enumerate() {
        assert!(out.success, "ADD web-{}: {} {}", i + 3, out.stdout, out.stderr);
        all.push(first_ip(out).unwrap());
    }
    let held = allocations(cluster, &name).await;
    assert_eq!(held.len(), 6);
    assert_eq!(
        held.keys().cloned().collect::<HashSet<_>>(),
        all.iter().cloned().collect::<HashSet<_>>()
    );

    // A pod of no application naming the pool itself gets nothing from it.
    let stray = cluster
        .pods(
            ns,
            "stray",
            1,
            |_| "node-auto".into(),
            json!({"annotations": {"ipam.spidernet.io/ippool": format!(r#"{{"ipv4": ["{name}"]}}"#)}}),
        )
        .await
        .unwrap();
    let out = cni("ADD", &conf, ns, "stray-0", &stray[0], "eth0");
    assert!(!out.success);
    assert!(
        out.stdout.contains("auto-pool of another application"),
        "{}",
        out.stdout
    );

    // Deleted with reclaim (the default): terminating while its pods hold addresses, then gone.
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    let api: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    eventually(Duration::from_secs(20), || async {
        api.get(&name)
            .await
            .ok()
            .and_then(|p| p.metadata.deletion_timestamp)
    })
    .await
    .expect("the pool is deleted with its Deployment");
    for (i, uid) in uids.iter().enumerate() {
        let out = cni("DEL", &conf, ns, &format!("web-{i}"), uid, "eth0");
        assert!(out.success, "DEL web-{i}: {}", out.stderr);
    }
    eventually(Duration::from_secs(30), || async {
        api.get_opt(&name).await.unwrap().is_none().then_some(())
    })
    .await
    .expect("the emptied pool goes");
    eventually(Duration::from_secs(20), || async {
        let s = controlled(cluster, subnet).await;
        (s.1 == 0 && !s.0.contains_key(&name)).then_some(())
    })
    .await
    .expect("the subnet no longer counts it");
    Api::<SpiderSubnet>::all(cluster.client.clone())
        .delete(subnet, &DeleteParams::default())
        .await
        .unwrap();
}

/// A StatefulSet's pod recreated under its name gets its address back from the auto-pool; a pool
/// written outside its subnet, or a subnet edited to leave a pool out, is refused by the API
/// server with the reason.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_auto_pool_of_a_stateful_set_and_pools_stay_inside_their_subnet() {
    let t = Setup::start(
        "autosts",
        json!({"subnet": "10.221.0.0/16", "ips": ["10.221.0.1-10.221.0.20"], "excludeIPs": ["10.221.0.2"]}),
        15798,
    )
    .await;
    let (cluster, subnet, ns, agent, u) = (&t.cluster, &t.subnet, &t.ns, &t.agent, &t.u);
    let annotations = json!({(keys::ANNOTATION_SUBNET): format!(r#"{{"ipv4": ["{subnet}"]}}"#)});
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}, "annotations": annotations},
                         "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:3.10"}]}}
        }
    }))
    .unwrap();
    let sts = Api::<StatefulSet>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    let pool = eventually(Duration::from_secs(30), || async {
        app_pools(cluster, ns, "db").await.into_iter().next()
    })
    .await
    .expect("a pool for the StatefulSet");
    // 2 replicas + 1 (the default), skipping the subnet's excluded address.
    let got = spiderpool_ipam::range::set_of_entries(pool.spec.ips.iter().map(String::as_str));
    assert_eq!(got.len(), 3, "{:?}", pool.spec.ips);
    assert!(
        !got.contains(ip_key("10.221.0.2")),
        "the excluded address: {:?}",
        pool.spec.ips
    );
    assert!(
        got.ranges()
            .iter()
            .all(|r| r.start >= ip_key("10.221.0.1") && r.end <= ip_key("10.221.0.20"))
    );
    if pool.spec.ips[0] == "10.221.0.1" {
        // A fresh API server: the lowest three, around the excluded one.
        assert_eq!(
            pool.spec.ips,
            vec!["10.221.0.1".to_string(), "10.221.0.3-10.221.0.4".to_string()]
        );
    }

    let meta = json!({"labels": {"app": "db"}, "annotations": annotations,
                      "ownerReferences": owner("apps/v1", "StatefulSet", "db", &sts.metadata.uid.unwrap())});
    let uids = cluster
        .pods(ns, "db", 2, |_| "node-autosts".into(), meta.clone())
        .await
        .unwrap();
    let conf = netconf(&agent.socket, &[], &[]);
    let out = cni("ADD", &conf, ns, "db-0", &uids[0], "eth0");
    assert!(out.success, "{}", out.stderr);
    let before = first_ip(&out).unwrap();
    // db-0 is recreated (new UID, no DEL ran for the old one): same address.
    cluster.delete_pod(ns, "db-0").await.unwrap();
    let again = cluster
        .pods(ns, "db", 1, |_| "node-autosts".into(), meta)
        .await
        .unwrap();
    let out = cni("ADD", &conf, ns, "db-0", &again[0], "eth0");
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        first_ip(&out).unwrap(),
        before,
        "the StatefulSet pod keeps its address"
    );

    // An operator's kind the controller does not watch: its pods stand for it, with a fixed size.
    let op_meta = |number: &str, uid: &str| {
        json!({"annotations": {(keys::ANNOTATION_SUBNET): format!(r#"{{"ipv4": ["{subnet}"]}}"#),
                               (keys::ANNOTATION_IP_NUMBER): number},
               "ownerReferences": owner("example.com/v1", "Database", "pg", uid)})
    };
    let op_uid = format!("0e0e0e0e-1111-2222-3333-op{}", u.replace('-', ""));
    let op_uid = op_uid.as_str();
    let ops = cluster
        .pods(ns, "pg", 2, |_| "node-autosts".into(), op_meta("2", op_uid))
        .await
        .unwrap();
    let mut op_ips = HashSet::new();
    for (i, uid) in ops.iter().enumerate() {
        let out = cni("ADD", &conf, ns, &format!("pg-{i}"), uid, "eth0");
        assert!(out.success, "ADD pg-{i}: {} {}", out.stdout, out.stderr);
        op_ips.insert(first_ip(&out).unwrap());
    }
    let op_pool = app_pools(cluster, ns, "pg").await;
    assert_eq!(op_pool.len(), 1);
    let suffix: String = op_uid.rsplit('-').next().unwrap().chars().take(5).collect();
    assert_eq!(op_pool[0].metadata.name, Some(format!("auto4-pg-eth0-{suffix}")));
    assert_eq!(size(&op_pool[0]), 2);
    assert_eq!(op_pool[0].labels()[keys::LABEL_APP_GV], "example.com_v1");
    assert_eq!(op_ips.len(), 2);
    let flexible = cluster
        .pods(
            ns,
            "flex",
            1,
            |_| "node-autosts".into(),
            op_meta("+1", "another-uid"),
        )
        .await
        .unwrap();
    let out = cni("ADD", &conf, ns, "flex-0", &flexible[0], "eth0");
    assert!(!out.success);
    assert!(
        out.stdout.contains("Database/") && out.stdout.contains("only supports a fixed"),
        "{}",
        out.stdout
    );

    // Pools of the subnet's CIDR stay inside it.
    let refused = [
        ("outside", json!(["10.221.1.1"])),
        ("excluded", json!(["10.221.0.2"])),
        ("across", json!(["10.221.0.19-10.221.0.21"])),
    ];
    for (what, ips) in refused {
        let err = create_pool(
            cluster,
            &format!("{what}-{u}"),
            json!({"subnet": "10.221.0.0/16", "ips": ips}),
        )
        .await
        .expect_err(what);
        assert!(
            err.to_string()
                .contains(&format!("must lie inside the ips of SpiderSubnet {subnet}")),
            "{what}: {err}"
        );
    }
    let inside = format!("inside-{u}");
    create_pool(
        cluster,
        &inside,
        json!({"subnet": "10.221.0.0/16", "ips": ["10.221.0.15-10.221.0.16"]}),
    )
    .await
    .expect("a pool inside the subnet is accepted");
    // Subnets do not overlap.
    let err = create_subnet(
        cluster,
        &format!("wide-{u}"),
        json!({"subnet": "10.220.0.0/15", "ips": ["10.220.0.1"]}),
    )
    .await
    .expect_err("an overlapping subnet");
    assert!(err.to_string().contains("overlaps SpiderSubnet"), "{err}");
    // Another CIDR is not this subnet's business.
    create_pool(
        cluster,
        &format!("other-{u}"),
        json!({"subnet": "10.222.0.0/24", "ips": ["10.222.0.1"]}),
    )
    .await
    .expect("a pool of another CIDR is accepted");
    let subnets: Api<SpiderSubnet> = Api::all(cluster.client.clone());
    let err = subnets
        .patch(
            subnet,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ips": ["10.221.0.1-10.221.0.10"]}})),
        )
        .await
        .expect_err("a subnet may not leave a pool out");
    // It names the first pool it finds left out (the manual one, or an auto-pool further up).
    assert!(
        err.to_string()
            .contains("of this subnet lists addresses outside its ips"),
        "{err}"
    );

    let (ctl, allocated, _) = eventually(Duration::from_secs(20), || async {
        let s = controlled(cluster, subnet).await;
        (s.0.contains_key(&inside)).then_some(s)
    })
    .await
    .expect("the subnet lists the manual pool too");
    assert_eq!(ctl[&inside].application, None);
    assert_eq!(
        allocated, 7,
        "3 for the StatefulSet, 2 for the operator's kind, 2 manual"
    );

    let pools: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    for p in [inside, format!("other-{u}")] {
        let _ = pools.delete(&p, &DeleteParams::default()).await;
    }
    Api::<StatefulSet>::namespaced(cluster.client.clone(), ns)
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    for (name, uid) in [
        ("db-0", &again[0]),
        ("db-1", &uids[1]),
        ("pg-0", &ops[0]),
        ("pg-1", &ops[1]),
    ] {
        let _ = cni("DEL", &conf, ns, name, uid, "eth0");
    }
    let _ = subnets.delete(subnet, &DeleteParams::default()).await;
}
