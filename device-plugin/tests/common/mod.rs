//! A fake kubelet for the device plugin tests: a Registration server on a temp socket that
//! records every registration, and fixture inventories.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use spiderpool_api::inventory::Inventory;
use spiderpool_device_plugin::api::registration_server::{Registration, RegistrationServer};
use spiderpool_device_plugin::api::{Empty, RegisterRequest};
use spiderpool_device_plugin::kubelet::KUBELET_SOCKET;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

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

pub fn start_kubelet(dir: &Path) -> mpsc::UnboundedReceiver<RegisterRequest> {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = UnixListener::bind(dir.join(KUBELET_SOCKET)).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(FakeKubelet { registered: tx }))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    rx
}

pub fn fixture(name: &str) -> (Inventory, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/sysfs")
        .join(name);
    let inv = serde_json::from_str(&std::fs::read_to_string(root.with_extension("json")).unwrap()).unwrap();
    (inv, root)
}
