//! IP garbage collection and pool status counts. An address goes back to its pool when its pod is
//! gone, when a pod of the same name but another UID holds the name, when its pod finished
//! (Succeeded/Failed), or when its pod has been terminating past its grace period. A StatefulSet
//! pod's address is kept while the StatefulSet still wants that ordinal, so a recreated pod gets
//! it back; it is released once the StatefulSet is gone or scaled below the ordinal. When such a
//! pod comes back on another node, its new node's agent adds its own entry for the address and
//! may not remove the old node's (see `Allocations`); the stale one goes here.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use spiderpool_api::crd::{IPPoolStatus, PoolIPAllocation, SpiderEndpoint, SpiderIPPool, SpiderReservedIP};
use spiderpool_ipam::cluster::{pool_of, reserved_set};
use spiderpool_ipam::range::IpSet;

use crate::api_err;
use crate::metrics::Metrics;

mod claims;
mod rules;
pub use rules::{World, list_all, release_reason, world_for_tests};

/// Grace on top of a pod's own termination grace period before its address is taken back.
pub const TERMINATING_MARGIN_SECS: i64 = 30;

/// The error of this module's calls.
pub type GcError = crate::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// `pool/ip (reason)` for every address released.
    pub released: Vec<String>,
    pub endpoints_deleted: usize,
    pub pools_recounted: usize,
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
    let claims = claims::list(client).await?;
    let world = World::read(client).await?;
    let reserved_api: Api<SpiderReservedIP> = Api::all(client.clone());
    let reserved = reserved_api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderReservedIPs"))?;
    let reserved = reserved_set(&reserved.items);
    let mut report = GcReport::default();
    let claimed = claims::collect(client, claims, &world, &mut report).await?;
    for pool in list.items {
        let name = pool.name_any();
        let claimed = claimed.get(&name).copied().unwrap_or(0);
        if let Some((allocated, total)) =
            gc_pool(client, &pools, pool, &world, &reserved, claimed, &mut report).await?
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
    claimed: i64,
    report: &mut GcReport,
) -> Result<Option<(i64, i64)>, GcError> {
    // Answers the pool's allocated and total counts as they stand after the round (`None` when
    // the pool is gone, unreadable or kept conflicting), for the metrics without another read.
    let name = pool.name_any();
    // Entries to release, decided once (snapshot, then a live read of each candidate's pod).
    // A rewrite after a conflict releases only these, and only if they are unchanged.
    let mut doomed: Vec<(String, PoolIPAllocation, &'static str)> = Vec::new();
    if let Ok(stored) = pool.status.clone().unwrap_or_default().allocations() {
        let mut by_ip: BTreeMap<&String, Vec<&PoolIPAllocation>> = BTreeMap::new();
        for (ip, entry) in stored.entries() {
            if entry.is_spare() {
                // Set aside for a node by an agent from before SpiderIPClaims: no agent gives
                // it back now.
                doomed.push((ip.clone(), entry.clone(), "a spare of an agent before claims"));
            } else {
                by_ip.entry(ip).or_default().push(entry);
            }
        }
        for (ip, holders) in &by_ip {
            for entry in holders {
                let reason = if world.release_reason(entry).is_some() {
                    world.confirm(client, entry).await?
                } else if holders.len() > 1 && world.stale_duplicate(entry, holders) {
                    world.confirm_duplicate(client, entry, holders).await?
                } else {
                    None
                };
                if let Some(reason) = reason {
                    doomed.push(((*ip).clone(), (*entry).clone(), reason));
                }
            }
        }
    }
    for _attempt in 0..20 {
        let status = pool.status.clone().unwrap_or_default();
        let Ok(stored) = status.allocations() else {
            tracing::warn!(pool = %name, "status.allocatedIPsByNode is not readable; left alone");
            return Ok(None);
        };
        let mut after = stored.clone();
        let mut released = Vec::new();
        for (ip, entry, reason) in &doomed {
            if after.remove(entry.node.as_deref().unwrap_or_default(), ip, entry) {
                released.push(format!("{name}/{ip} ({}: {reason})", entry.pod));
            }
        }
        let total = total_of(&pool, reserved);
        // The pool's SpiderIPClaims (as the round began) count with the holders in its status.
        let count = i64::try_from(after.count())
            .unwrap_or(i64::MAX)
            .saturating_add(claimed);
        let recount =
            status.allocated_ip_count != Some(count) || (total.is_some() && status.total_ip_count != total);
        let counts = (count, total.or(status.total_ip_count).unwrap_or(0));
        if released.is_empty() && !recount {
            return Ok(Some(counts));
        }
        let mut patch = IPPoolStatus::guarded_patch(
            pool.metadata.resource_version.as_deref(),
            &stored,
            &after,
            total.or(status.total_ip_count),
        );
        patch["status"]["allocatedIPCount"] = serde_json::json!(count);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
