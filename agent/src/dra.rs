//! The DRA driver as the agent runs it (`run`, or `dra` alone): the node's ResourceSlices kept
//! current ([`crate::dra_slices`]) and the kubelet plugin preparing claims, with claims read from
//! the API server and devices from a scan of the node.
//!
//! One owner per device: the slices leave out what the device plugin serves (its config and
//! the SpiderNetworkNodePolicies' resources, except those with `allocation: dra`) and any VF
//! kubelet's device manager gave to a pod; the device plugin, in turn, leaves out what prepared
//! claims hold ([`without_dra_held`]). A resource switched between the two moves its devices once
//! no pod holds them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::runtime::watcher;
use kube::{Api, Client};
use spiderpool_api::inventory::Inventory;
use spiderpool_daemon::watch::cache_waking;
use spiderpool_device_plugin::kubelet::allocated_device_ids;
use spiderpool_device_plugin::manager::{ClusterPolicies, read_config};
use spiderpool_device_plugin::pool::{
    assign_candidates, candidates, device_plugin_owned, with_vf_device_ids,
};
use spiderpool_dra::kubelet::{Sockets, serve_until_stopped};
use spiderpool_dra::plugin::{ClaimSource, Config, NodeDevices, Plugin};
use spiderpool_dra::prepared::Checkpoint;
use spiderpool_dra::slices::{Excluded, Options, Sharing, devices};
use spiderpool_linux::sysfs::{Sysfs, is_pci_address};
use tokio::sync::Notify;

use crate::dra_slices::{keep_current, serves_consumable_capacity};
use crate::node::scan_node;

/// kubelet's root directory (its plugin registry and plugin sockets are under it).
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// Where containerd and CRI-O look for CDI specs written at run time.
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";

pub struct ApiClaims(pub Client);

impl ClaimSource for ApiClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, String> {
        Api::<ResourceClaim>::namespaced(self.0.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("reading it: {e}"))
    }
}

pub struct ScannedNode(pub PathBuf);

impl NodeDevices for ScannedNode {
    fn inventory(&self) -> Inventory {
        scan_node(&self.0)
    }

    fn iommu_group(&self, pci: &str) -> Option<String> {
        Sysfs::new(&self.0).link_name(format!("bus/pci/devices/{pci}/iommu_group"))
    }
}

/// The device plugin the DRA driver shares the node with: its config (as the device plugin
/// reads it) and kubelet's device-plugin directory (its checkpoint of allocated devices).
#[derive(Debug, Clone)]
pub struct DevicePluginSide {
    pub config_file: Option<PathBuf>,
    pub cluster_policies: Option<ClusterPolicies>,
    pub device_plugins_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DraOptions {
    pub node: String,
    pub sysfs_root: PathBuf,
    pub kubelet_root: PathBuf,
    pub cdi_dir: PathBuf,
    pub devinfo_dir: PathBuf,
    pub rdma_slots: u32,
    pub rdma_sharing: RdmaSharing,
    pub resync: Duration,
    /// Serve the kubelet plugin (off: slices only).
    pub kubelet_plugin: bool,
    /// `None`: no device plugin on this node, every device is DRA's.
    pub device_plugin: Option<DevicePluginSide>,
}

/// How shared RDMA devices are offered: `auto` takes consumable capacity where the API server
/// keeps it, slots elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RdmaSharing {
    Auto,
    Slots,
    Capacity,
}

/// [`RdmaSharing`] decided for this API server.
pub async fn sharing(choice: RdmaSharing, client: &Client, node: &str) -> Sharing {
    let sharing = match choice {
        RdmaSharing::Slots => Sharing::Slots,
        RdmaSharing::Capacity => Sharing::Capacity,
        RdmaSharing::Auto if serves_consumable_capacity(client, node).await => Sharing::Capacity,
        RdmaSharing::Auto => Sharing::Slots,
    };
    tracing::info!("DRA: shared RDMA devices as {sharing:?}");
    sharing
}

/// The prepared claims' checkpoint under kubelet's root.
pub fn state_file(kubelet_root: &Path) -> PathBuf {
    Sockets::under(kubelet_root).dra.with_file_name("prepared.json")
}

/// What is not DRA's to publish on `inv`; `None` when the device plugin's config cannot be read
/// (publishing then could offer its devices twice). `live_pods` are the UIDs of this node's pods
/// that still run: kubelet's checkpoint keeps a deleted pod's devices until it next allocates.
pub fn excluded(
    inv: &Inventory,
    sysfs_root: &Path,
    side: &DevicePluginSide,
    live_pods: &BTreeSet<String>,
) -> Option<Excluded> {
    let config = match read_config(side.config_file.as_ref(), None, side.cluster_policies.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("DRA: the device plugin's config: {e}; slices left as they are");
            return None;
        }
    };
    let all = with_vf_device_ids(candidates(inv), &Sysfs::new(sysfs_root));
    let (resources, _) = assign_candidates(&config, inv, all)
        .map_err(|e| tracing::warn!("DRA: the device plugin's config: {e}; slices left as they are"))
        .ok()?;
    let owned = device_plugin_owned(&resources, inv);
    let mut excluded = Excluded {
        pci: owned.pci,
        rdma: owned.rdma,
    };
    // VFs a pod got from the device plugin stay out until it is gone.
    excluded.pci.extend(
        allocated_device_ids(&side.device_plugins_dir)
            .into_iter()
            .filter(|(id, holder)| is_pci_address(id) && still_held(holder, live_pods))
            .map(|(id, _)| id),
    );
    Some(excluded)
}

