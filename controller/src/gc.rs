//! IP garbage collection and pool status counts. An address goes back to its pool when its pod is
//! gone, when a pod of the same name but another UID holds the name, when its pod finished
//! (Succeeded/Failed), or when its pod has been terminating past its grace period. A StatefulSet
//! pod's address is kept while the StatefulSet still wants that ordinal, so a recreated pod gets
//! it back; it is released once the StatefulSet is gone or scaled below the ordinal.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use spiderpool_api::crd::{IPPoolStatus, PoolIPAllocation, SpiderEndpoint, SpiderIPPool, SpiderReservedIP};
use spiderpool_ipam::cluster::{pool_of, reserved_set};
use spiderpool_ipam::range::IpSet;

use crate::metrics::Metrics;

/// Grace on top of a pod's own termination grace period before its address is taken back.
pub const TERMINATING_MARGIN_SECS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> GcError {
    let what = what.into();
    move |source| GcError::Api { what, source }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// `pool/ip (reason)` for every address released.
    pub released: Vec<String>,
    pub endpoints_deleted: usize,
    pub pools_recounted: usize,
}

/// What the cluster says about pods and StatefulSets at the start of a round.
pub struct World {
    pods: HashMap<String, Pod>,
    stateful_sets: HashMap<String, StatefulSet>,
    now: Timestamp,
}

impl World {
    pub async fn read(client: &Client) -> Result<World, GcError> {
        let pods: Api<Pod> = Api::all(client.clone());
        let sts: Api<StatefulSet> = Api::all(client.clone());
        let pods = pods
            .list(&ListParams::default())
            .await
            .map_err(api_err("list pods"))?;
        let sts = sts
            .list(&ListParams::default())
            .await
            .map_err(api_err("list StatefulSets"))?;
        Ok(World {
            pods: pods
                .items
                .into_iter()
                .map(|p| {
                    (
                        format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                        p,
                    )
                })
                .collect(),
            stateful_sets: sts
                .items
                .into_iter()
                .map(|s| {
                    (
                        format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                        s,
                    )
                })
                .collect(),
            now: Timestamp::now(),
        })
    }

    /// Why `entry`'s address should be released, or `None` to keep it, by this snapshot.
    pub fn release_reason(&self, entry: &PoolIPAllocation) -> Option<&'static str> {
        let pod = self.pods.get(&entry.pod);
        let set = entry.owner_stateful_set.as_ref().and_then(|sts| {
            let ns = entry.pod.split_once('/').map_or("", |(ns, _)| ns);
            self.stateful_sets.get(&format!("{ns}/{sts}"))
        });
        release_reason(entry, pod, set, self.now)
    }

    /// The same decision on fresh reads of the pod and its StatefulSet: a snapshot taken before
    /// an allocation cannot see that allocation's pod, so every release is confirmed live.
    pub async fn confirm(
        &self,
        client: &Client,
        entry: &PoolIPAllocation,
    ) -> Result<Option<&'static str>, GcError> {
        let (ns, name) = entry.pod.split_once('/').unwrap_or(("", entry.pod.as_str()));
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(api_err(format!("get pod {}", entry.pod)))?;
        let set = match &entry.owner_stateful_set {
            Some(sts) => {
                let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
                sets.get_opt(sts)
                    .await
                    .map_err(api_err(format!("get StatefulSet {ns}/{sts}")))?
            }
            None => None,
        };
        Ok(release_reason(
            entry,
            pod.as_ref(),
            set.as_ref(),
            Timestamp::now(),
        ))
    }
}

