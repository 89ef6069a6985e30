//! A stand-in kubelet for the VM tier: serves `Registration` on `DIR/kubelet.sock`, and for every
//! plugin that registers, follows its ListAndWatch and allocates its first device once. Prints
//! one JSON line per event on stdout, for guest scripts to wait on with jq.
//!
//! usage: fake-kubelet DIR

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use spiderpool_device_plugin::kubelet::unix_channel;
use spiderpool_testing::kubelet::api::device_plugin_client::DevicePluginClient;
use spiderpool_testing::kubelet::api::{AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest};
use spiderpool_testing::kubelet::{KUBELET_SOCKET, start_kubelet};

/// One JSON line, stamped with the wall clock in milliseconds (for latency figures).
fn emit(mut value: serde_json::Value) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    value["t"] = json!(ms as u64);
    println!("{value}");
}

async fn follow(dir: PathBuf, reg: RegisterRequest) -> Result<()> {
    let resource = reg.resource_name.clone();
    let mut client = DevicePluginClient::new(unix_channel(&dir.join(&reg.endpoint)).await?);
    let mut stream = client.list_and_watch(Empty {}).await?.into_inner();
    let mut allocated = false;
    while let Some(list) = stream.message().await? {
        let devices: Vec<_> = list
            .devices
            .iter()
            .map(|d| json!({"id": d.id, "health": d.health}))
            .collect();
        emit(json!({"event": "devices", "resource": resource, "devices": devices}));
        if let (false, Some(first)) = (allocated, list.devices.first()) {
            allocated = true;
            let response = client
                .allocate(AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest {
                        devices_ids: vec![first.id.clone()],
                    }],
                })
                .await?
                .into_inner();
            let c = response
                .container_responses
                .first()
                .context("no container response")?;
            let paths: Vec<&str> = c.devices.iter().map(|d| d.host_path.as_str()).collect();
            emit(
                json!({"event": "allocate", "resource": resource, "id": first.id, "devices": paths, "envs": c.envs}),
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: fake-kubelet DIR")?);
    std::fs::create_dir_all(&dir)?;
    let mut registrations = start_kubelet(&dir)?;
    emit(json!({"event": "listening", "socket": dir.join(KUBELET_SOCKET)}));
    while let Some(reg) = registrations.recv().await {
        emit(
            json!({"event": "register", "resource": reg.resource_name, "endpoint": reg.endpoint, "version": reg.version}),
        );
        let dir = dir.clone();
        tokio::spawn(async move {
            let resource = reg.resource_name.clone();
            if let Err(e) = follow(dir, reg).await {
                emit(json!({"event": "error", "resource": resource, "error": e.to_string()}));
            }
        });
    }
    Ok(())
}
