//! The node agent. [`run`] composes its services: the cluster-mode IPAM service on the plugins'
//! unix socket ([`ipam_service`]), the SpiderNodeInventory reporter ([`inventory_report`]), the
//! kubelet device plugin (`spiderpool-device-plugin`) and the health endpoint. Each
//! `spiderpool-agent` subcommand is in [`commands`]; `main` only dispatches.

pub mod commands;
pub mod dra;
pub mod dra_slices;
pub mod install;
pub mod inventory_report;
pub mod ipam_service;
pub mod node;
pub mod node_events;
pub mod node_policy;
pub mod rdma_counters;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use spiderpool_daemon::http::{self, Response};
use spiderpool_device_plugin::allocate::DEVINFO_DIR;
use spiderpool_device_plugin::manager::{ManagerOptions, run as run_device_plugin};
use spiderpool_linux::sysfs::Sysfs;

use ipam_service::metrics::IpamMetrics;

/// What `spiderpool-agent run` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// The IPAM service's unix socket.
    pub socket: PathBuf,
    /// ADDs and DELs doing API work at once (0: no limit).
    pub ipam_in_flight: usize,
    /// `/healthz`, `/readyz` and `/metrics`, bound with SO_REUSEPORT (an update's successor binds
    /// beside us). Loopback by default: the host network is every pod's.
    pub health_addr: String,
    /// A second address for `/metrics` alone, for Prometheus to scrape (`None`: only on
    /// `health_addr`).
    pub metrics_addr: Option<String>,
    pub sysfs_root: PathBuf,
    pub inventory_interval: Duration,
    /// `None`: no device plugin.
    pub device_plugin: Option<DevicePlugin>,
    /// Written once the agent serves, removed on exit (`probe --ready-file`).
    pub ready_file: Option<PathBuf>,
    /// SpiderNetworkNodePolicy objects: applied, reported only, or not watched.
    pub node_policies: node_policy::Options,
    /// The DRA driver, `None` for none (its device-plugin side is filled in from
    /// `device_plugin`).
    pub dra: Option<dra::DraOptions>,
}

#[derive(Debug, Clone)]
pub struct DevicePlugin {
    pub kubelet_dir: PathBuf,
    /// `None`: `spidernet.io/rdma` shared over every RDMA device.
    pub config_file: Option<PathBuf>,
}

/// Runs the agent until `shutdown` completes. Ready (`/readyz`, the ready file) once the IPAM
/// service's caches are filled and its socket is bound, and the device plugin (when on) has
/// registered what the node has: during an update the old agent keeps serving until then.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let node = config.node_name.clone();
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(f) = &config.ready_file {
        let _ = std::fs::remove_file(f); // a previous run's
    }
    let metrics = Metrics::default();
    spawn_rdma_counters(&metrics, &config.sysfs_root);
    let health =
        http::bind_shared(&config.health_addr).with_context(|| format!("bind {}", config.health_addr))?;
    tokio::spawn(http::serve(health, health_route(ready.clone(), metrics.clone())));
    if let Some(addr) = &config.metrics_addr {
        let listener = http::bind_shared(addr).with_context(|| format!("bind {addr}"))?;
        let metrics = metrics.clone();
        tokio::spawn(http::serve(listener, move |path| match path {
            "/metrics" => metrics_response(&metrics),
            _ => Response::not_found(),
        }));
    }
    let client = spiderpool_daemon::kube_client::kube_client().await?;
    let (service, listener) =
        ipam_service::IpamService::listen(client.clone(), &node, &config.socket, config.ipam_in_flight)
            .await?;
    let _ = metrics.ipam.set(service.metrics());
    tokio::spawn(ipam_service::server::serve(listener, service));
    tracing::info!("agent of node {node}: health on {}", config.health_addr);
    // The device plugin and the inventory rescan at once when a link or device changes.
    let inventory_wake = Arc::new(tokio::sync::Notify::new());
    let dra_wake = Arc::new(tokio::sync::Notify::new());
    let plugin_policies = node_policy::PluginFeed::default();
    if config.sysfs_root == std::path::Path::new(spiderpool_linux::sysfs::DEFAULT_SYSFS_ROOT) {
        node_events::wake_on_changes(vec![
            inventory_wake.clone(),
            plugin_policies.wake.clone(),
            dra_wake.clone(),
        ]);
    }
    tokio::spawn(inventory_report::every(
        client.clone(),
        node.clone(),
        config.sysfs_root.clone(),
        config.inventory_interval,
        inventory_wake,
    ));
    // The device plugin serves the resources of the policies that select this node: the policy
    // loop hands them over and wakes it.
    let mut policy_options = config.node_policies.clone();
    if config.device_plugin.is_some() {
        policy_options.device_plugin = Some(plugin_policies.clone());
    }
    tokio::spawn(node_policy::run(client.clone(), node.clone(), policy_options));
    if let Some(dra) = &config.dra {
        let mut dra = dra.clone();
        dra.device_plugin = config.device_plugin.as_ref().map(|p| dra::DevicePluginSide {
            config_file: p.config_file.clone(),
            cluster_policies: Some(plugin_policies.policies.clone()),
            device_plugins_dir: p.kubelet_dir.clone(),
        });
        tokio::spawn(dra::run(client.clone(), dra, dra_wake));
    }
    if let Some(plugin) = &config.device_plugin {
        let first_pass = Arc::new(tokio::sync::Notify::new());
        let options = ManagerOptions {
            kubelet_dir: plugin.kubelet_dir.clone(),
            config_file: plugin.config_file.clone(),
            policy_file: None,
            cluster_policies: Some(plugin_policies.policies.clone()),
            sysfs: Sysfs::new(&config.sysfs_root),
            devinfo_dir: Some(PathBuf::from(DEVINFO_DIR)),
            resync: Duration::from_secs(1),
            wake: Some(plugin_policies.wake.clone()),
            first_pass: Some(first_pass.clone()),
        };
        let root = config.sysfs_root.clone();
        // What prepared DRA claims hold is not the device plugin's to advertise.
        let dra_root = config.dra.as_ref().map(|d| d.kubelet_root.clone());
        // The plugin's sockets stay when the agent stops: a successor removes dead ones, and
        // kubelet keeps counting the devices pods hold.
        tokio::spawn(run_device_plugin(
            options,
            move || {
                let inventory = node::scan_node(&root);
                match &dra_root {
                    Some(kubelet_root) => dra::without_dra_held(inventory, kubelet_root),
                    None => inventory,
                }
            },
            std::future::pending::<()>(),
        ));
        first_pass.notified().await;
    }
    ready.store(true, Ordering::Relaxed);
    if let Some(f) = &config.ready_file {
        std::fs::write(f, "ready\n").with_context(|| format!("write {}", f.display()))?;
    }
    shutdown.await;
    if let Some(f) = &config.ready_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

