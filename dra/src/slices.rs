//! The node's devices for DRA, from its inventory (pure):
//! - each VF, with the standard `resource.kubernetes.io/` attributes `pciBusID`, `pcieRoot` and
//!   `numaNode` and ours (`spidernet.io`): kind, PF name and PCI address, vendor and the PF's
//!   device ID, driver, netdev, link type, VF index, whether it has RDMA and its RDMA device;
//! - each RDMA device no VF owns (an HCA's PF, Soft-RoCE on a host NIC) as `slots`
//!   interchangeable devices sharing it, as `rdmaHcaMax` does for the device plugin, or, where the
//!   API server serves consumable capacity, as one device claims share ([`Sharing`]);
//! - none of the devices in [`Options::excluded`] (the device plugin's);
//! - a device that cannot be used now (its PF or RDMA port down, verbs unusable) carries the
//!   taint `spidernet.io/unhealthy` (NoSchedule) with the reason.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device, DeviceAttribute, DeviceCapacity, DeviceTaint,
    ResourcePool, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use spiderpool_api::inventory::{Inventory, Nic, RdmaDevice, Vf};

/// The driver name, and the domain of the attributes it owns.
pub const DRIVER: &str = spiderpool_api::crd::node_scope::DRA_DRIVER;
/// The domain of the attributes every driver shares.
pub const STANDARD: &str = "resource.kubernetes.io";
pub const UNHEALTHY_TAINT: &str = "spidernet.io/unhealthy";
/// ResourceSlice allows 128 devices, 64 when any device has taints (1.37's rule for advanced
/// features); we may taint, so every slice keeps to 64.
pub const MAX_DEVICES_PER_SLICE: usize = 64;
/// Shared slots per RDMA device unless configured.
pub const DEFAULT_RDMA_SLOTS: u32 = 16;

/// Devices that are not DRA's to offer: what the device plugin serves or gave to a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excluded {
    /// PCI addresses of VFs.
    pub pci: BTreeSet<String>,
    /// RDMA devices (no shared slots over them).
    pub rdma: BTreeSet<String>,
}

/// How an RDMA device is shared between claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// `rdma_slots` interchangeable devices `rdma-<device>-<i>`, one claim each: every API server
    /// with resource.k8s.io/v1.
    #[default]
    Slots,
    /// One device `rdma-<device>` that many claims may share (`allowMultipleAllocations`), each
    /// consuming `slots` from its capacity of `rdma_slots` (DRAConsumableCapacity: beta in 1.36,
    /// alpha behind the gate in 1.34 and 1.35).
    Capacity,
}

/// The capacity a shared RDMA device offers and a claim consumes (1 unless it asks for more).
pub const SLOTS_CAPACITY: &str = "slots";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Claims that may share one RDMA device.
    pub rdma_slots: u32,
    pub sharing: Sharing,
    pub excluded: Excluded,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rdma_slots: DEFAULT_RDMA_SLOTS,
            sharing: Sharing::Slots,
            excluded: Excluded::default(),
        }
    }
}

fn string(value: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(value.into()),
        ..DeviceAttribute::default()
    }
}

fn int(value: impl Into<i64>) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(value.into()),
        ..DeviceAttribute::default()
    }
}

fn boolean(value: bool) -> DeviceAttribute {
    DeviceAttribute {
        bool: Some(value),
        ..DeviceAttribute::default()
    }
}

/// A device name (a DNS label) from a PCI address or an RDMA device name: `0000:3b:00.2` →
/// `0000-3b-00-2`, `mlx5_0` → `mlx5-0`.
pub fn label(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The RDMA device a shared device names: `rdma-<label>` (consumable capacity) or a slot
/// `rdma-<label>-<i>`.
pub fn rdma_of<'a>(inv: &'a Inventory, device: &str) -> Option<&'a str> {
    let rest = device.strip_prefix("rdma-")?;
    let by_label = |l: &str| {
        inv.rdma_devices
            .iter()
            .find(|d| label(&d.name) == l)
            .map(|d| d.name.as_str())
    };
    by_label(rest).or_else(|| {
        let (name, slot) = rest.rsplit_once('-')?;
        slot.parse::<u32>().ok()?;
        by_label(name)
    })
}

