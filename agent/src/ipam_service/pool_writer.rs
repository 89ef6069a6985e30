//! One writer task per SpiderIPPool. Every claim and release for that pool in this agent queues
//! here; the task takes everything queued, decides it against one copy of the pool and writes it
//! as one merge patch of `status` (this node's `allocatedIPsByNode` string and the counts) guarded
//! by the copy's resourceVersion. Another agent's write in between makes the API server answer
//! 409; the task then waits a random while ([`backoff`]), reads the pool again and decides again,
//! so no address is ever given twice, and a burst costs one write per round instead of one per pod.
//!
//! A pool gives new addresses only while the SpiderIPPoolRegistry lists it at the generation the
//! copy has (`ipam::cluster::registry` says why that keeps two overlapping pools from both
//! handing out); a writer that finds its pool missing there registers it first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use spiderpool_api::crd::{Allocations, IPPoolStatus, PoolIPAllocation, SpiderIPPool, SpiderIPPoolRegistry};
use spiderpool_ipam::allocator::Cursor;
use spiderpool_ipam::cluster::decide::{self, Decision, Op};
use spiderpool_ipam::cluster::pool_of;
use spiderpool_ipam::cluster::register::{self, Outcome};
use spiderpool_ipam::cluster::registry;
use spiderpool_ipam::pool::Pool;
use spiderpool_ipam::range::IpSet;
use tokio::sync::{mpsc, oneshot};

use super::ServiceError;

/// Reserved addresses (all SpiderReservedIP objects).
pub type ReservedFn = Arc<dyn Fn() -> IpSet + Send + Sync>;

/// The newest resourceVersion of the pool the agent's (metadata) watch has seen, if any.
pub type LatestFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Whether the registry the agent's watch has delivered lists the pool `uid` at `generation`.
pub type RegisteredFn = Arc<dyn Fn(&str, i64) -> bool + Send + Sync>;

/// What a writer needs besides its queue.
#[derive(Clone)]
pub struct Sources {
    /// This agent's node: its entries are the only ones it writes.
    pub node: String,
    pub api: Api<SpiderIPPool>,
    pub reserved: ReservedFn,
    pub latest: LatestFn,
    pub registry: Api<SpiderIPPoolRegistry>,
    pub registered: RegisteredFn,
    pub metrics: Arc<super::metrics::IpamMetrics>,
}

/// What a claim got.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub ip: IpAddr,
    /// The pool as the writer decided with it (its prefix, gateway and routes go to the pod).
    pub pool: Arc<Pool>,
}

/// The writer's answer to one op.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub decision: Decision,
    pub pool: Arc<Pool>,
    /// Why the pool gives no new address even if it has free ones (it is not registered).
    pub refused: Option<String>,
}

/// An [`Op`] with where its answer goes.
pub struct PoolOp {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Answer, ServiceError>>,
}

pub fn spawn(sources: Sources, name: String) -> mpsc::UnboundedSender<PoolOp> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(sources, name, rx));
    tx
}

async fn run(sources: Sources, name: String, mut rx: mpsc::UnboundedReceiver<PoolOp>) {
    // The last copy written or read, with its decoded allocations; `None` forces a read.
    let mut copy: Option<Copy> = None;
    // Where the walk for free addresses goes on from (see `decide`).
    let mut cursor: Option<Cursor> = None;
    let mut registered = Registered::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let started = std::time::Instant::now();
        let mut state = State {
            copy: &mut copy,
            cursor: &mut cursor,
            registered: &mut registered,
        };
        // The rounds this batch lost to other writers.
        let mut conflicts = 0u32;
        let outcome =
            decide_and_write(&sources, &name, &mut state, &mut batch, &mut rx, &mut conflicts).await;
        let elapsed = started.elapsed();
        tracing::debug!(pool = %name, ops = batch.len(), conflicts, elapsed_ms = elapsed.as_millis() as u64, "batch written");
        count(&sources.metrics, &name, batch.len(), &outcome);
        answer(batch, outcome);
        if conflicts > 0 {
            // Other agents write this pool too. The winner of a round holds the written copy and
            // would start the next round before any loser has read the pool again. Stepping
            // aside for about one round lets them in, and meanwhile this agent's next batch
            // grows: every landed write carries the whole pool through the API server (~55 ms
            // of its CPU for 1000 holders), so fewer, fuller writes are what counts. Measured
            // (hack/bench-cluster.sh 1000 10 200, 3 runs each): 0.34 pool PATCHes per allocation
            // against 0.45; the ADD p99 did not improve.
            tokio::time::sleep((elapsed / (conflicts + 1)).min(YIELD_AT_MOST)).await;
        }
    }
}

/// The longest a writer steps aside after a contended batch (see `run`).
const YIELD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(100);

