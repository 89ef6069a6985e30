//! The unix socket the `spiderpool` plugin calls: root-only (mode 0600), one request per
//! connection, one JSON line each way.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use spiderpool_cni::agent::{AgentRequest, AgentResponse};
use spiderpool_cni::{CniError, ErrorCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::IpamService;

/// A request is a few hundred bytes; anything past this is not ours.
const MAX_REQUEST: u64 = 1 << 20;

/// Binds `path` with mode 0600, replacing whatever socket is there (a killed agent's, or the
/// previous agent's during an update). The socket listens, with its mode set, under a temporary
/// name first and is then renamed over `path`: a plugin connecting meanwhile reaches the old socket
/// or the new one, never a missing path, a socket not yet listening, or one open to all.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let staged = dir.join(format!(".{name}.{}", std::process::id()));
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staged, path)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, service: Arc<IpamService>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let service = service.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &service).await {
                        tracing::warn!("ipam socket: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("ipam socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, service: &Arc<IpamService>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    if line.is_empty() {
        return Ok(()); // a connect-only probe (the plugin's STATUS, a readiness check)
    }
    let response = match serde_json::from_str::<AgentRequest>(&line) {
        Ok(AgentRequest::Coordinator(r)) => AgentResponse::Coordinator(service.coordinator_settings(&r)),
        Ok(AgentRequest::Ipam(req)) => {
            let summary = format!(
                "{:?} {} {}",
                req.verb,
                req.pod
                    .as_ref()
                    .map_or_else(String::new, |p| format!("{}/{}", p.namespace, p.name)),
                req.ifname
            );
            let result = service.handle(req).await;
            match &result {
                Ok(r) => tracing::info!(
                    "{summary}: ok {:?}",
                    r.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>()
                ),
                Err(e) => tracing::warn!("{summary}: error {}: {}", e.code, e.msg),
            }
            match result {
                Ok(r) => AgentResponse::Ok(r),
                Err(e) => AgentResponse::Error(e),
            }
        }
        Err(e) => AgentResponse::Error(CniError::new(
            ErrorCode::DecodingFailure,
            format!("agent request: {e}"),
        )),
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}
