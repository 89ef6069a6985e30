//! `spiderpool-agent dra`: the node's VFs and shared RDMA devices as ResourceSlices the real API
//! server accepts (its validation of names, attributes and pools), with the standard attributes
//! DRA claims select on; a pool that grows or shrinks is republished under a new generation and
//! leaves no slice behind.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{DeviceAttribute, DeviceClass, ResourceClaim, ResourceSlice};
use kube::api::ListParams;
use spiderpool_e2e::cluster::Scheduling;

use super::*;

fn publish(cluster: &Cluster, node: &str, rdma_slots: u32) {
    publish_from(
        cluster,
        node,
        rdma_slots,
        &spiderpool_testing::fixtures::fixture_root("gpu-nic"),
    );
}

fn publish_from(cluster: &Cluster, node: &str, rdma_slots: u32, sysfs: &std::path::Path) {
    publish_sharing(cluster, node, rdma_slots, sysfs, "slots");
}

/// `spiderpool-agent dra --once` with `--rdma-sharing sharing`.
fn publish_sharing(cluster: &Cluster, node: &str, rdma_slots: u32, sysfs: &std::path::Path, sharing: &str) {
    let out = std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"))
        .args([
            "dra",
            "--once",
            "--node",
            node,
            "--rdma-slots",
            &rdma_slots.to_string(),
            "--rdma-sharing",
            sharing,
        ])
        .arg("--sysfs-root")
        .arg(sysfs)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("spiderpool-agent dra runs");
    assert!(
        out.status.success(),
        "dra --once: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn node_slices(cluster: &Cluster, node: &str) -> Vec<ResourceSlice> {
    let api: Api<ResourceSlice> = Api::all(cluster.client.clone());
    let mut items = api
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .expect("list ResourceSlices")
        .items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    items
}

fn string(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.into()),
        ..DeviceAttribute::default()
    }
}

fn int(i: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_dra_slices_carry_the_fixture_node_s_devices_and_attributes() {
    let cluster = Cluster::connect().await.unwrap();
    let node = format!("dra-node-{}", unique());
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let created = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
                .unwrap(),
        )
        .await
        .unwrap();

    publish(&cluster, &node, 16);
    let slices = node_slices(&cluster, &node).await;
    assert_eq!(slices.len(), 1, "4 VFs and 2 HCAs x 16 slots fit one slice");
    let slice = &slices[0];
    assert_eq!(slice.spec.driver, "spidernet.io");
    assert_eq!(slice.spec.pool.name, node);
    assert_eq!(
        (slice.spec.pool.generation, slice.spec.pool.resource_slice_count),
        (1, 1)
    );
    let owner = &slice.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), &owner.uid),
        ("Node", created.metadata.uid.as_ref().unwrap())
    );
    let devices = slice.spec.devices.as_ref().expect("devices");
    assert_eq!(devices.len(), 4 + 2 * 16, "4 VFs and 2 HCAs x 16 slots");
    let device = |name: &str| {
        devices
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{name} in {:?}",
                    devices.iter().map(|d| &d.name).collect::<Vec<_>>()
                )
            })
            .attributes
            .clone()
            .unwrap_or_default()
    };
    // The VF under the H100's PCIe switch on NUMA 0, with its RDMA device.
    let vf = device("vf-0000-1b-00-2");
    for (key, want) in [
        ("resource.kubernetes.io/pciBusID", string("0000:1b:00.2")),
        ("resource.kubernetes.io/pcieRoot", string("pci0000:17")),
        ("resource.kubernetes.io/numaNode", int(0)),
        ("pfName", string("ens1np0")),
        ("vendor", string("15b3")),
        ("rdmaDevice", string("mlx5_2")),
        ("vfIndex", int(0)),
    ] {
        assert_eq!(vf.get(key), Some(&want), "{key}");
    }
    // A shared slot of the NUMA 1 HCA.
    let slot = device("rdma-mlx5-1-15");
    assert_eq!(
        slot.get("resource.kubernetes.io/pcieRoot"),
        Some(&string("pci0000:9a"))
    );
    assert_eq!(slot.get("resource.kubernetes.io/numaNode"), Some(&int(1)));
    assert_eq!(slot.get("kind"), Some(&string("rdma")));

    // More slots than one slice holds: two slices, the next generation.
    publish(&cluster, &node, 40);
    let slices = node_slices(&cluster, &node).await;
    let shape: Vec<(usize, i64, i64)> = slices
        .iter()
        .map(|s| {
            (
                s.spec.devices.as_ref().map_or(0, Vec::len),
                s.spec.pool.generation,
                s.spec.pool.resource_slice_count,
            )
        })
        .collect();
    assert_eq!(shape, [(64, 2, 2), (20, 2, 2)]);

    // Fewer again: one slice, and the second one is gone.
    publish(&cluster, &node, 1);
    let slices = node_slices(&cluster, &node).await;
    assert_eq!(slices.len(), 1);
    assert_eq!(
        (
            slices[0].spec.pool.generation,
            slices[0].spec.devices.as_ref().map_or(0, Vec::len)
        ),
        (3, 6)
    );
    nodes.delete(&node, &Default::default()).await.unwrap();
}

