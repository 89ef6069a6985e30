//! `spiderpool-agent`: the node agent. Each subcommand is one of the daemon's parts run alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use spiderpool_linux::links::LinkTable;
use spiderpool_linux::sysfs::{DEFAULT_SYSFS_ROOT, Sysfs};
use spiderpool_provisioner::discovery::{NodeIdentity, scan};
use spiderpool_provisioner::render::render_table;

#[derive(Parser)]
#[command(name = "spiderpool-agent", version, about = "Spiderpool node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's NICs, SR-IOV VFs, RDMA devices, bonds and NUMA layout (no root needed).
    Inventory {
        /// Read sysfs from here instead of /sys (e.g. a fixture tree); netlink and the host's
        /// identity are then left out, since they describe this machine, not that tree.
        #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
        sysfs_root: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn live_identity() -> NodeIdentity {
    let memory_bytes = read_trimmed("/proc/meminfo").and_then(|m| {
        let kib: u64 = m
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib * 1024)
    });
    NodeIdentity {
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        memory_bytes,
    }
}

fn inventory(sysfs_root: &Path, output: Format) -> Result<()> {
    let live = sysfs_root == Path::new(DEFAULT_SYSFS_ROOT);
    let mut extra_warnings = Vec::new();
    let links = if live {
        LinkTable::dump().unwrap_or_else(|e| {
            extra_warnings.push(format!(
                "netlink link dump failed, VF settings and altnames unknown: {e}"
            ));
            LinkTable::default()
        })
    } else {
        LinkTable::default()
    };
    let identity = if live {
        live_identity()
    } else {
        NodeIdentity::default()
    };
    let mut inv = scan(&Sysfs::new(sysfs_root), &links, &identity);
    inv.warnings.extend(extra_warnings);
    let text = match output {
        Format::Table => render_table(&inv),
        Format::Json => serde_json::to_string_pretty(&inv).context("encode JSON")? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(&inv).context("encode YAML")?,
    };
    print!("{text}");
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Inventory { sysfs_root, output } => inventory(&sysfs_root, output),
    }
}
