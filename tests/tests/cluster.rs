//! Control-plane tier: CRDs, the agents' IPAM service and the controller against a real
//! kube-apiserver and etcd (`hack/control-plane.sh up`; its kubeconfig in
//! SPIDERPOOL_TEST_KUBECONFIG). Ignored by default: `hack/test.sh` runs them with the tier.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spiderpool_api::coordinator::SpiderCoordinator;
use spiderpool_api::crd::{PoolIPAllocation, SpiderEndpoint, SpiderIPPool, SpiderReservedIP};
use spiderpool_api::inventory::SpiderNodeInventory;
use spiderpool_e2e::cluster::{
    Agent, Cluster, Controller, cni, eventually, first_ip, http_get, netconf, run_parallel, unique,
};

async fn create_pool(cluster: &Cluster, name: &str, spec: Value) -> kube::Result<SpiderIPPool> {
    let api: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let pool: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("pool object");
    api.create(&PostParams::default(), &pool).await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_invalid_pools_are_rejected_by_the_api_server() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let cases = [
        (
            "gateway outside the subnet",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.9.0.1"}),
            "gateway",
        ),
        (
            "overlapping ranges",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20", "10.6.0.15-10.6.0.30"]}),
            "overlap",
        ),
        (
            "a single IP inside a range",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20", "10.6.0.20"]}),
            "overlap",
        ),
        (
            "range written high-low",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.20-10.6.0.10"]}),
            "low-high",
        ),
        (
            "IP outside the subnet",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.8.0.1"]}),
            "inside the subnet",
        ),
        (
            "ipVersion against the subnet",
            json!({"ipVersion": 6, "subnet": "10.6.0.0/16"}),
            "ipVersion",
        ),
        (
            "subnet not a CIDR",
            json!({"subnet": "10.6.0.0", "ips": ["10.6.0.1"]}),
            "CIDR",
        ),
        (
            "IPv6 gateway outside",
            json!({"ipVersion": 6, "subnet": "fd00::/64", "ips": ["fd00::10"], "gateway": "fd01::1"}),
            "gateway",
        ),
        (
            "route gw outside",
            json!({"subnet": "10.6.0.0/16", "routes": [{"dst": "10.7.0.0/16", "gw": "10.9.0.1"}]}),
            "routes",
        ),
        (
            "duplicate entries",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.1", "10.6.0.1"]}),
            "Duplicate",
        ),
    ];
    // An admission policy is compiled and loaded by the API server shortly after it is created.
    let probe = json!({"subnet": "fd00::/64", "ips": ["fd00::1-fd00::5", "fd00::3"]});
    let mut n = 0;
    let loaded = eventually(Duration::from_secs(20), || {
        n += 1;
        let name = format!("probe-{n}-{u}");
        let probe = probe.clone();
        let cluster = &cluster;
        async move { create_pool(cluster, &name, probe).await.is_err().then_some(()) }
    })
    .await;
    assert!(loaded.is_some(), "the IPv6 admission policy never took effect");
    for (i, (what, spec, expect)) in cases.into_iter().enumerate() {
        match create_pool(&cluster, &format!("bad-{i}-{u}"), spec).await {
            Ok(_) => panic!("{what}: the API server accepted it"),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{what}: {s:?}");
                assert!(
                    s.message.contains(expect),
                    "{what}: message {:?} lacks {expect:?}",
                    s.message
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    for (i, spec) in [
        json!({"ipVersion": 4, "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20", "10.6.1.1"], "gateway": "10.6.0.1", "default": true}),
        json!({"ipVersion": 6, "subnet": "fd00::/64", "ips": ["fd00::10-fd00::20"], "gateway": "fd00::1"}),
        json!({"ipVersion": 6, "subnet": "fd00::/64", "ips": ["fd00::10-fd00::20", "fd00::21", "fd00:0:0:0:0:0:1:0-fd00::1:ff"]}),
    ]
    .into_iter()
    .enumerate()
    {
        create_pool(&cluster, &format!("good-{i}-{u}"), spec).await.expect("valid pool accepted");
    }
}

/// 10 agents, each its own node, allocate 1000 addresses at once from one pool of exactly 1000.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_ten_agents_allocate_a_pool_of_1000_exactly() {
    const AGENTS: usize = 10;
    const PODS: usize = 1000;
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("burst-{u}");
    // 10.200.0.1 .. 10.200.3.232 is exactly 1000 addresses.
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.200.0.0/22", "ips": ["10.200.0.1-10.200.3.232"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("burst", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", PODS + 1, |i| format!("node-{}", i % AGENTS), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| Agent::start(&cluster.kubeconfig, &format!("node-{i}"), dir.path()).unwrap())
        .collect();
    let confs: Vec<Value> = agents.iter().map(|a| netconf(&a.socket, &[&pool], &[])).collect();

    // Every pod's ADD through its node's agent, 200 plugin processes at a time (pods starting
    // together on 10 nodes: kubelet runs their sandboxes concurrently).
    let started = Instant::now();
    let results = run_parallel(200, PODS, |i| {
        let out = cni(
            "ADD",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        (out.success, first_ip(&out), out.stdout, out.stderr)
    });
    let elapsed = started.elapsed();
    let mut ips = HashSet::new();
    for (i, (ok, ip, stdout, stderr)) in results.iter().enumerate() {
        assert!(
            ok,
            "ADD of p-{i} failed: {stdout} {stderr}\nagent log: {}",
            agents[i % AGENTS].log_text()
        );
        assert!(ips.insert(ip.clone().unwrap()), "{ip:?} handed out twice");
    }
    eprintln!("{PODS} ADDs through {AGENTS} agents in {elapsed:?}");
    assert_eq!(ips.len(), PODS);

    let pools: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let status = pools.get_status(&pool).await.unwrap().status.unwrap();
    let allocated = status.allocations().unwrap();
    assert_eq!(status.allocated_ip_count, Some(PODS as i64));
    assert_eq!(status.total_ip_count, Some(PODS as i64));
    assert_eq!(allocated.len(), PODS);
    let recorded: HashSet<String> = allocated.keys().cloned().collect();
    assert_eq!(recorded, ips);

    // Every address has its pod's SpiderEndpoint, naming the same address and pool.
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), &ns);
    let list = endpoints.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), PODS);
    let mut by_endpoint = BTreeMap::new();
    for ep in &list.items {
        let st = ep.status.as_ref().unwrap();
        let d = &st.current.ips[0];
        assert_eq!(d.ipv4_pool.as_deref(), Some(pool.as_str()));
        let ip = d.ipv4.as_deref().unwrap().split('/').next().unwrap().to_string();
        let holder = &allocated[&ip];
        assert_eq!(holder.pod_uid, st.current.uid);
        by_endpoint.insert(ip, ep.metadata.name.clone().unwrap());
    }
    assert_eq!(by_endpoint.len(), PODS);

    // The 1001st pod: a clear exhausted error (code 100) naming the pool.
    let out = cni("ADD", &confs[0], &ns, &format!("p-{PODS}"), &uids[PODS], "net1");
    assert_eq!(out.error_code(), Some(100), "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&pool) && out.stdout.contains("no free address"),
        "{}",
        out.stdout
    );

    // Everything released: DEL twice each (the second as a runtime does it, without a netns).
    let results = run_parallel(200, PODS, |i| {
        let a = cni(
            "DEL",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        let b = cni(
            "DEL",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        (
            a.success && b.success,
            format!("{} {} {}", a.stdout, b.stdout, b.stderr),
        )
    });
    for (i, (ok, why)) in results.iter().enumerate() {
        assert!(
            ok,
            "DEL of p-{i}: {why}\nagent log: {}",
            agents[i % AGENTS].log_text()
        );
    }
    let status = pools.get_status(&pool).await.unwrap().status.unwrap();
    assert_eq!(status.allocated_ip_count, Some(0));
    assert!(status.allocations().unwrap().is_empty());
    assert!(
        endpoints
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn allocations(cluster: &Cluster, pool: &str) -> BTreeMap<String, PoolIPAllocation> {
    let pools: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let st = pools
        .get_status(pool)
        .await
        .expect("pool reads")
        .status
        .unwrap_or_default();
    let map = st.allocations().expect("allocatedIPs decodes");
    assert_eq!(
        st.allocated_ip_count.unwrap_or(0),
        map.len() as i64,
        "count matches the map"
    );
    map
}

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
    let second = cluster
        .pods(&ns, "web", 1, |_| "node-a".into(), owner)
        .await
        .unwrap();
    assert_ne!(first[0], second[0]);
    let out = cni("ADD", &conf, &ns, "web-0", &second[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert_eq!(
        first_ip(&out).unwrap(),
        web_ip,
        "the recreated StatefulSet pod keeps its address"
    );
    let held = allocations(&cluster, &pool).await;
    assert_eq!(held[&web_ip].pod_uid, second[0]);
    assert_eq!(held.len(), 1);

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

/// One of three agents is killed mid-burst and restarted; the runtime retries what failed.
/// Nothing is given twice, and after the pods go away GC leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agent_killed_mid_burst_no_duplicate_no_leak() {
    const PODS: usize = 300;
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("kill-{u}");
    // Exactly 300 addresses: a leak or a duplicate shows as an exhausted pool or a failed ADD.
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.202.0.0/23", "ips": ["10.202.0.1-10.202.1.44"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("kill", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", PODS, |i| format!("node-{}", i % 3), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<Mutex<Agent>> = (0..3)
        .map(|i| Mutex::new(Agent::start(&cluster.kubeconfig, &format!("node-{i}"), dir.path()).unwrap()))
        .collect();
    let confs: Vec<Value> = agents
        .iter()
        .map(|a| netconf(&a.lock().unwrap().socket, &[&pool], &[]))
        .collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let first_round = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            while done.load(std::sync::atomic::Ordering::Relaxed) < PODS / 4 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut a = agents[0].lock().unwrap();
            a.kill();
            std::thread::sleep(Duration::from_millis(300));
            a.restart().unwrap();
        });
        let r = run_parallel(60, PODS, |i| {
            let out = cni("ADD", &confs[i % 3], &ns, &format!("p-{i}"), &uids[i], "net1");
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out.success
        });
        killer.join().unwrap();
        r
    });
    let failed: Vec<usize> = (0..PODS).filter(|i| !first_round[*i]).collect();
    assert!(
        !failed.is_empty(),
        "the kill interrupted no ADD: the test did not test anything"
    );
    assert!(
        failed.iter().all(|i| i % 3 == 0),
        "only node-0's pods fail: {failed:?}"
    );
    eprintln!(
        "{} ADDs failed while node-0's agent was down; retrying them",
        failed.len()
    );
    // The runtime retries a failed ADD; an address written before the kill is found again.
    let retried = run_parallel(20, failed.len(), |k| {
        let i = failed[k];
        let out = cni("ADD", &confs[0], &ns, &format!("p-{i}"), &uids[i], "net1");
        (out.success, out.stdout)
    });
    for (ok, why) in &retried {
        assert!(ok, "retried ADD failed: {why}");
    }
    let held = allocations(&cluster, &pool).await;
    assert_eq!(held.len(), PODS, "every pod holds exactly one address");
    let owners: HashSet<&str> = held.values().map(|a| a.pod_uid.as_str()).collect();
    assert_eq!(
        owners.len(),
        PODS,
        "no pod holds two addresses, no address two pods"
    );

    // The pods go away without DEL (the node is lost): one GC round gives everything back.
    for i in 0..PODS {
        cluster.delete_pod(&ns, &format!("p-{i}")).await.unwrap();
    }
    let out = std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-controller"))
        .arg("--once")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Another test's controller may have taken some back first; together nothing is left.
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.starts_with("released "), "{report}");
    let left = allocations(&cluster, &pool).await;
    assert!(left.is_empty(), "leaked after GC: {left:?}\n{report}");
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = Controller::start(&cluster.kubeconfig, "ctl-b", &lease_name, 15732, dir.path()).unwrap();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "default");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    let first = eventually(Duration::from_secs(10), || async {
        leases.get_opt(&lease_name).await.unwrap().and_then(holder)
    })
    .await
    .expect("someone leads");
    assert_eq!(first, "ctl-a");
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

