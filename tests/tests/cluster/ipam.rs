//! The agents' IPAM service: a pool of 1000 over ten agents, an agent killed mid-burst, pool choice,
//! CNI GC per network.

use std::collections::BTreeSet;

use super::*;

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
    settle().await;
    // The count is the controller's to keep exact (agents' unguarded writes leave it).
    controller_once(&cluster);
    let status = pools.get_status(&pool).await.unwrap().status.unwrap();
    let allocated = allocations(&cluster, &pool).await;
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
    settle().await;
    controller_once(&cluster);
    let status = pools.get_status(&pool).await.unwrap().status.unwrap();
    assert_eq!(status.allocated_ip_count, Some(0));
    assert!(allocations(&cluster, &pool).await.is_empty());
    assert!(
        endpoints
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// Agents whose nodes are registered start each in its own part of a pool: the nodes the pool's
/// nodeAffinity admits, by name, share it in equal parts, so a burst on four nodes fills the pool
/// without two agents trying one address (each miss is a round trip to the API server).
/// The Nodes a test registers go when their guard is dropped, as when the test fails before it
/// deletes them: a later test's DaemonSet would get a pod on each, never scheduled.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_registered_nodes_go_with_their_guard() {
    let cluster = Cluster::connect().await.unwrap();
    let names: Vec<String> = (0..2).map(|i| format!("guarded-{}-{i}", unique())).collect();
    let registered = cluster.nodes(&names, json!({})).await.unwrap();
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
    for name in &names {
        assert!(api.get_opt(name).await.unwrap().is_some(), "{name} registered");
    }
    drop(registered);
    for name in &names {
        assert!(
            api.get_opt(name).await.unwrap().is_none(),
            "{name} deleted by the guard"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agents_of_registered_nodes_fill_their_own_parts_of_a_pool() {
    const AGENTS: usize = 4;
    const EACH: usize = 10;
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    // The pool admits these four nodes only (the tier's other tests register nodes too).
    let nodes: Vec<String> = (0..AGENTS).map(|i| format!("share-{u}-{i}")).collect();
    let registered = cluster
        .nodes(&nodes, json!({"spiderpool.test/share": u.to_string()}))
        .await
        .unwrap();
    let pool = format!("share-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.216.0.0/24", "ips": ["10.216.0.1-10.216.0.40"],
               "nodeAffinity": {"matchLabels": {"spiderpool.test/share": u.to_string()}}}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("share", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", AGENTS * EACH, |i| nodes[i % AGENTS].clone(), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<Agent> = nodes
        .iter()
        .map(|n| Agent::start(&cluster.kubeconfig, n, dir.path()).unwrap())
        .collect();
    let confs: Vec<Value> = agents.iter().map(|a| netconf(&a.socket, &[&pool], &[])).collect();
    let results = run_parallel(AGENTS * EACH, AGENTS * EACH, |i| {
        let out = cni(
            "ADD",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        (first_ip(&out), out.stdout, out.stderr)
    });
    // Deleted here, not only by the guard at the end, so that the delete itself is checked.
    registered.delete().await.unwrap();
    let mut parts: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); AGENTS];
    for (i, (ip, stdout, stderr)) in results.iter().enumerate() {
        let ip: std::net::Ipv4Addr = ip
            .as_deref()
            .unwrap_or_else(|| panic!("ADD of p-{i}: {stdout} {stderr}"))
            .parse()
            .unwrap();
        parts[i % AGENTS].insert(ip.octets()[3].into());
    }
    for (rank, got) in parts.iter().enumerate() {
        let own: BTreeSet<u32> = (1..=EACH as u32).map(|n| n + (rank * EACH) as u32).collect();
        assert_eq!(
            got,
            &own,
            "node {} (rank {rank}): {}",
            nodes[rank],
            agents[rank].log_text()
        );
    }
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
    let report = controller_once(&cluster);
    // Another test's controller may have taken some back first; together nothing is left.
    assert!(report.contains("\nreleased "), "{report}");
    let left = allocations(&cluster, &pool).await;
    assert!(left.is_empty(), "leaked after GC: {left:?}\n{report}");
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
    // The pod's own routes go to the NIC whose subnet holds their gateway; its DNS to every NIC.
    let routes = json!([
        {"dst": "10.99.0.0/16", "gw": "10.203.0.1"},
        {"dst": "fd99::/64", "gw": "fd03::1"},
        {"dst": "10.98.7.0/24", "gw": "10.205.0.1"},
    ]);
    let dns = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]});
    let multi = cluster
        .pods(
            &ns,
            "multi",
            1,
            |_| "node-a".into(),
            json!({"annotations": {"ipam.spidernet.io/ippools": ippools.to_string(),
                                   "ipam.spidernet.io/routes": routes.to_string(),
                                   "ipam.spidernet.io/dns": dns.to_string()}}),
        )
        .await
        .unwrap();
    let bad_routes = cluster
        .pods(
            &ns,
            "badroutes",
            1,
            |_| "node-a".into(),
            json!({"annotations": {"ipam.spidernet.io/routes": "[{\"dst\": \"10.0.0.0/8\", \"gw\": \"fd00::1\"}]"}}),
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
    assert_eq!(
        v["routes"],
        json!([{"dst": "10.99.0.0/16", "gw": "10.203.0.1"}, {"dst": "fd99::/64", "gw": "fd03::1"}]),
        "net1 gets the routes via its gateways"
    );
    assert_eq!(v["dns"], dns);

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
    assert_eq!(
        v["routes"],
        json!([{"dst": "10.98.7.0/24", "gw": "10.205.0.1"}]),
        "net2's route"
    );

    // An annotation that cannot be read fails the ADD with code 7, naming it, and takes nothing.
    let before = allocations(&cluster, &c4).await.len();
    let out = cni("ADD", &conf, &ns, "badroutes-0", &bad_routes[0], "eth0");
    assert_eq!(out.error_code(), Some(7), "{}", out.stdout);
    assert!(
        out.stdout.contains("ipam.spidernet.io/routes") && out.stdout.contains("not of one family"),
        "{}",
        out.stdout
    );
    assert_eq!(allocations(&cluster, &c4).await.len(), before);

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

/// The plugin's CNI GC for `network` (the netconf's name) with no valid attachments.
fn gc_all_of(conf: &Value, network: &str) -> spiderpool_cni::exec::Output {
    let mut conf = conf.clone();
    conf["name"] = json!(network);
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    let bin = spiderpool_e2e::bin_dir();
    spiderpool_cni::exec::Invocation::new("GC", "", "", "")
        .with_path(vec![bin.clone()])
        .with_trusted_dirs(vec![std::env::temp_dir()])
        .run(&bin.join("spiderpool"), conf.to_string().as_bytes())
        .expect("spiderpool runs")
}

/// A CNI GC of one network releases that network's stale attachments only: another network's
/// pod on the same node keeps its address until a GC of its own network.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_gc_of_one_network_leaves_the_other_networks_addresses() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("gc-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.206.0.0/24", "ips": ["10.206.0.10-10.206.0.20"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("gcnet", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", 2, |_| "node-gc".into(), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&cluster.kubeconfig, "node-gc", dir.path()).unwrap();
    let mut conf_a = netconf(&agent.socket, &[&pool], &[]);
    conf_a["name"] = json!("net-a");
    let mut conf_b = conf_a.clone();
    conf_b["name"] = json!("net-b");
    let a = cni("ADD", &conf_a, &ns, "p-0", &uids[0], "eth0");
    assert!(a.success, "{} {}", a.stdout, a.stderr);
    let b = cni("ADD", &conf_b, &ns, "p-1", &uids[1], "net1");
    assert!(b.success, "{} {}", b.stdout, b.stderr);
    let (ip_a, ip_b) = (first_ip(&a).unwrap(), first_ip(&b).unwrap());
    assert_eq!(allocations(&cluster, &pool).await.len(), 2);

    let out = gc_all_of(&conf_a, "net-a");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    let held = allocations(&cluster, &pool).await;
    assert!(
        !held.contains_key(&ip_a),
        "net-a's stale attachment released: {held:?}"
    );
    assert_eq!(
        held.get(&ip_b).map(|h| h.pod_uid.as_str()),
        Some(uids[1].as_str()),
        "net-b's attachment untouched by net-a's GC"
    );

    let out = gc_all_of(&conf_b, "net-b");
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert!(
        allocations(&cluster, &pool).await.is_empty(),
        "net-b's own GC releases it"
    );
    drop(agent);
}
