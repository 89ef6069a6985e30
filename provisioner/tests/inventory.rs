//! Discovery against the committed sysfs fixtures: the JSON is pinned in
//! `tests/fixtures/sysfs/<name>.json` (regenerate with `UPDATE_PINNED=1 cargo test`).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use spiderpool_api::inventory::Inventory;
use spiderpool_linux::links::{LinkTable, VfConfig};
use spiderpool_linux::sysfs::Sysfs;
use spiderpool_provisioner::discovery::{NodeIdentity, scan};
use spiderpool_testing::fixtures::fixtures_dir;
use spiderpool_testing::sysfs_fixture::{FIXTURES, SysfsBuilder, build_fixture};

fn identity() -> NodeIdentity {
    NodeIdentity {
        hostname: Some("node-1".into()),
        kernel: Some("6.12.0-test".into()),
        memory_bytes: None,
        rdma_netns_shared: None,
        rdma_holdings: Vec::new(),
        verbs: None,
    }
}

/// What netlink would add on the cx6dx node: administrator-set VF settings and altnames.
fn cx6dx_links() -> LinkTable {
    let mut links = LinkTable::default();
    links.set_alt_names("ens1f0np0", vec!["enp59s0f0np0".into()]);
    links.set_vf(
        "ens1f0np0",
        0,
        VfConfig {
            mac: Some("02:11:22:33:44:00".into()),
            vlan: Some(100),
            trust: Some(true),
            spoof_chk: Some(false),
            link_state: None,
        },
    );
    links.set_vf(
        "ens1f0np0",
        1,
        VfConfig {
            mac: None,
            vlan: Some(0),
            trust: Some(false),
            spoof_chk: Some(true),
            link_state: None,
        },
    );
    links
}

fn scan_fixture(name: &str) -> Inventory {
    let links = if name == "cx6dx" {
        cx6dx_links()
    } else {
        LinkTable::default()
    };
    scan(&Sysfs::new(fixtures_dir().join(name)), &links, &identity())
}

#[test]
fn fixtures_match_their_pinned_json() {
    for name in FIXTURES {
        let inv = scan_fixture(name);
        let json = serde_json::to_string_pretty(&inv).unwrap() + "\n";
        let pinned = fixtures_dir().join(format!("{name}.json"));
        if std::env::var_os("UPDATE_PINNED").is_some() {
            std::fs::write(&pinned, &json).unwrap();
        }
        let want = std::fs::read_to_string(&pinned).unwrap_or_default();
        assert_eq!(json, want, "{name}: scan differs from {}", pinned.display());
        assert!(inv.warnings.is_empty(), "{name}: {:?}", inv.warnings);
    }
}

#[test]
fn cx6dx_has_both_ports_with_vfs_and_roce() {
    let inv = scan_fixture("cx6dx");
    assert_eq!(inv.nics.len(), 2, "VFs are not NICs of their own");
    let p0 = &inv.nics[0];
    assert_eq!(p0.name.as_deref(), Some("ens1f0np0"));
    assert_eq!(p0.alt_names, ["enp59s0f0np0"]);
    assert_eq!(
        (p0.vendor_id.as_deref(), p0.device_id.as_deref()),
        (Some("15b3"), Some("101d"))
    );
    assert_eq!(p0.device_name.as_deref(), Some("MT2892 Family [ConnectX-6 Dx]"));
    assert_eq!(p0.vendor_name.as_deref(), Some("Mellanox Technologies"));
    assert_eq!(p0.link_speed_mbps, Some(100_000));
    assert_eq!(p0.rdma_devices, ["mlx5_0"]);
    let sriov = p0.sriov.as_ref().unwrap();
    assert_eq!(
        (sriov.total_vfs, sriov.num_vfs, sriov.vfs.len()),
        (Some(8), Some(4), 4)
    );
    let vf0 = &sriov.vfs[0];
    assert_eq!(
        vf0.mac.as_deref(),
        Some("02:11:22:33:44:00"),
        "the PF's VF MAC wins over the VF netdev's"
    );
    assert_eq!(
        (vf0.vlan, vf0.trust, vf0.spoof_chk),
        (Some(100), Some(true), Some(false))
    );
    assert_eq!(vf0.rdma_device.as_deref(), Some("mlx5_2"));
    let dpdk = &inv.nics[1].sriov.as_ref().unwrap().vfs[3];
    assert_eq!(
        (dpdk.driver.as_deref(), dpdk.name.as_deref()),
        (Some("vfio-pci"), None)
    );
    let mlx5_0 = &inv.rdma_devices[0];
    assert_eq!(mlx5_0.ports[0].state.as_deref(), Some("ACTIVE"));
    assert_eq!(mlx5_0.ports[0].link_layer.as_deref(), Some("Ethernet"));
    assert_eq!(mlx5_0.ports[0].rate_gbps, Some(100.0));
    assert_eq!(mlx5_0.ports[0].netdev.as_deref(), Some("ens1f0np0"));
    assert!(
        mlx5_0
            .char_devices
            .contains(&"/dev/infiniband/uverbs0".to_string())
    );
    assert!(
        mlx5_0
            .char_devices
            .contains(&"/dev/infiniband/rdma_cm".to_string())
    );
    assert_eq!(inv.node.numa_nodes, Some(2));
    assert_eq!(inv.node.rdma_netns_mode.as_deref(), Some("shared"));
}

