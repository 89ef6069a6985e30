//! `spiderpool-agent ipam-service`: the cluster-mode IPAM service alone.

use std::path::PathBuf;

use anyhow::{Context, Result};

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
    /// Set a few of each pool's addresses aside for this node and hand them out and take them
    /// back without a write of the pool (bursts on up to 20 nodes per pool cost a fraction of
    /// the API server's work). One agent of a node lends at a time (a lock beside the socket);
    /// `--ipam-spares=false` writes every claim and release at once.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ipam_spares: bool,
    /// Record each address in use as a SpiderIPClaim named by the address (the default): no
    /// object shared by a pool's users is written per allocation. `--ipam-claims=false` records
    /// holders in the pool's status (`status.allocatedIPsByNode`, with `--ipam-spares`).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ipam_claims: bool,
}

impl Args {
    pub fn options(&self) -> crate::ipam_service::Options {
        crate::ipam_service::Options {
            claims: self.ipam_claims,
            spares: self.ipam_spares,
        }
    }
}

pub fn exec(args: Args) -> Result<()> {
    let node = node_name(args.node_name.clone())?;
    spiderpool_daemon::runtime()?.block_on(async move {
        let client = kube::Client::try_default().await.context("Kubernetes client")?;
        let (service, listener) = IpamService::listen(client, &node, &args.socket, args.options()).await?;
        tokio::select! {
            () = server::serve(listener, service) => {}
            () = spiderpool_daemon::shutdown_signal() => {}
        }
        Ok(())
    })
}
