//! One writer task per SpiderIPPool. Every claim and release for that pool in this agent queues
//! here; the task takes everything queued, decides it against one copy of the pool and writes it
//! as one merge patch of `status` (the whole `allocatedIPs` string and the counts) guarded by the
//! copy's resourceVersion. Another agent's write in
//! between makes the API server answer 409; the task then reads the pool again and decides again,
//! so no address is ever given twice, and a burst costs one write per round instead of one per pod.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use spiderpool_api::crd::{IPPoolStatus, PoolIPAllocation, SpiderIPPool};
use spiderpool_ipam::pool::Pool;
use spiderpool_ipam::range::{ip_to_key, key_to_ip};
use tokio::sync::{mpsc, oneshot};

use super::ServiceError;

/// Reserved addresses (all SpiderReservedIP objects), as range keys.
pub type ReservedFn = Arc<dyn Fn() -> HashSet<u128> + Send + Sync>;

/// The newest copy of the pool the agent's watch has delivered, if any.
pub type LatestFn = Arc<dyn Fn() -> Option<Arc<SpiderIPPool>> + Send + Sync>;

/// How long a writer that lost a round waits for the watch to bring the winner's version before
/// it reads the pool itself.
const WATCH_WAIT: Duration = Duration::from_millis(250);

/// What a writer needs besides its queue.
#[derive(Clone)]
pub struct Sources {
    pub api: Api<SpiderIPPool>,
    pub reserved: ReservedFn,
    pub latest: LatestFn,
}

/// What a claim got.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub ip: IpAddr,
    pub pool: Pool,
}

pub enum PoolOp {
    /// An address for `entry`'s pod and interface: the one it already holds, if any (a repeated
    /// ADD, an agent restarted between the pool write and the endpoint write, or a StatefulSet pod
    /// recreated under the same name), else a free one. `None`: the pool has no free address.
    Claim {
        entry: PoolIPAllocation,
        reply: oneshot::Sender<Result<Option<Claimed>, ServiceError>>,
    },
    /// Drops every address held by `pod_uid` on `interface` (all interfaces when `None`).
    /// Answers the addresses released.
    Release {
        pod_uid: String,
        interface: Option<String>,
        reply: oneshot::Sender<Result<Vec<IpAddr>, ServiceError>>,
    },
}

pub fn spawn(sources: Sources, name: String) -> mpsc::UnboundedSender<PoolOp> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(sources, name, rx));
    tx
}

/// The validated pool of a SpiderIPPool object, or why it cannot be used.
pub fn pool_of(obj: &SpiderIPPool) -> Result<Pool, ServiceError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = serde_json::to_value(&obj.spec)
        .map_err(|e| ServiceError::InvalidPool(format!("pool {name}: {e}")))?;
    Pool::from_spec_json(spec, &name).map_err(ServiceError::InvalidPool)
}

async fn run(sources: Sources, name: String, mut rx: mpsc::UnboundedReceiver<PoolOp>) {
    // The last copy written or read, with its decoded allocations; `None` forces a read.
    let mut copy: Option<Copy> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let started = std::time::Instant::now();
        let outcome = decide_and_write(&sources, &name, &mut copy, &mut batch, &mut rx).await;
        tracing::debug!(pool = %name, ops = batch.len(), elapsed_ms = started.elapsed().as_millis() as u64, "batch written");
        answer(batch, outcome);
    }
}

struct Copy {
    pool: SpiderIPPool,
    allocated: BTreeMap<String, PoolIPAllocation>,
}

/// The decision for each op of a batch, in order.
enum Decision {
    Claim(Option<Claimed>),
    Release(Vec<IpAddr>),
}

fn decoded(name: &str, pool: SpiderIPPool) -> Result<Copy, ServiceError> {
    let allocated = pool
        .status
        .clone()
        .unwrap_or_default()
        .allocations()
        .map_err(|e| ServiceError::InvalidPool(format!("pool {name}: status.allocatedIPs: {e}")))?;
    Ok(Copy { pool, allocated })
}

fn version_of(pool: &SpiderIPPool) -> Option<u64> {
    pool.metadata.resource_version.as_deref()?.parse().ok()
}

