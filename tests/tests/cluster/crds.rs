//! The CRDs against the API server: invalid pools refused, and an upgrade applied by the controller.

use super::*;

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
        spiderpool_api::crd::all().len()
    );
    let _ = coordinators.list(&Default::default()).await.unwrap();
}
