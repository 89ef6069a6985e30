//! SpiderNetworkNodePolicy objects in a cluster: three agents (`run`, each its own node name and
//! labels, on the cx6dx fixture, policies planned and reported) and the controller against the
//! real API server. The right agents select the right policies, a label change moves them, an
//! edit is acted on at its new generation, the counts and printer columns are right, Events say
//! what is pending, and invalid policies are refused by the API server.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use spiderpool_api::policy::SpiderNetworkNodePolicyResource;
use spiderpool_api::policy_status::{APPLIED, NodePolicyState, PENDING, PolicyStatus};

use super::*;

fn policy(name: &str, spec: Value) -> SpiderNetworkNodePolicyResource {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetworkNodePolicy",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("policy object")
}

/// The node's report on every policy, as its inventory says.
async fn reports(cluster: &Cluster, node: &str) -> BTreeMap<String, NodePolicyState> {
    let api: Api<SpiderNodeInventory> = Api::all(cluster.client.clone());
    api.get_opt(node)
        .await
        .expect("inventory reads")
        .and_then(|i| i.status)
        .map(|s| s.policies)
        .unwrap_or_default()
}

async fn status(cluster: &Cluster, name: &str) -> PolicyStatus {
    let api: Api<SpiderNetworkNodePolicyResource> = Api::all(cluster.client.clone());
    api.get(name)
        .await
        .expect("policy reads")
        .status
        .unwrap_or_default()
}

