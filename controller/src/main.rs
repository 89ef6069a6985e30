//! `spiderpool-controller`: leader-elected garbage collection of pod addresses, pool counts, the
//! SpiderCoordinator status (pod and service CIDRs) and metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use spiderpool_controller::gc;
use spiderpool_controller::leader::{Elector, Leadership};
use spiderpool_controller::metrics::Metrics;
use spiderpool_daemon::http::{self, Response};

#[derive(Parser)]
#[command(
    name = "spiderpool-controller",
    version,
    about = "Spiderpool's cluster controller"
)]
struct Cli {
    /// Seconds between garbage-collection rounds.
    #[arg(long, default_value_t = 30)]
    gc_interval: u64,
    /// Run one round (GC, then the coordinator status) without leader election and exit (for
    /// operators and tests).
    #[arg(long)]
    once: bool,
    #[arg(long, default_value = "spiderpool-controller")]
    lease_name: String,
    /// Default: POD_NAMESPACE, else kube-system.
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Seconds a lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: i32,
    /// This replica's name in the lease. Default: POD_NAME, else the hostname and PID.
    #[arg(long)]
    identity: Option<String>,
    /// Apply the project's CRDs (server-side apply) before anything else: how `helm upgrade`
    /// upgrades them, since Helm never touches a chart's crds/ after the first install.
    #[arg(long)]
    apply_crds: bool,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "0.0.0.0:5721")]
    metrics_addr: String,
}

/// `/metrics` for Prometheus; `/healthz` and `/readyz` while the process runs.
fn route(metrics: Arc<Metrics>) -> impl Fn(&str) -> Response + Send + Sync + 'static {
    move |path| match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body: metrics.render(),
        },
        "/healthz" | "/readyz" => Response::text("200 OK", "ok\n"),
        _ => Response::not_found(),
    }
}

fn identity(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("POD_NAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
}

fn main() -> Result<()> {
    spiderpool_daemon::init_logging();
    let cli = Cli::parse();
    spiderpool_daemon::runtime()?.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            // As PID 1 in its container the controller must stop on SIGTERM itself.
            () = spiderpool_daemon::shutdown_signal() => Ok(()),
        }
    })
}

async fn run(cli: Cli) -> Result<()> {
    let client = spiderpool_daemon::kube_client::kube_client().await?;
    let metrics = Arc::new(Metrics::new());
    if cli.apply_crds {
        let applied = spiderpool_controller::crds::apply_all(&client)
            .await
            .context("apply CRDs")?;
        tracing::info!("applied {applied} CRDs");
    }
    if cli.once {
        let pools = spiderpool_controller::pools::run_once(&client).await?;
        println!(
            "{} pools ready, {} not in use, {} finalizers removed, {} registry entries pruned",
            pools.ready,
            pools.not_ready.len(),
            pools.finalizers_removed,
            pools.entries_pruned
        );
        for why in &pools.not_ready {
            println!("  {why}");
        }
        let report = gc::run_once(&client, &metrics).await?;
        println!(
            "released {} addresses, deleted {} endpoints, recounted {} pools",
            report.released.len(),
            report.endpoints_deleted,
            report.pools_recounted
        );
        for r in &report.released {
            println!("  {r}");
        }
        let written = spiderpool_controller::coordinator::reconcile_all(&client).await?;
        println!("updated {written} SpiderCoordinator statuses");
        return Ok(());
    }
    let listener =
        http::bind_shared(&cli.metrics_addr).with_context(|| format!("bind {}", cli.metrics_addr))?;
    tokio::spawn(http::serve(listener, route(metrics.clone())));
    let namespace = cli
        .lease_namespace
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "kube-system".into());
    let me = identity(cli.identity);
    let elector = Elector::new(
        client.clone(),
        &namespace,
        &cli.lease_name,
        &me,
        cli.lease_duration,
    );
    // Renew well inside the lease so a slow round never lets it lapse.
    let renew_every = Duration::from_secs(u64::try_from(cli.lease_duration / 3).unwrap_or(1).max(1));
    let gc_every = Duration::from_secs(cli.gc_interval.max(1));
    let mut next_gc = tokio::time::Instant::now();
    let leadership = Leadership::default();
    tokio::spawn(spiderpool_controller::pools::run(
        client.clone(),
        leadership.clone(),
        gc_every,
    ));
    tokio::spawn(spiderpool_controller::multus::run(
        client.clone(),
        leadership.clone(),
        Duration::from_secs(30),
    ));
    tokio::spawn(spiderpool_controller::subnets::run(
        client.clone(),
        leadership.clone(),
        Duration::from_secs(30),
    ));
    tokio::spawn(spiderpool_controller::node_policies::run(
        client.clone(),
        leadership.clone(),
        Duration::from_secs(30),
    ));
    tracing::info!(identity = %me, lease = %format!("{namespace}/{}", cli.lease_name), "controller started");
    loop {
        let leading = match elector.try_acquire_or_renew().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("lease: {e}");
                false
            }
        };
        metrics.leader.set(i64::from(leading));
        leadership.set(leading);
        if leading && tokio::time::Instant::now() >= next_gc {
            match gc::run_once(&client, &metrics).await {
                Ok(r) if !r.released.is_empty() || r.endpoints_deleted > 0 => tracing::info!(
                    released = r.released.len(),
                    endpoints = r.endpoints_deleted,
                    "gc round"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("gc round: {e}"),
            }
            if let Err(e) = spiderpool_controller::coordinator::reconcile_all(&client).await {
                tracing::warn!("coordinator status: {e:#}");
            }
            next_gc = tokio::time::Instant::now() + gc_every;
        }
        let wait = if leading {
            renew_every.min(gc_every)
        } else {
            renew_every
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