#[test]
fn cx7_in_infiniband_mode() {
    let inv = scan_fixture("cx7-ib");
    let nic = &inv.nics[0];
    assert_eq!(nic.link_type.as_deref(), Some("infiniband"));
    let port = &inv.rdma_devices[0].ports[0];
    assert_eq!(
        (port.link_layer.as_deref(), port.rate_gbps),
        (Some("InfiniBand"), Some(400.0))
    );
    assert_eq!(
        port.netdev.as_deref(),
        Some("ibp59s0"),
        "IB ports name the PCI function's IPoIB netdev"
    );
    assert_eq!(inv.node.rdma_netns_mode.as_deref(), Some("exclusive"));
}

#[test]
fn e810_down_port_has_no_speed_and_no_rdma() {
    let inv = scan_fixture("e810");
    assert!(inv.rdma_devices.is_empty());
    assert_eq!(inv.nics[1].oper_state.as_deref(), Some("down"));
    assert_eq!(inv.nics[1].link_speed_mbps, None);
    assert_eq!(inv.nics[0].numa_node, Some(1));
}

#[test]
fn bond_members_and_vlans_and_no_virtual_devices() {
    let inv = scan_fixture("bond");
    let names: Vec<_> = inv.nics.iter().map(|n| n.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        ["enp94s0f0", "enp94s0f1"],
        "no bridge, veth, host bridge or unbound function"
    );
    assert!(inv.nics.iter().all(|n| n.bond_master.as_deref() == Some("bond0")));
    assert_eq!(inv.bonds.len(), 1);
    assert_eq!(inv.bonds[0].mode.as_deref(), Some("802.3ad"));
    assert_eq!(inv.bonds[0].slaves, ["enp94s0f0", "enp94s0f1"]);
    assert_eq!(inv.bonds[0].vlans, ["bond0.100", "bond0.200"]);
}

#[test]
fn gpus_and_the_gpus_near_each_nic() {
    use spiderpool_api::inventory::GpuPath::{NumaNode, PcieRoot, PcieSwitch};
    let inv = scan_fixture("gpu-nic");
    let gpus: Vec<(&str, Option<&str>, Option<u32>)> = inv
        .gpus
        .iter()
        .map(|g| (g.pci_address.as_str(), g.pcie_root.as_deref(), g.numa_node))
        .collect();
    // The BMC's VGA console (ASPEED) is not listed; GPUs need no driver.
    assert_eq!(
        gpus,
        [
            ("0000:1a:00.0", Some("pci0000:17"), Some(0)),
            ("0000:3b:00.0", Some("pci0000:38"), Some(0)),
            ("0000:9c:00.0", Some("pci0000:9a"), Some(1)),
            ("0000:ac:00.0", Some("pci0000:ab"), Some(1)),
        ]
    );
    assert_eq!(inv.gpus[0].vendor_id.as_deref(), Some("10de"));
    let near = |nic: &str| {
        let nic = inv
            .nics
            .iter()
            .find(|n| n.name.as_deref() == Some(nic))
            .expect("nic");
        let near: Vec<(String, _)> = nic.gpus.iter().map(|g| (g.pci_address.clone(), g.via)).collect();
        (nic.pcie_root.clone(), near)
    };
    assert_eq!(
        near("ens1np0"),
        (
            Some("pci0000:17".into()),
            vec![
                ("0000:1a:00.0".into(), PcieSwitch),
                ("0000:3b:00.0".into(), NumaNode)
            ]
        ),
        "the switch's GPU first, then the NUMA node's"
    );
    assert_eq!(
        near("ens2np0"),
        (
            Some("pci0000:9a".into()),
            vec![
                ("0000:9c:00.0".into(), PcieRoot),
                ("0000:ac:00.0".into(), NumaNode)
            ]
        )
    );
    let table = spiderpool_provisioner::render::render_table(&inv);
    assert!(table.contains("1a:00.0/switch,3b:00.0/numa"), "{table}");
    assert!(table.contains("GPU "), "{table}");
}

#[test]
fn malformed_sysfs_is_tolerated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    build_fixture("e810", dir.path()).unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    let dev = "devices/pci0000:00/0000:00:01.0/0000:5e:00.0";
    b.file(&format!("{dev}/numa_node"), "banana").unwrap();
    b.file(&format!("{dev}/net/ens2f0/mtu"), "").unwrap();
    b.file(&format!("{dev}/sriov_totalvfs"), "-3").unwrap();
    b.file("devices/system/cpu/online", "0-x").unwrap();
    std::fs::remove_file(dir.path().join(format!("{dev}/vendor"))).unwrap();
    // A dangling VF link, as during a concurrent VF teardown.
    std::os::unix::fs::symlink("../0000:5e:09.0", dir.path().join(format!("{dev}/virtfn7"))).unwrap();
    let inv = scan(&Sysfs::new(dir.path()), &LinkTable::default(), &identity());
    let nic = &inv.nics[0];
    assert_eq!(
        (nic.numa_node, nic.mtu, nic.vendor_id.clone()),
        (None, None, None)
    );
    assert_eq!(nic.sriov.as_ref().unwrap().total_vfs, None);
    assert_eq!(
        nic.sriov.as_ref().unwrap().vfs.len(),
        2,
        "the dangling VF is skipped"
    );
    assert_eq!(nic.device_id.as_deref(), Some("159b"));
    assert_eq!(inv.node.cpus, None);
    let warnings = inv.warnings.join("\n");
    for want in ["numa_node", "mtu", "sriov_totalvfs", "cpu/online", "virtfn7"] {
        assert!(warnings.contains(want), "no warning about {want}:\n{warnings}");
    }
}

#[test]
fn committed_fixtures_are_what_the_builder_writes() {
    for name in FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        build_fixture(name, dir.path()).unwrap();
        assert_eq!(
            tree(dir.path()),
            tree(&fixtures_dir().join(name)),
            "{name}: run gen-sysfs-fixtures"
        );
    }
}

/// Every path with its file content or link target.
fn tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                ));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}
