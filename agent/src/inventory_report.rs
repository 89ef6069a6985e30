//! The node's inventory as its SpiderNodeInventory object.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use spiderpool_api::inventory::{Inventory, NodeInventorySpec, SpiderNodeInventory};

/// Scans the node and reports it every `interval`, forever; failures are logged and retried at
/// the next round.
pub async fn every(client: Client, node: String, sysfs_root: PathBuf, interval: Duration) {
    loop {
        let root = sysfs_root.clone();
        match tokio::task::spawn_blocking(move || crate::node::scan_node(&root)).await {
            Ok(inv) => {
                if let Err(e) = report(&client, &node, &inv).await {
                    tracing::warn!("SpiderNodeInventory {node}: {e}");
                }
            }
            Err(e) => tracing::warn!("inventory scan: {e}"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Writes `inventory` as the status of the SpiderNodeInventory named `node` (server-side apply:
/// creates it the first time, changes only what changed afterwards).
pub async fn report(client: &Client, node: &str, inventory: &Inventory) -> Result<(), kube::Error> {
    let api: Api<SpiderNodeInventory> = Api::all(client.clone());
    let pp = PatchParams::apply("spiderpool-agent").force();
    ensure_object(client, node).await?;
    let status = serde_json::json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderNodeInventory",
        "status": inventory,
    });
    api.patch_status(node, &pp, &Patch::Apply(&status)).await?;
    Ok(())
}

/// Creates the SpiderNodeInventory named `node` if it is missing (server-side apply of the spec).
pub async fn ensure_object(client: &Client, node: &str) -> Result<(), kube::Error> {
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
    Ok(())
}
