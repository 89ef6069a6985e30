//! Our CNI plugins and the node agent: in cluster mode the `spiderpool` plugin asks the agent's
//! IPAM service, over a root-only unix socket, for what standalone mode does with its own store,
//! and the `coordinator` plugin asks it for the cluster's coordinator settings. One request per connection, one JSON object per
//! line each way; the agent keeps all state in the Kubernetes API.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{Attachment, CniError, CniResult, ErrorCode};
use serde::{Deserialize, Serialize};

/// Where the agent listens (Spiderpool's path).
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/spidernet/spiderpool.sock";

/// The longest answer read from an agent: a result with every address of a pod is a few KiB.
pub const ANSWER_LIMIT: u64 = 1 << 20;

/// What a call may take before the plugin gives up: long enough for a burst of pods on one node
/// queueing behind one pool, short enough to come back before the runtime's own timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One request to the agent: a branch per service it offers the plugins. On the wire every
/// request is one JSON object whose `verb` says the service (`ADD`, `DEL`, `CHECK`, `GC`: IPAM;
/// `COORDINATOR`: the coordinator's settings), the format since the first release, so a plugin
/// and an agent of different versions side by side during an update understand each other.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AgentRequest {
    /// The `spiderpool` plugin's verbs; answered with [`AgentResponse::Ok`] or `Error`.
    Ipam(IpamRequest),
    /// The cluster's coordinator settings; answered with [`AgentResponse::Coordinator`].
    Coordinator(CoordinatorRequest),
}

impl<'de> Deserialize<'de> for AgentRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Dispatch on `verb` first, so an error names the fields of the service asked for.
        let value = serde_json::Value::deserialize(d)?;
        let request = match value.get("verb").and_then(serde_json::Value::as_str) {
            Some("COORDINATOR") => serde_json::from_value(value).map(AgentRequest::Coordinator),
            _ => serde_json::from_value(value).map(AgentRequest::Ipam),
        };
        request.map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum IpamVerb {
    Add,
    Del,
    Check,
    Gc,
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
pub struct IpamRequest {
    pub verb: IpamVerb,
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

/// The coordinator's one verb.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CoordinatorVerb {
    #[default]
    Coordinator,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorRequest {
    /// Always `COORDINATOR`: the field that tells this service from IPAM on the wire.
    pub verb: CoordinatorVerb,
    /// The CNI network name, for the agent's log.
    pub network: String,
    /// The pod being set up (from CNI_ARGS): its `ipam.spidernet.io/default-route-nic`
    /// annotation overrides the SpiderCoordinator's `podDefaultRouteNIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentResponse {
    /// ADD: the addresses and routes; other verbs: an empty result.
    Ok(CniResult),
    Error(CniError),
    /// COORDINATOR: `{"name", "spec", "status"}` of the SpiderCoordinator, and `podDns` (the pod's
    /// `ipam.spidernet.io/dns`) when the pod has one; null when there is neither.
    Coordinator(serde_json::Value),
}

/// Sends one request and waits for the answer. Transport failures become CNI errors that say
/// the agent could not be reached (code 11, try again later), never a silent success.
pub fn call(socket: &Path, request: IpamRequest, timeout: Duration) -> Result<CniResult, CniError> {
    match exchange(socket, &AgentRequest::Ipam(request), timeout)? {
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
    pod: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<serde_json::Value, CniError> {
    let request = AgentRequest::Coordinator(CoordinatorRequest {
        verb: CoordinatorVerb::Coordinator,
        network: network.to_string(),
        pod_namespace: pod.map(|(ns, _)| ns.to_string()),
        pod_name: pod.map(|(_, name)| name.to_string()),
    });
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
    BufReader::new((&stream).take(ANSWER_LIMIT))
        .read_line(&mut answer)
        .map_err(|e| match e.kind() {
            // What a read timeout looks like: "Resource temporarily unavailable" alone did not say.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "spiderpool agent at {}: no answer within {} s (busy or stuck)",
                    socket.display(),
                    timeout.as_secs()
                ),
            ),
            _ => unreachable("receive", e),
        })?;
    if !answer.ends_with('\n') && answer.len() as u64 >= ANSWER_LIMIT {
        return Err(CniError::new(
            ErrorCode::DecodingFailure,
            format!(
                "spiderpool agent at {} answered more than {ANSWER_LIMIT} bytes",
                socket.display()
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_the_first_release_s() {
        // What plugins and agents of the first release send: each side must read the other's.
        let ipam = r#"{"verb":"ADD","network":"macvlan","containerId":"c1","ifname":"eth0","pod":{"namespace":"ns","name":"p","uid":"u"},"defaultIpv4Pools":["a"],"defaultIpv6Pools":[],"cleanGateway":false,"validAttachments":[]}"#;
        let coordinator = r#"{"verb":"COORDINATOR","network":"macvlan","containerId":"","ifname":"","pod":null,"defaultIpv4Pools":[],"defaultIpv6Pools":[],"cleanGateway":false,"validAttachments":[]}"#;
        let AgentRequest::Ipam(req) = serde_json::from_str(ipam).unwrap() else {
            panic!("an IPAM verb reads as an IPAM request");
        };
        assert_eq!(req.verb, IpamVerb::Add);
        assert_eq!(req.default_ipv4_pools, ["a"]);
        assert_eq!(
            serde_json::to_string(&AgentRequest::Ipam(req)).unwrap(),
            ipam,
            "an IPAM request is written as before"
        );
        // An older plugin's coordinator request carries the IPAM fields too: they are ignored.
        let req: AgentRequest = serde_json::from_str(coordinator).unwrap();
        assert_eq!(
            req,
            AgentRequest::Coordinator(CoordinatorRequest {
                verb: CoordinatorVerb::Coordinator,
                network: "macvlan".into(),
                pod_namespace: None,
                pod_name: None,
            })
        );
        let written: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(
            written,
            serde_json::json!({"verb": "COORDINATOR", "network": "macvlan"})
        );
        // An older agent reads that with its defaults for the rest.
    }

    #[test]
    fn an_agent_that_never_answers_is_named_with_the_time_waited() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        // Accepts and reads, never answers (an agent stuck behind its API server).
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
        let request = AgentRequest::Coordinator(CoordinatorRequest {
            verb: CoordinatorVerb::Coordinator,
            network: "n".into(),
            pod_namespace: None,
            pod_name: None,
        });
        let err = exchange(&socket, &request, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::TryAgainLater as u32, "{err:?}");
        assert!(err.msg.contains("no answer within 1 s"), "{err:?}");
        drop(held.join());
    }

    #[test]
    fn a_bad_request_says_what_is_wrong() {
        let err = serde_json::from_str::<AgentRequest>(r#"{"verb":"ADD"}"#).unwrap_err();
        assert!(err.to_string().contains("network"), "{err}");
        let err = serde_json::from_str::<AgentRequest>(r#"{"verb":"FLY","network":"n"}"#).unwrap_err();
        assert!(err.to_string().contains("FLY"), "{err}");
    }
}