/// What a writer keeps between batches.
struct State<'a> {
    copy: &'a mut Option<Copy>,
    cursor: &'a mut Option<Cursor>,
    registered: &'a mut Registered,
}

/// The pool `(uid, generation)` this writer registered or found registered, so later batches
/// need no read of the registry before the watch brings it. Still safe when the entry has gone
/// since: that only happens after the pool itself changed, and the write guarded by the old
/// copy's resourceVersion then fails.
#[derive(Default)]
struct Registered(Option<(String, i64)>);

struct Copy {
    pool: SpiderIPPool,
    /// The holders as stored, node by node.
    stored: Allocations,
    /// The holders as decided on, this node's first where an address is held twice.
    allocated: BTreeMap<String, PoolIPAllocation>,
}

fn decoded(node: &str, name: &str, pool: SpiderIPPool) -> Result<Copy, ServiceError> {
    let stored = pool
        .status
        .as_ref()
        .map(|s| s.allocations())
        .transpose()
        .map_err(|e| ServiceError::InvalidPool(format!("pool {name}: status.allocatedIPsByNode: {e}")))?
        .unwrap_or_default();
    Ok(copy_of(node, pool, stored))
}

fn copy_of(node: &str, pool: SpiderIPPool, stored: Allocations) -> Copy {
    let allocated = stored.view(Some(node));
    Copy {
        pool,
        stored,
        allocated,
    }
}

fn version_of(pool: &SpiderIPPool) -> Option<u64> {
    pool.metadata.resource_version.as_deref()?.parse().ok()
}

/// `Ok(())` when `pool` may hand out new addresses at its generation, else why not; registers it
/// when neither this writer nor the watch has seen it registered.
async fn admitted(
    sources: &Sources,
    known: &mut Registered,
    pool: &SpiderIPPool,
) -> Result<Result<(), String>, ServiceError> {
    let uid = pool.metadata.uid.clone().unwrap_or_default();
    let generation = pool.metadata.generation.unwrap_or(0);
    if known
        .0
        .as_ref()
        .is_some_and(|(u, g)| *u == uid && *g == generation)
        || (sources.registered)(&uid, generation)
    {
        return Ok(Ok(()));
    }
    let cand = match registry::candidate_of(pool) {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    match register::register(&sources.registry, &cand).await {
        Ok(Outcome::Registered) => {
            known.0 = Some((uid, generation));
            Ok(Ok(()))
        }
        Ok(Outcome::Refused(why)) => Ok(Err(why)),
        Err(register::RegisterError::Api { name, source }) => Err(ServiceError::from_kube(
            source,
            &format!("SpiderIPPoolRegistry {name}"),
        )),
        Err(register::RegisterError::Busy(name)) => {
            Err(ServiceError::Conflict(format!("SpiderIPPoolRegistry {name}")))
        }
    }
}

type Outcomes = (Vec<Decision>, Arc<Pool>, Option<String>);

async fn decide_and_write(
    sources: &Sources,
    name: &str,
    state: &mut State<'_>,
    batch: &mut Vec<PoolOp>,
    rx: &mut mpsc::UnboundedReceiver<PoolOp>,
    conflicts: &mut u32,
) -> Result<Outcomes, ServiceError> {
    let api = &sources.api;
    let State {
        copy,
        cursor,
        registered,
    } = state;
    loop {
        // Everything queued so far rides in this write.
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        // A copy the watch has overtaken (the spec edited, an auto-pool grown, another node's
        // write) is read again: deciding on it would refuse a claim for want of addresses the
        // pool now has, and such a refusal writes nothing, so no conflict would bring the news.
        if copy
            .as_ref()
            .is_some_and(|c| (sources.latest)() > version_of(&c.pool))
        {
            **copy = None;
        }
        let fresh = copy.is_none();
        let current = match copy.take() {
            Some(c) => c,
            None => {
                let pool = api
                    .get_status(name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, name))?;
                decoded(&sources.node, name, pool)?
            }
        };
        let pool = Arc::new(pool_of(&current.pool).map_err(|e| ServiceError::InvalidPool(e.to_string()))?);
        let reserved = (sources.reserved)();
        let terminating = current.pool.metadata.deletion_timestamp.is_some();
        let claims = batch.iter().any(|p| matches!(p.op, Op::Claim(_)));
        let refused = if claims && !terminating {
            match admitted(sources, registered, &current.pool).await {
                Ok(verdict) => verdict.err(),
                Err(e) => {
                    **copy = Some(current);
                    return Err(e);
                }
            }
        } else {
            None
        };
        if refused.is_some() && !fresh {
            // A refusal writes nothing, so no conflict would bring a newer copy: the pool may
            // have been edited back meanwhile. Read it before saying no.
            continue;
        }
        let cx = decide::Context {
            pool: &pool,
            reserved: &reserved,
            accept_new: !terminating && refused.is_none(),
        };
        let mut allocated = current.allocated.clone();
        // The cursor moves only with a write that lands: a lost round decides again from it.
        let mut walk = **cursor;
        let (decisions, changed) =
            decide::decide(&mut allocated, &mut walk, &cx, batch.iter().map(|p| &p.op));
        if !changed {
            **copy = Some(current);
            **cursor = walk;
            return Ok((decisions, pool, refused));
        }
        let mut stored = current.stored.clone();
        stored.apply(&current.allocated, &allocated, Some(&sources.node));
        let patch = IPPoolStatus::guarded_patch(
            current.pool.metadata.resource_version.as_deref(),
            &current.stored,
            &stored,
            Some(i64::try_from(pool.available(&reserved)).unwrap_or(i64::MAX)),
        );
        let writing = std::time::Instant::now();
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                **copy = Some(copy_of(&sources.node, written, stored));
                **cursor = walk;
                return Ok((decisions, pool, refused));
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                *conflicts += 1;
                sources
                    .metrics
                    .conflicts
                    .get_or_create(&super::metrics::IpamMetrics::pool(name))
                    .inc();
                // Another agent wrote first: the next round reads its version (`copy` stays
                // empty) and decides again.
                tracing::debug!(pool = %name, conflicts = *conflicts, "resourceVersion conflict");
                tokio::time::sleep(backoff(writing.elapsed(), *conflicts)).await;
            }
            Err(e) => return Err(ServiceError::from_kube(e, name)),
        }
    }
}

