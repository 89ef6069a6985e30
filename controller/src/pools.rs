//! SpiderIPPool registration, seen from the cluster: every pool registered as soon as it appears
//! (agents register on first use too, so pools work without the controller, but only the
//! controller tells a user why a pool is not in use), its `Ready` condition written, the
//! `spiderpool.spidernet.io` finalizer that keeps a pool holding addresses from disappearing, and
//! registry entries dropped once their pool is gone. The registry's rules are in
//! `spiderpool_ipam::cluster::registry`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::runtime::{WatchStreamExt, watcher};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spiderpool_api::crd::claim::{self, SpiderIPClaim};
use spiderpool_api::crd::{
    IPPoolRegistrySpec, PoolCondition, SpiderEndpoint, SpiderIPPool, SpiderIPPoolRegistry, registry_name,
};
use spiderpool_ipam::cluster::register::{self, Outcome};
use spiderpool_ipam::cluster::registry::{self, is_registered};

use crate::api_err;
use crate::leader::Leadership;

/// Spiderpool's pool finalizer: removed once a deleted pool holds no address.
pub const FINALIZER: &str = "spiderpool.spidernet.io";

/// The error of this module's calls.
pub type PoolsError = crate::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolsReport {
    /// Pools registered (or found registered) at their generation.
    pub ready: usize,
    /// `pool: reason` of every pool that is not.
    pub not_ready: Vec<String>,
    pub finalizers_removed: usize,
    pub entries_pruned: usize,
}

/// The `Ready` condition a pool should carry.
fn condition(generation: i64, verdict: &Result<(), (String, String)>) -> PoolCondition {
    let (status, reason, message) = match verdict {
        Ok(()) => ("True", "Registered".to_string(), String::new()),
        Err((reason, message)) => ("False", reason.clone(), message.clone()),
    };
    PoolCondition {
        type_: "Ready".into(),
        status: status.into(),
        reason,
        message,
        observed_generation: Some(generation),
        last_transition_time: None,
    }
}

/// One pass over every pool.
pub async fn run_once(client: &Client) -> Result<PoolsReport, PoolsError> {
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let registries: Api<SpiderIPPoolRegistry> = Api::all(client.clone());
    let mut report = PoolsReport::default();
    let mut list = pools
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderIPPools"))?
        .items;
    // The registry lets in whoever writes first; oldest first keeps that the pool created first.
    list.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
    let mut known: HashMap<&'static str, IPPoolRegistrySpec> = HashMap::new();
    for family in [4u8, 6] {
        let name = registry_name(family);
        let spec = registries
            .get_opt(name)
            .await
            .map_err(api_err(format!("SpiderIPPoolRegistry {name}")))?
            .map(|r| r.spec)
            .unwrap_or_default();
        known.insert(name, spec);
    }
    for pool in &list {
        let name = pool.name_any();
        if pool.metadata.deletion_timestamp.is_some() {
            if release_finalizer(&pools, pool).await? {
                report.finalizers_removed += 1;
            }
            continue;
        }
        let Some(pool) = ensure_finalizer(&pools, pool).await? else {
            continue;
        };
        let generation = pool.metadata.generation.unwrap_or(0);
        let verdict = match registry::candidate_of(&pool) {
            Err(why) => Err(("InvalidSpec".to_string(), why)),
            Ok(cand) => {
                let family = registry_name(cand.family.number());
                if known
                    .get(family)
                    .is_some_and(|spec| is_registered(spec, &cand.uid, cand.generation))
                {
                    Ok(())
                } else {
                    match register::register(&registries, &cand).await {
                        Ok(Outcome::Registered) => Ok(()),
                        Ok(Outcome::Refused(why)) => Err(("Overlap".to_string(), why)),
                        Err(e) => {
                            tracing::warn!(pool = %name, "registration: {e}");
                            continue;
                        }
                    }
                }
            }
        };
        match &verdict {
            Ok(()) => report.ready += 1,
            Err((_, why)) => report.not_ready.push(format!("{name}: {why}")),
        }
        write_condition(&pools, &pool, condition(generation, &verdict)).await?;
    }
    let listed: HashSet<String> = list.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    report.entries_pruned = prune(client, &registries, &listed).await?;
    Ok(report)
}

