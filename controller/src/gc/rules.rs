//! The release rules: which addresses a garbage-collection round gives back, decided on a
//! snapshot of pods, StatefulSets and nodes, and confirmed on live reads.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use spiderpool_api::crd::PoolIPAllocation;

use super::{GcError, TERMINATING_MARGIN_SECS};
use crate::api_err;

/// Objects per page of a list: a cluster of 100,000 pods is read in pieces the API server serves
/// from its cache, not as one response.
const PAGE: u32 = 500;

/// Every object of `api`, page by page.
pub async fn list_all<K>(api: &Api<K>, what: &str) -> Result<Vec<K>, GcError>
where
    K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(api_err(what))?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Whether the node's kubelet reports `Ready: True`.
fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// What the cluster says about pods and StatefulSets at the start of a round.
pub struct World {
    pods: HashMap<String, Pod>,
    stateful_sets: HashMap<String, StatefulSet>,
    /// Node name → whether its kubelet reports Ready.
    nodes: HashMap<String, bool>,
    now: Timestamp,
}

impl World {
    pub async fn read(client: &Client) -> Result<World, GcError> {
        let pods: Vec<Pod> = list_all(&Api::all(client.clone()), "list pods").await?;
        let sets: Vec<StatefulSet> = list_all(&Api::all(client.clone()), "list StatefulSets").await?;
        let nodes: Vec<Node> = list_all(&Api::all(client.clone()), "list nodes").await?;
        Ok(World::of(pods, sets, nodes, Timestamp::now()))
    }

    pub fn of(pods: Vec<Pod>, stateful_sets: Vec<StatefulSet>, nodes: Vec<Node>, now: Timestamp) -> World {
        let key = |ns: Option<String>, name: String| format!("{}/{name}", ns.unwrap_or_default());
        World {
            pods: pods
                .into_iter()
                .map(|p| (key(p.namespace(), p.name_any()), p))
                .collect(),
            stateful_sets: stateful_sets
                .into_iter()
                .map(|s| (key(s.namespace(), s.name_any()), s))
                .collect(),
            nodes: nodes.iter().map(|n| (n.name_any(), node_ready(n))).collect(),
            now,
        }
    }

    /// Why `entry`'s address should be released, or `None` to keep it, by this snapshot.
    pub fn release_reason(&self, entry: &PoolIPAllocation) -> Option<&'static str> {
        let pod = self.pods.get(&entry.pod);
        let set = entry.owner_stateful_set.as_ref().and_then(|sts| {
            let ns = entry.pod.split_once('/').map_or("", |(ns, _)| ns);
            self.stateful_sets.get(&format!("{ns}/{sts}"))
        });
        let node = pod
            .and_then(|p| p.spec.as_ref()?.node_name.as_deref())
            .map(|n| self.nodes.get(n).copied());
        release_reason(entry, pod, set, node, self.now)
    }

    /// Whether `entry`, one of several `holders` of one address, is the stale one: its pod now
    /// runs under another UID that another holder of the address already names (a StatefulSet
    /// pod that came back on another node and kept its address).
    pub fn stale_duplicate(&self, entry: &PoolIPAllocation, holders: &[&PoolIPAllocation]) -> bool {
        let live = self.pods.get(&entry.pod).and_then(|p| p.metadata.uid.as_deref());
        stale_duplicate(entry, holders, live)
    }

    /// [`World::stale_duplicate`] on a fresh read of the pod.
    pub async fn confirm_duplicate(
        &self,
        client: &Client,
        entry: &PoolIPAllocation,
        holders: &[&PoolIPAllocation],
    ) -> Result<Option<&'static str>, GcError> {
        let pod = live_pod(client, entry).await?;
        let live = pod.as_ref().and_then(|p| p.metadata.uid.as_deref());
        Ok(
            stale_duplicate(entry, holders, live)
                .then_some("its pod holds the address again on another node"),
        )
    }

    /// The same decision on fresh reads of the pod and its StatefulSet: a snapshot taken before
    /// an allocation cannot see that allocation's pod, so every release is confirmed live.
    pub async fn confirm(
        &self,
        client: &Client,
        entry: &PoolIPAllocation,
    ) -> Result<Option<&'static str>, GcError> {
        let ns = entry.pod.split_once('/').map_or("", |(ns, _)| ns);
        let pod = live_pod(client, entry).await?;
        let set = match &entry.owner_stateful_set {
            Some(sts) => {
                let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
                sets.get_opt(sts)
                    .await
                    .map_err(api_err(format!("get StatefulSet {ns}/{sts}")))?
            }
            None => None,
        };
        let node = match pod.as_ref().and_then(|p| p.spec.as_ref()?.node_name.clone()) {
            Some(name) => {
                let nodes: Api<Node> = Api::all(client.clone());
                let node = nodes
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("get node {name}")))?;
                Some(node.as_ref().map(node_ready))
            }
            None => None,
        };
        Ok(release_reason(
            entry,
            pod.as_ref(),
            set.as_ref(),
            node,
            Timestamp::now(),
        ))
    }
}