/// How long a writer waits after losing its `conflicts`-th round in a row (counted from 1): a
/// random time (full jitter) up to `write` (what the lost write took) doubled per lost round, at
/// most 64 writes' time. Losers that read and write again at once make the next round as crowded
/// as the last: at 100 agents on one pool that was 12.8 PATCHes per allocation, the API server
/// busy with writes that fail, and 10% of ADDs past the plugin's 60 s limit; with this, none.
/// At 10 agents it costs some p99 (hack/bench-cluster.sh; the figures are in #20's notes):
/// starting it only after 3 or 10 lost rounds, or with a smaller cap, measured worse.
fn backoff(write: std::time::Duration, conflicts: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap = write.saturating_mul(1 << conflicts.min(6));
    // A fresh random key per call: enough randomness for jitter, without a dependency.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

/// What one batch did, for the metrics.
fn count(
    metrics: &super::metrics::IpamMetrics,
    name: &str,
    ops: usize,
    outcome: &Result<Outcomes, ServiceError>,
) {
    let pool = super::metrics::IpamMetrics::pool(name);
    metrics.batch.get_or_create(&pool).observe(ops as f64);
    let Ok((decisions, _, refused)) = outcome else {
        return;
    };
    for d in decisions {
        match d {
            Decision::Claim(Some(_)) => metrics.allocated.get_or_create(&pool).inc(),
            Decision::Claim(None) if refused.is_some() => metrics.refused.get_or_create(&pool).inc(),
            Decision::Claim(None) => metrics.exhausted.get_or_create(&pool).inc(),
            Decision::Release(ips) => metrics.released.get_or_create(&pool).inc_by(ips.len() as u64),
        };
    }
}

fn answer(batch: Vec<PoolOp>, outcome: Result<Outcomes, ServiceError>) {
    match outcome {
        // `decide` answers each op, in order.
        Ok((decisions, pool, refused)) => {
            for (op, decision) in batch.into_iter().zip(decisions) {
                let pool = pool.clone();
                let refused = refused.clone();
                drop(op.reply.send(Ok(Answer {
                    decision,
                    pool,
                    refused,
                })));
            }
        }
        Err(e) => {
            for op in batch {
                drop(op.reply.send(Err(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::backoff;

    #[test]
    fn backoff_is_random_within_doubling_write_times_capped_at_64() {
        let write = Duration::from_millis(10);
        for (conflicts, cap_ms) in [(1, 20), (3, 80), (6, 640), (7, 640), (40, 640)] {
            let waits: Vec<Duration> = (0..200).map(|_| backoff(write, conflicts)).collect();
            assert!(
                waits.iter().all(|w| *w <= Duration::from_millis(cap_ms)),
                "{conflicts} conflicts: a wait past {cap_ms} ms"
            );
            // Full jitter: spread over the whole interval, not one fixed wait.
            let short = waits
                .iter()
                .filter(|w| **w < Duration::from_millis(cap_ms / 4))
                .count();
            let long = waits
                .iter()
                .filter(|w| **w > Duration::from_millis(cap_ms * 3 / 4))
                .count();
            assert!(
                short > 10 && long > 10,
                "{conflicts} conflicts: {short} short, {long} long of 200"
            );
        }
    }
}