/// A node kube-scheduler can place pods on (Ready, with room) and no kubelet runs.
async fn schedulable_node(cluster: &Cluster, name: &str) -> Node {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
            .expect("schedulable_node"),
        )
        .await
        .expect("schedulable_node");
    // The API server taints a new node not-ready (TaintNodesByCondition); a node lifecycle
    // controller would lift it once kubelet reports Ready, and none runs here.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .expect("schedulable_node");
    let room = json!({"cpu": "64", "memory": "256Gi", "pods": "110"});
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"capacity": room, "allocatable": room,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Test", "message": "",
                                "lastHeartbeatTime": null, "lastTransitionTime": null}]}})),
        )
        .await
        .expect("schedulable_node");
    node
}

async fn device_class(cluster: &Cluster, name: &str, cel: &str) {
    let class: DeviceClass = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": cel}}]}
    }))
    .expect("device_class");
    Api::<DeviceClass>::all(cluster.client.clone())
        .create(&PostParams::default(), &class)
        .await
        .expect("device_class");
}

/// A claim named `name` with `devices` (requests, constraints) and a pod on `node` using it.
async fn claim_and_pod(cluster: &Cluster, ns: &str, node: &str, name: &str, devices: Value) {
    let claim: ResourceClaim =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"devices": devices}}))
            .expect("claim_and_pod");
    Api::<ResourceClaim>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &claim)
        .await
        .expect("claim_and_pod");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "automountServiceAccountToken": false,
            "resourceClaims": [{"name": "devices", "resourceClaimName": name}],
            "containers": [{"name": "c", "image": "registry.invalid/pause:3.10",
                            "resources": {"claims": [{"name": "devices"}]}}]
        }
    }))
    .expect("claim_and_pod");
    Api::<Pod>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("claim_and_pod");
}

/// The devices allocated to claim `name` (request → device), once it is allocated.
async fn allocated(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    wait: Duration,
) -> Option<BTreeMap<String, String>> {
    let claims: Api<ResourceClaim> = Api::namespaced(cluster.client.clone(), ns);
    eventually(wait, || async {
        let claim = claims.get(name).await.ok()?;
        let results = claim.status?.allocation?.devices?.results?;
        Some(
            results
                .into_iter()
                .map(|r| (r.request, r.device))
                .collect::<BTreeMap<_, _>>(),
        )
    })
    .await
}

/// The devices allocated to claim `name` within 60 s; otherwise the test fails with the
/// scheduler's and controllers' logs (`context` says when).
async fn must_allocate(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    scheduling: &Scheduling,
    context: &str,
) -> BTreeMap<String, String> {
    allocated(cluster, ns, name, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("{name} not allocated{context}\n{}", scheduling.tails()))
}

/// The end of a scheduler test: the scheduler stopped, the test's node deleted.
async fn remove_node(cluster: &Cluster, node: &str, scheduling: Scheduling) {
    drop(scheduling);
    Api::<Node>::all(cluster.client.clone())
        .delete(node, &Default::default())
        .await
        .expect("delete the test's node");
}

async fn pod_unschedulable(cluster: &Cluster, ns: &str, name: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    eventually(Duration::from_secs(30), || async {
        let pod = pods.get(name).await.ok()?;
        pod.status?
            .conditions?
            .into_iter()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .and_then(|c| c.message)
    })
    .await
}

