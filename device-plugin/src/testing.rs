//! The fake kubelet of every test that needs one (this crate's tests and benchmarks, the VM
//! tier's `fake-kubelet`): kubelet's `Registration` service on `DIR/kubelet.sock`, handing each
//! registration to the test. Kept beside the API it speaks so no other crate compiles the
//! kubelet protocol a second time.

use std::path::Path;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::api::registration_server::{Registration, RegistrationServer};
use crate::api::{Empty, RegisterRequest};
use crate::kubelet::KUBELET_SOCKET;

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
