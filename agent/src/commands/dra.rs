//! `spiderpool-agent dra`: the DRA driver `spidernet.io` alone on this node (`run` includes it):
//! its ResourceSlices (VFs and shared RDMA devices) kept current, and the kubelet plugin that
//! prepares claims for them through CDI (KUBECONFIG from the environment, or in-cluster).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use spiderpool_device_plugin::allocate::DEVINFO_DIR;
use spiderpool_dra::slices::{DEFAULT_RDMA_SLOTS, Options, devices};
use spiderpool_linux::sysfs::DEFAULT_SYSFS_ROOT;

use crate::dra::{DEFAULT_CDI_DIR, DEFAULT_KUBELET_ROOT, DevicePluginSide, DraOptions, RdmaSharing};
use crate::dra_slices::{Published, publish};
use crate::node::scan_node;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
    sysfs_root: PathBuf,
    /// The node whose slices these are (default: NODE_NAME, then the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Pods that may share one RDMA device (interchangeable devices per HCA).
    #[arg(long, default_value_t = DEFAULT_RDMA_SLOTS)]
    rdma_slots: u32,
    /// Shared RDMA devices as interchangeable `slots`, as one device with consumable `capacity`
    /// (Kubernetes 1.36+, or the DRAConsumableCapacity gate), or `auto`: capacity where the API
    /// server keeps it.
    #[arg(long, value_enum, default_value = "auto")]
    rdma_sharing: RdmaSharing,
    /// Publish once and exit (no kubelet plugin).
    #[arg(long)]
    once: bool,
    /// Rescan interval in milliseconds (link and device events rescan at once).
    #[arg(long, default_value_t = 1000)]
    resync_ms: u64,
    /// kubelet's root directory: the plugin registers in its `plugins_registry`.
    #[arg(long, default_value = DEFAULT_KUBELET_ROOT)]
    kubelet_dir: PathBuf,
    /// Where the CDI specs of prepared claims are written (the runtime's CDI spec directory).
    #[arg(long, default_value = DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// Where a prepared VF's device-info file is written for CNI plugins.
    #[arg(long, default_value = DEVINFO_DIR)]
    devinfo_dir: PathBuf,
    /// Serve the kubelet plugin (off: publish slices only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    kubelet_plugin: bool,
    /// A device plugin runs beside it with this config: its devices are left out of the slices
    /// (without it, every device is DRA's).
    #[arg(long)]
    device_plugin_config: Option<PathBuf>,
}

pub fn exec(args: Args) -> Result<()> {
    let node = crate::node::node_name(args.node)?;
    spiderpool_daemon::runtime()?.block_on(async move {
        let client = spiderpool_daemon::kube_client::kube_client().await?;
        let root = args.sysfs_root;
        if args.once {
            let inventory = scan_node(&root);
            let options = Options {
                rdma_slots: args.rdma_slots,
                sharing: crate::dra::sharing(args.rdma_sharing, &client, &node).await,
                ..Options::default()
            };
            publish(
                &client,
                &node,
                devices(&inventory, &options),
                &mut Published::default(),
            )
            .await?;
            return Ok(());
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        if root == Path::new(DEFAULT_SYSFS_ROOT) {
            crate::node_events::wake_on_changes(vec![wake.clone()]);
        }
        let options = DraOptions {
            node,
            sysfs_root: root,
            cdi_dir: args.cdi_dir,
            devinfo_dir: args.devinfo_dir,
            rdma_slots: args.rdma_slots,
            rdma_sharing: args.rdma_sharing,
            resync: Duration::from_millis(args.resync_ms.max(100)),
            kubelet_plugin: args.kubelet_plugin,
            device_plugin: args.device_plugin_config.map(|config| DevicePluginSide {
                config_file: Some(config),
                cluster_policies: None,
                device_plugins_dir: args.kubelet_dir.join("device-plugins"),
            }),
            kubelet_root: args.kubelet_dir,
        };
        tokio::select! {
            _ = crate::dra::run(client, options, wake) => {}
            _ = spiderpool_daemon::shutdown_signal() => {}
        }
        Ok(())
    })
}
