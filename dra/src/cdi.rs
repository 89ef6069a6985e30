//! What a prepared claim gives its containers, as CDI specs (pure): for a VF its RDMA device
//! nodes and `rdma_cm` (or `/dev/vfio/*` when bound to vfio-pci), the environment the device
//! plugin sets (`PCIDEVICE_SPIDERNET_IO_<REQUEST>` and its `_INFO`), and a device-info file for
//! CNI; for a shared RDMA slot the HCA's device nodes.
//!
//! Names: a VF's CDI device is its PCI address (`spidernet.io/vf=0000:9b:00.2`), because Multus
//! (v4.2+) takes the part after `=` as the device ID it hands to the CNI plugin; a slot is
//! `<claim UID>-<device>` (`spidernet.io/rdma=…-rdma-mlx5-0-3`). One spec file per claim and
//! kind, so a claim's files go with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use spiderpool_api::inventory::{Inventory, Nic, Vf};

use crate::slices::{DRIVER, label, rdma_of};

/// The CDI version written: containerd 1.7.x reads specs up to 0.5.0 (`hostPath` in device
/// nodes is 0.5.0's).
pub const CDI_VERSION: &str = "0.5.0";
pub const VF_KIND: &str = "spidernet.io/vf";
pub const RDMA_KIND: &str = "spidernet.io/rdma";
const RDMA_CM: &str = "/dev/infiniband/rdma_cm";

/// One device of the claim's allocation that is this driver's, on this node's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub request: String,
    pub device: String,
}

/// A device as kubelet is told about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    pub request_names: Vec<String>,
    pub pool_name: String,
    pub device_name: String,
    pub cdi_device_ids: Vec<String>,
}

/// The files a claim needs on the node and the devices to report.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimFiles {
    /// (path, content) of each CDI spec and device-info file.
    pub files: Vec<(PathBuf, String)>,
    pub devices: Vec<PreparedDevice>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CdiError {
    #[error("device {0} is not on this node any more (no such VF or RDMA device in its inventory)")]
    Gone(String),
    #[error("device {0} is not one this driver publishes")]
    Unknown(String),
}

pub struct Dirs<'a> {
    pub cdi: &'a Path,
    /// Where CNI plugins read device-info files (`/var/run/k8s.cni.cncf.io/devinfo/dp`).
    pub devinfo: &'a Path,
}

/// `PCIDEVICE_SPIDERNET_IO_<REQUEST>`, as the device plugin names a resource's variable.
pub fn env_name(request: &str) -> String {
    let request: String = request
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PCIDEVICE_SPIDERNET_IO_{request}")
}

fn device_node(path: &str) -> Value {
    json!({"path": path, "hostPath": path, "permissions": "rw"})
}

/// The `/dev/infiniband` nodes of `rdma` except `rdma_cm`, and `rdma_cm` when the node has it.
fn hca_nodes(inv: &Inventory, rdma: &str) -> Vec<String> {
    let mut nodes: Vec<String> = inv
        .rdma_devices
        .iter()
        .filter(|d| d.name == rdma)
        .flat_map(|d| d.char_devices.iter().filter(|c| c.as_str() != RDMA_CM).cloned())
        .collect();
    if inv
        .rdma_devices
        .iter()
        .any(|d| d.char_devices.iter().any(|c| c == RDMA_CM))
    {
        nodes.push(RDMA_CM.into());
    }
    nodes
}

fn find_vf<'a>(inv: &'a Inventory, device: &str) -> Option<(&'a Nic, &'a Vf)> {
    inv.nics.iter().find_map(|nic| {
        nic.sriov
            .iter()
            .flat_map(|s| s.vfs.iter())
            .find(|vf| format!("vf-{}", label(&vf.pci_address)) == device)
            .map(|vf| (nic, vf))
    })
}

struct Vfs {
    devices: Vec<Value>,
    /// Per request: the PCI addresses and their `_INFO` entries, in allocation order.
    env: BTreeMap<String, (Vec<String>, serde_json::Map<String, Value>)>,
    /// The first CDI device of each request carries the request's environment.
    env_holder: BTreeMap<String, usize>,
}