/// Pool choice as Spiderpool makes it: per-interface pools from the pod annotation (dual stack on
/// one NIC, clean gateway on the other), a pool whose node affinity excludes this node skipped,
/// SpiderReservedIP addresses never handed out, the namespace's default pool for a pod without
/// annotations; one SpiderEndpoint lists both NICs; DEL of one NIC leaves the other; CHECK.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_pool_choice_multi_nic_reserved_and_namespace_defaults() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let (a4, a6, b4, c4) = (
        format!("a4-{u}"),
        format!("a6-{u}"),
        format!("b4-{u}"),
        format!("c4-{u}"),
    );
    create_pool(
        &cluster,
        &a4,
        json!({"subnet": "10.203.0.0/24", "ips": ["10.203.0.10-10.203.0.20"], "gateway": "10.203.0.1"}),
    )
    .await
    .unwrap();
    create_pool(
        &cluster,
        &a6,
        json!({"subnet": "fd03::/64", "ips": ["fd03::10-fd03::20"], "gateway": "fd03::1"}),
    )
    .await
    .unwrap();
    create_pool(&cluster, &b4, json!({"subnet": "10.204.0.0/24", "ips": ["10.204.0.10-10.204.0.12"], "nodeName": ["node-elsewhere"]}))
        .await
        .unwrap();
    create_pool(
        &cluster,
        &c4,
        json!({"subnet": "10.205.0.0/24", "ips": ["10.205.0.10-10.205.0.11"], "gateway": "10.205.0.1"}),
    )
    .await
    .unwrap();
    let reserved: Api<SpiderReservedIP> = Api::all(cluster.client.clone());
    let r: SpiderReservedIP = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
        "metadata": {"name": format!("r-{u}")}, "spec": {"ipVersion": 4, "ips": ["10.203.0.10-10.203.0.11"]}
    }))
    .unwrap();
    reserved.create(&PostParams::default(), &r).await.unwrap();
    let ns = cluster
        .namespace(
            "choice",
            json!({"ipam.spidernet.io/default-ipv4-ippool": format!("[\"{c4}\"]")}),
        )
        .await
        .unwrap();
    let ippools = json!([
        {"interface": "net1", "ipv4": [a4], "ipv6": [a6]},
        {"interface": "net2", "ipv4": [b4, c4], "cleangateway": true},
    ]);
    let multi = cluster
        .pods(
            &ns,
            "multi",
            1,
            |_| "node-a".into(),
            json!({"annotations": {"ipam.spidernet.io/ippools": ippools.to_string()}}),
        )
        .await
        .unwrap();
    let plain = cluster
        .pods(&ns, "plain", 2, |_| "node-a".into(), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&cluster.kubeconfig, "node-a", dir.path()).unwrap();
    // The netconf names no pools: the annotations and namespace decide.
    let conf = netconf(&agent.socket, &[], &[]);

    let out = cni("ADD", &conf, &ns, "multi-0", &multi[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    let v = out.json();
    let addrs: Vec<&str> = v["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addrs,
        ["10.203.0.12/24", "fd03::10/64"],
        "reserved .10 and .11 skipped; dual stack"
    );
    assert_eq!(v["ips"][0]["gateway"], "10.203.0.1");

    let out = cni("ADD", &conf, &ns, "multi-0", &multi[0], "net2");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    let v = out.json();
    assert_eq!(
        v["ips"][0]["address"], "10.205.0.10/24",
        "b4 excluded by nodeName, so c4"
    );
    assert!(
        v["ips"][0].get("gateway").is_none(),
        "cleangateway drops the gateway: {v}"
    );

    let endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), &ns);
    let ep = endpoints.get("multi-0").await.unwrap().status.unwrap();
    let nics: Vec<&str> = ep.current.ips.iter().map(|d| d.interface.as_str()).collect();
    assert_eq!(nics, ["net1", "net2"]);

    let out = cni("ADD", &conf, &ns, "plain-0", &plain[0], "eth0");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert_eq!(
        out.json()["ips"][0]["address"],
        "10.205.0.11/24",
        "namespace default pool"
    );
    let out = cni("ADD", &conf, &ns, "plain-1", &plain[1], "eth0");
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.stdout.contains(&c4) && out.stdout.contains("namespace default pools"),
        "{}",
        out.stdout
    );

    // One NIC's DEL gives back its addresses and leaves the other NIC's.
    let out = cni("DEL", &conf, &ns, "multi-0", &multi[0], "net1");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert!(allocations(&cluster, &a4).await.is_empty());
    assert!(allocations(&cluster, &a6).await.is_empty());
    assert_eq!(allocations(&cluster, &c4).await.len(), 2);
    let ep = endpoints.get("multi-0").await.unwrap().status.unwrap();
    assert_eq!(ep.current.ips.len(), 1);
    assert_eq!(
        cni("CHECK", &conf, &ns, "multi-0", &multi[0], "net2").error_code(),
        None
    );
    assert_eq!(
        cni("CHECK", &conf, &ns, "multi-0", &multi[0], "net1").error_code(),
        Some(3)
    );
}

