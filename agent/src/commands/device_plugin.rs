//! `spiderpool-agent device-plugin`: the kubelet device plugin alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use spiderpool_device_plugin::allocate::DEVINFO_DIR;
use spiderpool_device_plugin::kubelet::DEFAULT_KUBELET_DIR;
use spiderpool_device_plugin::manager::{ManagerOptions, run};
use spiderpool_linux::sysfs::{DEFAULT_SYSFS_ROOT, Sysfs};

use crate::node::scan_node;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
    sysfs_root: PathBuf,
    #[arg(long, default_value = DEFAULT_KUBELET_DIR)]
    kubelet_dir: PathBuf,
    /// Resources and selectors (YAML or JSON); reread every resync. Default: `spidernet.io/rdma`
    /// shared over every RDMA device.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SpiderNetworkNodePolicy documents: each `resourceName` becomes a VF resource of the PFs
    /// the policy selects, ahead of the config's resources.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Where device-info files for CNI plugins go.
    #[arg(long, default_value = DEVINFO_DIR)]
    devinfo_dir: PathBuf,
    /// Rescan interval in milliseconds: the bound on how late a VF, link or config change shows.
    #[arg(long, default_value_t = 1000)]
    resync_ms: u64,
}

pub fn exec(args: Args) -> Result<()> {
    spiderpool_daemon::runtime()?.block_on(async move {
        // Link (and, with `udev`, device) events wake the loop at once on the live system; the
        // resync covers the rest.
        let wake =
            (args.sysfs_root == Path::new(DEFAULT_SYSFS_ROOT)).then(|| Arc::new(tokio::sync::Notify::new()));
        if let Some(w) = &wake {
            crate::node_events::wake_on_changes(vec![w.clone()]);
        }
        let options = ManagerOptions {
            kubelet_dir: args.kubelet_dir,
            config_file: args.config,
            policy_file: args.policy,
            cluster_policies: None,
            sysfs: Sysfs::new(&args.sysfs_root),
            devinfo_dir: Some(args.devinfo_dir),
            resync: Duration::from_millis(args.resync_ms.max(100)),
            wake,
            first_pass: None,
        };
        let root = args.sysfs_root;
        // On SIGTERM the plugin removes its sockets and device-info files before exiting.
        run(
            options,
            move || scan_node(&root),
            spiderpool_daemon::shutdown_signal(),
        )
        .await;
    });
    Ok(())
}
