use spiderpool_api::inventory::{RdmaPort, Sriov, VerbsHealth};

use super::*;

fn roce(name: &str, pci: Option<&str>, netdev: &str, state: &str) -> RdmaDevice {
    RdmaDevice {
        name: name.into(),
        pci_address: pci.map(Into::into),
        ports: vec![RdmaPort {
            port: 1,
            state: Some(state.into()),
            link_layer: Some("Ethernet".into()),
            netdev: Some(netdev.into()),
            ..RdmaPort::default()
        }],
        ..RdmaDevice::default()
    }
}

/// A ConnectX-7 PF (mlx5_0) with two VFs (mlx5_2 on VF 0), NUMA 1 under pci0000:9a.
fn node() -> Inventory {
    let vf = |i: u32, rdma: Option<&str>| Vf {
        vf_id: i,
        pci_address: format!("0000:9b:00.{}", i + 2),
        name: Some(format!("ens2f0v{i}")),
        driver: Some("mlx5_core".into()),
        rdma_device: rdma.map(Into::into),
        ..Vf::default()
    };
    Inventory {
        nics: vec![Nic {
            name: Some("ens2np0".into()),
            pci_address: "0000:9b:00.0".into(),
            vendor_id: Some("15b3".into()),
            device_id: Some("1021".into()),
            driver: Some("mlx5_core".into()),
            numa_node: Some(1),
            oper_state: Some("up".into()),
            link_type: Some("ether".into()),
            pcie_root: Some("pci0000:9a".into()),
            sriov: Some(Sriov {
                total_vfs: Some(16),
                num_vfs: Some(2),
                vfs: vec![vf(0, Some("mlx5_2")), vf(1, None)],
            }),
            rdma_devices: vec!["mlx5_0".into()],
            ..Nic::default()
        }],
        rdma_devices: vec![
            roce("mlx5_0", Some("0000:9b:00.0"), "ens2np0", "ACTIVE"),
            roce("mlx5_2", Some("0000:9b:00.2"), "ens2f0v0", "ACTIVE"),
            RdmaDevice {
                netns: Some("cni-1".into()),
                ..roce("rxpod", None, "net1", "ACTIVE")
            },
        ],
        ..Inventory::default()
    }
}

fn attr<'a>(d: &'a Device, key: &str) -> Option<&'a DeviceAttribute> {
    d.attributes.as_ref().and_then(|a| a.get(key))
}

fn find<'a>(devices: &'a [Device], name: &str) -> &'a Device {
    devices.iter().find(|d| d.name == name).expect(name)
}

#[test]
fn each_vf_is_a_device_with_the_standard_and_our_attributes() {
    let devices = devices(&node(), &Options::default());
    let vf = find(&devices, "vf-0000-9b-00-2");
    assert_eq!(
        attr(vf, "resource.kubernetes.io/pciBusID"),
        Some(&string("0000:9b:00.2"))
    );
    assert_eq!(
        attr(vf, "resource.kubernetes.io/pcieRoot"),
        Some(&string("pci0000:9a"))
    );
    assert_eq!(attr(vf, "resource.kubernetes.io/numaNode"), Some(&int(1)));
    for (key, value) in [
        ("kind", string("vf")),
        ("pfName", string("ens2np0")),
        ("pfPciAddress", string("0000:9b:00.0")),
        ("vendor", string("15b3")),
        ("pfDeviceID", string("1021")),
        ("driver", string("mlx5_core")),
        ("netdev", string("ens2f0v0")),
        ("linkType", string("ether")),
        ("vfIndex", int(0)),
        ("rdma", boolean(true)),
        ("rdmaDevice", string("mlx5_2")),
    ] {
        assert_eq!(attr(vf, key), Some(&value), "{key}");
    }
    let vf1 = find(&devices, "vf-0000-9b-00-3");
    assert_eq!(attr(vf1, "rdma"), Some(&boolean(false)));
    assert_eq!(attr(vf1, "rdmaDevice"), None);
    assert!(vf.taints.is_none() && vf1.taints.is_none());
}

#[test]
fn the_pf_s_rdma_device_is_shared_in_slots_and_a_vf_s_or_a_pod_s_is_not() {
    let devices = devices(
        &node(),
        &Options {
            rdma_slots: 3,
            ..Options::default()
        },
    );
    let shared: Vec<&str> = devices
        .iter()
        .filter(|d| attr(d, "kind") == Some(&string("rdma")))
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(shared, ["rdma-mlx5-0-0", "rdma-mlx5-0-1", "rdma-mlx5-0-2"]);
    let slot = find(&devices, "rdma-mlx5-0-1");
    assert_eq!(attr(slot, "rdmaDevice"), Some(&string("mlx5_0")));
    assert_eq!(
        attr(slot, "resource.kubernetes.io/pcieRoot"),
        Some(&string("pci0000:9a"))
    );
    assert_eq!(attr(slot, "resource.kubernetes.io/numaNode"), Some(&int(1)));
    assert_eq!(attr(slot, "netdev"), Some(&string("ens2np0")));
    assert_eq!(devices.len(), 2 + 3);
}