/// Whether a checkpoint entry's holder (`pod UID, container NAME`, or nothing from an old
/// kubelet) is a pod that still runs; unknown holders count as running.
fn still_held(holder: &str, live_pods: &BTreeSet<String>) -> bool {
    match holder
        .strip_prefix("pod ")
        .and_then(|rest| rest.split(',').next())
    {
        Some(uid) => live_pods.contains(uid),
        None => true,
    }
}

/// `inv` without the VFs and RDMA devices prepared claims hold (by the checkpoint under
/// `kubelet_root`): what the device plugin may advertise.
pub fn without_dra_held(mut inv: Inventory, kubelet_root: &Path) -> Inventory {
    let Some(checkpoint) = Checkpoint::peek(&state_file(kubelet_root)) else {
        return inv;
    };
    let held = checkpoint.held(&inv);
    for nic in &mut inv.nics {
        for sriov in nic.sriov.iter_mut() {
            sriov.vfs.retain(|vf| !held.pci.contains(&vf.pci_address));
        }
    }
    inv.rdma_devices.retain(|d| !held.rdma.contains(&d.name));
    inv
}

/// Runs the driver until the agent stops: the kubelet plugin (served again whenever kubelet's
/// directories are wiped) and the slices (written again when kubelet registers the plugin,
/// since a starting kubelet deletes the node's slices).
pub async fn run(client: Client, options: DraOptions, wake: Arc<Notify>) {
    let registered = Arc::new(Notify::new());
    if options.kubelet_plugin {
        let sockets = Sockets::under(&options.kubelet_root);
        let config = Config {
            node: options.node.clone(),
            cdi_dir: options.cdi_dir.clone(),
            devinfo_dir: options.devinfo_dir.clone(),
            state: state_file(&options.kubelet_root),
        };
        let plugin = Arc::new(Plugin::new(
            config,
            ApiClaims(client.clone()),
            ScannedNode(options.sysfs_root.clone()),
        ));
        let registered = registered.clone();
        tokio::spawn(async move { serve_until_stopped(&sockets, plugin, registered).await });
    }
    // This node's pods, to tell kubelet's stale checkpoint entries from held devices.
    let pods = options.device_plugin.as_ref().map(|_| {
        cache_waking(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={}", options.node)),
            wake.clone(),
        )
    });
    if let Some(pods) = &pods {
        // Until the cache is filled every pod would look gone.
        let _ = pods.wait_until_ready().await;
    }
    let sharing = sharing(options.rdma_sharing, &client, &options.node).await;
    let scan_options = options.clone();
    let scan = move || {
        let o = &scan_options;
        let inv = scan_node(&o.sysfs_root);
        let excluded = match (&o.device_plugin, &pods) {
            (Some(side), Some(pods)) => {
                let live: BTreeSet<String> = pods
                    .state()
                    .iter()
                    .filter(|p| {
                        !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                    })
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                excluded(&inv, &o.sysfs_root, side, &live)?
            }
            _ => Excluded::default(),
        };
        Some(devices(
            &inv,
            &Options {
                rdma_slots: o.rdma_slots,
                sharing,
                excluded,
            },
        ))
    };
    keep_current(client, options.node, scan, options.resync, wake, registered).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_entry_holds_its_vf_only_while_its_pod_runs() {
        let live: BTreeSet<String> = ["uid-a".to_string()].into();
        assert!(still_held("pod uid-a, container c", &live));
        assert!(!still_held("pod uid-b, container c", &live));
        // An old kubelet's checkpoint names no pod: assume it is held.
        assert!(still_held("", &live));
    }

    #[test]
    fn the_device_plugin_does_not_see_what_prepared_claims_hold() {
        use spiderpool_dra::cdi::PreparedDevice;
        use spiderpool_dra::prepared::PreparedClaim;
        let root = tempfile::tempdir().expect("tempdir");
        let inv = spiderpool_testing::fixtures::fixture_inventory("gpu-nic");
        let vfs = |inv: &Inventory| -> Vec<String> {
            inv.nics
                .iter()
                .flat_map(|n| n.sriov.iter().flat_map(|s| s.vfs.iter()))
                .map(|v| v.pci_address.clone())
                .collect()
        };
        assert_eq!(
            vfs(&without_dra_held(inv.clone(), root.path())).len(),
            4,
            "no checkpoint"
        );
        let mut checkpoint = Checkpoint::default();
        checkpoint.claims.insert(
            "u".into(),
            PreparedClaim {
                namespace: "ns".into(),
                name: "c".into(),
                devices: ["vf-0000-9b-00-2", "rdma-mlx5-0-1"]
                    .iter()
                    .map(|d| PreparedDevice {
                        request_names: vec!["r".into()],
                        pool_name: "n".into(),
                        device_name: d.to_string(),
                        cdi_device_ids: Vec::new(),
                    })
                    .collect(),
                files: Vec::new(),
            },
        );
        checkpoint.save(&state_file(root.path())).expect("save");
        let left = without_dra_held(inv, root.path());
        assert!(!vfs(&left).contains(&"0000:9b:00.2".to_string()));
        assert_eq!(vfs(&left).len(), 3);
        assert!(!left.rdma_devices.iter().any(|d| d.name == "mlx5_0"));
    }
}