/// `(phase, generation)` of each policy on `node`.
fn phases(reports: &BTreeMap<String, NodePolicyState>) -> BTreeMap<String, (String, i64)> {
    reports
        .iter()
        .map(|(k, s)| (k.clone(), (s.phase.clone(), s.generation)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_node_policies_select_report_and_count() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let dir = tempfile::tempdir().unwrap();
    let fixture = spiderpool_testing::fixtures::fixture_root("cx6dx");
    let key = "spiderpool.test/pool";
    let (gpu, cpu) = (format!("gpu-{u}"), format!("cpu-{u}"));
    let names = [format!("pol-a-{u}"), format!("pol-b-{u}"), format!("pol-c-{u}")];
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let pp = PostParams::default();
    for (node, pool) in names.iter().zip([&gpu, &gpu, &cpu]) {
        nodes
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": node, "labels": {key: pool}}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let mut agents = Vec::new();
    for (i, node) in names.iter().enumerate() {
        agents.push(super::agent::spawn_run(
            &cluster,
            node,
            &format!("127.0.0.1:{}", 15761 + i),
            &dir.path().join(format!("{node}.sock")),
            &fixture,
            &dir.path().join(format!("{node}.ready")),
            &dir.path().join(format!("{node}.log")),
        ));
    }
    let _controller = Controller::start(
        &cluster.kubeconfig,
        &format!("ctl-pol-{u}"),
        &format!("lease-pol-{u}"),
        15769,
        dir.path(),
    )
    .unwrap();
    let logs = || {
        names
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    // One policy the fixture already matches (4 VFs on ens1f0np0), one it does not (8 on ens1f1np1).
    let policies: Api<SpiderNetworkNodePolicyResource> = Api::all(cluster.client.clone());
    let (matching, more) = (format!("vfs4-{u}"), format!("vfs8-{u}"));
    policies
        .create(
            &pp,
            &policy(
                &matching,
                json!({"nodeSelector": {key: gpu}, "nicSelector": {"pfNames": ["ens1f0np0"]}, "numVfs": 4}),
            ),
        )
        .await
        .unwrap();
    policies
        .create(
            &pp,
            &policy(
                &more,
                json!({"nodeSelector": {key: gpu}, "nicSelector": {"pfNames": ["ens1f1np1"]}, "numVfs": 8}),
            ),
        )
        .await
        .unwrap();
    let want = BTreeMap::from([
        (matching.clone(), (APPLIED.to_string(), 1)),
        (more.clone(), (PENDING.to_string(), 1)),
    ]);
    for node in &names[..2] {
        let got = eventually(Duration::from_secs(30), || async {
            let now = phases(&reports(&cluster, node).await);
            (now == want).then_some(())
        })
        .await;
        assert!(
            got.is_some(),
            "{node}: {:?}\n{}",
            reports(&cluster, node).await,
            logs()
        );
    }
    let pending = &reports(&cluster, &names[0]).await[&more];
    assert!(
        pending.reason.contains("--node-policies=report") && pending.reason.contains("pf ens1f1np1"),
        "{pending:?}"
    );
    assert_eq!(pending.parts.len(), 1);
    assert!(
        reports(&cluster, &names[2]).await.is_empty(),
        "the cpu node selects none"
    );

    // The controller's counts, and the printer columns kubectl shows.
    let counts = |s: &PolicyStatus| (s.matched, s.applied, s.pending, s.failed);
    let summed = eventually(Duration::from_secs(30), || async {
        let (a, b) = (status(&cluster, &matching).await, status(&cluster, &more).await);
        (counts(&a) == (2, 2, 0, 0) && counts(&b) == (2, 0, 2, 0)).then_some(b)
    })
    .await;
    let Some(summed) = summed else {
        panic!(
            "policy counts: {:?}",
            statuses(&cluster, &[&matching, &more]).await
        );
    };
    assert_eq!(summed.observed_generation, Some(1));
    assert_eq!(summed.not_applied.len(), 2);
    let table = table_row(&cluster, &more).await;
    assert_eq!(
        table,
        [
            more.clone(),
            "<no value>".into(),
            "8".into(),
            "".into(),
            "2".into(),
            "0".into(),
            "2".into(),
            "0".into(),
            "0".into()
        ],
        "NAME RESOURCE VFS PRIORITY MATCHED APPLIED PENDING FAILED REMOVING (-o wide)"
    );

    // Events on the pending policy name the nodes.
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let named = eventually(Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        let notes: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(more.as_str()))
            .filter(|e| e.reason.as_deref() == Some("Pending"))
            .filter_map(|e| e.note.clone())
            .collect();
        names[..2]
            .iter()
            .all(|n| notes.iter().any(|note| note.starts_with(&format!("node {n}:"))))
            .then_some(notes)
    })
    .await;
    assert!(named.is_some(), "no Pending events naming both nodes");

    // A label change moves the policies: c joins, a leaves.
    nodes
        .patch(
            &names[2],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: gpu}}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: cpu}}})),
        )
        .await
        .unwrap();
    let moved = eventually(Duration::from_secs(30), || async {
        let c = phases(&reports(&cluster, &names[2]).await);
        let a = reports(&cluster, &names[0]).await;
        (c == want && a.is_empty()).then_some(())
    })
    .await;
    assert!(moved.is_some(), "{}", logs());

    // An edit is acted on at its new generation (4 VFs asked of ens1f1np1 too: now applied).
    policies
        .patch(
            &more,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"numVfs": 4}})),
        )
        .await
        .unwrap();
    let edited = eventually(Duration::from_secs(30), || async {
        let s = status(&cluster, &more).await;
        (s.observed_generation == Some(2) && counts(&s) == (2, 2, 0, 0)).then_some(())
    })
    .await;
    assert!(
        edited.is_some(),
        "{:?} {:?}",
        status(&cluster, &more).await,
        reports(&cluster, &names[1]).await
    );

    // Invalid policies are refused, and the message says what is wrong.
    for (spec, says) in [
        (
            json!({"bonds": [{"name": "bond0", "mode": "fastest", "members": ["a", "b"]}]}),
            "spec.bonds[0].mode",
        ),
        (
            json!({"bonds": [{"name": "bond0", "mode": "active-backup", "members": []}]}),
            "spec.bonds[0].members",
        ),
        (
            json!({"vlans": [{"parent": "eth0", "id": 4095}]}),
            "spec.vlans[0].id",
        ),
        (json!({"numVfs": -1}), "spec.numVfs"),
        (json!({"rdma": {"netnsMode": "private"}}), "spec.rdma.netnsMode"),
    ] {
        // Sent as JSON: the Rust type cannot even hold some of these.
        let body = json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetworkNodePolicy",
            "metadata": {"name": format!("bad-{u}")}, "spec": spec
        });
        let request = http::Request::post("/apis/spiderpool.spidernet.io/v2beta1/spidernetworknodepolicies")
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        let err = cluster
            .client
            .request::<Value>(request)
            .await
            .expect_err(&format!("{spec} was accepted"));
        assert!(err.to_string().contains(says), "{spec}: {err}");
    }

    let dp = DeleteParams::default();
    for p in [&matching, &more] {
        let _ = policies.delete(p, &dp).await;
    }
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    for n in &names {
        let _ = nodes.delete(n, &dp).await;
        let _ = Api::<SpiderNodeInventory>::all(cluster.client.clone())
            .delete(n, &dp)
            .await;
    }
}

async fn statuses(cluster: &Cluster, names: &[&String]) -> Vec<PolicyStatus> {
    let mut out = Vec::new();
    for n in names {
        out.push(status(cluster, n).await);
    }
    out
}

/// The row `kubectl get spidernetworknodepolicies NAME` prints, cell by cell.
async fn table_row(cluster: &Cluster, name: &str) -> Vec<String> {
    let request = http::Request::get(format!(
        "/apis/spiderpool.spidernet.io/v2beta1/spidernetworknodepolicies/{name}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .expect("request");
    let table: Value = cluster.client.request(request).await.expect("table");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let cells = table["rows"][0]["cells"].as_array().cloned().unwrap_or_default();
    names
        .iter()
        .zip(cells)
        .filter(|(n, _)| !matches!(**n, "Age"))
        .map(|(_, c)| match c {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect()
}
