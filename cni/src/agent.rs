//! Our CNI plugins and the node agent: in cluster mode the `spiderpool` plugin asks the agent's
//! IPAM service, over a root-only unix socket, for what standalone mode does with its own store,
//! and the `coordinator` plugin asks it for the cluster's coordinator settings. One request per connection, one JSON object per
//! line each way; the agent keeps all state in the Kubernetes API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{Attachment, CniError, CniResult, ErrorCode};
use serde::{Deserialize, Serialize};

/// Where the agent listens (Spiderpool's path).
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/spidernet/spiderpool.sock";

/// What a call may take before the plugin gives up: long enough for a burst of pods on one node
/// queueing behind one pool, short enough to come back before the runtime's own timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verb {
    Add,
    Del,
    Check,
    Gc,
    /// The cluster's coordinator settings (the SpiderCoordinator `default`), for the coordinator
    /// plugin; answered with [`AgentResponse::Coordinator`].
    Coordinator,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequest {
    pub verb: Verb,
    /// The CNI network name (Multus passes the NetworkAttachmentDefinition's name here).
    pub network: String,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// Absent for GC.
    #[serde(default)]
    pub pod: Option<PodRef>,
    #[serde(default)]
    pub default_ipv4_pools: Vec<String>,
    #[serde(default)]
    pub default_ipv6_pools: Vec<String>,
    #[serde(default)]
    pub clean_gateway: bool,
    /// GC: the attachments that are still valid.
    #[serde(default)]
    pub valid_attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentResponse {
    /// ADD: the addresses and routes; other verbs: an empty result.
    Ok(CniResult),
    Error(CniError),
    /// COORDINATOR: `{"spec": .., "status": ..}` of the SpiderCoordinator, or null when the
    /// cluster has none.
    Coordinator(serde_json::Value),
}

/// Sends one request and waits for the answer. Transport failures become CNI errors that say
/// the agent could not be reached (code 11, try again later), never a silent success.
pub fn call(socket: &Path, request: &AgentRequest, timeout: Duration) -> Result<CniResult, CniError> {
    match exchange(socket, request, timeout)? {
        AgentResponse::Ok(result) => Ok(result),
        AgentResponse::Error(e) => Err(e),
        AgentResponse::Coordinator(_) => Err(CniError::new(
            ErrorCode::DecodingFailure,
            "spiderpool agent answered an IPAM request with coordinator settings",
        )),
    }
}

/// Asks the agent for the cluster's coordinator settings: `{"spec", "status"}` of the
/// SpiderCoordinator, or null.
pub fn coordinator_settings(
    socket: &Path,
    network: &str,
    timeout: Duration,
) -> Result<serde_json::Value, CniError> {
    let request = AgentRequest {
        verb: Verb::Coordinator,
        network: network.to_string(),
        container_id: String::new(),
        ifname: String::new(),
        pod: None,
        default_ipv4_pools: Vec::new(),
        default_ipv6_pools: Vec::new(),
        clean_gateway: false,
        valid_attachments: Vec::new(),
    };
    match exchange(socket, &request, timeout)? {
        AgentResponse::Coordinator(settings) => Ok(settings),
        AgentResponse::Error(e) => Err(e),
        AgentResponse::Ok(_) => Err(CniError::new(
            ErrorCode::DecodingFailure,
            "spiderpool agent answered a coordinator request with an IPAM result (an older agent?)",
        )),
    }
}

fn exchange(socket: &Path, request: &AgentRequest, timeout: Duration) -> Result<AgentResponse, CniError> {
    let unreachable = |what: &str, e: std::io::Error| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("spiderpool agent at {}: {what}: {e}", socket.display()),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable("connect", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| unreachable("set timeout", e))?;
    let mut line = serde_json::to_vec(request)
        .map_err(|e| CniError::new(ErrorCode::IoFailure, format!("encode request: {e}")))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| unreachable("send", e))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| unreachable("receive", e))?;
    if answer.is_empty() {
        return Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "spiderpool agent at {} closed the connection without an answer",
                socket.display()
            ),
        ));
    }
    match serde_json::from_str::<AgentResponse>(&answer) {
        Ok(response) => Ok(response),
        Err(e) => Err(CniError::new(
            ErrorCode::DecodingFailure,
            format!("spiderpool agent answered something unreadable: {e}"),
        )),
    }
}
