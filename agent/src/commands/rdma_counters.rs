//! `spiderpool-agent rdma-counters`: print, once, the RDMA port counters `run` serves on /metrics.

use std::path::PathBuf;

use anyhow::Result;
use spiderpool_linux::sysfs::{DEFAULT_SYSFS_ROOT, Sysfs};

use crate::rdma_counters::{Sources, collect, render};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
    sysfs_root: PathBuf,
    /// Where the named network namespaces are (those of pods included).
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// The `rdma` CNI plugin's records of the devices it moved into pods.
    #[arg(long, default_value = spiderpool_rdma::DEFAULT_STATE_DIR)]
    rdma_records: PathBuf,
    /// The runtime's CNI result cache, which names the pod of each network namespace.
    #[arg(long, default_value = spiderpool_cni::cache::DEFAULT_RESULTS_DIR)]
    cni_results: PathBuf,
}

impl Args {
    pub fn sources(&self) -> Sources {
        Sources {
            sysfs: Sysfs::new(&self.sysfs_root),
            netns_dir: self.netns_dir.clone(),
            rdma_records: self.rdma_records.clone(),
            cni_results: self.cni_results.clone(),
        }
    }
}

pub fn exec(args: Args) -> Result<()> {
    print!("{}", render(&collect(&args.sources())));
    Ok(())
}