/// The files and kubelet's answer for claim `uid` (named `claim_name`) whose allocation on this
/// node is `allocated`. `iommu_group` gives a vfio-pci VF's group.
pub fn claim_files(
    inv: &Inventory,
    iommu_group: &dyn Fn(&str) -> Option<String>,
    dirs: &Dirs<'_>,
    node: &str,
    uid: &str,
    claim_name: &str,
    allocated: &[Allocated],
) -> Result<ClaimFiles, CdiError> {
    let mut vfs = Vfs {
        devices: Vec::new(),
        env: BTreeMap::new(),
        env_holder: BTreeMap::new(),
    };
    let mut slots = Vec::new();
    let mut files = Vec::new();
    let mut devices = Vec::new();
    for a in allocated {
        let (kind, cdi_name) = if a.device.starts_with("vf-") {
            let (nic, vf) = find_vf(inv, &a.device).ok_or_else(|| CdiError::Gone(a.device.clone()))?;
            let mut edits = Vec::new();
            let mut info = serde_json::Map::new();
            info.insert("generic".into(), json!({"deviceID": vf.pci_address}));
            let mut devinfo = json!({"pci-address": vf.pci_address, "pf-pci-address": nic.pci_address});
            if let Some(rdma) = &vf.rdma_device {
                let nodes = hca_nodes(inv, rdma);
                let uverbs = nodes
                    .iter()
                    .find(|n| n.contains("uverbs"))
                    .cloned()
                    .unwrap_or_default();
                info.insert(
                    "rdma".into(),
                    json!({"uverbs": uverbs, "rdma_cm": RDMA_CM, "rdma_dev": rdma}),
                );
                devinfo["rdma-device"] = json!(rdma);
                edits.extend(nodes.iter().map(|n| device_node(n)));
            }
            if vf.driver.as_deref() == Some("vfio-pci") {
                edits.push(device_node("/dev/vfio/vfio"));
                if let Some(group) = iommu_group(&vf.pci_address) {
                    let dev = format!("/dev/vfio/{group}");
                    edits.push(device_node(&dev));
                    info.insert(
                        "vfio".into(),
                        json!({"dev-mount": dev, "mount": "/dev/vfio/vfio"}),
                    );
                }
            }
            let entry = vfs.env.entry(a.request.clone()).or_default();
            entry.0.push(vf.pci_address.clone());
            entry.1.insert(vf.pci_address.clone(), Value::Object(info));
            vfs.env_holder
                .entry(a.request.clone())
                .or_insert(vfs.devices.len());
            vfs.devices.push(json!({
                "name": vf.pci_address,
                "containerEdits": {"deviceNodes": edits},
            }));
            // Multus names the device-info file after the resource, which for a claim is its name.
            files.push((
                dirs.devinfo
                    .join(format!("{claim_name}-{}-device.json", vf.pci_address)),
                json!({"type": "pci", "version": "1.1.0", "pci": devinfo}).to_string(),
            ));
            (VF_KIND, vf.pci_address.clone())
        } else if a.device.starts_with("rdma-") {
            let rdma = rdma_of(inv, &a.device).ok_or_else(|| CdiError::Gone(a.device.clone()))?;
            let name = format!("{uid}-{}", a.device);
            let edits: Vec<Value> = hca_nodes(inv, rdma).iter().map(|n| device_node(n)).collect();
            slots.push(json!({"name": name, "containerEdits": {"deviceNodes": edits}}));
            (RDMA_KIND, name)
        } else {
            return Err(CdiError::Unknown(a.device.clone()));
        };
        devices.push(PreparedDevice {
            request_names: vec![a.request.clone()],
            pool_name: node.to_string(),
            device_name: a.device.clone(),
            cdi_device_ids: vec![format!("{kind}={cdi_name}")],
        });
    }
    for (request, index) in &vfs.env_holder {
        let Some((addresses, info)) = vfs.env.get(request) else {
            continue;
        };
        let var = env_name(request);
        vfs.devices[*index]["containerEdits"]["env"] = json!([
            format!("{var}={}", addresses.join(",")),
            format!("{var}_INFO={}", Value::Object(info.clone())),
        ]);
    }
    for (kind, list) in [(VF_KIND, vfs.devices), (RDMA_KIND, slots)] {
        if list.is_empty() {
            continue;
        }
        let class = kind.rsplit('/').next().unwrap_or(kind);
        let spec = json!({"cdiVersion": CDI_VERSION, "kind": kind, "devices": list});
        files.push((
            dirs.cdi.join(format!("{DRIVER}-{class}_{uid}.json")),
            serde_json::to_string_pretty(&spec).unwrap_or_default(),
        ));
    }
    Ok(ClaimFiles { files, devices })
}

#[cfg(test)]
mod tests;