/// The real kube-scheduler allocates from the slices `spiderpool-agent dra` publishes: a VF by a
/// CEL selector (RDMA on NUMA node 1); a GPU of a stand-in driver and a VF under
/// `matchAttribute: resource.kubernetes.io/pcieRoot` always on the same root complex, and a pod
/// that cannot be aligned is left unscheduled rather than given a misaligned pair; two pods share
/// an HCA's slots and a third is refused when they are used up.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up and scheduling"]
async fn cluster_dra_scheduler_allocates_by_attribute_and_aligns_vfs_with_gpus() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let dir = tempfile::tempdir().unwrap();
    let node = format!("dra-sched-{u}");
    schedulable_node(&cluster, &node).await;
    // Two slots per HCA: the third pod asking for mlx5_0 finds none.
    publish(&cluster, &node, 2);
    // The stand-in GPU driver: one GPU on each of the fixture's root complexes.
    let gpu_driver = format!("gpu-{u}.example.com").replace('_', "-");
    let gpus: Vec<Value> = [
        ("1a", "pci0000:17"),
        ("3b", "pci0000:38"),
        ("9c", "pci0000:9a"),
        ("ac", "pci0000:ab"),
    ]
    .iter()
    .map(|(bus, root)| {
        json!({"name": format!("gpu-{bus}"),
            "attributes": {"resource.kubernetes.io/pcieRoot": {"string": root}}})
    })
    .collect();
    let gpu_slice: ResourceSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{node}-gpus")},
        "spec": {"driver": gpu_driver, "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": gpus}
    }))
    .unwrap();
    Api::<ResourceSlice>::all(cluster.client.clone())
        .create(&PostParams::default(), &gpu_slice)
        .await
        .unwrap();
    let (vf_class, rdma_class, gpu_class) = (format!("vf-{u}"), format!("rdma-{u}"), format!("gpu-{u}"));
    device_class(
        &cluster,
        &vf_class,
        "device.driver == 'spidernet.io' && device.attributes['spidernet.io'].kind == 'vf'",
    )
    .await;
    device_class(
        &cluster,
        &rdma_class,
        "device.driver == 'spidernet.io' && device.attributes['spidernet.io'].kind == 'rdma'",
    )
    .await;
    device_class(&cluster, &gpu_class, &format!("device.driver == '{gpu_driver}'")).await;
    let ns = cluster.namespace("dra", json!({})).await.unwrap();
    let scheduling = Scheduling::start(&cluster, dir.path(), "resourceclaim-controller");
    let slices = node_slices(&cluster, &node).await;
    let root_of = |device: &str| -> String {
        slices
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .find(|d| d.name == device)
            .and_then(|d| {
                d.attributes
                    .as_ref()?
                    .get("resource.kubernetes.io/pcieRoot")?
                    .string
                    .clone()
            })
            .unwrap_or_else(|| panic!("no pcieRoot for {device}"))
    };
    let gpu_root = |device: &str| -> &str {
        match device {
            "gpu-1a" => "pci0000:17",
            "gpu-3b" => "pci0000:38",
            "gpu-9c" => "pci0000:9a",
            "gpu-ac" => "pci0000:ab",
            other => panic!("unknown GPU {other}"),
        }
    };

    // A VF with RDMA on NUMA node 1 (a CEL selector): one of ens2np0's.
    claim_and_pod(
        &cluster,
        &ns,
        &node,
        "numa1",
        json!({"requests": [{"name": "vf", "exactly": {"deviceClassName": vf_class, "selectors": [{"cel": {"expression":
            "device.attributes['resource.kubernetes.io'].numaNode == 1 && device.attributes['spidernet.io'].rdma"}}]}}]}),
    )
    .await;
    let got = must_allocate(&cluster, &ns, "numa1", &scheduling, "").await;
    assert!(
        ["vf-0000-9b-00-2", "vf-0000-9b-00-3"].contains(&got["vf"].as_str()),
        "{got:?}"
    );

    // A GPU and a VF on one root complex: three VFs are left (one on pci0000:9a, two on
    // pci0000:17), GPUs on four roots; two pairs can be aligned, the third pod cannot.
    let aligned = json!({
        "requests": [{"name": "gpu", "exactly": {"deviceClassName": gpu_class}},
                     {"name": "vf", "exactly": {"deviceClassName": vf_class}}],
        "constraints": [{"requests": ["gpu", "vf"], "matchAttribute": "resource.kubernetes.io/pcieRoot"}]
    });
    let mut roots = Vec::new();
    for i in 0..2 {
        let name = format!("aligned-{i}");
        claim_and_pod(&cluster, &ns, &node, &name, aligned.clone()).await;
        let got = must_allocate(&cluster, &ns, &name, &scheduling, "").await;
        assert_eq!(gpu_root(&got["gpu"]), root_of(&got["vf"]), "{name}: {got:?}");
        roots.push(root_of(&got["vf"]));
    }
    roots.sort();
    assert_eq!(roots, ["pci0000:17", "pci0000:9a"]);
    claim_and_pod(&cluster, &ns, &node, "aligned-2", aligned.clone()).await;
    let why = pod_unschedulable(&cluster, &ns, "aligned-2")
        .await
        .unwrap_or_else(|| panic!("aligned-2 was not refused\n{}", scheduling.tails()));
    assert!(
        allocated(&cluster, &ns, "aligned-2", Duration::from_secs(2))
            .await
            .is_none(),
        "no misaligned pair: {why}"
    );

    // Shared RDMA: mlx5_0's two slots go to two pods; a third is refused.
    let shared = json!({"requests": [{"name": "rdma", "exactly": {"deviceClassName": rdma_class, "selectors": [{"cel": {"expression":
        "device.attributes['spidernet.io'].rdmaDevice == 'mlx5_0'"}}]}}]});
    let mut slots = Vec::new();
    for i in 0..2 {
        let name = format!("shared-{i}");
        claim_and_pod(&cluster, &ns, &node, &name, shared.clone()).await;
        let got = must_allocate(&cluster, &ns, &name, &scheduling, "").await;
        slots.push(got["rdma"].clone());
    }
    slots.sort();
    assert_eq!(slots, ["rdma-mlx5-0-0", "rdma-mlx5-0-1"]);
    claim_and_pod(&cluster, &ns, &node, "shared-2", shared).await;
    let why = pod_unschedulable(&cluster, &ns, "shared-2")
        .await
        .unwrap_or_else(|| panic!("shared-2 was not refused\n{}", scheduling.tails()));
    eprintln!("the third pod for mlx5_0: {why}");
    remove_node(&cluster, &node, scheduling).await;
}

