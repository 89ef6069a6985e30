//! `spiderpool-agent dra`: the DRA driver `spidernet.io` on this node: its ResourceSlices (VFs
//! and shared RDMA devices) kept current, and the kubelet plugin that prepares claims for them
//! through CDI (KUBECONFIG from the environment, or in-cluster).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use spiderpool_device_plugin::allocate::DEVINFO_DIR;
use spiderpool_device_plugin::kubelet::DEFAULT_KUBELET_DIR;
use spiderpool_dra::plugin::Config;
use spiderpool_dra::slices::{DEFAULT_RDMA_SLOTS, DRIVER, Options, devices};
use spiderpool_linux::sysfs::DEFAULT_SYSFS_ROOT;
use tokio::sync::Notify;

use crate::dra_slices::{Published, keep_current, publish};
use crate::node::scan_node;

/// Where containerd and CRI-O look for CDI specs written at run time.
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";

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
    /// Publish once and exit (no kubelet plugin).
    #[arg(long)]
    once: bool,
    /// Rescan interval in milliseconds (link and device events rescan at once).
    #[arg(long, default_value_t = 1000)]
    resync_ms: u64,
    /// kubelet's root directory: the plugin registers in its `plugins_registry`.
    #[arg(long, default_value = DEFAULT_KUBELET_DIR)]
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
}

pub fn exec(args: Args) -> Result<()> {
    let node = crate::node::node_name(args.node)?;
    let options = Options {
        rdma_slots: args.rdma_slots,
    };
    spiderpool_daemon::runtime()?.block_on(async move {
        let client = kube::Client::try_default().await.context("Kubernetes client")?;
        let root = args.sysfs_root;
        if args.once {
            let inventory = scan_node(&root);
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
        let registered = Arc::new(Notify::new());
        if args.kubelet_plugin {
            let plugin = crate::dra_plugin::Options {
                kubelet_dir: args.kubelet_dir.clone(),
                sysfs_root: root.clone(),
                config: Config {
                    node: node.clone(),
                    cdi_dir: args.cdi_dir,
                    devinfo_dir: args.devinfo_dir,
                    state: args
                        .kubelet_dir
                        .join("plugins")
                        .join(DRIVER)
                        .join("prepared.json"),
                },
            };
            tokio::spawn(crate::dra_plugin::run(client.clone(), plugin, registered.clone()));
        }
        tokio::select! {
            _ = keep_current(
                client,
                node,
                move || scan_node(&root),
                options,
                Duration::from_millis(args.resync_ms.max(100)),
                wake,
                registered,
            ) => {}
            _ = spiderpool_daemon::shutdown_signal() => {}
        }
        Ok(())
    })
}
