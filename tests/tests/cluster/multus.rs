//! SpiderMultusConfig → NetworkAttachmentDefinition against the real API server: the controller
//! writes the NAD Spiderpool would (name, owner, annotations, the chain), rewrites it on an edit,
//! leaves a NAD that is not its own alone with a Warning Event, deletes it with its owner; the API
//! server refuses combinations that cannot make a NAD, naming what is wrong.

use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use spiderpool_api::multus::{NetworkAttachmentDefinition, SpiderMultusConfig};

use super::*;

fn smc(name: &str, annotations: Value, spec: Value) -> SpiderMultusConfig {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
        "metadata": {"name": name, "annotations": annotations}, "spec": spec
    }))
    .expect("a SpiderMultusConfig")
}

fn types(nad: &NetworkAttachmentDefinition) -> Vec<String> {
    let conf: Value = serde_json::from_str(nad.spec.config.as_deref().unwrap_or("{}")).expect("JSON config");
    conf["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn spider_multus_configs_become_network_attachment_definitions() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let ns = cluster.namespace("smc", json!({})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(
        &cluster.kubeconfig,
        &format!("ctl-smc-{u}"),
        &format!("lease-smc-{u}"),
        15779,
        dir.path(),
    )
    .unwrap();
    let smcs: Api<SpiderMultusConfig> = Api::namespaced(cluster.client.clone(), &ns);
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.client.clone(), &ns);
    let pp = PostParams::default();
    let log = || controller.log_text();

    // Refused by the API server, saying what is wrong.
    let refused = |spec: Value| {
        let smcs = smcs.clone();
        async move {
            match smcs
                .create(&PostParams::default(), &smc("bad", json!({}), spec))
                .await
            {
                Err(kube::Error::Api(s)) => s.message,
                other => panic!("accepted: {other:?}"),
            }
        }
    };
    let m = refused(json!({"cniType": "macvlan"})).await;
    assert!(m.contains("cniType names a CNI block that is missing"), "{m}");
    let m = refused(json!({"cniType": "macvlan", "macvlan": {"master": ["eth1", "eth2"]}})).await;
    assert!(m.contains("macvlan with two or more masters needs bond"), "{m}");
    let m = refused(
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]}, "ipvlan": {"master": ["eth1"]}}),
    )
    .await;
    assert!(m.contains("only the block of cniType may be given"), "{m}");
    let m = refused(
        json!({"cniType": "sriov", "sriov": {"resourceName": "r", "minTxRateMbps": 10, "maxTxRateMbps": 5}}),
    )
    .await;
    assert!(m.contains("minTxRateMbps must not exceed maxTxRateMbps"), "{m}");
    let m = refused(json!({"cniType": "vlan", "vlan": {"master": ["eth1"]}})).await;
    assert!(m.contains("vlan needs vlanID"), "{m}");

    // A Spiderpool manifest: macvlan on a bond of two NICs with VLAN 100 and a chained tuning.
    let bonded = json!({"cniType": "macvlan",
        "macvlan": {"master": ["eth1", "eth2"], "vlanID": 100,
                    "bond": {"name": "bond0", "mode": 1}, "ippools": {"ipv4": ["pool-v4"]}},
        "chainCNIJsonData": ["{\"type\": \"tuning\", \"sysctl\": {\"net.core.somaxconn\": \"4096\"}}"]});
    let made = smcs
        .create(&pp, &smc("bonded", json!({"team": "ai"}), bonded))
        .await
        .unwrap();
    let nad = eventually(Duration::from_secs(30), || async {
        nads.get_opt("bonded").await.ok().flatten()
    })
    .await
    .unwrap_or_else(|| panic!("no NAD: {}", log()));
    assert_eq!(types(&nad), ["ifacer", "macvlan", "tuning", "coordinator"]);
    let conf: Value = serde_json::from_str(nad.spec.config.as_deref().unwrap()).unwrap();
    assert_eq!(conf["cniVersion"], "0.3.1");
    assert_eq!(conf["plugins"][1]["master"], "bond0.100");
    assert_eq!(
        conf["plugins"][1]["ipam"]["default_ipv4_ippool"],
        json!(["pool-v4"])
    );
    assert_eq!(nad.annotations().get("team").map(String::as_str), Some("ai"));
    let owner = &nad.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("SpiderMultusConfig", made.uid().unwrap().as_str(), Some(true))
    );

    // An SR-IOV one: the resource annotation, rdma after sriov, tuning last.
    smcs.create(&pp, &smc("vfs", json!({"multus.spidernet.io/cni-version": "1.0.0"}),
        json!({"cniType": "sriov", "sriov": {"resourceName": "spidernet.io/cx6", "rdmaIsolation": true, "mtu": 9000}})))
        .await
        .unwrap();
    let vfs = eventually(Duration::from_secs(30), || async {
        nads.get_opt("vfs").await.ok().flatten()
    })
    .await
    .unwrap_or_else(|| panic!("no sriov NAD: {}", log()));
    assert_eq!(types(&vfs), ["sriov", "rdma", "coordinator", "tuning"]);
    assert_eq!(
        vfs.annotations()
            .get("k8s.v1.cni.cncf.io/resourceName")
            .map(String::as_str),
        Some("spidernet.io/cx6")
    );

    // Edited: rewritten.
    smcs.patch(
        "bonded",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"macvlan": {"vlanID": 200}}})),
    )
    .await
    .unwrap();
    let rewritten = eventually(Duration::from_secs(30), || async {
        let n = nads.get("bonded").await.ok()?;
        n.spec
            .config
            .as_deref()
            .is_some_and(|c| c.contains("bond0.200"))
            .then_some(n)
    })
    .await;
    assert!(rewritten.is_some(), "not rewritten: {}", log());

    // A NAD that is not its own: left alone, and a Warning on the SpiderMultusConfig.
    let theirs: NetworkAttachmentDefinition = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "taken"}, "spec": {"config": "{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\"}"}
    }))
    .unwrap();
    nads.create(&pp, &theirs).await.unwrap();
    smcs.create(
        &pp,
        &smc(
            "taken",
            json!({}),
            json!({"cniType": "ipvlan", "ipvlan": {"master": ["eth1"]}}),
        ),
    )
    .await
    .unwrap();
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns);
    let warned = eventually(Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("NADConflict")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("taken")
        })
    })
    .await;
    let warned = warned.unwrap_or_else(|| panic!("no NADConflict Event: {}", log()));
    assert!(
        warned
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("is not this SpiderMultusConfig's"),
        "{warned:?}"
    );
    let still = nads.get("taken").await.unwrap();
    assert_eq!(
        still.spec.config, theirs.spec.config,
        "a NAD that is not ours was changed"
    );
    assert!(still.owner_references().is_empty());

    // chainCNIJsonData that is not a plugin: accepted by the schema, no NAD, a Warning that says why.
    smcs.create(&pp, &smc("badchain", json!({}),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]}, "chainCNIJsonData": ["{\"sysctl\": {}}"]})))
        .await
        .unwrap();
    let invalid = eventually(Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidConfig"))
    })
    .await
    .unwrap_or_else(|| panic!("no InvalidConfig Event: {}", log()));
    assert!(
        invalid
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("chainCNIJsonData[0] is not a CNI plugin")
    );
    assert!(nads.get_opt("badchain").await.unwrap().is_none());

    // Deleted: its NAD goes (no garbage collector runs in this tier: the controller does it).
    smcs.delete("bonded", &DeleteParams::default()).await.unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        nads.get_opt("bonded")
            .await
            .ok()
            .and_then(|n| n.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_some(), "NAD outlived its SpiderMultusConfig: {}", log());
    assert!(
        nads.get_opt("vfs").await.unwrap().is_some(),
        "the other NAD stays"
    );
    assert!(
        nads.get_opt("taken").await.unwrap().is_some(),
        "the foreign NAD stays"
    );
}
