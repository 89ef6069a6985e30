//! A node's power fails: its agent and every pod on it are gone at once, and no DEL ever runs.
//! When the node is back (agent restarted, the pods recreated, a Deployment's under new names and
//! a StatefulSet's under the same names), every pod gets an address again, each StatefulSet pod
//! its old one; no address is held twice; and once the GC has run nothing of the lost pods is
//! left (Spiderpool promises quick recovery after a power failure).

use super::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_node_power_loss_recovers_every_pod_without_duplicates_or_leaks() {
    const WEB: usize = 10;
    const DB: usize = 3;
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("power-{u}");
    // Room for the lost pods' addresses and the new ones at once: nothing waits for the GC.
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.212.0.0/24", "ips": ["10.212.0.10-10.212.0.49"], "gateway": "10.212.0.1"}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("power", json!({})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&cluster.kubeconfig, "node-p", dir.path()).unwrap();
    let conf = netconf(&agent.socket, &[&pool], &[]);

    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns);
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": DB, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/x"}]}}}
    }))
    .unwrap();
    let set = sets.create(&PostParams::default(), &set).await.unwrap();
    let owned = json!({"labels": {"app": "db"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": set.metadata.uid, "controller": true}]});
    let node = |_| "node-p".to_string();
    let web = cluster.pods(&ns, "web", WEB, node, json!({})).await.unwrap();
    let db = cluster.pods(&ns, "db", DB, node, owned.clone()).await.unwrap();
    let add = |name: String, uid: String| {
        let out = cni("ADD", &conf, &ns, &name, &uid, "net1");
        assert!(out.success, "ADD {name}: {} {}", out.stdout, out.stderr);
        first_ip(&out).expect("an address")
    };
    for (i, uid) in web.iter().enumerate() {
        add(format!("web-{i}"), uid.clone());
    }
    let db_ips: Vec<String> = db
        .iter()
        .enumerate()
        .map(|(i, uid)| add(format!("db-{i}"), uid.clone()))
        .collect();
    assert_eq!(allocations(&cluster, &pool).await.len(), WEB + DB);

    // The power fails: the agent dies mid-life, the pods are gone (the node controller deletes
    // them), and no runtime ever sends DEL.
    agent.kill();
    for i in 0..WEB {
        cluster.delete_pod(&ns, &format!("web-{i}")).await.unwrap();
    }
    for i in 0..DB {
        cluster.delete_pod(&ns, &format!("db-{i}")).await.unwrap();
    }

    // The node comes back: the Deployment's pods under new names, the StatefulSet's under theirs.
    let web2 = cluster.pods(&ns, "web2", WEB, node, json!({})).await.unwrap();
    let db2 = cluster.pods(&ns, "db", DB, node, owned).await.unwrap();
    agent.restart().unwrap();
    for (i, uid) in web2.iter().enumerate() {
        add(format!("web2-{i}"), uid.clone());
    }
    for (i, uid) in db2.iter().enumerate() {
        assert_ne!(uid, &db[i], "a new pod");
        assert_eq!(
            add(format!("db-{i}"), uid.clone()),
            db_ips[i],
            "db-{i} keeps its address"
        );
    }

    // Before this test's GC (another test's controller may already have started on the lost
    // pods): every live pod holds one address, the StatefulSet's passed to their new pods, and
    // whatever else is held is a lost Deployment pod's, one address each.
    let before_gc = allocations(&cluster, &pool).await;
    let uids: Vec<&str> = before_gc.values().map(|a| a.pod_uid.as_str()).collect();
    let distinct: HashSet<&str> = uids.iter().copied().collect();
    assert_eq!(
        uids.len(),
        distinct.len(),
        "a pod holds two addresses: {before_gc:?}"
    );
    assert!(
        web2.iter().chain(&db2).all(|u| distinct.contains(u.as_str())),
        "a recovered pod holds nothing: {before_gc:?}"
    );
    assert!(
        distinct
            .iter()
            .all(|u| web2.iter().chain(&db2).chain(&web).any(|k| k == u)),
        "a holder that is neither live nor lost: {before_gc:?}"
    );
    for (i, ip) in db_ips.iter().enumerate() {
        assert_eq!(
            before_gc[ip].pod_uid, db2[i],
            "db-{i}'s address is the new db-{i}'s"
        );
    }
    eprintln!(
        "before GC: {} held ({} by lost pods)",
        before_gc.len(),
        before_gc.len() - WEB - DB
    );
    let controller = Controller::start(
        &cluster.kubeconfig,
        &format!("ctl-power-{u}"),
        &format!("lease-power-{u}"),
        15789,
        dir.path(),
    )
    .unwrap();

    // Once the GC has run: exactly the live pods hold addresses, each one, none twice.
    let live: HashSet<&str> = web2.iter().chain(&db2).map(String::as_str).collect();
    let settled = eventually(Duration::from_secs(30), || async {
        let held = allocations(&cluster, &pool).await;
        let holders: HashSet<&str> = held.values().map(|a| a.pod_uid.as_str()).collect();
        let exact = held.len() == WEB + DB
            && holders.len() == WEB + DB
            && held.values().all(|a| live.contains(a.pod_uid.as_str()));
        exact.then_some(held)
    })
    .await;
    let Some(held) = settled else {
        panic!(
            "after GC the pool should hold the {} live pods once each: {:?}\n{}",
            WEB + DB,
            allocations(&cluster, &pool).await,
            controller.log_text()
        );
    };
    for (i, ip) in db_ips.iter().enumerate() {
        assert_eq!(held[ip].pod_uid, db2[i], "db-{i}'s address is the new db-{i}'s");
    }
    // The lost Deployment pods' SpiderEndpoints go too.
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), &ns);
    let gone = eventually(Duration::from_secs(30), || async {
        let left = endpoints.list(&Default::default()).await.ok()?;
        let names: HashSet<String> = left
            .items
            .iter()
            .filter_map(|e| e.metadata.name.clone())
            .collect();
        (0..WEB)
            .all(|i| !names.contains(&format!("web-{i}")))
            .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "endpoints of the lost pods stayed: {}",
        controller.log_text()
    );
}
