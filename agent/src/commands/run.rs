//! `spiderpool-agent run`: the node agent (see [`crate::run`]).

use std::path::PathBuf;

use anyhow::Result;
use spiderpool_device_plugin::kubelet::DEFAULT_KUBELET_DIR;
use spiderpool_linux::sysfs::DEFAULT_SYSFS_ROOT;

use crate::node_policy::{self, Mode};
use crate::{Config, DevicePlugin};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    ipam: super::ipam_service::Args,
    /// /healthz, /readyz and /metrics (loopback: the host network is every pod's).
    #[arg(long, default_value = "127.0.0.1:5710")]
    health_addr: String,
    /// Also serve /metrics alone here, for Prometheus (e.g. 0.0.0.0:5711).
    #[arg(long)]
    metrics_addr: Option<String>,
    #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
    sysfs_root: PathBuf,
    /// Seconds between inventory reports.
    #[arg(long, default_value_t = 60)]
    inventory_interval: u64,
    /// Also serve the kubelet device plugin.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    device_plugin: bool,
    /// The device plugin's resources and selectors (as for `device-plugin --config`; reread
    /// every second). Default: `spidernet.io/rdma` shared over every RDMA device.
    #[arg(long)]
    device_plugin_config: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_KUBELET_DIR)]
    kubelet_dir: PathBuf,
    /// Written once the agent serves (IPAM socket bound, device plugin registered), removed on
    /// exit: what `probe --ready-file` checks. Unlike /readyz it is private to the container,
    /// so an old and a new agent side by side during an update are told apart.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// SpiderNetworkNodePolicy objects that select this node: `apply` makes the node match them,
    /// `report` only plans and reports what applying would do, `off` ignores them.
    #[arg(long, value_enum, default_value = "apply")]
    node_policies: Mode,
    /// Seconds between the passes that correct drift (a policy or label change acts at once).
    #[arg(long, default_value_t = 30)]
    node_policy_resync: u64,
    /// Also run the DRA driver `spidernet.io`: ResourceSlices of the devices the device plugin
    /// does not serve, and the kubelet plugin preparing claims for them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dra: bool,
    /// kubelet's root directory (DRA: its plugin registry and plugin sockets).
    #[arg(long, default_value = crate::dra::DEFAULT_KUBELET_ROOT)]
    kubelet_root_dir: PathBuf,
    /// Where the CDI specs of prepared claims are written (the runtime's CDI spec directory).
    #[arg(long, default_value = crate::dra::DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// DRA: pods that may share one RDMA device.
    #[arg(long, default_value_t = spiderpool_dra::slices::DEFAULT_RDMA_SLOTS)]
    dra_rdma_slots: u32,
    /// DRA: shared RDMA devices as `slots`, consumable `capacity`, or `auto` (capacity where the
    /// API server keeps it).
    #[arg(long, value_enum, default_value = "auto")]
    dra_rdma_sharing: crate::dra::RdmaSharing,
}

pub fn exec(args: Args) -> Result<()> {
    let node_name = crate::node::node_name(args.ipam.node_name.clone())?;
    let dra = args.dra.then(|| crate::dra::DraOptions {
        node: node_name.clone(),
        sysfs_root: args.sysfs_root.clone(),
        kubelet_root: args.kubelet_root_dir,
        cdi_dir: args.cdi_dir,
        devinfo_dir: PathBuf::from(spiderpool_device_plugin::allocate::DEVINFO_DIR),
        rdma_slots: args.dra_rdma_slots,
        rdma_sharing: args.dra_rdma_sharing,
        resync: std::time::Duration::from_secs(1),
        kubelet_plugin: true,
        device_plugin: None,
    });
    let config = Config {
        node_name,
        socket: args.ipam.socket,
        ipam_in_flight: args.ipam.ipam_in_flight,
        health_addr: args.health_addr,
        metrics_addr: args.metrics_addr,
        sysfs_root: args.sysfs_root.clone(),
        inventory_interval: std::time::Duration::from_secs(args.inventory_interval.max(5)),
        node_policies: node_policy::Options {
            sysfs_root: args.sysfs_root.clone(),
            kubelet_dir: args.kubelet_dir.clone(),
            mode: args.node_policies,
            resync: std::time::Duration::from_secs(args.node_policy_resync.max(1)),
            device_plugin: None,
        },
        device_plugin: args.device_plugin.then_some(DevicePlugin {
            kubelet_dir: args.kubelet_dir,
            config_file: args.device_plugin_config,
        }),
        ready_file: args.ready_file,
        dra,
    };
    spiderpool_daemon::runtime()?.block_on(crate::run(config, spiderpool_daemon::shutdown_signal()))
}
