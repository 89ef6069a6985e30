//! `spiderpool-agent probe`: the readiness probe of the agent in this container.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's `run --ready-file`.
    #[arg(long)]
    ready_file: PathBuf,
}

/// Exit 0 when the file exists. The file, unlike /readyz on the shared host port, is private to
/// the container, so an old and a new agent side by side during an update are told apart.
pub fn exec(args: Args) -> Result<()> {
    if args.ready_file.exists() {
        Ok(())
    } else {
        anyhow::bail!("not ready: {} does not exist", args.ready_file.display())
    }
}
