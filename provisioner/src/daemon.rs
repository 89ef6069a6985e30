//! The pieces `spiderpool-agent run` composes besides the IPAM service and the device plugin:
//! installing the CNI plugins on the host, reporting the node's inventory as its
//! SpiderNodeInventory, and the health endpoints kubelet probes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use spiderpool_api::inventory::{Inventory, NodeInventorySpec, SpiderNodeInventory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The plugins a runtime execs, installed next to the other CNI plugins.
pub const CNI_PLUGINS: [&str; 3] = ["spiderpool", "coordinator", "ifacer"];

/// Copies each of `names` from `from` into `to`: written to a temporary name in `to`, made
/// executable, then renamed over the final name, so a runtime exec'ing the plugin meanwhile
/// sees either the old binary or the new one, never half of one.
pub fn install_cni(from: &Path, to: &Path, names: &[&str]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    for name in names {
        let src = from.join(name);
        let tmp = to.join(format!(".{name}.spiderpool-tmp"));
        std::fs::copy(&src, &tmp)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to.join(name))?;
    }
    Ok(())
}

/// Writes `inventory` as the status of the SpiderNodeInventory named `node` (server-side apply:
/// creates it the first time, changes only what changed afterwards).
pub async fn report_inventory(client: &Client, node: &str, inventory: &Inventory) -> Result<(), kube::Error> {
    let api: Api<SpiderNodeInventory> = Api::all(client.clone());
    let pp = PatchParams::apply("spiderpool-agent").force();
    let mut obj = SpiderNodeInventory::new(
        node,
        NodeInventorySpec {
            node_name: node.to_string(),
        },
    );
    obj.meta_mut().managed_fields = None;
    api.patch(node, &pp, &Patch::Apply(&obj)).await?;
    let status = serde_json::json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderNodeInventory",
        "status": inventory,
    });
    api.patch_status(node, &pp, &Patch::Apply(&status)).await?;
    Ok(())
}

/// Binds the health address with SO_REUSEPORT: during a rolling update the new agent starts
/// beside the old one on the host network (a DaemonSet surge) and both must listen.
pub fn bind_shared(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// `/healthz` answers while the process runs; `/readyz` once `ready` is set (the IPAM service
/// listens and its caches are filled).
pub async fn serve_health(listener: TcpListener, ready: Arc<AtomicBool>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n"),
                "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", "ready\n"),
                "/readyz" => ("503 Service Unavailable", "starting\n"),
                _ => ("404 Not Found", "not found\n"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_cni_replaces_atomically_and_leaves_no_temporary() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        for name in CNI_PLUGINS {
            std::fs::write(from.path().join(name), format!("new {name}")).unwrap();
        }
        std::fs::write(to.path().join("spiderpool"), "old").unwrap();
        install_cni(from.path(), to.path(), &CNI_PLUGINS).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(to.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["coordinator", "ifacer", "spiderpool"]);
        assert_eq!(
            std::fs::read_to_string(to.path().join("spiderpool")).unwrap(),
            "new spiderpool"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(to.path().join("ifacer"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let err = install_cni(from.path(), to.path(), &["missing"]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