/// Adds the finalizer (guarded by the read's resourceVersion); the pool as written, or `None`
/// when it changed meanwhile (the next pass takes it).
async fn ensure_finalizer(
    pools: &Api<SpiderIPPool>,
    pool: &SpiderIPPool,
) -> Result<Option<SpiderIPPool>, PoolsError> {
    if pool.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Some(pool.clone()));
    }
    let mut finalizers = pool.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({"metadata": {"resourceVersion": pool.resource_version(), "finalizers": finalizers}});
    match pools
        .patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(p) => Ok(Some(p)),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
        Err(e) => Err(api_err(format!("SpiderIPPool {}", pool.name_any()))(e)),
    }
}

/// Removes the finalizer of a deleted pool that holds no address; `true` when it did.
async fn release_finalizer(pools: &Api<SpiderIPPool>, pool: &SpiderIPPool) -> Result<bool, PoolsError> {
    if !pool.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(false);
    }
    let held = pool
        .status
        .as_ref()
        .map(|s| s.allocations().map(|a| a.entries().count()).unwrap_or(1))
        .unwrap_or(0);
    if held > 0 {
        return Ok(false);
    }
    // Nor while a SpiderIPClaim of it is left (a claim created after this list is one of a
    // pod admitted before the pool was marked deleted; the agent's claim of a terminating pool
    // answers only what a pod holds already).
    let claims: Api<SpiderIPClaim> = Api::all(pools.clone().into_client());
    let left = claims
        .list_metadata(
            &ListParams::default()
                .fields(&claim::of_pool(&pool.name_any()))
                .limit(1),
        )
        .await
        .map_err(api_err(format!("SpiderIPClaims of pool {}", pool.name_any())))?;
    if !left.items.is_empty() {
        return Ok(false);
    }
    let finalizers: Vec<&String> = pool.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    // Guarded: an address written after our read keeps the finalizer.
    let patch = json!({"metadata": {"resourceVersion": pool.resource_version(), "finalizers": finalizers}});
    match pools
        .patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(e) => Err(api_err(format!("SpiderIPPool {}", pool.name_any()))(e)),
    }
}

/// Writes `Ready` when it differs from what the pool carries.
async fn write_condition(
    pools: &Api<SpiderIPPool>,
    pool: &SpiderIPPool,
    mut want: PoolCondition,
) -> Result<(), PoolsError> {
    let current = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let same = |c: &PoolCondition| {
        c.status == want.status
            && c.reason == want.reason
            && c.message == want.message
            && c.observed_generation == want.observed_generation
    };
    if current.is_some_and(same) {
        return Ok(());
    }
    want.last_transition_time = match current {
        Some(c) if c.status == want.status => c.last_transition_time.clone(),
        _ => Some(Timestamp::now().to_string()),
    };
    let patch = json!({"status": {"conditions": [want]}});
    match pools
        .patch_status(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(format!("SpiderIPPool {} status", pool.name_any()))(e)),
    }
}

/// Drops the registry entries of pools that are gone and that no SpiderEndpoint still names (a
/// pool deleted before it had the finalizer may have left pods holding its addresses). An entry
/// whose pool was not in the pass's list (`listed` UIDs) is read once more, so a pool created
/// after the list is never taken for gone.
async fn prune(
    client: &Client,
    registries: &Api<SpiderIPPoolRegistry>,
    listed: &HashSet<String>,
) -> Result<usize, PoolsError> {
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let mut pruned = 0;
    for family in [4u8, 6] {
        let name = registry_name(family);
        let Some(current) = registries
            .get_opt(name)
            .await
            .map_err(api_err(format!("SpiderIPPoolRegistry {name}")))?
        else {
            continue;
        };
        let mut gone = HashSet::new();
        for entry in current.spec.pools.iter().filter(|e| !listed.contains(&e.uid)) {
            let live = pools
                .get_opt(&entry.name)
                .await
                .map_err(api_err(format!("SpiderIPPool {}", entry.name)))?;
            if live.is_none_or(|p| p.metadata.uid.as_deref() != Some(entry.uid.as_str())) {
                gone.insert(entry.uid.clone());
            }
        }
        if gone.is_empty() {
            continue;
        }
        let named = pools_named_by_endpoints(client).await?;
        let Some(spec) = registry::prune(&current.spec, |p| {
            !gone.contains(&p.uid) || named.contains(&p.name)
        }) else {
            continue;
        };
        let dropped = current.spec.pools.len() - spec.pools.len();
        match register::write(registries, name, Some(current), spec).await {
            Ok(()) => pruned += dropped,
            // Changed meanwhile: the next pass looks again.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_err(format!("SpiderIPPoolRegistry {name}"))(e)),
        }
    }
    Ok(pruned)
}

