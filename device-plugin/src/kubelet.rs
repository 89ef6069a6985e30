//! Talking to kubelet over unix sockets: a gRPC channel to a socket path, and registration.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::registration_client::RegistrationClient;
use crate::api::{DevicePluginOptions, RegisterRequest};

pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet/device-plugins";
pub const KUBELET_SOCKET: &str = "kubelet.sock";
pub const API_VERSION: &str = "v1beta1";

/// A channel whose every connection goes to the unix socket `path` (the URI is a placeholder).
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot reach kubelet at {0}: {1}")]
    Connect(PathBuf, tonic::transport::Error),
    #[error("kubelet refused {0}: {1}")]
    Refused(String, tonic::Status),
}

/// Registers `resource_name` served on `endpoint` (a socket file name in `dir`).
pub async fn register(dir: &Path, endpoint: &str, resource_name: &str) -> Result<(), RegisterError> {
    let socket = dir.join(KUBELET_SOCKET);
    let channel = unix_channel(&socket)
        .await
        .map_err(|e| RegisterError::Connect(socket.clone(), e))?;
    let request = RegisterRequest {
        version: API_VERSION.into(),
        endpoint: endpoint.into(),
        resource_name: resource_name.into(),
        options: Some(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    RegistrationClient::new(channel)
        .register(request)
        .await
        .map_err(|s| RegisterError::Refused(resource_name.into(), s))?;
    Ok(())
}
