//! The agent's device plugin follows the cluster's SpiderNetworkNodePolicies live: a policy's
//! `resourceName` becomes a VF resource kubelet counts when the policy appears, moves when it is
//! renamed and is withdrawn when the policy goes, all without restarting the agent.

use spiderpool_api::policy::SpiderNetworkNodePolicyResource;

use super::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "kubelet tier: needs root, hack/control-plane.sh up and kubelet"]
async fn kubelet_vf_resources_follow_cluster_policies() {
    let cluster = Cluster::connect().await.unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().to_path_buf();
    let policies: Api<SpiderNetworkNodePolicyResource> = Api::all(cluster.client.clone());
    // An earlier, failed run's policy would select this node before ours.
    for old in policies.list(&Default::default()).await.unwrap() {
        if old
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("e810-"))
        {
            let _ = policies
                .delete(&old.metadata.name.unwrap_or_default(), &DeleteParams::default())
                .await;
        }
    }
    let (_cri, _kubelet) = node_up(&cluster, &dir).await;
    let ready = dir.join("ready");
    let mut agent = agent(&dir, &cluster.kubeconfig, "agent.log", &ready);
    let served = eventually(Duration::from_secs(30), || async {
        (vf_counts(&nodes).await == (2, 2)).then_some(())
    })
    .await;
    assert!(
        served.is_some(),
        "the configured resource is not served:\n{}",
        agent.log_text()
    );

    // Selected by this node's hostname label, as kubelet set it.
    let node = nodes.get(NODE).await.unwrap();
    let hostname = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/hostname"))
        .cloned()
        .unwrap();
    let u = spiderpool_e2e::cluster::unique();
    let name = format!("e810-{u}");
    let policy: SpiderNetworkNodePolicyResource = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetworkNodePolicy",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": hostname},
                 "nicSelector": {"pfNames": ["ens2f0"]}, "resourceName": "e810_policy"}
    }))
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let appeared = wait_counts_of(&nodes, "spidernet.io/e810_policy", (2, 2), "policy resource").await;

    // Renamed: the old resource is withdrawn, the new one counts the same VFs.
    policies
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"resourceName": "e810_renamed"}})),
        )
        .await
        .unwrap();
    let renamed = wait_counts_of(&nodes, "spidernet.io/e810_renamed", (2, 2), "renamed resource").await;
    let old = eventually(Duration::from_secs(30), || async {
        (counts_of(&nodes, "spidernet.io/e810_policy").await.1 == 0).then_some(())
    })
    .await;
    assert!(
        old.is_some(),
        "the old resource is still allocatable:\n{}",
        agent.log_text()
    );

    // Deleted: withdrawn, and the VFs go back to the configured resource.
    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    let withdrawn = eventually(Duration::from_secs(30), || async {
        (counts_of(&nodes, "spidernet.io/e810_renamed").await.1 == 0).then_some(())
    })
    .await;
    assert!(withdrawn.is_some(), "{}", agent.log_text());
    wait_counts(&nodes, (2, 2), "the configured resource again").await;
    assert!(
        agent.exited().unwrap().is_none(),
        "the agent stopped:\n{}",
        agent.log_text()
    );
    println!(
        "policy resource counted by kubelet after {} ms; renamed after {} ms",
        appeared.as_millis(),
        renamed.as_millis()
    );
    agent.kill();
}
