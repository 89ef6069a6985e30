//! The fake kubelet of every test that needs one (the device plugin's tests and benchmark, the VM
//! tier's `fake-kubelet`): kubelet's `Registration` service on `DIR/kubelet.sock`, handing each
//! registration to the test, and a client for the plugin's own socket. It speaks the wire
//! protocol from its own copy of the generated API ([`api`]), so no test depends on the plugin's
//! code to talk to it.

use std::path::Path;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use api::registration_server::{Registration, RegistrationServer};
use api::{Empty, RegisterRequest};

/// kubelet's device plugin API v1beta1, generated from `device-plugin/proto/deviceplugin.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("v1beta1");
}

/// Where kubelet listens for registrations, in its device plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

struct FakeKubelet {
    registered: mpsc::UnboundedSender<RegisterRequest>,
}

#[tonic::async_trait]
impl Registration for FakeKubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.registered.send(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// Serves `Registration` on `dir/kubelet.sock` (replacing a stale socket) from a task of the
/// current tokio runtime; every plugin registration arrives on the returned channel.
pub fn start_kubelet(dir: &Path) -> std::io::Result<mpsc::UnboundedReceiver<RegisterRequest>> {
    let socket = dir.join(KUBELET_SOCKET);
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&socket)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(FakeKubelet { registered: tx }))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    Ok(rx)
}