async fn pools_named_by_endpoints(client: &Client) -> Result<HashSet<String>, PoolsError> {
    let endpoints: Api<SpiderEndpoint> = Api::all(client.clone());
    let list = endpoints
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderEndpoints"))?;
    Ok(list
        .items
        .iter()
        .filter_map(|e| e.status.as_ref())
        .flat_map(|s| s.current.ips.iter())
        .flat_map(|d| [d.ipv4_pool.clone(), d.ipv6_pool.clone()])
        .flatten()
        .collect())
}

/// Runs a pass whenever a pool appears, goes, has its spec edited or is marked for deletion (and
/// every `every`) while `leading` says this replica leads. Not on status writes: the agents write
/// a pool's status with every batch of allocations, and none of those changes a registration (a
/// deleted pool emptied by them loses its finalizer on the periodic pass).
pub async fn run(client: Client, leadership: Leadership, every: Duration) {
    let mut gained = leadership.watch();
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut seen: HashMap<String, (i64, bool)> = HashMap::new();
    loop {
        let wake = tokio::select! {
            event = events.next() => matters(&mut seen, event),
            () = tokio::time::sleep(every) => true,
            () = gained.gained() => true,
        };
        // A burst of pool events makes one pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut wake = wake;
        while let Some(event) = events.next().now_or_never() {
            wake |= matters(&mut seen, event);
        }
        if !wake || !leadership.leading() {
            continue;
        }
        match run_once(&client).await {
            Ok(r) => {
                for why in &r.not_ready {
                    tracing::info!("pool not in use: {why}");
                }
            }
            Err(e) => tracing::warn!("pool registration: {e}"),
        }
    }
}

/// Whether a watch event changes what registration depends on: a pool's UID, generation or
/// deletion mark (`seen` keeps them by UID).
fn matters(
    seen: &mut HashMap<String, (i64, bool)>,
    event: Option<Result<watcher::Event<SpiderIPPool>, watcher::Error>>,
) -> bool {
    let key = |p: &SpiderIPPool| {
        (
            p.metadata.generation.unwrap_or(0),
            p.metadata.deletion_timestamp.is_some(),
        )
    };
    match event {
        Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            seen.insert(uid, key(&p)) != Some(key(&p))
        }
        Some(Ok(watcher::Event::Delete(p))) => {
            seen.remove(&p.metadata.uid.clone().unwrap_or_default());
            true
        }
        Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => false,
        // A failed watch is retried with backoff; what it missed comes with the relist.
        Some(Err(_)) | None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(uid: &str, generation: i64, deleting: bool) -> SpiderIPPool {
        let mut p: SpiderIPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": "p", "uid": uid, "generation": generation},
            "spec": {"subnet": "10.0.0.0/24"}
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            ));
        }
        p
    }

    #[test]
    fn status_writes_do_not_wake_a_pass_but_new_edited_deleted_pools_do() {
        let mut seen = HashMap::new();
        let apply = |p| Some(Ok(watcher::Event::Apply(p)));
        assert!(matters(&mut seen, apply(pool("a", 1, false))), "a new pool");
        assert!(
            !matters(&mut seen, apply(pool("a", 1, false))),
            "its status written"
        );
        assert!(matters(&mut seen, apply(pool("a", 2, false))), "its spec edited");
        assert!(
            matters(&mut seen, apply(pool("a", 2, true))),
            "marked for deletion"
        );
        assert!(matters(
            &mut seen,
            Some(Ok(watcher::Event::Delete(pool("a", 2, true))))
        ));
        assert!(!matters(&mut seen, Some(Ok(watcher::Event::InitDone))));
    }
}