/// A PF whose link goes down taints its VFs (`spidernet.io/unhealthy`, NoSchedule) and the
/// scheduler stops choosing them; back up, the taint goes and a VF of that PF is allocated.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up and scheduling"]
async fn cluster_dra_a_down_pf_taints_its_vfs_and_the_scheduler_avoids_them() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let dir = tempfile::tempdir().unwrap();
    let node = format!("dra-taint-{u}");
    schedulable_node(&cluster, &node).await;
    // The fixture, copied so its NUMA-1 PF can go down and up.
    let sysfs = dir.path().join("sysfs");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(spiderpool_testing::fixtures::fixture_root("gpu-nic"))
        .arg(&sysfs)
        .status()
        .unwrap();
    assert!(copied.success());
    let operstate = sysfs.join("class/net/ens2np0/operstate");
    std::fs::write(&operstate, "down\n").unwrap();
    publish_from(&cluster, &node, 1, &sysfs);
    let taints = |slices: &[ResourceSlice], device: &str| -> Vec<(String, String)> {
        slices
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .find(|d| d.name == device)
            .and_then(|d| d.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key, t.effect))
            .collect()
    };
    let slices = node_slices(&cluster, &node).await;
    let unhealthy = vec![("spidernet.io/unhealthy".to_string(), "NoSchedule".to_string())];
    assert_eq!(
        taints(&slices, "vf-0000-9b-00-2"),
        unhealthy,
        "the API server keeps the taint"
    );
    assert!(
        taints(&slices, "vf-0000-1b-00-2").is_empty(),
        "the other PF's VFs are fine"
    );

    let vf_class = format!("vf-taint-{u}");
    device_class(
        &cluster,
        &vf_class,
        "device.driver == 'spidernet.io' && device.attributes['spidernet.io'].kind == 'vf'",
    )
    .await;
    let ns = cluster.namespace("dra-taint", json!({})).await.unwrap();
    let scheduling = Scheduling::start(&cluster, dir.path(), "resourceclaim-controller");
    claim_and_pod(
        &cluster,
        &ns,
        &node,
        "numa1",
        json!({"requests": [{"name": "vf", "exactly": {"deviceClassName": vf_class, "selectors": [{"cel": {"expression":
            "device.attributes['resource.kubernetes.io'].numaNode == 1"}}]}}]}),
    )
    .await;
    let why = pod_unschedulable(&cluster, &ns, "numa1")
        .await
        .unwrap_or_else(|| panic!("a tainted VF was allocated\n{}", scheduling.tails()));
    assert!(
        allocated(&cluster, &ns, "numa1", Duration::from_secs(2))
            .await
            .is_none(),
        "{why}"
    );

    // The link comes back: untainted, and the waiting pod gets a VF of that PF.
    std::fs::write(&operstate, "up\n").unwrap();
    publish_from(&cluster, &node, 1, &sysfs);
    assert!(taints(&node_slices(&cluster, &node).await, "vf-0000-9b-00-2").is_empty());
    let got = must_allocate(&cluster, &ns, "numa1", &scheduling, " once the PF is up").await;
    assert!(
        ["vf-0000-9b-00-2", "vf-0000-9b-00-3"].contains(&got["vf"].as_str()),
        "{got:?}"
    );
    remove_node(&cluster, &node, scheduling).await;
}

