//! `spiderpool-controller`: leader-elected garbage collection of pod addresses, pool counts, the
//! SpiderCoordinator status (pod and service CIDRs) and metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use spiderpool_controller::gc;
use spiderpool_controller::leader::Elector;
use spiderpool_controller::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/healthz" | "/readyz" => ("200 OK", "ok\n".to_string()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let client = kube::Client::try_default().await.context("Kubernetes client")?;
    let metrics = Arc::new(Metrics::new());
    if cli.apply_crds {
        let applied = spiderpool_controller::crds::apply_all(&client)
            .await
            .context("apply CRDs")?;
        tracing::info!("applied {applied} CRDs");
    }
    if cli.once {
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
    let listener = TcpListener::bind(&cli.metrics_addr)
        .await
        .with_context(|| format!("bind {}", cli.metrics_addr))?;
    tokio::spawn(serve_http(listener, metrics.clone()));
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
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
