//! Each SpiderNetworkNodePolicy's status: how many nodes it matches and how many of those report
//! it applied, pending or failed at its current generation (the agents write their node's part
//! in their SpiderNodeInventory; see `spiderpool_api::policy_status`). Watch-driven, leader only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use spiderpool_api::inventory::SpiderNodeInventory;
use spiderpool_api::policy::SpiderNetworkNodePolicyResource;
use spiderpool_api::policy_status::{APPLIED, FAILED, PolicyStatus};
use spiderpool_daemon::watch::cache_waking;
use tokio::sync::Notify;

use crate::leader::Leadership;

/// Nodes named in `notApplied`, at most.
const NOT_APPLIED_SHOWN: usize = 10;

/// The status of `policy` from the cluster's nodes and the agents' reports.
pub fn status_of<'a>(
    policy: &SpiderNetworkNodePolicyResource,
    nodes: impl IntoIterator<Item = &'a Node>,
    inventories: &BTreeMap<String, &SpiderNodeInventory>,
) -> PolicyStatus {
    let name = policy.name_any();
    let generation = policy.metadata.generation.unwrap_or(0);
    let mut out = PolicyStatus {
        observed_generation: Some(generation),
        ..PolicyStatus::default()
    };
    let no_labels = BTreeMap::new();
    let mut matched: Vec<&Node> = nodes
        .into_iter()
        .filter(|n| {
            policy
                .spec
                .selects_node(n.metadata.labels.as_ref().unwrap_or(&no_labels))
        })
        .collect();
    matched.sort_by_key(|n| n.name_any());
    // Nodes it no longer matches that still report it are removing what it made there.
    out.removing = inventories
        .iter()
        .filter(|(node, inv)| {
            !matched.iter().any(|m| m.name_any() == **node)
                && inv
                    .status
                    .as_ref()
                    .is_some_and(|s| s.policies.contains_key(&name))
        })
        .count() as i64;
    for node in matched {
        out.matched += 1;
        let node_name = node.name_any();
        let state = inventories
            .get(&node_name)
            .and_then(|i| i.status.as_ref())
            .and_then(|s| s.policies.get(&name));
        let (phase, why) = match state {
            None => ("", "no report from the node's agent yet".to_string()),
            Some(s) if s.generation != generation => (
                "",
                format!(
                    "the agent acted on generation {}, not {generation} yet",
                    s.generation
                ),
            ),
            Some(s) => (s.phase.as_str(), s.reason.clone()),
        };
        match phase {
            APPLIED => out.applied += 1,
            FAILED => out.failed += 1,
            _ => out.pending += 1,
        }
        if phase != APPLIED && out.not_applied.len() < NOT_APPLIED_SHOWN {
            out.not_applied.insert(node_name, why);
        }
    }
    out
}

/// A merge patch from `old` to `new`: a merge patch keeps what it does not name, so the nodes
/// no longer in `notApplied` are named with null.
fn status_patch(old: Option<&PolicyStatus>, new: &PolicyStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(new).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        let mut not_applied: serde_json::Map<String, serde_json::Value> = old
            .map(|o| {
                o.not_applied
                    .keys()
                    .map(|k| (k.clone(), serde_json::Value::Null))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &new.not_applied {
            not_applied.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        obj.insert("notApplied".into(), serde_json::Value::Object(not_applied));
    }
    value
}

/// Keeps every policy's status current while `leading`; returns when the process ends.
pub async fn run(client: Client, leadership: Leadership, every: Duration) {
    let mut gained = leadership.watch();
    let wake = Arc::new(Notify::new());
    let policies = cache_waking(
        Api::<SpiderNetworkNodePolicyResource>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let nodes = cache_waking(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let inventories = cache_waking(
        Api::<SpiderNodeInventory>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let api: Api<SpiderNetworkNodePolicyResource> = Api::all(client);
    loop {
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
            () = tokio::time::sleep(every) => {}
            () = gained.gained() => {}
        }
        if !leadership.leading()
            || policies.wait_until_ready().await.is_err()
            || nodes.wait_until_ready().await.is_err()
            || inventories.wait_until_ready().await.is_err()
        {
            continue;
        }
        let invs = inventories.state();
        let by_node: BTreeMap<String, &SpiderNodeInventory> =
            invs.iter().map(|i| (i.name_any(), &**i)).collect();
        let all_nodes = nodes.state();
        for policy in policies.state() {
            let status = status_of(&policy, all_nodes.iter().map(|n| &**n), &by_node);
            if policy.status.as_ref() == Some(&status) {
                continue;
            }
            let patch = serde_json::json!({"status": status_patch(policy.status.as_ref(), &status)});
            if let Err(e) = api
                .patch_status(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!("SpiderNetworkNodePolicy {} status: {e}", policy.name_any());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn inventory(node: &str, policies: serde_json::Value) -> SpiderNodeInventory {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNodeInventory",
            "metadata": {"name": node}, "spec": {"nodeName": node},
            "status": {"policies": policies}
        }))
        .unwrap()
    }

    #[test]
    fn counts_the_matched_nodes_by_their_report_at_the_current_generation() {
        let policy: SpiderNetworkNodePolicyResource = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetworkNodePolicy",
            "metadata": {"name": "p", "generation": 2}, "spec": {"nodeSelector": {"pool": "gpu"}}
        }))
        .unwrap();
        let nodes = [
            node("a", json!({"pool": "gpu"})),
            node("b", json!({"pool": "gpu"})),
            node("c", json!({"pool": "gpu"})),
            node("d", json!({"pool": "gpu"})),
            node("e", json!({"pool": "gpu"})),
            node("x", json!({"pool": "cpu"})),
        ];
        let invs = [
            inventory("a", json!({"p": {"generation": 2, "phase": "Applied"}})),
            inventory(
                "b",
                json!({"p": {"generation": 2, "phase": "Failed", "reason": "pf x: EIO"}}),
            ),
            inventory("c", json!({"p": {"generation": 1, "phase": "Applied"}})),
            inventory(
                "d",
                json!({"p": {"generation": 2, "phase": "Pending", "reason": "VF in use"}}),
            ),
            // x no longer matches and still removes what p made there.
            inventory(
                "x",
                json!({"p": {"generation": 2, "phase": "Removing", "reason": "bond0 in use"}}),
            ),
        ];
        let by_node = invs.iter().map(|i| (i.name_any(), i)).collect();
        let got = status_of(&policy, &nodes, &by_node);
        assert_eq!((got.matched, got.applied, got.pending, got.failed), (5, 1, 3, 1));
        assert_eq!(got.removing, 1);
        assert_eq!(got.observed_generation, Some(2));
        assert_eq!(got.not_applied["b"], "pf x: EIO");
        assert_eq!(got.not_applied["c"], "the agent acted on generation 1, not 2 yet");
        assert_eq!(got.not_applied["e"], "no report from the node's agent yet");
        assert!(!got.not_applied.contains_key("x"));

        // The next patch clears what is no longer so.
        let now = PolicyStatus {
            not_applied: BTreeMap::from([("e".to_string(), "no report".to_string())]),
            ..PolicyStatus::default()
        };
        let patch = status_patch(Some(&got), &now);
        assert_eq!(patch["notApplied"]["b"], serde_json::Value::Null);
        assert_eq!(patch["notApplied"]["e"], "no report");
        assert_eq!(patch["removing"], 0);
    }
}
