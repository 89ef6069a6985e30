//! Holders that agents from before SpiderIPClaims recorded in a pool's status
//! (`status.allocatedIPsByNode`): after an upgrade, agents that claim never hand those addresses
//! out while they stay there, and the controller releases them as their pods go (spares at once).

use super::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_holders_left_in_a_pool_status_are_not_handed_out_until_the_controller_releases_them() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("legacy-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.217.0.0/24", "ips": ["10.217.0.1-10.217.0.4"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("legacy", json!({})).await.unwrap();
    let old_node = format!("old-{u}");
    let live = cluster
        .pods(&ns, "live", 1, |_| old_node.clone(), json!({}))
        .await
        .unwrap();
    // As an agent before claims left it: a live pod's address, a gone pod's, and a spare.
    let entry = |pod: &str, uid: &str| json!({"pod": format!("{ns}/{pod}"), "podUid": uid});
    let held = json!({
        "10.217.0.1": entry("live-0", &live[0]),
        "10.217.0.2": entry("gone", "uid-of-a-pod-long-gone"),
        "10.217.0.3": {"pod": "", "podUid": "spare"},
    });
    Api::<SpiderIPPool>::all(cluster.client.clone())
        .patch_status(
            &pool,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocatedIPsByNode": {old_node.as_str(): held.to_string()}}})),
        )
        .await
        .unwrap();

    let node = format!("new-{u}");
    let uids = cluster
        .pods(&ns, "p", 4, |_| node.clone(), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&cluster.kubeconfig, &node, dir.path()).unwrap();
    let conf = netconf(&agent.socket, &[&pool], &[]);
    let add = |i: usize| cni("ADD", &conf, &ns, &format!("p-{i}"), &uids[i], "net1");
    let first = add(0);
    assert_eq!(
        first_ip(&first).as_deref(),
        Some("10.217.0.4"),
        "the one address no holder has: {} {}",
        first.stdout,
        agent.log_text()
    );
    let full = add(1);
    assert_eq!(full.error_code(), Some(100), "{} {}", full.stdout, full.stderr);

    // The controller releases the gone pod's address and the spare; the live pod's stays.
    controller_once(&cluster);
    let mut got: Vec<String> = (1..3)
        .map(|i| {
            let out = add(i);
            first_ip(&out).unwrap_or_else(|| panic!("ADD p-{i}: {} {}", out.stdout, agent.log_text()))
        })
        .collect();
    got.sort();
    assert_eq!(got, ["10.217.0.2", "10.217.0.3"]);
    assert_eq!(
        add(3).error_code(),
        Some(100),
        "10.217.0.1 is still the live pod's"
    );
    let holders = allocations(&cluster, &pool).await;
    assert_eq!(holders["10.217.0.1"].pod_uid, live[0]);
    assert_eq!(holders.len(), 4);
}
