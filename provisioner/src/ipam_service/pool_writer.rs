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
use spiderpool_ipam::pool::{Pool, PoolSpec};
use spiderpool_ipam::range::{ip_to_key, key_to_ip};
use tokio::sync::{mpsc, oneshot};

use super::ServiceError;

/// Reserved addresses (all SpiderReservedIP objects), as range keys.
pub type ReservedFn = Arc<dyn Fn() -> HashSet<u128> + Send + Sync>;

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

pub fn spawn(api: Api<SpiderIPPool>, name: String, reserved: ReservedFn) -> mpsc::UnboundedSender<PoolOp> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(api, name, reserved, rx));
    tx
}

/// The validated pool of a SpiderIPPool object, or why it cannot be used.
pub fn pool_of(obj: &SpiderIPPool) -> Result<Pool, ServiceError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec: PoolSpec = serde_json::to_value(&obj.spec)
        .and_then(serde_json::from_value)
        .map_err(|e| ServiceError::InvalidPool(format!("pool {name}: {e}")))?;
    Pool::from_spec(&spec, Some(&name)).map_err(|e| ServiceError::InvalidPool(e.to_string()))
}

async fn run(
    api: Api<SpiderIPPool>,
    name: String,
    reserved: ReservedFn,
    mut rx: mpsc::UnboundedReceiver<PoolOp>,
) {
    // The last copy written or read, with its decoded allocations; `None` forces a read.
    let mut copy: Option<Copy> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        let started = std::time::Instant::now();
        let outcome = decide_and_write(&api, &name, &reserved, &mut copy, &batch).await;
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

async fn decide_and_write(
    api: &Api<SpiderIPPool>,
    name: &str,
    reserved: &ReservedFn,
    copy: &mut Option<Copy>,
    batch: &[PoolOp],
) -> Result<Vec<Decision>, ServiceError> {
    let mut conflicts = 0u32;
    loop {
        let current = match copy.take() {
            Some(c) => c,
            None => {
                let pool = api
                    .get_status(name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, name))?;
                let allocated = pool
                    .status
                    .clone()
                    .unwrap_or_default()
                    .allocations()
                    .map_err(|e| {
                        ServiceError::InvalidPool(format!("pool {name}: status.allocatedIPs: {e}"))
                    })?;
                Copy { pool, allocated }
            }
        };
        let pool = pool_of(&current.pool)?;
        // A terminating pool hands out nothing new; releases and held addresses still go through.
        let accept_new = current.pool.metadata.deletion_timestamp.is_none();
        let reserved = reserved();
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
                "totalIPCount": total(&pool, &reserved),
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
                conflicts += 1;
                tracing::debug!(pool = %name, conflicts, "resourceVersion conflict, reading again");
                // Another agent wrote first: read again and decide again. A little jitter keeps
                // the losers of one round from colliding in lockstep in the next.
                let jitter = u64::from(conflicts.min(8)) * (1 + u64::from(std::process::id() % 5));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(e) => return Err(ServiceError::from_kube(e, name)),
        }
    }
}

fn total(pool: &Pool, reserved: &HashSet<u128>) -> usize {
    let in_pool = reserved.iter().filter(|k| pool.set.contains(**k)).count();
    usize::try_from(pool.set.len())
        .unwrap_or(usize::MAX)
        .saturating_sub(in_pool)
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
