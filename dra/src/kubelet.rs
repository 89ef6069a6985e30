//! Serving the plugin to kubelet: the DRA service on `<kubelet>/plugins/spidernet.io/dra.sock`,
//! and the registration service on `<kubelet>/plugins_registry/spidernet.io-reg.sock`, which
//! kubelet's plugin watcher finds and dials (through [`crate::authority`], see there why).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use crate::api::dra::dra_plugin_server::{DraPlugin, DraPluginServer};
use crate::api::registration::registration_server::{Registration, RegistrationServer};
use crate::api::registration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use crate::slices::DRIVER;

/// The plugin type kubelet's watcher hands to its DRA manager.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The DRA services kubelet 1.34–1.37 speak, preferred first.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1.DRAPlugin"];

#[derive(Debug, Clone)]
pub struct Sockets {
    pub dra: PathBuf,
    pub registration: PathBuf,
}

impl Sockets {
    /// Where kubelet with root directory `kubelet_dir` looks.
    pub fn under(kubelet_dir: &Path) -> Sockets {
        Sockets {
            dra: kubelet_dir.join("plugins").join(DRIVER).join("dra.sock"),
            registration: kubelet_dir
                .join("plugins_registry")
                .join(format!("{DRIVER}-reg.sock")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {0}: {1}")]
    Socket(PathBuf, std::io::Error),
    #[error("socket {0} was removed")]
    Removed(PathBuf),
    /// Another process bound the path (an agent's successor during an update): serving on
    /// would take it back and forth. [`serve_until_stopped`] waits for the path to be free.
    #[error("socket {0} is now another process's")]
    Replaced(PathBuf),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

struct Registrar {
    endpoint: String,
    registered: Arc<Notify>,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: DRIVER.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("DRA: kubelet registered driver {DRIVER}");
            self.registered.notify_waiters();
        } else {
            tracing::error!("DRA: kubelet refused driver {DRIVER}: {}", status.error);
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// A root-only socket at `path`, replacing a stale one.
fn listen(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |e| ServeError::Socket(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves `plugin` (shared, so one checkpoint outlives a re-serve) and its registration until a socket is removed (kubelet's directories
/// wiped: call again to serve anew) or a server fails. `registered` is notified whenever kubelet
/// confirms the registration (after its own restart too).
pub async fn serve<P: DraPlugin>(
    sockets: &Sockets,
    plugin: Arc<P>,
    registered: Arc<Notify>,
) -> Result<(), ServeError> {
    // The DRA socket first: kubelet dials it as soon as it has read the registration.
    let dra = listen(&sockets.dra)?;
    let dra_server = tonic::transport::Server::builder()
        .add_service(DraPluginServer::from_arc(plugin))
        .serve_with_incoming(UnixListenerStream::new(dra));
    let registrar = Registrar {
        endpoint: sockets.dra.display().to_string(),
        registered,
    };
    let registration = listen(&sockets.registration)?;
    let (conns, incoming) = mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(8);
    let registration_server = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(registrar))
        .serve_with_incoming(ReceiverStream::new(incoming));
    let accept = async {
        loop {
            let (client, _) = match registration.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("DRA registration socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (near, far) = tokio::io::duplex(64 * 1024);
            if conns.send(Ok(far)).await.is_err() {
                return;
            }
            tokio::spawn(async move {
                if let Err(e) = crate::authority::relay(client, near).await {
                    tracing::debug!("DRA registration connection: {e}");
                }
            });
        }
    };
    let ours = [
        (sockets.dra.clone(), inode(&sockets.dra)),
        (sockets.registration.clone(), inode(&sockets.registration)),
    ];
    let removed = async {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for (path, ino) in &ours {
                match inode(path) {
                    None => return ServeError::Removed(path.clone()),
                    now if now != *ino => return ServeError::Replaced(path.clone()),
                    _ => {}
                }
            }
        }
    };
    tracing::info!(
        "DRA: serving {} and registering through {}",
        sockets.dra.display(),
        sockets.registration.display()
    );
    tokio::select! {
        r = dra_server => r.map_err(ServeError::from),
        r = registration_server => r.map_err(ServeError::from),
        _ = accept => Ok(()),
        e = removed => Err(e),
    }
}

/// [`serve`] for as long as the caller runs: again at once when kubelet wiped a socket, and only
/// once the path is free again when another process took it over.
pub async fn serve_until_stopped<P: DraPlugin>(sockets: &Sockets, plugin: Arc<P>, registered: Arc<Notify>) {
    loop {
        match serve(sockets, plugin.clone(), registered.clone()).await {
            Err(ServeError::Replaced(path)) => {
                tracing::warn!(
                    "DRA kubelet plugin: {} is now served by another process; waiting for it to go",
                    path.display()
                );
                while sockets.registration.exists() && sockets.dra.exists() {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            Err(e) => tracing::warn!("DRA kubelet plugin: {e}; serving again"),
            Ok(()) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests;