/// Attributes are at most 64 characters; longer strings (none we know) are left out rather than
/// refused by the API server with the whole slice.
fn put(attrs: &mut BTreeMap<String, DeviceAttribute>, key: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| v.len() <= 64) {
        attrs.insert(key.to_string(), string(v));
    }
}

fn standard(attrs: &mut BTreeMap<String, DeviceAttribute>, pci: Option<&str>, nic: Option<&Nic>) {
    put(attrs, &format!("{STANDARD}/pciBusID"), pci);
    put(
        attrs,
        &format!("{STANDARD}/pcieRoot"),
        nic.and_then(|n| n.pcie_root.as_deref()),
    );
    if let Some(numa) = nic.and_then(|n| n.numa_node) {
        attrs.insert(format!("{STANDARD}/numaNode"), int(numa));
    }
}

fn rdma_unusable(device: &RdmaDevice) -> Option<String> {
    if let Some(reason) = device
        .verbs
        .as_ref()
        .filter(|v| !v.usable)
        .and_then(|v| v.reason.clone())
    {
        return Some(format!("{}: {reason}", device.name));
    }
    (!device.ports.iter().any(|p| p.state.as_deref() == Some("ACTIVE")))
        .then(|| format!("{}: no port ACTIVE", device.name))
}

fn taint(reason: Option<String>) -> Option<Vec<DeviceTaint>> {
    reason.map(|reason| {
        vec![DeviceTaint {
            key: UNHEALTHY_TAINT.into(),
            // A taint value is a label value: 63 characters of [A-Za-z0-9_.-].
            value: Some(
                label(&reason)
                    .chars()
                    .take(63)
                    .collect::<String>()
                    .trim_matches('-')
                    .to_string(),
            ),
            effect: "NoSchedule".into(),
            time_added: None,
        }]
    })
}

fn vf_device(inv: &Inventory, nic: &Nic, vf: &Vf) -> Device {
    let mut attrs = BTreeMap::new();
    standard(&mut attrs, Some(&vf.pci_address), Some(nic));
    attrs.insert("kind".into(), string("vf"));
    put(&mut attrs, "pfName", nic.name.as_deref());
    put(&mut attrs, "pfPciAddress", Some(&nic.pci_address));
    put(&mut attrs, "vendor", nic.vendor_id.as_deref());
    put(&mut attrs, "pfDeviceID", nic.device_id.as_deref());
    put(&mut attrs, "driver", vf.driver.as_deref());
    put(&mut attrs, "netdev", vf.name.as_deref());
    put(&mut attrs, "linkType", nic.link_type.as_deref());
    attrs.insert("vfIndex".into(), int(vf.vf_id));
    attrs.insert("rdma".into(), boolean(vf.rdma_device.is_some()));
    put(&mut attrs, "rdmaDevice", vf.rdma_device.as_deref());
    let rdma = vf
        .rdma_device
        .as_ref()
        .and_then(|name| inv.rdma_devices.iter().find(|d| &d.name == name));
    let reason = if nic.oper_state.as_deref() == Some("down") {
        Some(format!(
            "PF {} is down",
            nic.name.as_deref().unwrap_or(&nic.pci_address)
        ))
    } else {
        rdma.and_then(rdma_unusable)
    };
    Device {
        name: format!("vf-{}", label(&vf.pci_address)),
        attributes: Some(attrs),
        taints: taint(reason),
        ..Device::default()
    }
}

