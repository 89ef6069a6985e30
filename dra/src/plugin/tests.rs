use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;

use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult, ResourceClaimStatus,
};
use spiderpool_testing::fixtures::fixture_inventory;

use super::*;

/// Claims by namespace/name, as the API server would return them.
#[derive(Default)]
struct Claims(StdMutex<BTreeMap<String, ResourceClaim>>);

impl ClaimSource for Arc<Claims> {
    fn get(&self, namespace: &str, name: &str) -> impl Future<Output = Result<ResourceClaim, String>> + Send {
        let found = self
            .0
            .lock()
            .expect("claims")
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .ok_or_else(|| format!("resourceclaims \"{name}\" not found"));
        async move { found }
    }
}

struct Fixture;

impl NodeDevices for Fixture {
    fn inventory(&self) -> Inventory {
        fixture_inventory("gpu-nic")
    }
    fn iommu_group(&self, _: &str) -> Option<String> {
        None
    }
}

/// Claim `name` with UID `uid`, allocated `devices` (driver, pool, device, request).
fn claim(name: &str, uid: &str, devices: &[(&str, &str, &str, &str)]) -> ResourceClaim {
    let mut claim = ResourceClaim::default();
    claim.metadata.name = Some(name.into());
    claim.metadata.namespace = Some("ns".into());
    claim.metadata.uid = Some(uid.into());
    claim.status = Some(ResourceClaimStatus {
        allocation: (!devices.is_empty()).then(|| AllocationResult {
            devices: Some(DeviceAllocationResult {
                results: Some(
                    devices
                        .iter()
                        .map(|(driver, pool, device, request)| DeviceRequestAllocationResult {
                            driver: driver.to_string(),
                            pool: pool.to_string(),
                            device: device.to_string(),
                            request: request.to_string(),
                            ..DeviceRequestAllocationResult::default()
                        })
                        .collect(),
                ),
                ..DeviceAllocationResult::default()
            }),
            ..AllocationResult::default()
        }),
        ..ResourceClaimStatus::default()
    });
    claim
}

