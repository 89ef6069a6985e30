//! The node inventory: what NICs, VFs, RDMA devices, bonds and NUMA layout a node has. Field
//! names are camelCase because this struct becomes the SpiderNodeInventory status.

use serde::{Deserialize, Serialize};

/// One SpiderNodeInventory per node, named after it; the agent of that node writes the status.
#[derive(
    kube::CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderNodeInventory",
    shortname = "sni",
    status = "Inventory",
    printcolumn = r#"{"name": "HOSTNAME", "type": "string", "jsonPath": ".status.node.hostname"}"#,
    printcolumn = r#"{"name": "KERNEL", "type": "string", "jsonPath": ".status.node.kernel"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeInventorySpec {
    pub node_name: String,
}

// `default`: the status is written in two parts (the scan, the policies) that may come in
// either order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Inventory {
    pub node: NodeInfo,
    pub nics: Vec<Nic>,
    pub rdma_devices: Vec<RdmaDevice>,
    pub bonds: Vec<Bond>,
    /// PCI display and 3D controllers (GPUs), whatever their driver: what a NIC is paired with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// Files that existed but could not be read or understood; the scan went on without them.
    pub warnings: Vec<String>,
    /// Policy name → how this node stands against it (written by the agent's policy loop, not
    /// by the scan).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub policies: std::collections::BTreeMap<String, crate::policy_status::NodePolicyState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub numa_nodes: Option<u32>,
    /// `shared` or `exclusive`.
    pub rdma_netns_mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// The netdev name; `None` for a function bound to vfio-pci.
    pub name: Option<String>,
    pub alt_names: Vec<String>,
    pub pci_address: String,
    /// Four lowercase hex digits, as `lspci -n` and the SR-IOV device plugin write them.
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub driver: Option<String>,
    pub numa_node: Option<u32>,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub oper_state: Option<String>,
    pub link_speed_mbps: Option<u64>,
    /// `ether` or `infiniband`.
    pub link_type: Option<String>,
    pub bond_master: Option<String>,
    pub sriov: Option<Sriov>,
    pub rdma_devices: Vec<String>,
    /// The PCIe root complex above the NIC, as DRA's `resource.kubernetes.io/pcieRoot` names it
    /// (`pci<domain>:<bus>`, e.g. `pci0000:3a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_root: Option<String>,
    /// The GPUs near this NIC, nearest first: under the same PCIe switch, the same root
    /// complex, or only the same NUMA node. GPUs farther away are not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<NearGpu>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    pub pci_address: String,
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    /// `None`: no driver bound (a GPU needs none to be listed).
    pub driver: Option<String>,
    pub numa_node: Option<u32>,
    pub pcie_root: Option<String>,
}

/// A GPU and how close it is to a NIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NearGpu {
    pub pci_address: String,
    pub via: GpuPath,
}

/// What a NIC and a GPU share, closest first (NVIDIA's `nvidia-smi topo` calls these PIX/PXB,
/// PHB and NODE).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum GpuPath {
    /// A PCIe switch (a bridge below the root port): peer-to-peer traffic stays in the switch.
    PcieSwitch,
    /// The root complex, not a switch.
    PcieRoot,
    /// Only the NUMA node.
    NumaNode,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sriov {
    pub total_vfs: Option<u32>,
    pub num_vfs: Option<u32>,
    pub vfs: Vec<Vf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vf {
    pub vf_id: u32,
    pub pci_address: String,
    /// The VF's netdev, when it is bound to a network driver.
    pub name: Option<String>,
    pub driver: Option<String>,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub trust: Option<bool>,
    pub spoof_chk: Option<bool>,
    pub rdma_device: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RdmaDevice {
    pub name: String,
    /// `None` for software devices (Soft-RoCE) that have no PCI function of their own.
    pub pci_address: Option<String>,
    pub node_guid: Option<String>,
    pub ports: Vec<RdmaPort>,
    /// `/dev/infiniband/...` nodes of this device, plus the global `rdma_cm`.
    pub char_devices: Vec<String>,
    /// The named network namespace (`/var/run/netns/*`: a pod's) that holds the device (moved
    /// there in exclusive mode) or its port's netdev; `None`: the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// What a process that opens the device through libibverbs finds (agents built with the
    /// `verbs` feature; `None`: not checked, or the device is in a pod's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbs: Option<VerbsHealth>,
}

/// Usable through verbs: a context opens and a port is ACTIVE with a GID for its netdev (any GID
/// on InfiniBand). sysfs can say ACTIVE for a device no process can use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerbsHealth {
    pub usable: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RdmaPort {
    pub port: u32,
    /// e.g. `ACTIVE`, `DOWN`, `INIT`.
    pub state: Option<String>,
    /// `Ethernet` or `InfiniBand`.
    pub link_layer: Option<String>,
    pub rate_gbps: Option<f64>,
    pub netdev: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bond {
    pub name: String,
    /// e.g. `802.3ad`, `active-backup`.
    pub mode: Option<String>,
    pub slaves: Vec<String>,
    pub vlans: Vec<String>,
}