/// The release rules on one entry, its pod (if it exists) and its StatefulSet (if any).
pub fn release_reason(
    entry: &PoolIPAllocation,
    pod: Option<&Pod>,
    set: Option<&StatefulSet>,
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
            let deadline = deleted.0.as_second() + grace + TERMINATING_MARGIN_SECS;
            if now.as_second() > deadline {
                return Some("pod stuck terminating past its grace period");
            }
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

/// The number of addresses a pool can hand out, or `None` when its spec does not validate.
fn total_of(pool: &SpiderIPPool, reserved: &IpSet) -> Option<i64> {
    let p = pool_of(pool).ok()?;
    i64::try_from(p.available(reserved)).ok()
}

/// One garbage-collection round over every pool and endpoint.
pub async fn run_once(client: &Client, metrics: &Arc<Metrics>) -> Result<GcReport, GcError> {
    // Pools before pods: a pod exists before its address does, so every holder in this list of
    // pools is in the pod snapshot read after it (releases are confirmed live all the same).
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let list = pools
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderIPPools"))?;
    let world = World::read(client).await?;
    let reserved_api: Api<SpiderReservedIP> = Api::all(client.clone());
    let reserved = reserved_api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderReservedIPs"))?;
    let reserved = reserved_set(&reserved.items);
    let mut report = GcReport::default();
    for pool in list.items {
        let name = pool.name_any();
        if let Some((allocated, total)) =
            gc_pool(client, &pools, pool, &world, &reserved, &mut report).await?
        {
            metrics.set_pool(&name, allocated, total);
        }
    }
    report.endpoints_deleted = gc_endpoints(client, &world).await?;
    metrics.released.inc_by(report.released.len() as u64);
    metrics.rounds.inc();
    Ok(report)
}

async fn gc_pool(
    client: &Client,
    api: &Api<SpiderIPPool>,
    mut pool: SpiderIPPool,
    world: &World,
    reserved: &IpSet,
    report: &mut GcReport,
) -> Result<Option<(i64, i64)>, GcError> {
    // Answers the pool's allocated and total counts as they stand after the round (`None` when
    // the pool is gone, unreadable or kept conflicting), for the metrics without another read.
    let name = pool.name_any();
    // Entries to release, decided once (snapshot, then a live read of each candidate's pod).
    // A rewrite after a conflict releases only these, and only if they are unchanged.
    let mut doomed: Vec<(String, PoolIPAllocation, &'static str)> = Vec::new();
    if let Ok(allocated) = pool.status.clone().unwrap_or_default().allocations() {
        for (ip, entry) in allocated {
            if world.release_reason(&entry).is_some()
                && let Some(reason) = world.confirm(client, &entry).await?
            {
                doomed.push((ip, entry, reason));
            }
        }
    }
    for _attempt in 0..20 {
        let status = pool.status.clone().unwrap_or_default();
        let Ok(mut allocated) = status.allocations() else {
            tracing::warn!(pool = %name, "status.allocatedIPs is not readable; left alone");
            return Ok(None);
        };
        let mut released = Vec::new();
        for (ip, entry, reason) in &doomed {
            if allocated.get(ip) == Some(entry) {
                allocated.remove(ip);
                released.push(format!("{name}/{ip} ({}: {reason})", entry.pod));
            }
        }
        let total = total_of(&pool, reserved);
        let count = i64::try_from(allocated.len()).unwrap_or(i64::MAX);
        let recount =
            status.allocated_ip_count != Some(count) || (total.is_some() && status.total_ip_count != total);
        let counts = (count, total.or(status.total_ip_count).unwrap_or(0));
        if released.is_empty() && !recount {
            return Ok(Some(counts));
        }
        let patch = IPPoolStatus::guarded_patch(
            pool.metadata.resource_version.as_deref(),
            &allocated,
            total.or(status.total_ip_count),
        );
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                for r in &released {
                    tracing::info!("released {r}");
                }
                report.released.extend(released);
                if recount {
                    report.pools_recounted += 1;
                }
                return Ok(Some(counts));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // An agent wrote in between: decide again on what it wrote.
                pool = api
                    .get_status(&name)
                    .await
                    .map_err(api_err(format!("get pool {name}")))?;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(api_err(format!("patch pool {name}"))(e)),
        }
    }
    tracing::warn!(pool = %name, "kept conflicting with agents; next round");
    Ok(None)
}

/// Deletes SpiderEndpoints whose pod is gone or replaced (StatefulSet endpoints while the
/// StatefulSet still wants the pod are kept).
async fn gc_endpoints(client: &Client, world: &World) -> Result<usize, GcError> {
    let api: Api<SpiderEndpoint> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderEndpoints"))?;
    let mut deleted = 0;
    for ep in list.items {
        let Some(status) = &ep.status else { continue };
        let ns = ep.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", ep.name_any());
        let sts = (status.owner_controller_type.as_deref() == Some("StatefulSet"))
            .then(|| status.owner_controller_name.clone())
            .flatten();
        let entry = PoolIPAllocation {
            pod: key.clone(),
            pod_uid: status.current.uid.clone(),
            owner_stateful_set: sts,
            ..PoolIPAllocation::default()
        };
        if world.release_reason(&entry).is_none() || world.confirm(client, &entry).await?.is_none() {
            continue;
        }
        let namespaced: Api<SpiderEndpoint> = Api::namespaced(client.clone(), &ns);
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: ep.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match namespaced.delete(&ep.name_any(), &dp).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(api_err(format!("delete SpiderEndpoint {key}"))(e)),
        }
    }
    Ok(deleted)
}

/// For tests of the release rules without an API server.
pub fn world_for_tests(pods: Vec<Pod>, stateful_sets: Vec<StatefulSet>, now: Timestamp) -> World {
    World {
        pods: pods
            .into_iter()
            .map(|p| {
                (
                    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    p,
                )
            })
            .collect(),
        stateful_sets: stateful_sets
            .into_iter()
            .map(|s| {
                (
                    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                    s,
                )
            })
            .collect(),
        now,
    }
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

    #[test]
    fn reserved_addresses_are_not_counted_in_total() {
        let pool: SpiderIPPool = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": "p"}, "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.10-10.0.0.19"]}
        }))
        .unwrap();
        let r: SpiderReservedIP = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
            "metadata": {"name": "r"}, "spec": {"ips": ["10.0.0.18-10.0.0.30"]}
        }))
        .unwrap();
        assert_eq!(total_of(&pool, &reserved_set(&[r])), Some(8));
        assert_eq!(total_of(&pool, &IpSet::default()), Some(10));
    }
}
