//! `spiderpool-agent dra`: the node's VFs and shared RDMA devices as ResourceSlices the real API
//! server accepts (its validation of names, attributes and pools), with the standard attributes
//! DRA claims select on; a pool that grows or shrinks is republished under a new generation and
//! leaves no slice behind.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceSlice};
use kube::api::ListParams;

use super::*;

fn publish(cluster: &Cluster, node: &str, rdma_slots: u32) {
    let out = std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"))
        .args([
            "dra",
            "--once",
            "--node",
            node,
            "--rdma-slots",
            &rdma_slots.to_string(),
        ])
        .arg("--sysfs-root")
        .arg(spiderpool_testing::fixtures::fixture_root("gpu-nic"))
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
    assert_eq!(slices.len(), 1, "2 VFs and 2 HCAs x 16 slots fit one slice");
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
    assert_eq!(devices.len(), 2 + 2 * 16);
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
    assert_eq!(shape, [(64, 2, 2), (18, 2, 2)]);

    // Fewer again: one slice, and the second one is gone.
    publish(&cluster, &node, 1);
    let slices = node_slices(&cluster, &node).await;
    assert_eq!(slices.len(), 1);
    assert_eq!(
        (
            slices[0].spec.pool.generation,
            slices[0].spec.devices.as_ref().map_or(0, Vec::len)
        ),
        (3, 4)
    );
    nodes.delete(&node, &Default::default()).await.unwrap();
}