struct Setup {
    dir: tempfile::TempDir,
    claims: Arc<Claims>,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
            claims: Arc::default(),
        }
    }

    fn add(&self, claim: ResourceClaim) {
        let key = format!(
            "{}/{}",
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default()
        );
        self.claims.0.lock().expect("claims").insert(key, claim);
    }

    fn plugin(&self) -> Plugin<Arc<Claims>, Fixture> {
        Plugin::new(
            Config {
                node: "node-a".into(),
                cdi_dir: self.dir.path().join("cdi"),
                devinfo_dir: self.dir.path().join("devinfo"),
                state: self.dir.path().join("plugin/prepared.json"),
            },
            self.claims.clone(),
            Fixture,
        )
    }

    fn cdi_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("cdi"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn wire(uid: &str, name: &str) -> Claim {
    Claim {
        namespace: "ns".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

async fn prepare(
    plugin: &Plugin<Arc<Claims>, Fixture>,
    claims: Vec<Claim>,
) -> HashMap<String, NodePrepareResourceResponse> {
    plugin
        .node_prepare_resources(Request::new(NodePrepareResourcesRequest { claims }))
        .await
        .expect("prepare")
        .into_inner()
        .claims
}

async fn unprepare(
    plugin: &Plugin<Arc<Claims>, Fixture>,
    claims: Vec<Claim>,
) -> HashMap<String, NodeUnprepareResourceResponse> {
    plugin
        .node_unprepare_resources(Request::new(NodeUnprepareResourcesRequest { claims }))
        .await
        .expect("unprepare")
        .into_inner()
        .claims
}

#[tokio::test]
async fn prepare_is_idempotent_survives_a_restart_and_unprepare_removes_the_files() {
    let s = Setup::new();
    s.add(claim(
        "c1",
        "u1",
        &[
            ("spidernet.io", "node-a", "vf-0000-9b-00-2", "vf"),
            ("spidernet.io", "node-a", "rdma-mlx5-0-1", "rdma"),
            // Another driver's device and another node's pool are not ours to prepare.
            ("gpu.example.com", "node-a", "gpu-0", "gpu"),
            ("spidernet.io", "node-b", "vf-0000-1b-00-2", "vf"),
        ],
    ));
    let plugin = s.plugin();
    let first = prepare(&plugin, vec![wire("u1", "c1")]).await;
    let answer = &first["u1"];
    assert_eq!(answer.error, "");
    let names: Vec<&str> = answer.devices.iter().map(|d| d.device_name.as_str()).collect();
    assert_eq!(names, ["vf-0000-9b-00-2", "rdma-mlx5-0-1"]);
    assert_eq!(answer.devices[0].cdi_device_ids, ["spidernet.io/vf=0000:9b:00.2"]);
    assert_eq!(answer.devices[0].pool_name, "node-a");
    assert_eq!(
        s.cdi_files(),
        ["spidernet.io-rdma_u1.json", "spidernet.io-vf_u1.json"]
    );
    assert!(s.dir.path().join("devinfo/c1-0000:9b:00.2-device.json").exists());

    // kubelet asks again (its own restart): the same answer, even with the claim gone from the
    // API server, since nothing is read again.
    s.claims.0.lock().expect("claims").clear();
    assert_eq!(prepare(&plugin, vec![wire("u1", "c1")]).await["u1"], *answer);

    // The agent restarts: the checkpoint answers, and unprepare still knows the files.
    drop(plugin);
    let restarted = s.plugin();
    assert_eq!(prepare(&restarted, vec![wire("u1", "c1")]).await["u1"], *answer);
    assert_eq!(
        unprepare(&restarted, vec![wire("u1", "c1")]).await["u1"].error,
        ""
    );
    assert!(s.cdi_files().is_empty());
    assert!(!s.dir.path().join("devinfo/c1-0000:9b:00.2-device.json").exists());
    // Twice, and for a claim never prepared: nothing to do, no error.
    assert_eq!(
        unprepare(&restarted, vec![wire("u1", "c1"), wire("u9", "c9")]).await["u9"].error,
        ""
    );
    let checkpoint = Checkpoint::load(&s.dir.path().join("plugin/prepared.json"));
    assert!(checkpoint.claims.is_empty());
}

#[tokio::test]
async fn claims_that_cannot_be_prepared_say_why_and_leave_nothing() {
    let s = Setup::new();
    s.add(claim("pending", "u2", &[]));
    s.add(claim(
        "replaced",
        "u3-new",
        &[("spidernet.io", "node-a", "vf-0000-9b-00-2", "vf")],
    ));
    s.add(claim(
        "gone",
        "u4",
        &[("spidernet.io", "node-a", "vf-0000-ee-00-2", "vf")],
    ));
    let plugin = s.plugin();
    let out = prepare(
        &plugin,
        vec![
            wire("u2", "pending"),
            wire("u3", "replaced"),
            wire("u4", "gone"),
            wire("u5", "missing"),
        ],
    )
    .await;
    assert_eq!(out["u2"].error, "ResourceClaim ns/pending: it is not allocated");
    assert_eq!(
        out["u3"].error,
        "ResourceClaim ns/replaced: it is now another object (UID u3-new, kubelet asked for u3)"
    );
    assert!(
        out["u4"]
            .error
            .contains("vf-0000-ee-00-2 is not on this node any more"),
        "{}",
        out["u4"].error
    );
    assert!(out["u5"].error.contains("not found"), "{}", out["u5"].error);
    assert!(out.values().all(|a| a.devices.is_empty()));
    assert!(s.cdi_files().is_empty());
    // Nothing recorded: a later prepare reads the claim again.
    s.add(claim(
        "pending",
        "u2",
        &[("spidernet.io", "node-a", "vf-0000-1b-00-3", "vf")],
    ));
    let later = prepare(&plugin, vec![wire("u2", "pending")]).await;
    assert_eq!(later["u2"].error, "");
    assert_eq!(later["u2"].devices[0].device_name, "vf-0000-1b-00-3");
}

#[tokio::test]
async fn a_device_given_to_a_new_claim_takes_it_from_a_stale_one_at_once() {
    let s = Setup::new();
    s.add(claim(
        "old",
        "u-old",
        &[("spidernet.io", "node-a", "vf-0000-9b-00-2", "vf")],
    ));
    s.add(claim(
        "new",
        "u-new",
        &[("spidernet.io", "node-a", "vf-0000-9b-00-2", "vf")],
    ));
    let plugin = s.plugin();
    assert_eq!(
        prepare(&plugin, vec![wire("u-old", "old")]).await["u-old"].error,
        ""
    );
    assert_eq!(s.cdi_files(), ["spidernet.io-vf_u-old.json"]);
    // kubelet has not unprepared the old claim yet when the new one comes: one spec defines the
    // VF, never two.
    assert_eq!(
        prepare(&plugin, vec![wire("u-new", "new")]).await["u-new"].error,
        ""
    );
    assert_eq!(s.cdi_files(), ["spidernet.io-vf_u-new.json"]);
    assert!(!s.dir.path().join("devinfo/old-0000:9b:00.2-device.json").exists());
    assert!(s.dir.path().join("devinfo/new-0000:9b:00.2-device.json").exists());
    // Its late unprepare removes nothing of the new claim's.
    assert_eq!(
        unprepare(&plugin, vec![wire("u-old", "old")]).await["u-old"].error,
        ""
    );
    assert_eq!(s.cdi_files(), ["spidernet.io-vf_u-new.json"]);
}

#[tokio::test]
async fn claims_sharing_an_rdma_device_by_capacity_each_keep_their_own_spec() {
    let s = Setup::new();
    for (name, uid) in [("a", "u-a"), ("b", "u-b")] {
        s.add(claim(
            name,
            uid,
            &[("spidernet.io", "node-a", "rdma-mlx5-0", "rdma")],
        ));
    }
    let plugin = s.plugin();
    for (name, uid) in [("a", "u-a"), ("b", "u-b")] {
        let out = prepare(&plugin, vec![wire(uid, name)]).await;
        assert_eq!(out[uid].error, "");
        assert_eq!(
            out[uid].devices[0].cdi_device_ids,
            [format!("spidernet.io/rdma={uid}-rdma-mlx5-0")]
        );
    }
    assert_eq!(
        s.cdi_files(),
        ["spidernet.io-rdma_u-a.json", "spidernet.io-rdma_u-b.json"]
    );
}
