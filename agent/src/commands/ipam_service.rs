//! `spiderpool-agent ipam-service`: the cluster-mode IPAM service alone.

use std::path::PathBuf;

use anyhow::Result;

use crate::ipam_service::{IpamService, server};
use crate::node::node_name;

/// The node and socket of the IPAM service (also `run`'s, flattened: hence its own group id).
#[derive(clap::Args)]
#[group(id = "ipam-service")]
pub struct Args {
    /// This node's name (default: NODE_NAME, else the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The plugins' unix socket (created mode 0600).
    #[arg(long, default_value = spiderpool_cni::agent::DEFAULT_AGENT_SOCKET)]
    pub socket: PathBuf,
    /// ADDs and DELs doing API work at once; later ones wait their turn, first come first
    /// served, so that under a burst no pod waits behind those that came after it (0: no limit).
    #[arg(long, default_value_t = 8)]
    pub ipam_in_flight: usize,
}

pub fn exec(args: Args) -> Result<()> {
    let node = node_name(args.node_name.clone())?;
    spiderpool_daemon::runtime()?.block_on(async move {
        let client = spiderpool_daemon::kube_client::kube_client().await?;
        let (service, listener) =
            IpamService::listen(client, &node, &args.socket, args.ipam_in_flight).await?;
        tokio::select! {
            () = server::serve(listener, service) => {}
            () = spiderpool_daemon::shutdown_signal() => {}
        }
        Ok(())
    })
}
