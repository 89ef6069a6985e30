//! This node as the agent sees it: its name, and a scan of its hardware (sysfs, plus netlink and
//! the host's identity when the scan is of the live system).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use spiderpool_api::inventory::Inventory;
use spiderpool_device_plugin::kubelet::allocated_device_ids;
use spiderpool_linux::links::LinkTable;
use spiderpool_linux::sysfs::{DEFAULT_SYSFS_ROOT, Sysfs};
use spiderpool_provisioner::applier::Observation;
use spiderpool_provisioner::discovery::{NodeIdentity, scan};

pub(crate) fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The host's name as the kernel knows it.
pub fn hostname() -> Option<String> {
    read_trimmed("/proc/sys/kernel/hostname")
}

/// The node's name: `given`, else `NODE_NAME` (the chart sets it from the pod's spec.nodeName),
/// else the hostname.
pub fn node_name(given: Option<String>) -> Result<String> {
    if let Some(n) = given
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
    {
        return Ok(n);
    }
    hostname().context("hostname")
}

fn live_identity() -> NodeIdentity {
    let memory_bytes = read_trimmed("/proc/meminfo").and_then(|m| {
        let kib: u64 = m
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib * 1024)
    });
    NodeIdentity {
        hostname: hostname(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        memory_bytes,
        rdma_netns_shared: spiderpool_linux::rdma::netns_mode_shared().ok(),
        rdma_holdings: spiderpool_linux::rdma::holdings(Path::new("/var/run/netns")),
        verbs: verbs_probe(),
    }
}

/// What libibverbs makes of the devices, in agents built with the `verbs` feature.
#[cfg(feature = "verbs")]
fn verbs_probe() -> Option<Result<Vec<spiderpool_linux::verbs::VerbsDevice>, String>> {
    Some(spiderpool_linux::verbs::probe())
}

#[cfg(not(feature = "verbs"))]
fn verbs_probe() -> Option<Result<Vec<spiderpool_linux::verbs::VerbsDevice>, String>> {
    None
}

/// Scans the node under `sysfs_root`, with the link table used. Netlink (VF settings, altnames)
/// and the host's identity describe this machine, so they join only a scan of the real /sys.
pub fn scan_with_links(sysfs_root: &Path) -> (Inventory, LinkTable) {
    let live = sysfs_root == Path::new(DEFAULT_SYSFS_ROOT);
    let mut netlink_warning = None;
    let links = if live {
        LinkTable::dump().unwrap_or_else(|e| {
            netlink_warning = Some(format!(
                "netlink link dump failed, VF settings and altnames unknown: {e}"
            ));
            LinkTable::default()
        })
    } else {
        LinkTable::default()
    };
    let identity = if live {
        live_identity()
    } else {
        NodeIdentity::default()
    };
    let mut inv = scan(&Sysfs::new(sysfs_root), &links, &identity);
    inv.warnings.extend(netlink_warning);
    (inv, links)
}

/// What a policy round plans against: the node under `sysfs_root` with its links, its `labels`,
/// and the VFs kubelet gave to pods by its checkpoint in `kubelet_dir` (VFs moved into a netns
/// count as in use too: the planner sees them).
pub fn observe(sysfs_root: &Path, labels: &BTreeMap<String, String>, kubelet_dir: &Path) -> Observation {
    let (inventory, links) = scan_with_links(sysfs_root);
    Observation {
        inventory,
        links,
        node_labels: labels.clone(),
        allocated: allocated_device_ids(kubelet_dir),
    }
}

pub fn scan_node(sysfs_root: &Path) -> Inventory {
    scan_with_links(sysfs_root).0
}
