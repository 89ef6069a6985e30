//! The node's ResourceSlices for driver `spidernet.io` (`spiderpool_dra::slices`) kept in the API
//! server: applied when the devices change (a new pool generation), owned by the Node so they go
//! with it, and the slices of a larger earlier pool deleted.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{Device, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use spiderpool_dra::slices::{DRIVER, slices};
use tokio::sync::Notify;

const MANAGER: &str = "spiderpool-agent-dra";
/// How often the published slices are looked for in the API server.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// What was last published: the devices and their pool generation.
#[derive(Debug, Default)]
pub struct Published {
    devices: Option<Vec<Device>>,
    generation: i64,
}

fn selector(node: &str) -> ListParams {
    ListParams::default().fields(&format!("spec.nodeName={node},spec.driver={DRIVER}"))
}

/// Publishes `devices` for `node` unless they are what was last published. Returns whether it
/// wrote. The first call continues from the generation the API server holds (an agent restart).
pub async fn publish(
    client: &Client,
    node: &str,
    devices: Vec<Device>,
    last: &mut Published,
) -> Result<bool> {
    if last.devices.as_ref() == Some(&devices) {
        return Ok(false);
    }
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let existing = api.list(&selector(node)).await.context("list ResourceSlices")?;
    let held = existing
        .items
        .iter()
        .map(|s| s.spec.pool.generation)
        .max()
        .unwrap_or(0);
    let generation = last.generation.max(held) + 1;
    let owner = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .with_context(|| format!("node {node}: the slices are owned by it"))?;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: owner.metadata.uid.unwrap_or_default(),
        controller: Some(true),
        ..OwnerReference::default()
    };
    let wanted = slices(node, devices.clone(), generation);
    let pp = PatchParams::apply(MANAGER).force();
    for (name, spec) in &wanted {
        let slice = ResourceSlice {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            spec: spec.clone(),
        };
        let mut body = serde_json::to_value(&slice)?;
        body["apiVersion"] = "resource.k8s.io/v1".into();
        body["kind"] = "ResourceSlice".into();
        api.patch(name, &pp, &Patch::Apply(&body))
            .await
            .with_context(|| format!("apply ResourceSlice {name}"))?;
    }
    // Slices beyond the new count: the scheduler ignores an older generation, but they would
    // linger.
    for old in existing.items {
        let Some(name) = old.metadata.name else { continue };
        if !wanted.iter().any(|(n, _)| n == &name) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("delete ResourceSlice {name}")),
            }
        }
    }
    tracing::info!(
        "ResourceSlices of {node}: {} devices in {} slices, pool generation {generation}",
        devices.len(),
        wanted.len()
    );
    *last = Published {
        devices: Some(devices),
        generation,
    };
    Ok(true)
}

/// Whether the API server keeps consumable capacity on devices (DRAConsumableCapacity: beta and
/// on in 1.36, an alpha gate in 1.34 and 1.35; a server without it drops the fields silently): a
/// server-side dry-run of a slice with a shareable device, its answer read back.
pub async fn serves_consumable_capacity(client: &Client, node: &str) -> bool {
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let probe = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": format!("{node}-{DRIVER}-probe")},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": "probe", "allowMultipleAllocations": true,
                         "capacity": {"slots": {"value": "1"}}}]
        }
    });
    let Ok(probe) = serde_json::from_value::<ResourceSlice>(probe) else {
        return false;
    };
    let pp = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&pp, &probe).await {
        Ok(back) => back
            .spec
            .devices
            .iter()
            .flatten()
            .any(|d| d.allow_multiple_allocations == Some(true)),
        Err(e) => {
            tracing::warn!(
                "DRA: could not tell whether the API server serves consumable capacity ({e}); using slots"
            );
            false
        }
    }
}

/// Whether the API server still holds the slices last published (any error: assume so).
async fn still_published(client: &Client, node: &str, last: &Published) -> bool {
    let api: Api<ResourceSlice> = Api::all(client.clone());
    match api.list(&selector(node)).await {
        // A newer generation is another writer's (an agent's successor): not gone.
        Ok(list) => {
            !list.items.is_empty()
                && list
                    .items
                    .iter()
                    .all(|s| s.spec.pool.generation >= last.generation)
        }
        Err(_) => true,
    }
}

/// Keeps the node's slices current: a scan (the devices to offer, `None` to leave the slices
/// as they are) every `every` and at once on `wake` (link and device
/// events); a failed write is tried again next round. On `republish` (kubelet registered the
/// plugin: a kubelet that starts deletes the node's slices) the slices are written again even
/// if the devices did not change.
pub async fn keep_current(
    client: Client,
    node: String,
    scan: impl Fn() -> Option<Vec<Device>> + Send + Sync + Clone + 'static,
    every: Duration,
    wake: Arc<Notify>,
    republish: Arc<Notify>,
) {
    let mut last = Published::default();
    let mut checked = tokio::time::Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        // Someone else (kubelet at its start, an operator) may delete the slices: look now and
        // then, and write them again when they are gone.
        if last.devices.is_some() && checked.elapsed() >= CHECK_EVERY {
            checked = tokio::time::Instant::now();
            if !still_published(&client, &node, &last).await {
                tracing::info!("ResourceSlices of {node}: gone from the API server, publishing again");
                last.devices = None;
            }
        }
        let scan = scan.clone();
        match tokio::task::spawn_blocking(scan).await {
            Ok(Some(devices)) => match publish(&client, &node, devices, &mut last).await {
                // The same failure every second (no Node object yet, no RBAC) is said once.
                Err(e) => {
                    let e = format!("{e:#}");
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!("ResourceSlices of {node}: {e} (tried again every round)");
                    }
                    last_error = Some(e);
                }
                Ok(_) => {
                    if last_error.take().is_some() {
                        tracing::info!("ResourceSlices of {node}: published again");
                    }
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("inventory scan: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = republish.notified() => last.devices = None,
        }
    }
}