/// `spiderpool-agent run`: ready once the IPAM service listens, reports the node's inventory
/// (here a fixture sysfs tree) as its SpiderNodeInventory, and answers the plugin.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agent_run_reports_inventory_and_serves_ipam() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let node = format!("node-run-{u}");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sysfs/cx6dx");
    // `spiderpool-agent run` for this node; `ready` and `log` are file names in `dir`.
    let run_agent = |ready: &str, log: &str| {
        std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"))
            .args([
                "run",
                "--node-name",
                &node,
                "--health-addr",
                "127.0.0.1:15751",
                "--device-plugin=false",
            ])
            .args(["--inventory-interval", "5", "--socket"])
            .arg(&socket)
            .arg("--sysfs-root")
            .arg(&fixture)
            .arg("--ready-file")
            .arg(dir.path().join(ready))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let mut child = run_agent("ready-1", "run.log");
    let ready = eventually(Duration::from_secs(30), || async {
        http_get("127.0.0.1:15751", "/readyz")
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert!(ready.is_some(), "never ready: {}", log());
    assert!(http_get("127.0.0.1:15751", "/healthz").starts_with("HTTP/1.1 200"));

    let inventories: Api<SpiderNodeInventory> = Api::all(cluster.client.clone());
    let inv = eventually(Duration::from_secs(30), || async {
        inventories.get_opt(&node).await.unwrap().and_then(|i| i.status)
    })
    .await
    .unwrap_or_else(|| panic!("no SpiderNodeInventory {node}: {}", log()));
    assert!(!inv.nics.is_empty(), "{inv:?}");
    assert!(
        inv.nics.iter().any(|n| n.pci_address == "0000:3b:00.0"),
        "{:?}",
        inv.nics
    );

    let pool = format!("run-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.206.0.0/24", "ips": ["10.206.0.10"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("run", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", 1, |_| node.clone(), json!({}))
        .await
        .unwrap();
    // Clients that hang up before their answer (a plugin killed by its runtime) must not take
    // the agent down.
    for _ in 0..20 {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let req = json!({"verb": "DEL", "network": "n", "containerId": "c", "ifname": "net1",
                         "pod": {"namespace": ns, "name": "p-0", "uid": uids[0]}});
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = cni(
        "ADD",
        &netconf(&socket, &[&pool], &[]),
        &ns,
        "p-0",
        &uids[0],
        "net1",
    );
    assert_eq!(
        first_ip(&out).as_deref(),
        Some("10.206.0.10"),
        "{} {}",
        out.stdout,
        log()
    );
    assert!(child.try_wait().unwrap().is_none(), "agent died: {}", log());

    // The readiness probe reads this agent's own file.
    let probe = |file: &str| {
        std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"))
            .args(["probe", "--ready-file"])
            .arg(dir.path().join(file))
            .status()
            .unwrap()
            .success()
    };
    assert!(probe("ready-1"));
    assert!(!probe("ready-2"), "no second agent yet");
    // An update's successor starts beside it on the same node (same health port, same socket),
    // becomes ready, takes the IPAM socket over; the old one stops (SIGTERM) and takes its
    // readiness with it; requests keep being answered throughout.
    let mut successor = run_agent("ready-2", "run-2.log");
    let log2 = || std::fs::read_to_string(dir.path().join("run-2.log")).unwrap_or_default();
    let ready2 = eventually(Duration::from_secs(30), || async {
        probe("ready-2").then_some(())
    })
    .await;
    assert!(ready2.is_some(), "the successor never got ready: {}", log2());
    assert!(
        successor.try_wait().unwrap().is_none(),
        "successor died: {}",
        log2()
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let _ = child.wait();
    assert!(!probe("ready-1"), "the old agent's readiness goes with it");
    assert!(
        http_get("127.0.0.1:15751", "/healthz").starts_with("HTTP/1.1 200"),
        "the successor answers health"
    );
    let out = cni(
        "CHECK",
        &netconf(&socket, &[&pool], &[]),
        &ns,
        "p-0",
        &uids[0],
        "net1",
    );
    assert!(
        out.success,
        "CHECK answered by the successor: {} {}",
        out.stdout,
        log2()
    );
    let _ = successor.kill();
    let _ = successor.wait();
}

/// The CRD upgrade path: the chart's CRDs are installed, then a controller built with a changed
/// schema applies its CRDs at start; the API server serves the new schema (a field it would have
/// pruned before is kept). The real CRDs are applied again afterwards.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_crd_upgrade_by_controller_apply() {
    let cluster = Cluster::connect().await.unwrap();
    let coordinators: Api<SpiderCoordinator> = Api::all(cluster.client.clone());
    let dynamic = |name: &str| {
        serde_json::from_value::<kube::api::DynamicObject>(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
            "metadata": {"name": name}, "spec": {"mode": "auto", "upgradeProbe": "kept"}
        }))
        .unwrap()
    };
    let ar = kube::api::ApiResource::erase::<SpiderCoordinator>(&());
    let raw: Api<kube::api::DynamicObject> = Api::all_with(cluster.client.clone(), &ar);
    let u = unique();
    // Before: the unknown field is pruned.
    let before = raw
        .create(&PostParams::default(), &dynamic(&format!("before-{u}")))
        .await
        .unwrap();
    assert!(
        before.data["spec"].get("upgradeProbe").is_none(),
        "{:?}",
        before.data
    );

    // A test copy of the CRD with a new field, applied the way the controller does at start.
    let mut crds = spiderpool_api::crd::all();
    let crd = crds
        .iter_mut()
        .find(|c| c.metadata.name.as_deref() == Some("spidercoordinators.spiderpool.spidernet.io"))
        .unwrap();
    let mut v = serde_json::to_value(&*crd).unwrap();
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeProbe"] =
        json!({"type": "string"});
    *crd = serde_json::from_value(v).unwrap();
    spiderpool_controller::crds::apply(&cluster.client, std::slice::from_ref(crd))
        .await
        .unwrap();
    let after = eventually(Duration::from_secs(10), || async {
        let name = format!("after-{}", unique());
        let o = raw.create(&PostParams::default(), &dynamic(&name)).await.ok()?;
        (o.data["spec"].get("upgradeProbe") == Some(&json!("kept"))).then_some(o)
    })
    .await;
    assert!(
        after.is_some(),
        "the API server does not serve the upgraded schema"
    );

    // Back to the real CRDs (what `spiderpool-controller --apply-crds` does).
    assert_eq!(
        spiderpool_controller::crds::apply_all(&cluster.client)
            .await
            .unwrap(),
        8
    );
    let _ = coordinators.list(&Default::default()).await.unwrap();
}

/// Runs `spiderpool-controller --once` until the SpiderCoordinator `default` has a status that
/// `want` accepts (other tests' controllers reconcile it too, so a round may race a stale read);
/// the last status seen on failure.
async fn coordinator_status(
    cluster: &Cluster,
    want: impl Fn(&spiderpool_api::coordinator::CoordinatorStatus) -> bool,
) -> Result<spiderpool_api::coordinator::CoordinatorStatus, String> {
    let api: Api<SpiderCoordinator> = Api::all(cluster.client.clone());
    let mut last = None;
    for _ in 0..20 {
        let out = std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-controller"))
            .arg("--once")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
            .expect("spiderpool-controller runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status = api
            .get("default")
            .await
            .expect("SpiderCoordinator default")
            .status
            .unwrap_or_default();
        if want(&status) {
            return Ok(status);
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("{last:?}"))
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
        serde_yaml_ng::from_str(include_str!("../fixtures/crds/calico-ippool-stub.yaml")).unwrap();
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
