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
/// kubelet's record of which device IDs it gave to which pod (survives plugin restarts).
pub const CHECKPOINT: &str = "kubelet_internal_checkpoint";

/// Device IDs kubelet has allocated to pods, each with who holds it (`pod UID, container NAME`;
/// empty when the checkpoint does not say), from its checkpoint in `dir`; empty when there is
/// none. `DeviceIDs` is a list in old kubelets and a map of NUMA node to list in newer ones.
pub fn allocated_device_ids(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join(CHECKPOINT)) else {
        return Default::default();
    };
    parse_checkpoint(&text)
}

pub fn parse_checkpoint(text: &str) -> std::collections::BTreeMap<String, String> {
    type Ids = std::collections::BTreeMap<String, String>;
    fn strings(v: &serde_json::Value, holder: &str, out: &mut Ids) {
        match v {
            serde_json::Value::String(s) => {
                out.insert(s.clone(), holder.to_string());
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, holder, out)),
            serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, holder, out)),
            _ => {}
        }
    }
    let mut out = Ids::new();
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) else {
        return out;
    };
    for entry in doc["Data"]["PodDeviceEntries"].as_array().into_iter().flatten() {
        let holder = match (entry["PodUID"].as_str(), entry["ContainerName"].as_str()) {
            (Some(pod), Some(container)) => format!("pod {pod}, container {container}"),
            (Some(pod), None) => format!("pod {pod}"),
            _ => String::new(),
        };
        strings(&entry["DeviceIDs"], &holder, &mut out);
    }
    out
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn checkpoint_in_both_shapes() {
        let new = r#"{"Data":{"PodDeviceEntries":[{"PodUID":"u1","ContainerName":"c","ResourceName":"spidernet.io/vfs",
            "DeviceIDs":{"0":["0000:3b:00.2"],"1":["0000:af:00.3"]},"AllocResp":"AAA="}],
            "RegisteredDevices":{"spidernet.io/vfs":["0000:3b:00.2","0000:3b:00.4"]}},"Checksum":1}"#;
        let ids = super::parse_checkpoint(new);
        assert_eq!(ids.len(), 2);
        assert!(
            ids.contains_key("0000:af:00.3") && !ids.contains_key("0000:3b:00.4"),
            "registered is not allocated"
        );
        assert_eq!(ids["0000:3b:00.2"], "pod u1, container c");
        let old = r#"{"Data":{"PodDeviceEntries":[{"DeviceIDs":["0000:3b:00.5"]}]}}"#;
        assert_eq!(super::parse_checkpoint(old)["0000:3b:00.5"], "");
        assert!(super::parse_checkpoint("garbage").is_empty());
    }
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
