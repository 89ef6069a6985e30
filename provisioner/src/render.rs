//! Human-readable rendering of an inventory: one row per NIC, then RDMA devices and bonds.

use std::fmt::Write;

use spiderpool_api::inventory::Inventory;

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.clone()));
    }
}

pub fn render_table(inv: &Inventory) -> String {
    let mut out = String::new();
    let n = &inv.node;
    let _ = writeln!(
        out,
        "NODE {}  kernel {}  cpus {}  memory {}  numa nodes {}  rdma netns {}",
        or_dash(n.hostname.as_deref()),
        or_dash(n.kernel.as_deref()),
        or_dash(n.cpus),
        n.memory_bytes.map_or_else(
            || "-".into(),
            |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        ),
        or_dash(n.numa_nodes),
        or_dash(n.rdma_netns_mode.as_deref()),
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = inv
        .nics
        .iter()
        .map(|nic| {
            let vfs = nic.sriov.as_ref().map_or_else(
                || "-".to_string(),
                |s| format!("{}/{}", or_dash(s.num_vfs), or_dash(s.total_vfs)),
            );
            let model = match (&nic.vendor_id, &nic.device_id) {
                (Some(v), Some(d)) => format!("{v}:{d}"),
                _ => "-".into(),
            };
            let state = match (&nic.oper_state, nic.link_speed_mbps) {
                (Some(s), Some(speed)) => format!("{s} {}G", speed / 1000),
                (Some(s), None) => s.clone(),
                _ => "-".into(),
            };
            vec![
                or_dash(nic.name.as_deref()),
                nic.pci_address.clone(),
                model,
                or_dash(nic.driver.as_deref()),
                or_dash(nic.numa_node),
                or_dash(nic.link_type.as_deref()),
                state,
                or_dash(nic.mtu),
                vfs,
                if nic.rdma_devices.is_empty() {
                    "-".into()
                } else {
                    nic.rdma_devices.join(",")
                },
                or_dash(nic.bond_master.as_deref()),
                or_dash(nic.pcie_root.as_deref()),
                near_gpus(&nic.gpus),
                or_dash(nic.device_name.as_deref()),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "NIC",
            "PCI",
            "ID",
            "DRIVER",
            "NUMA",
            "LINK",
            "STATE",
            "MTU",
            "VFS",
            "RDMA",
            "BOND",
            "PCIE ROOT",
            "GPUS (switch/root/numa)",
            "MODEL",
        ],
        &rows,
    );
    for nic in &inv.nics {
        let Some(sriov) = nic.sriov.as_ref().filter(|s| !s.vfs.is_empty()) else {
            continue;
        };
        let _ = writeln!(
            out,
            "\nVFs of {}:",
            or_dash(nic.name.as_deref()).replace('-', &nic.pci_address)
        );
        let rows: Vec<Vec<String>> = sriov
            .vfs
            .iter()
            .map(|vf| {
                vec![
                    vf.vf_id.to_string(),
                    vf.pci_address.clone(),
                    or_dash(vf.name.as_deref()),
                    or_dash(vf.driver.as_deref()),
                    or_dash(vf.mac.as_deref()),
                    or_dash(vf.vlan),
                    or_dash(vf.trust),
                    or_dash(vf.spoof_chk),
                    or_dash(vf.rdma_device.as_deref()),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "VF", "PCI", "NETDEV", "DRIVER", "MAC", "VLAN", "TRUST", "SPOOFCHK", "RDMA",
            ],
            &rows,
        );
    }
    if !inv.rdma_devices.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = inv
            .rdma_devices
            .iter()
            .map(|d| {
                let ports = d
                    .ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}/{}/{}G/{}",
                            p.port,
                            or_dash(p.state.as_deref()),
                            or_dash(p.link_layer.as_deref()),
                            or_dash(p.rate_gbps),
                            or_dash(p.netdev.as_deref())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    d.name.clone(),
                    or_dash(d.pci_address.as_deref()),
                    ports,
                    d.netns.clone().unwrap_or_else(|| "host".into()),
                    d.char_devices.join(","),
                    match &d.verbs {
                        None => "-".to_string(),
                        Some(v) if v.usable => "usable".to_string(),
                        Some(v) => format!("UNUSABLE: {}", or_dash(v.reason.as_deref())),
                    },
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "RDMA",
                "PCI",
                "PORTS (port:state/layer/rate/netdev)",
                "NETNS",
                "CHAR DEVICES",
                "VERBS",
            ],
            &rows,
        );
    }
    if !inv.gpus.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = inv
            .gpus
            .iter()
            .map(|g| {
                vec![
                    g.pci_address.clone(),
                    match (&g.vendor_id, &g.device_id) {
                        (Some(v), Some(d)) => format!("{v}:{d}"),
                        _ => "-".into(),
                    },
                    or_dash(g.driver.as_deref()),
                    or_dash(g.numa_node),
                    or_dash(g.pcie_root.as_deref()),
                    or_dash(g.device_name.as_deref()),
                ]
            })
            .collect();
        table(
            &mut out,
            &["GPU", "ID", "DRIVER", "NUMA", "PCIE ROOT", "MODEL"],
            &rows,
        );
    }
    if !inv.bonds.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = inv
            .bonds
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    or_dash(b.mode.as_deref()),
                    b.slaves.join(","),
                    b.vlans.join(","),
                ]
            })
            .collect();
        table(&mut out, &["BOND", "MODE", "SLAVES", "VLANS"], &rows);
    }
    if !inv.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &inv.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    out
}

/// `1a:00.0/switch,3b:00.0/numa`: the GPUs near a NIC, nearest first (domain 0000 left out).
fn near_gpus(gpus: &[spiderpool_api::inventory::NearGpu]) -> String {
    use spiderpool_api::inventory::GpuPath;
    if gpus.is_empty() {
        return "-".into();
    }
    gpus.iter()
        .map(|g| {
            let via = match g.via {
                GpuPath::PcieSwitch => "switch",
                GpuPath::PcieRoot => "root",
                GpuPath::NumaNode => "numa",
            };
            format!(
                "{}/{via}",
                g.pci_address.strip_prefix("0000:").unwrap_or(&g.pci_address)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}
