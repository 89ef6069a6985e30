//! `spiderpool-agent dra`: the node's ResourceSlices for DRA driver `spidernet.io` (its VFs and
//! shared RDMA devices), kept current (KUBECONFIG from the environment, or in-cluster).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use spiderpool_dra::slices::{DEFAULT_RDMA_SLOTS, Options, devices};
use spiderpool_linux::sysfs::DEFAULT_SYSFS_ROOT;

use crate::dra_slices::{Published, keep_current, publish};
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
    /// Publish once and exit.
    #[arg(long)]
    once: bool,
    /// Rescan interval in milliseconds (link and device events rescan at once).
    #[arg(long, default_value_t = 1000)]
    resync_ms: u64,
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
        tokio::select! {
            _ = keep_current(
                client,
                node,
                move || scan_node(&root),
                options,
                Duration::from_millis(args.resync_ms.max(100)),
                wake,
            ) => {}
            _ = spiderpool_daemon::shutdown_signal() => {}
        }
        Ok(())
    })
}