/// Where the API server keeps consumable capacity (1.36+; here 1.34 with the DRAConsumableCapacity
/// gate, as `hack/control-plane.sh up` starts it) `auto` publishes each RDMA device once, with a
/// capacity of `rdma-slots`; the real scheduler gives two claims shares of mlx5_0, each its own
/// share ID, and refuses a third.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up and scheduling"]
async fn cluster_dra_rdma_devices_are_shared_by_consumable_capacity_where_served() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let dir = tempfile::tempdir().unwrap();
    let node = format!("dra-cap-{u}");
    schedulable_node(&cluster, &node).await;
    publish_sharing(
        &cluster,
        &node,
        2,
        &spiderpool_testing::fixtures::fixture_root("gpu-nic"),
        "auto",
    );
    let slices = node_slices(&cluster, &node).await;
    let devices: Vec<_> = slices
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .collect();
    let shared = devices
        .iter()
        .find(|d| d.name == "rdma-mlx5-0")
        .unwrap_or_else(|| {
            panic!(
                "no shareable rdma-mlx5-0: {:?}",
                devices.iter().map(|d| &d.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(shared.allow_multiple_allocations, Some(true));
    assert_eq!(shared.capacity.as_ref().expect("capacity")["slots"].value.0, "2");
    assert!(
        !devices.iter().any(|d| d.name.starts_with("rdma-mlx5-0-")),
        "no slots beside it"
    );

    let ns = cluster.namespace("dra-cap", json!({})).await.unwrap();
    let scheduling = Scheduling::start(&cluster, dir.path(), "resourceclaim-controller");
    let rdma_class = format!("rdma-cap-{u}");
    device_class(
        &cluster,
        &rdma_class,
        "device.driver == 'spidernet.io' && device.attributes['spidernet.io'].kind == 'rdma'",
    )
    .await;
    // No capacity request: the device's default (1 slot) is consumed. (An explicit
    // `capacity.requests` of 1 was not allocated by the 1.34 scheduler with the alpha gate.)
    let shared = json!({"requests": [{"name": "rdma", "exactly": {"deviceClassName": rdma_class,
        "selectors": [{"cel": {"expression": "device.attributes['spidernet.io'].rdmaDevice == 'mlx5_0'"}}]}}]});
    let claims: Api<ResourceClaim> = Api::namespaced(cluster.client.clone(), &ns);
    let mut shares = Vec::new();
    for i in 0..2 {
        let name = format!("share-{i}");
        claim_and_pod(&cluster, &ns, &node, &name, shared.clone()).await;
        let got = must_allocate(&cluster, &ns, &name, &scheduling, "").await;
        assert_eq!(got["rdma"], "rdma-mlx5-0");
        let claim = claims.get(&name).await.unwrap();
        let result = claim
            .status
            .unwrap()
            .allocation
            .unwrap()
            .devices
            .unwrap()
            .results
            .unwrap()
            .remove(0);
        assert_eq!(
            result.consumed_capacity.as_ref().map(|c| c["slots"].0.clone()),
            Some("1".to_string())
        );
        shares.push(result.share_id.expect("a share ID"));
    }
    assert_ne!(shares[0], shares[1]);
    claim_and_pod(&cluster, &ns, &node, "share-2", shared).await;
    let why = pod_unschedulable(&cluster, &ns, "share-2")
        .await
        .unwrap_or_else(|| panic!("share-2 was not refused\n{}", scheduling.tails()));
    eprintln!("the third claim on mlx5_0's capacity: {why}");
    remove_node(&cluster, &node, scheduling).await;
}