/// After losing a round at `tried`: the winner's version as the watch delivers it, or `None`
/// when it does not come within [`WATCH_WAIT`] (the caller then reads the pool itself). Saves
/// each losing agent a read of the whole pool per round.
async fn newer_from_watch(latest: &LatestFn, tried: Option<u64>) -> Option<SpiderIPPool> {
    let tried = tried?;
    let deadline = tokio::time::Instant::now() + WATCH_WAIT;
    loop {
        if let Some(p) = latest()
            && version_of(&p).is_some_and(|v| v > tried)
        {
            return Some((*p).clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

async fn decide_and_write(
    sources: &Sources,
    name: &str,
    copy: &mut Option<Copy>,
    batch: &mut Vec<PoolOp>,
    rx: &mut mpsc::UnboundedReceiver<PoolOp>,
) -> Result<Vec<Decision>, ServiceError> {
    let api = &sources.api;
    let mut conflicts = 0u32;
    loop {
        // Everything queued so far rides in this write.
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        let current = match copy.take() {
            Some(c) => c,
            None => {
                let pool = api
                    .get_status(name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, name))?;
                decoded(name, pool)?
            }
        };
        let pool = pool_of(&current.pool)?;
        // A terminating pool hands out nothing new; releases and held addresses still go through.
        let accept_new = current.pool.metadata.deletion_timestamp.is_none();
        let reserved = (sources.reserved)();
        let mut allocated = current.allocated.clone();
        let (decisions, changed) = decide(&mut allocated, &pool, &reserved, batch, accept_new);
        if !changed {
            *copy = Some(current);
            return Ok(decisions);
        }
        let patch = json!({
            "metadata": { "resourceVersion": current.pool.metadata.resource_version },
            "status": {
                "allocatedIPs": IPPoolStatus::encode_allocations(&allocated),
                "allocatedIPCount": allocated.len(),
                "totalIPCount": u64::try_from(pool.available(&reserved)).unwrap_or(u64::MAX),
            }
        });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                *copy = Some(Copy {
                    pool: written,
                    allocated,
                });
                return Ok(decisions);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Another agent wrote first: take its version and decide again.
                conflicts += 1;
                tracing::debug!(pool = %name, conflicts, "resourceVersion conflict");
                if let Some(newer) = newer_from_watch(&sources.latest, version_of(&current.pool)).await {
                    *copy = Some(decoded(name, newer)?);
                }
            }
            Err(e) => return Err(ServiceError::from_kube(e, name)),
        }
    }
}

/// Decides every op of `batch` against `allocated`, updating it; `true` when anything changed.
fn decide(
    allocated: &mut BTreeMap<String, PoolIPAllocation>,
    pool: &Pool,
    reserved: &HashSet<u128>,
    batch: &[PoolOp],
    accept_new: bool,
) -> (Vec<Decision>, bool) {
    let mut changed = false;
    let mut taken: HashSet<u128> = allocated
        .keys()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(ip_to_key)
        .collect();
    let mut decisions = Vec::with_capacity(batch.len());
    let mut cursor: Option<u128> = None;
    for op in batch {
        match op {
            PoolOp::Claim { entry, .. } => {
                let held = allocated.iter().find_map(|(ip, a)| {
                    let same_pod = a.pod_uid == entry.pod_uid
                        || (a.owner_stateful_set.is_some()
                            && a.owner_stateful_set == entry.owner_stateful_set
                            && a.pod == entry.pod);
                    (same_pod && a.interface == entry.interface).then(|| ip.clone())
                });
                let ip = match held {
                    Some(ip) => Some(ip),
                    None if accept_new => {
                        next_free(pool, &taken, reserved, &mut cursor).map(|ip| ip.to_string())
                    }
                    None => None,
                };
                let claimed = ip.and_then(|ip| {
                    let addr: IpAddr = ip.parse().ok()?;
                    if allocated.get(&ip) != Some(entry) {
                        taken.insert(ip_to_key(addr));
                        allocated.insert(ip, entry.clone());
                        changed = true;
                    }
                    Some(Claimed {
                        ip: addr,
                        pool: pool.clone(),
                    })
                });
                decisions.push(Decision::Claim(claimed));
            }
            PoolOp::Release {
                pod_uid, interface, ..
            } => {
                let gone: Vec<String> = allocated
                    .iter()
                    .filter(|(_, a)| {
                        &a.pod_uid == pod_uid && (interface.is_none() || &a.interface == interface)
                    })
                    .map(|(ip, _)| ip.clone())
                    .collect();
                let mut released = Vec::new();
                for ip in gone {
                    allocated.remove(&ip);
                    if let Ok(addr) = ip.parse::<IpAddr>() {
                        taken.remove(&ip_to_key(addr));
                        released.push(addr);
                    }
                    changed = true;
                }
                decisions.push(Decision::Release(released));
            }
        }
    }
    (decisions, changed)
}

/// The lowest free address after `cursor` (addresses found taken move the cursor on, so a batch
/// walks the pool once).
fn next_free(
    pool: &Pool,
    taken: &HashSet<u128>,
    reserved: &HashSet<u128>,
    cursor: &mut Option<u128>,
) -> Option<IpAddr> {
    loop {
        let key = pool.set.next_after(*cursor)?;
        *cursor = Some(key);
        if !taken.contains(&key) && !reserved.contains(&key) {
            return Some(key_to_ip(key));
        }
    }
}

fn answer(batch: Vec<PoolOp>, outcome: Result<Vec<Decision>, ServiceError>) {
    match outcome {
        Ok(decisions) => {
            for (op, decision) in batch.into_iter().zip(decisions) {
                match (op, decision) {
                    (PoolOp::Claim { reply, .. }, Decision::Claim(c)) => drop(reply.send(Ok(c))),
                    (PoolOp::Release { reply, .. }, Decision::Release(r)) => drop(reply.send(Ok(r))),
                    // `decide` answers each op with its own kind, in order.
                    (PoolOp::Claim { reply, .. }, _) => {
                        drop(reply.send(Err(ServiceError::Internal("decision kind mismatch".into()))))
                    }
                    (PoolOp::Release { reply, .. }, _) => {
                        drop(reply.send(Err(ServiceError::Internal("decision kind mismatch".into()))))
                    }
                }
            }
        }
        Err(e) => {
            for op in batch {
                match op {
                    PoolOp::Claim { reply, .. } => drop(reply.send(Err(e.clone()))),
                    PoolOp::Release { reply, .. } => drop(reply.send(Err(e.clone()))),
                }
            }
        }
    }
}