/// The pod `entry` names, read now.
async fn live_pod(client: &Client, entry: &PoolIPAllocation) -> Result<Option<Pod>, GcError> {
    let (ns, name) = entry.pod.split_once('/').unwrap_or(("", entry.pod.as_str()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.get_opt(name)
        .await
        .map_err(api_err(format!("get pod {}", entry.pod)))
}

/// The rule of [`World::stale_duplicate`], `live`: the UID of the pod named by `entry` now.
fn stale_duplicate(entry: &PoolIPAllocation, holders: &[&PoolIPAllocation], live: Option<&str>) -> bool {
    let Some(live) = live else { return false };
    entry.pod_uid != live
        && holders
            .iter()
            .any(|h| h.pod == entry.pod && h.pod_uid == live && h.node != entry.node)
}

/// The release rules on one entry, its pod (if it exists), its StatefulSet (if any) and the pod's
/// node: `None` when the pod names no node, `Some(None)` when that node object is gone,
/// `Some(Some(ready))` otherwise.
pub fn release_reason(
    entry: &PoolIPAllocation,
    pod: Option<&Pod>,
    set: Option<&StatefulSet>,
    node: Option<Option<bool>>,
    now: Timestamp,
) -> Option<&'static str> {
    {
        if entry.owner_stateful_set.is_some() {
            return match pod {
                // The live pod, or its successor under the same name: the address follows the name.
                Some(_) => None,
                None if set.is_some_and(|s| stateful_set_wants(s, &entry.pod)) => None,
                None => Some("StatefulSet no longer has this pod"),
            };
        }
        let Some(pod) = pod else {
            return Some("pod is gone");
        };
        if pod.metadata.uid.as_deref() != Some(entry.pod_uid.as_str()) {
            return Some("pod was replaced (another UID)");
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Some("pod finished");
        }
        if let Some(deleted) = &pod.metadata.deletion_timestamp {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30);
            // The grace period is the user's number: no overflow, however large.
            let deadline = deleted
                .0
                .as_second()
                .saturating_add(grace.max(0))
                .saturating_add(TERMINATING_MARGIN_SECS);
            if now.as_second() <= deadline {
                return None;
            }
            // Past its grace, a pod whose kubelet is alive would be gone; one on a node that does
            // not report Ready may still run there (a partition): its address stays until the pod
            // object goes.
            return match node {
                Some(Some(false)) => None,
                _ => Some("pod stuck terminating past its grace period"),
            };
        }
        None
    }
}

/// `ns/name-<ordinal>` is still wanted by `set`.
fn stateful_set_wants(set: &StatefulSet, pod: &str) -> bool {
    {
        let sts = set.metadata.name.as_deref().unwrap_or_default();
        let name = pod.split_once('/').map_or(pod, |(_, n)| n);
        if set.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let start = set
            .spec
            .as_ref()
            .and_then(|s| s.ordinals.as_ref())
            .and_then(|o| o.start)
            .unwrap_or(0);
        let Some(ordinal) = name
            .strip_prefix(sts)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            return false;
        };
        ordinal >= start && ordinal < start + replicas
    }
}