/// What /metrics serves: the IPAM service's (once it runs) and the RDMA port counters (read by a
/// thread every `RDMA_COUNTERS_EVERY`, so a scrape never waits on sysfs or a namespace).
#[derive(Clone, Default)]
struct Metrics {
    ipam: Arc<std::sync::OnceLock<Arc<IpamMetrics>>>,
    rdma: Arc<std::sync::RwLock<String>>,
}

const RDMA_COUNTERS_EVERY: Duration = Duration::from_secs(10);

fn spawn_rdma_counters(metrics: &Metrics, sysfs_root: &std::path::Path) {
    let sources = rdma_counters::Sources {
        sysfs: Sysfs::new(sysfs_root),
        netns_dir: PathBuf::from("/var/run/netns"),
        rdma_records: PathBuf::from(spiderpool_rdma::DEFAULT_STATE_DIR),
        cni_results: PathBuf::from(spiderpool_cni::cache::DEFAULT_RESULTS_DIR),
    };
    let rdma = metrics.rdma.clone();
    std::thread::spawn(move || {
        loop {
            let text = rdma_counters::render(&rdma_counters::collect(&sources));
            if let Ok(mut slot) = rdma.write() {
                *slot = text;
            }
            std::thread::sleep(RDMA_COUNTERS_EVERY);
        }
    });
}

/// `/healthz` answers while the process runs; `/readyz` once `ready` is set; `/metrics` once the
/// IPAM service runs.
fn health_route(
    ready: Arc<AtomicBool>,
    metrics: Metrics,
) -> impl Fn(&str) -> Response + Send + Sync + 'static {
    move |path| match path {
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/readyz" if ready.load(Ordering::Relaxed) => Response::text("200 OK", "ready\n"),
        "/readyz" => Response::text("503 Service Unavailable", "starting\n"),
        "/metrics" => metrics_response(&metrics),
        _ => Response::not_found(),
    }
}

fn metrics_response(metrics: &Metrics) -> Response {
    let mut body = metrics.ipam.get().map(|m| m.render()).unwrap_or_default();
    // prometheus-client ends its exposition with `# EOF`; the RDMA families go before it.
    if let Some(stripped) = body.strip_suffix("# EOF\n") {
        body.truncate(stripped.len());
    }
    if let Ok(rdma) = metrics.rdma.read() {
        body.push_str(&rdma);
    }
    body.push_str("# EOF\n");
    Response {
        status: "200 OK",
        content_type: "text/plain; version=0.0.4",
        body,
    }
}
