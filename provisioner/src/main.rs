//! `spiderpool-agent`: the node agent. Each subcommand is one of the daemon's parts run alone.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::time::Duration;

use spiderpool_api::policy::{self, SpiderNetworkNodePolicy};
use spiderpool_provisioner::applier::{LiveKernel, Observation, apply};
use spiderpool_provisioner::planner::Status;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use spiderpool_api::inventory::Inventory;
use spiderpool_device_plugin::allocate::DEVINFO_DIR;
use spiderpool_device_plugin::kubelet::{DEFAULT_KUBELET_DIR, allocated_device_ids};
use spiderpool_device_plugin::manager::{ManagerOptions, run as run_device_plugin};
use std::sync::Arc;

use spiderpool_linux::links::{LinkTable, watch_link_events};
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
    /// Make this node match SpiderNetworkNodePolicy documents: VFs, VF settings, MTU, bonds, VLANs.
    Apply {
        /// YAML with one or more SpiderNetworkNodePolicy documents.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
        sysfs_root: PathBuf,
        /// This node's labels for `nodeSelector` (repeatable `key=value`); default
        /// `kubernetes.io/hostname=<hostname>`.
        #[arg(long = "node-label")]
        node_labels: Vec<String>,
        /// Where kubelet's device checkpoint says which VFs pods hold.
        #[arg(long, default_value = DEFAULT_KUBELET_DIR)]
        kubelet_dir: PathBuf,
        /// Keep running: re-apply every this many seconds, correcting drift.
        #[arg(long)]
        watch: Option<u64>,
    },
    /// Serve SR-IOV VF pools and shared RDMA to kubelet (the device plugin alone).
    DevicePlugin {
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
    },
    /// The node agent: the IPAM service, the inventory reporter (SpiderNodeInventory), the device
    /// plugin and /healthz, /readyz.
    Run {
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long, default_value = spiderpool_cni::agent::DEFAULT_AGENT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "0.0.0.0:5710")]
        health_addr: String,
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
    },
    /// Exit 0 when the agent of this container is ready (its --ready-file exists): the
    /// readiness probe.
    Probe {
        #[arg(long)]
        ready_file: PathBuf,
    },
    /// Install spiderpool, coordinator and ifacer into a CNI bin directory (atomically).
    InstallCni {
        #[arg(long)]
        to: PathBuf,
        /// Where the binaries are (default: beside this executable).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Answer the `spiderpool` plugin in cluster mode: pools and allocations in the Kubernetes
    /// API (kubeconfig from KUBECONFIG or the in-cluster service account).
    IpamService {
        /// This node's name (default: NODE_NAME, else the hostname).
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long, default_value = spiderpool_cni::agent::DEFAULT_AGENT_SOCKET)]
        socket: PathBuf,
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
        rdma_netns_shared: spiderpool_linux::rdma::netns_mode_shared().ok(),
    }
}