/// For tests of the release rules without an API server.
pub fn world_for_tests(pods: Vec<Pod>, stateful_sets: Vec<StatefulSet>, now: Timestamp) -> World {
    World::of(pods, stateful_sets, Vec::new(), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, uid: &str, extra: serde_json::Value) -> Pod {
        let mut v =
            json!({"metadata": {"name": name, "namespace": "ns", "uid": uid}, "spec": {"containers": []}});
        if let (Some(m), Some(e)) = (
            v["metadata"].as_object_mut(),
            extra.get("metadata").and_then(|m| m.as_object()),
        ) {
            for (k, x) in e {
                m.insert(k.clone(), x.clone());
            }
        }
        if let Some(st) = extra.get("status") {
            v["status"] = st.clone();
        }
        if let Some(node) = extra.get("node") {
            v["spec"]["nodeName"] = node.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn entry(pod: &str, uid: &str, sts: Option<&str>) -> PoolIPAllocation {
        PoolIPAllocation {
            pod: format!("ns/{pod}"),
            pod_uid: uid.into(),
            owner_stateful_set: sts.map(str::to_string),
            ..PoolIPAllocation::default()
        }
    }

    fn sts(name: &str, replicas: i32) -> StatefulSet {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"replicas": replicas, "selector": {}, "serviceName": "s", "template": {}}})).unwrap()
    }

    #[test]
    fn release_rules() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let w = world_for_tests(
            vec![
                pod("live", "u1", json!({})),
                pod("done", "u2", json!({"status": {"phase": "Succeeded"}})),
                pod(
                    "stuck",
                    "u3",
                    json!({"metadata": {"deletionTimestamp": "2026-11-23T11:00:00Z", "deletionGracePeriodSeconds": 30}}),
                ),
                pod(
                    "leaving",
                    "u4",
                    json!({"metadata": {"deletionTimestamp": "2026-11-23T11:59:50Z", "deletionGracePeriodSeconds": 30}}),
                ),
            ],
            vec![sts("web", 2)],
            now,
        );
        assert_eq!(w.release_reason(&entry("live", "u1", None)), None);
        assert_eq!(
            w.release_reason(&entry("live", "old", None)),
            Some("pod was replaced (another UID)")
        );
        assert_eq!(w.release_reason(&entry("gone", "u9", None)), Some("pod is gone"));
        assert_eq!(w.release_reason(&entry("done", "u2", None)), Some("pod finished"));
        assert_eq!(
            w.release_reason(&entry("stuck", "u3", None)),
            Some("pod stuck terminating past its grace period")
        );
        assert_eq!(w.release_reason(&entry("leaving", "u4", None)), None);
        // StatefulSet pods: kept while the set wants the ordinal, even with no pod object.
        assert_eq!(w.release_reason(&entry("web-1", "u5", Some("web"))), None);
        assert_eq!(
            w.release_reason(&entry("web-2", "u6", Some("web"))),
            Some("StatefulSet no longer has this pod")
        );
        assert_eq!(
            w.release_reason(&entry("db-0", "u7", Some("db"))),
            Some("StatefulSet no longer has this pod")
        );
    }

    fn node(name: &str, ready: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
        .unwrap()
    }

    /// Past its grace period a terminating pod's address goes back only when its node's kubelet
    /// is alive (Ready) or the node is gone: on a partitioned node the pod may still run.
    #[test]
    fn a_pod_stuck_terminating_on_a_node_that_is_not_ready_keeps_its_address() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let stuck = |name: &str, node_name: &str, grace: i64| {
            pod(
                name,
                name,
                json!({"metadata": {"deletionTimestamp": "2026-11-23T11:00:00Z", "deletionGracePeriodSeconds": grace},
                       "node": node_name}),
            )
        };
        let w = World::of(
            vec![
                stuck("on-ready", "n-ready", 30),
                stuck("on-lost", "n-lost", 30),
                stuck("on-unknown", "n-unknown", 30),
                stuck("on-gone", "n-gone", 30),
                stuck("forever", "n-ready", i64::MAX),
                stuck("negative", "n-ready", i64::MIN),
            ],
            Vec::new(),
            vec![
                node("n-ready", "True"),
                node("n-lost", "False"),
                node("n-unknown", "Unknown"),
            ],
            now,
        );
        let reason = |name: &str| w.release_reason(&entry(name, name, None));
        assert_eq!(
            reason("on-ready"),
            Some("pod stuck terminating past its grace period")
        );
        assert_eq!(reason("on-lost"), None);
        assert_eq!(reason("on-unknown"), None);
        assert_eq!(
            reason("on-gone"),
            Some("pod stuck terminating past its grace period")
        );
        assert_eq!(reason("forever"), None, "a huge grace period does not overflow");
        assert_eq!(
            reason("negative"),
            Some("pod stuck terminating past its grace period")
        );
    }

    #[test]
    fn a_stale_duplicate_is_the_entry_whose_pod_came_back_elsewhere() {
        let mut old = entry("web-0", "u-old", Some("web"));
        old.node = Some("n1".into());
        let mut new = entry("web-0", "u-new", Some("web"));
        new.node = Some("n2".into());
        let holders = [&old, &new];
        assert!(stale_duplicate(&old, &holders, Some("u-new")));
        assert!(!stale_duplicate(&new, &holders, Some("u-new")));
        // Before the pod is back (or when it is gone) neither goes by this rule.
        assert!(!stale_duplicate(&old, &holders, None));
        // Two different pods on one address (a forged entry): this rule keeps both.
        let other = entry("db-0", "u-db", None);
        assert!(!stale_duplicate(&other, &[&other, &new], Some("u-db")));
    }
}
