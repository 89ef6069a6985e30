//! `spiderpool-agent install-cni`: our CNI plugins into the host's CNI bin directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::install::{CNI_PLUGINS, install_cni};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    to: PathBuf,
    /// Where the binaries are (default: beside this executable).
    #[arg(long)]
    from: Option<PathBuf>,
}

pub fn exec(args: Args) -> Result<()> {
    let from = match args.from {
        Some(f) => f,
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("executable has no directory")?,
    };
    install_cni(&from, &args.to, &CNI_PLUGINS)
        .with_context(|| format!("install into {}", args.to.display()))?;
    println!("installed {} into {}", CNI_PLUGINS.join(", "), args.to.display());
    Ok(())
}
