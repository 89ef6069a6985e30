//! What the agent and the controller share as long-running processes: the tokio runtime, logging,
//! the shutdown signal, the plain-HTTP endpoint kubelet probes and Prometheus scrapes, and the
//! watch caches their loops wake on, and their Kubernetes client (HTTP/2).

pub mod http;
pub mod kube_client;
pub mod watch;

/// Completes on SIGTERM (kubelet stopping the container; we may be PID 1, where the kernel
/// ignores a signal without a handler) or SIGINT (Ctrl-C). Until it is first polled, the default
/// dispositions still apply (a signal then ends the process at once).
pub async fn shutdown_signal() {
    on_shutdown().await
}

/// [`shutdown_signal`] with the handlers installed now (call it inside the runtime): a signal
/// that comes before the future is awaited is kept, so work in between runs to its end.
pub fn on_shutdown() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without handlers the default dispositions end the process anyway.
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("no signal handlers ({e}): stopping only by the default dispositions");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("stopping on signal");
    }
}

/// The daemons' runtime: two workers (they are small; nodes keep their cores for pods).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Raises the soft limit of open files to the hard limit: a daemon serving sockets, watches and
/// gRPC streams should run out of nothing before the kernel's own bound (the default soft limit
/// is often 1024). Best effort: a refusal leaves the limit as it was.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_signal_before_the_await_is_kept() {
        let rt = super::runtime().unwrap();
        rt.block_on(async {
            let stop = super::on_shutdown();
            // SIGINT to ourselves: with the handler installed it only wakes the future.
            // SAFETY: raise(3) with a valid signal number has no other effect.
            assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
            tokio::time::timeout(std::time::Duration::from_secs(5), stop)
                .await
                .expect("the signal sent before the await completes the future");
        });
    }
}