/// The NIC an RDMA device belongs to: by PCI address, or by its port's netdev (Soft-RoCE).
fn nic_of<'a>(inv: &'a Inventory, device: &RdmaDevice) -> Option<&'a Nic> {
    inv.nics.iter().find(|n| {
        device.pci_address.as_deref() == Some(n.pci_address.as_str())
            || device
                .ports
                .iter()
                .any(|p| p.netdev.is_some() && p.netdev == n.name)
    })
}

/// Every device the node offers, VFs first, in a stable order.
pub fn devices(inv: &Inventory, options: &Options) -> Vec<Device> {
    let mut out = Vec::new();
    let mut vf_rdma = BTreeSet::new();
    for nic in &inv.nics {
        for vf in nic.sriov.iter().flat_map(|s| s.vfs.iter()) {
            vf_rdma.extend(vf.rdma_device.clone());
            if !options.excluded.pci.contains(&vf.pci_address) {
                out.push(vf_device(inv, nic, vf));
            }
        }
    }
    for device in inv.rdma_devices.iter().filter(|d| {
        d.netns.is_none() && !vf_rdma.contains(&d.name) && !options.excluded.rdma.contains(&d.name)
    }) {
        let nic = nic_of(inv, device);
        let mut attrs = BTreeMap::new();
        standard(&mut attrs, device.pci_address.as_deref(), nic);
        attrs.insert("kind".into(), string("rdma"));
        put(&mut attrs, "rdmaDevice", Some(&device.name));
        put(
            &mut attrs,
            "netdev",
            device.ports.iter().find_map(|p| p.netdev.as_deref()),
        );
        put(
            &mut attrs,
            "linkLayer",
            device.ports.iter().find_map(|p| p.link_layer.as_deref()),
        );
        let taints = taint(rdma_unusable(device));
        match options.sharing {
            Sharing::Slots => {
                for slot in 0..options.rdma_slots {
                    out.push(Device {
                        name: format!("rdma-{}-{slot}", label(&device.name)),
                        attributes: Some(attrs.clone()),
                        taints: taints.clone(),
                        ..Device::default()
                    });
                }
            }
            Sharing::Capacity => out.push(Device {
                name: format!("rdma-{}", label(&device.name)),
                attributes: Some(attrs),
                taints,
                allow_multiple_allocations: Some(true),
                capacity: Some(
                    [(
                        SLOTS_CAPACITY.to_string(),
                        DeviceCapacity {
                            value: Quantity(options.rdma_slots.to_string()),
                            request_policy: Some(CapacityRequestPolicy {
                                default: Some(Quantity("1".into())),
                                valid_range: Some(CapacityRequestPolicyRange {
                                    min: Quantity("1".into()),
                                    step: Some(Quantity("1".into())),
                                    max: None,
                                }),
                                valid_values: None,
                            }),
                        },
                    )]
                    .into(),
                ),
                ..Device::default()
            }),
        }
    }
    out
}

/// The node's pool as slices of at most [`MAX_DEVICES_PER_SLICE`] devices: `(name, spec)`, named
/// `<node>-spidernet.io-<i>`. `generation` goes up whenever the devices change, so the scheduler
/// takes the newest complete pool.
pub fn slices(node: &str, devices: Vec<Device>, generation: i64) -> Vec<(String, ResourceSliceSpec)> {
    let chunks: Vec<Vec<Device>> = if devices.is_empty() {
        // An empty pool is still published: it says the node has nothing, not that it is unknown.
        vec![Vec::new()]
    } else {
        devices
            .chunks(MAX_DEVICES_PER_SLICE)
            .map(<[Device]>::to_vec)
            .collect()
    };
    let count = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, devices)| {
            (
                format!("{node}-{DRIVER}-{i}"),
                ResourceSliceSpec {
                    driver: DRIVER.into(),
                    node_name: Some(node.into()),
                    pool: ResourcePool {
                        name: node.into(),
                        generation,
                        resource_slice_count: count,
                    },
                    devices: Some(devices),
                    ..ResourceSliceSpec::default()
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