#[test]
fn what_cannot_be_used_is_tainted_with_the_reason() {
    let mut inv = node();
    inv.rdma_devices[0].verbs = Some(VerbsHealth {
        usable: false,
        reason: Some("libibverbs does not list it".into()),
    });
    inv.rdma_devices[1].ports[0].state = Some("DOWN".into());
    let devices = devices(
        &inv,
        &Options {
            rdma_slots: 1,
            ..Options::default()
        },
    );
    let taint = |name: &str| {
        find(&devices, name).taints.as_ref().map(|t| {
            (
                t[0].key.clone(),
                t[0].value.clone().unwrap_or_default(),
                t[0].effect.clone(),
            )
        })
    };
    assert_eq!(
        taint("rdma-mlx5-0-0"),
        Some((
            UNHEALTHY_TAINT.into(),
            "mlx5-0--libibverbs-does-not-list-it".into(),
            "NoSchedule".into()
        ))
    );
    assert_eq!(
        taint("vf-0000-9b-00-2").map(|t| t.1),
        Some("mlx5-2--no-port-active".into())
    );
    assert_eq!(
        taint("vf-0000-9b-00-3"),
        None,
        "a VF without RDMA does not follow an RDMA port"
    );
    inv.nics[0].oper_state = Some("down".into());
    let devices = super::devices(
        &inv,
        &Options {
            rdma_slots: 1,
            ..Options::default()
        },
    );
    let vf1 = find(&devices, "vf-0000-9b-00-3");
    assert_eq!(
        vf1.taints.as_ref().and_then(|t| t[0].value.clone()).as_deref(),
        Some("pf-ens2np0-is-down")
    );
}

#[test]
fn a_pool_of_many_devices_is_split_into_counted_slices() {
    let many: Vec<Device> = (0..130)
        .map(|i| Device {
            name: format!("d{i}"),
            ..Device::default()
        })
        .collect();
    let out = slices("node-1", many, 7);
    let shape: Vec<(&str, usize, i64, i64)> = out
        .iter()
        .map(|(name, s)| {
            (
                name.as_str(),
                s.devices.as_ref().map_or(0, Vec::len),
                s.pool.generation,
                s.pool.resource_slice_count,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("node-1-spidernet.io-0", 64, 7, 3),
            ("node-1-spidernet.io-1", 64, 7, 3),
            ("node-1-spidernet.io-2", 2, 7, 3)
        ]
    );
    assert!(
        out.iter()
            .all(|(_, s)| s.node_name.as_deref() == Some("node-1") && s.driver == DRIVER)
    );
    let empty = slices("node-1", Vec::new(), 1);
    assert_eq!(empty.len(), 1, "an empty pool is still a pool");
}

#[test]
fn devices_another_allocator_holds_are_left_out() {
    let options = Options {
        rdma_slots: 2,
        excluded: Excluded {
            pci: ["0000:9b:00.2".to_string()].into(),
            rdma: ["mlx5_0".to_string()].into(),
        },
        ..Options::default()
    };
    let names: Vec<String> = devices(&node(), &options).into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["vf-0000-9b-00-3"]);
}

#[test]
fn with_consumable_capacity_an_rdma_device_is_one_device_claims_share() {
    let options = Options {
        rdma_slots: 4,
        sharing: Sharing::Capacity,
        ..Options::default()
    };
    let devices = devices(&node(), &options);
    let shared = find(&devices, "rdma-mlx5-0");
    assert_eq!(shared.allow_multiple_allocations, Some(true));
    let capacity = &shared.capacity.as_ref().expect("capacity")[SLOTS_CAPACITY];
    assert_eq!(capacity.value.0, "4");
    let policy = capacity.request_policy.as_ref().expect("policy");
    assert_eq!(policy.default.as_ref().map(|q| q.0.as_str()), Some("1"));
    assert_eq!(devices.iter().filter(|d| d.name.starts_with("rdma-")).count(), 1);
    let inv = node();
    assert_eq!(rdma_of(&inv, "rdma-mlx5-0"), Some("mlx5_0"));
    assert_eq!(rdma_of(&inv, "rdma-mlx5-0-3"), Some("mlx5_0"));
    assert_eq!(rdma_of(&inv, "rdma-mlx5-9"), None);
}