/// Scans the node under `sysfs_root`, with the link table used. Netlink (VF settings, altnames)
/// and the host's identity describe this machine, so they join only a scan of the real /sys.
fn scan_with_links(sysfs_root: &Path) -> (Inventory, LinkTable) {
    let live = sysfs_root == Path::new(DEFAULT_SYSFS_ROOT);
    let mut netlink_warning = None;
    let links = if live {
        LinkTable::dump().unwrap_or_else(|e| {
            netlink_warning = Some(format!(
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
    inv.warnings.extend(netlink_warning);
    (inv, links)
}

fn scan_node(sysfs_root: &Path) -> Inventory {
    scan_with_links(sysfs_root).0
}

fn inventory(sysfs_root: &Path, output: Format) -> Result<()> {
    let inv = scan_node(sysfs_root);
    let text = match output {
        Format::Table => render_table(&inv),
        Format::Json => serde_json::to_string_pretty(&inv).context("encode JSON")? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(&inv).context("encode YAML")?,
    };
    print!("{text}");
    Ok(())
}

fn read_policies(file: &Path) -> Result<Vec<SpiderNetworkNodePolicy>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    policy::parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn apply_policies(
    file: &Path,
    dry_run: bool,
    sysfs_root: &Path,
    labels: &[String],
    kubelet_dir: &Path,
) -> Result<()> {
    let policies = read_policies(file)?;
    let mut node_labels = BTreeMap::new();
    for label in labels {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--node-label {label:?}: want key=value"))?;
        node_labels.insert(k.to_string(), v.to_string());
    }
    if node_labels.is_empty()
        && let Some(host) = read_trimmed("/proc/sys/kernel/hostname")
    {
        node_labels.insert("kubernetes.io/hostname".into(), host);
    }
    let mut observe = || {
        let (inventory, links) = scan_with_links(sysfs_root);
        Observation {
            inventory,
            links,
            node_labels: node_labels.clone(),
            // VFs kubelet gave to pods; VFs moved into a netns count as in use too (planner).
            allocated: allocated_device_ids(kubelet_dir),
        }
    };
    let plan = observe().plan(&policies);
    println!("plan ({} actions):", plan.steps.len());
    for step in &plan.steps {
        println!("  {}  ({})", step.action, step.reason);
    }
    if dry_run {
        print_status(&plan.status);
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut kernel = LiveKernel::new(Sysfs::new(sysfs_root)).map_err(anyhow::Error::msg)?;
    let report = apply(&policies, &mut observe, &mut kernel);
    println!(
        "applied {} actions in {} rounds, {} ms:",
        report.executed.len(),
        report.rounds,
        started.elapsed().as_millis()
    );
    for (step, outcome) in &report.executed {
        match outcome {
            Ok(()) => println!("  ok    {}", step.action),
            Err(e) => println!("  FAIL  {}: {e}", step.action),
        }
    }
    print_status(&report.status);
    print!("{}", render_table(&scan_node(sysfs_root)));
    if report.failed() {
        anyhow::bail!("some of the policy could not be applied (see status)");
    }
    Ok(())
}

fn print_status(status: &BTreeMap<String, Status>) {
    println!("status:");
    for (what, s) in status {
        println!("  {what}: {s}");
    }
}

fn device_plugin(
    sysfs_root: PathBuf,
    kubelet_dir: PathBuf,
    config: Option<PathBuf>,
    policy: Option<PathBuf>,
    devinfo_dir: PathBuf,
    resync_ms: u64,
) -> Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        // Link events wake the loop at once on the live system; the resync covers the rest.
        let wake = (sysfs_root == Path::new(DEFAULT_SYSFS_ROOT)).then(|| Arc::new(tokio::sync::Notify::new()));
        if let Some(w) = &wake {
            let w = w.clone();
            if let Err(e) = watch_link_events(move || {
                w.notify_one();
                true
            }) {
                tracing::warn!("no netlink link events ({e}): changes show at the next resync");
            }
        }
        let options = ManagerOptions {
            kubelet_dir,
            config_file: config,
            policy_file: policy,
            sysfs: Sysfs::new(&sysfs_root),
            devinfo_dir: Some(devinfo_dir),
            resync: Duration::from_millis(resync_ms.max(100)),
            wake,
            first_pass: None,
        };
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("stopping: removing sockets and device-info files");
        };
        run_device_plugin(options, move || scan_node(&sysfs_root), shutdown).await;
    });
    Ok(())
}

fn node_name(given: Option<String>) -> Result<String> {
    if let Some(n) = given
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
    {
        return Ok(n);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").context("hostname")?;
    Ok(host.trim().to_string())
}

/// The daemons' runtime: two workers (the agent is small; nodes keep their cores for pods).
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The IPAM service with its caches filled and its socket bound, ready to serve.
async fn ipam_listener(
    client: kube::Client,
    node: &str,
    socket: &Path,
) -> Result<(
    Arc<spiderpool_provisioner::ipam_service::IpamService>,
    tokio::net::UnixListener,
)> {
    let service = spiderpool_provisioner::ipam_service::IpamService::start(client, node.to_string())
        .await
        .context("pool caches")?;
    let listener = spiderpool_provisioner::ipam_service::server::bind(socket)
        .with_context(|| format!("bind {}", socket.display()))?;
    tracing::info!("IPAM service of node {node} listening on {}", socket.display());
    Ok((service, listener))
}

fn ipam_service(node: Option<String>, socket: PathBuf) -> Result<()> {
    let node = node_name(node)?;
    let runtime = runtime()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await.context("Kubernetes client")?;
        let (service, listener) = ipam_listener(client, &node, &socket).await?;
        tokio::select! {
            () = spiderpool_provisioner::ipam_service::server::serve(listener, service) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn run_agent(
    node: Option<String>,
    socket: PathBuf,
    health_addr: String,
    sysfs_root: PathBuf,
    inventory_interval: u64,
    // The device plugin's kubelet directory and config file, when it is on.
    device_plugin: Option<(PathBuf, Option<PathBuf>)>,
    ready_file: Option<PathBuf>,
) -> Result<()> {
    use spiderpool_provisioner::{daemon, ipam_service};
    use std::sync::atomic::{AtomicBool, Ordering};
    let node = node_name(node)?;
    let runtime = runtime()?;
    runtime.block_on(async move {
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(f) = &ready_file {
            let _ = std::fs::remove_file(f); // a previous run's
        }
        let health = daemon::bind_shared(&health_addr).with_context(|| format!("bind {health_addr}"))?;
        tokio::spawn(daemon::serve_health(health, ready.clone()));
        let client = kube::Client::try_default().await.context("Kubernetes client")?;
        let (service, listener) = ipam_listener(client.clone(), &node, &socket).await?;
        tokio::spawn(ipam_service::server::serve(listener, service));
        tracing::info!("agent of node {node}: health on {health_addr}");
        let reporter = {
            let (client, node, root) = (client.clone(), node.clone(), sysfs_root.clone());
            async move {
                loop {
                    let root = root.clone();
                    match tokio::task::spawn_blocking(move || scan_node(&root)).await {
                        Ok(inv) => {
                            if let Err(e) = daemon::report_inventory(&client, &node, &inv).await {
                                tracing::warn!("SpiderNodeInventory {node}: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("inventory scan: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(inventory_interval.max(5))).await;
                }
            }
        };
        tokio::spawn(reporter);
        let first_pass = Arc::new(tokio::sync::Notify::new());
        if let Some((kubelet_dir, config_file)) = device_plugin {
            let options = ManagerOptions {
                kubelet_dir,
                config_file,
                policy_file: None,
                sysfs: Sysfs::new(&sysfs_root),
                devinfo_dir: Some(PathBuf::from(DEVINFO_DIR)),
                resync: Duration::from_secs(1),
                wake: None,
                first_pass: Some(first_pass.clone()),
            };
            let root = sysfs_root.clone();
            tokio::spawn(run_device_plugin(options, move || scan_node(&root), std::future::pending::<()>()));
            // Ready once kubelet has our devices: during an update the old agent keeps serving
            // until then (and kubelet switches to us when we register).
            first_pass.notified().await;
        }
        ready.store(true, Ordering::Relaxed);
        if let Some(f) = &ready_file {
            std::fs::write(f, "ready\n").with_context(|| format!("write {}", f.display()))?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        if let Some(f) = &ready_file {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Inventory { .. } | Command::Apply { .. }) {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Inventory { sysfs_root, output } => inventory(&sysfs_root, output),
        Command::Apply {
            file,
            dry_run,
            sysfs_root,
            node_labels,
            kubelet_dir,
            watch,
        } => match watch {
            None => apply_policies(&file, dry_run, &sysfs_root, &node_labels, &kubelet_dir),
            Some(seconds) => loop {
                // Failures are in the status output; the next round tries again.
                if let Err(e) = apply_policies(&file, dry_run, &sysfs_root, &node_labels, &kubelet_dir) {
                    eprintln!("{e:#}");
                }
                std::thread::sleep(Duration::from_secs(seconds.max(1)));
            },
        },
        Command::DevicePlugin {
            sysfs_root,
            kubelet_dir,
            config,
            policy,
            devinfo_dir,
            resync_ms,
        } => device_plugin(sysfs_root, kubelet_dir, config, policy, devinfo_dir, resync_ms),
        Command::IpamService { node_name, socket } => ipam_service(node_name, socket),
        Command::Run {
            node_name,
            socket,
            health_addr,
            sysfs_root,
            inventory_interval,
            device_plugin,
            device_plugin_config,
            kubelet_dir,
            ready_file,
        } => run_agent(
            node_name,
            socket,
            health_addr,
            sysfs_root,
            inventory_interval,
            device_plugin.then_some((kubelet_dir, device_plugin_config)),
            ready_file,
        ),
        Command::Probe { ready_file } => {
            if ready_file.exists() {
                Ok(())
            } else {
                anyhow::bail!("not ready: {} does not exist", ready_file.display())
            }
        }
        Command::InstallCni { to, from } => {
            let from = match from {
                Some(f) => f,
                None => std::env::current_exe()?
                    .parent()
                    .map(Path::to_path_buf)
                    .context("executable has no directory")?,
            };
            spiderpool_provisioner::daemon::install_cni(
                &from,
                &to,
                &spiderpool_provisioner::daemon::CNI_PLUGINS,
            )
            .with_context(|| format!("install into {}", to.display()))?;
            println!(
                "installed {} into {}",
                spiderpool_provisioner::daemon::CNI_PLUGINS.join(", "),
                to.display()
            );
            Ok(())
        }
    }
}
