//! `spiderpool-agent inventory`: this node's NICs, VFs, RDMA devices, bonds and NUMA layout.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use spiderpool_linux::sysfs::DEFAULT_SYSFS_ROOT;
use spiderpool_provisioner::render::render_table;

use crate::node::scan_node;

#[derive(clap::Args)]
pub struct Args {
    /// Read sysfs from here instead of /sys (e.g. a fixture tree); netlink and the host's
    /// identity are then left out, since they describe this machine, not that tree.
    #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
    sysfs_root: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

pub fn exec(args: Args) -> Result<()> {
    let inv = scan_node(&args.sysfs_root);
    let text = match args.output {
        Format::Table => render_table(&inv),
        Format::Json => serde_json::to_string_pretty(&inv).context("encode JSON")? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(&inv).context("encode YAML")?,
    };
    print!("{text}");
    Ok(())
}
