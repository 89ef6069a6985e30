//! The node's inventory as its SpiderNodeInventory object.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use spiderpool_api::inventory::{Inventory, NodeInventorySpec, SpiderNodeInventory};
use tokio::sync::Notify;

/// Scans the node and reports it every `interval`, and soon after `wake` (link and device events),
/// forever; failures are logged and retried at the next round.
pub async fn every(client: Client, node: String, sysfs_root: PathBuf, interval: Duration, wake: Arc<Notify>) {
    let mut last: Option<Inventory> = None;
    let mut woken = false;
    loop {
        let root = sysfs_root.clone();
        match tokio::task::spawn_blocking(move || crate::node::scan_node(&root)).await {
            // Woken by an event: write only what changed (pods' veths come and go all day).
            Ok(inv) if woken && last.as_ref() == Some(&inv) => {}
            Ok(inv) => match report(&client, &node, &inv).await {
                Ok(()) => last = Some(inv),
                Err(e) => tracing::warn!("SpiderNodeInventory {node}: {e}"),
            },
            Err(e) => tracing::warn!("inventory scan: {e}"),
        }
        woken = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = wake.notified() => {
                // A burst of events (VFs created together) needs one rescan, and a busy node's
                // stream of events no more than two a second.
                tokio::time::sleep(EVENT_SETTLE).await;
                true
            }
        };
    }
}

/// How long after an event the inventory is read again.
const EVENT_SETTLE: Duration = Duration::from_millis(500);

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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spiderpool_testing::sysfs_fixture::SysfsBuilder;

    use super::*;
    use crate::ipam_service::mock_api::MockApi;

    const OBJECT: &str = "/apis/spiderpool.spidernet.io/v2beta1/spidernodeinventories/node-1";

    fn script_one_report(api: &MockApi) {
        let object = json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNodeInventory",
            "metadata": {"name": "node-1"}, "spec": {"nodeName": "node-1"}
        });
        api.reply("PATCH", OBJECT, 200, object.clone()).reply(
            "PATCH",
            &format!("{OBJECT}/status"),
            200,
            object,
        );
    }

    async fn calls_become(api: &MockApi, n: usize) -> usize {
        for _ in 0..100 {
            if api.calls().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        api.calls().len()
    }

    #[tokio::test]
    async fn a_wake_reports_a_change_at_once_and_writes_nothing_when_nothing_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sysfs = SysfsBuilder::new(dir.path()).expect("sysfs");
        sysfs.virtual_netdev("eth0", None).expect("netdev");
        let api = MockApi::new();
        script_one_report(&api);
        script_one_report(&api);
        let wake = Arc::new(Notify::new());
        // An hour between periodic reports: only the wake-ups can explain a second one.
        let reporter = tokio::spawn(every(
            api.client(),
            "node-1".into(),
            dir.path().to_path_buf(),
            Duration::from_secs(3600),
            wake.clone(),
        ));
        assert_eq!(
            calls_become(&api, 2).await,
            2,
            "the first report: {:?}",
            api.calls()
        );

        // An event that changed nothing the inventory shows (a pod's veth): no write.
        wake.notify_one();
        tokio::time::sleep(EVENT_SETTLE + Duration::from_millis(500)).await;
        assert_eq!(
            api.calls().len(),
            2,
            "wrote an unchanged inventory: {:?}",
            api.calls()
        );

        // A bond appears: reported right after the event.
        sysfs
            .bond("bond0", "active-backup", &["eth0"], &[])
            .expect("bond");
        wake.notify_one();
        assert_eq!(calls_become(&api, 4).await, 4, "the change: {:?}", api.calls());
        let seen = api.seen();
        let status = seen[3].body.as_ref().expect("a status body");
        assert_eq!(status["status"]["bonds"][0]["name"], "bond0");
        assert_eq!(api.unused(), 0);
        reporter.abort();
    }
}
