//! `spiderpool-agent`: parses the command line and dispatches to [`spiderpool_agent::commands`].

use anyhow::Result;
use clap::{Parser, Subcommand};
use spiderpool_agent::commands;

#[derive(Parser)]
#[command(name = "spiderpool-agent", version, about = "Spiderpool node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's NICs, SR-IOV VFs, RDMA devices, bonds and NUMA layout (no root needed).
    Inventory(commands::inventory::Args),
    /// Make this node match SpiderNetworkNodePolicy documents: VFs, VF settings, MTU, bonds, VLANs.
    Apply(commands::apply::Args),
    /// Serve SR-IOV VF pools and shared RDMA to kubelet (the device plugin alone).
    DevicePlugin(commands::device_plugin::Args),
    /// The node agent: the IPAM service, the inventory reporter (SpiderNodeInventory), the device
    /// plugin and /healthz, /readyz.
    Run(commands::run::Args),
    /// Exit 0 when the agent of this container is ready (its --ready-file exists): the
    /// readiness probe.
    Probe(commands::probe::Args),
    /// Install spiderpool, coordinator, ifacer and rdma into a CNI bin directory (atomically).
    InstallCni(commands::install_cni::Args),
    /// Answer the `spiderpool` plugin in cluster mode: pools and allocations in the Kubernetes
    /// API (kubeconfig from KUBECONFIG or the in-cluster service account).
    IpamService(commands::ipam_service::Args),
    /// Print the RDMA port counters `run` serves on /metrics (standard and hardware, with the
    /// namespace and pod holding each device).
    RdmaCounters(commands::rdma_counters::Args),
    /// Publish this node's VFs and shared RDMA devices as ResourceSlices of DRA driver
    /// `spidernet.io`, and keep them current.
    Dra(commands::dra::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Inventory(_) | Command::Apply(_) | Command::RdmaCounters(_)
    ) {
        // Output into a closed pipe (`| head`) ends these printing commands quietly, as for other
        // Unix tools. Never for the daemons: a client that hangs up before its answer must not
        // kill the agent (Rust's default, SIGPIPE ignored, turns that into an EPIPE error).
        // SAFETY: setting a signal's disposition to the default before any thread exists.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    spiderpool_daemon::init_logging();
    match cli.command {
        Command::Inventory(args) => commands::inventory::exec(args),
        Command::Apply(args) => commands::apply::exec(args),
        Command::DevicePlugin(args) => commands::device_plugin::exec(args),
        Command::Run(args) => commands::run::exec(args),
        Command::Probe(args) => commands::probe::exec(args),
        Command::InstallCni(args) => commands::install_cni::exec(args),
        Command::IpamService(args) => commands::ipam_service::exec(args),
        Command::RdmaCounters(args) => commands::rdma_counters::exec(args),
        Command::Dra(args) => commands::dra::exec(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // clap checks names, groups and defaults only when a subcommand is parsed (debug builds):
        // this checks every subcommand at once.
        super::Cli::command().debug_assert();
    }
}
