//! One round of a pool's writer: decide the batch against the copy and the node's spares, and
//! write when the decision needs it, reading the pool again after a lost round.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kube::api::{ListParams, Patch, PatchParams};
use spiderpool_api::crd::{Allocations, IPPoolStatus, PoolIPAllocation, SpiderIPPool};
use spiderpool_ipam::cluster::decide::{self, Decision};
use spiderpool_ipam::cluster::pool_of;
use spiderpool_ipam::cluster::spares::{self, Flush};
use tokio::sync::mpsc;

use super::{Outcome, PoolOp, Sources, Writer, own};
use crate::ipam_service::ServiceError;
use crate::ipam_service::admission::admitted;
use crate::ipam_service::lend_right::Right;
use crate::ipam_service::metrics::IpamMetrics;
use spiderpool_ipam::pool::Pool;

/// What a round is asked for, and under which right to the node's spares.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mode {
    pub(super) flush: Flush,
    pub(super) right: Right,
}

pub(super) struct Copy {
    pub(super) pool: SpiderIPPool,
    /// The holders as stored, node by node.
    pub(super) stored: Allocations,
    /// The holders as decided on, this node's first where an address is held twice.
    pub(super) allocated: BTreeMap<String, PoolIPAllocation>,
}

pub(super) fn decoded(node: &str, name: &str, pool: SpiderIPPool) -> Result<Copy, ServiceError> {
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

/// Decides `batch` (and whatever queues meanwhile) and writes when needed; on success the
/// decisions are in the batch's order.
pub(super) async fn decide_and_write(
    sources: &Sources,
    name: &str,
    w: &mut Writer,
    batch: &mut Vec<PoolOp>,
    rx: &mut mpsc::UnboundedReceiver<PoolOp>,
    mode: Mode,
    conflicts: &mut u32,
) -> Result<Outcome, ServiceError> {
    let api = &sources.api;
    let touch = mode.right.touches_spares();
    // Letting go: what was lent and released is written and every spare goes back.
    let flush = if mode.right == Right::Closing {
        Flush::ReturnAll
    } else {
        mode.flush
    };
    loop {
        // Everything queued so far rides in this round.
        batch.append(&mut w.queued);
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        // A copy whose spec or deletion mark the watch shows changed is read again: spares are
        // handed out without a write, so no conflict would bring the news.
        if w.copy.as_ref().is_some_and(|c| !unchanged(sources, c)) {
            w.copy = None;
        }
        let fresh = w.copy.is_none();
        let current = match w.copy.take() {
            Some(c) => c,
            None => {
                let pool = meanwhile(api.get_status(name), rx, &mut w.queued, None)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, name))?;
                let c = decoded(&sources.node, name, pool)?;
                let own = c.stored.of_node(&sources.node);
                if touch && !w.rebuilt && own.is_some_and(|o| o.values().any(PoolIPAllocation::is_spare)) {
                    // Spares this node's agent lent before it restarted are recorded only in the
                    // pods' endpoints until written: find them before handing any spare out.
                    let all = sources
                        .endpoints
                        .list(&ListParams::default())
                        .await
                        .map_err(|e| ServiceError::from_kube(e, "SpiderEndpoints"))?;
                    let lent = spares::lent_from_endpoints(
                        &all.items,
                        name,
                        &sources.node,
                        own.unwrap_or(&BTreeMap::new()),
                    );
                    if !lent.is_empty() {
                        tracing::info!(pool = %name, lent = lent.len(), "spares lent before a restart found in endpoints");
                    }
                    w.local.lent.extend(lent);
                }
                w.rebuilt = touch;
                sync(w, touch, c.stored.of_node(&sources.node));
                c
            }
        };
        let pool = Arc::new(pool_of(&current.pool).map_err(|e| ServiceError::InvalidPool(e.to_string()))?);
        let reserved = (sources.reserved)();
        let terminating = current.pool.metadata.deletion_timestamp.is_some();
        let claims = batch.iter().any(|p| matches!(p.op, decide::Op::Claim(_)));
        let refused = if claims && !terminating {
            match admitted(
                &sources.registry,
                &sources.registered,
                &mut w.registered,
                &current.pool,
            )
            .await
            {
                Ok(verdict) => verdict.err(),
                Err(e) => {
                    w.copy = Some(current);
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
        // The cursor moves only with a round that lands: a lost round decides again from it.
        let mut walk = w.cursor;
        let ops: Vec<&decide::Op> = batch.iter().map(|p| &p.op).collect();
        // Spares pay while few nodes share the pool. With many, each node's flush is still a
        // write of the whole pool, and 100 nodes' flushes measured slower than writing every
        // claim and release at once in batches (1000 DELs at 100 nodes: 640 releases not yet in
        // the status 32 s after the last answer), so they write at once, as before spares.
        let nodes = current.stored.nodes() + usize::from(current.stored.of_node(&sources.node).is_none());
        let writer = spares::Writer {
            node: &sources.node,
            lazy: sources.spares && mode.right == Right::Held && nodes <= LAZY_NODES,
        };
        let out = spares::decide(&current.allocated, &w.local, &mut walk, &cx, &writer, &ops, flush);
        // Claims that queue while this round writes may take spares both outcomes keep.
        let lends = writer.lazy && cx.accept_new;
        let no_address = out.decisions.contains(&Decision::Claim(None));
        let stale_now = !fresh && stale(sources, &current);
        let own_only = out.own_only;
        if ((out.write.is_some() && !own_only) || no_address) && stale_now {
            // Another node wrote since this copy: a write on it would fail, and "no address"
            // may be wrong (an address released, the pool grown). A write of this node's own
            // entries only goes ahead without the guard (`own::write`).
            continue;
        }
        let spares::Outcome {
            decisions,
            mut local,
            write,
            free,
            others_spare,
            ..
        } = out;
        // Without the right, this node's spares are another agent's, given back when it lets go:
        // a claim that found nothing free waits for them as for other nodes' spares.
        let others_spare = others_spare
            + if touch {
                0
            } else {
                current
                    .stored
                    .of_node(&sources.node)
                    .map_or(0, |own| own.values().filter(|a| a.is_spare()).count())
            };
        if write.is_some() && lends && sources.right.right() == Right::Held {
            answer_lent(&mut w.local, batch, &decisions, &pool);
        }
        let answered = Outcome {
            decisions,
            pool: pool.clone(),
            refused,
            free,
            others_spare,
            nodes,
        };
        let Some(after) = write else {
            w.copy = Some(current);
            w.cursor = walk;
            w.local = local;
            return Ok(answered);
        };
        let busy: HashSet<String> = batch.iter().map(|p| pod_uid_of(&p.op).to_string()).collect();
        let mut stored = current.stored.clone();
        stored.apply(&current.allocated, &after, Some(&sources.node));
        let patch = IPPoolStatus::guarded_patch(
            current.pool.metadata.resource_version.as_deref(),
            &current.stored,
            &stored,
            Some(i64::try_from(pool.available(&reserved)).unwrap_or(i64::MAX)),
        );
        let writing = std::time::Instant::now();
        // The guarded write, unless this stale copy makes it fail for sure.
        if !(own_only && stale_now) {
            let params = PatchParams::default();
            let merge = Patch::Merge(&patch);
            let write = api.patch_status(name, &params, &merge);
            let lend =
                lends.then(|| Lend::new(&current, &mut w.local, Some(&mut local), &busy, &mut w.last_op));
            let early = Early::new(sources, name, &pool, lend);
            match meanwhile(write, rx, &mut w.queued, Some(early)).await {
                Ok(written) => {
                    w.copy = Some(copy_of(&sources.node, written, stored));
                    w.cursor = walk;
                    w.local = local;
                    return Ok(answered);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(ServiceError::from_kube(e, name)),
            }
        }
        // Another node wrote first.
        if own_only {
            // This write's entries are this node's alone.
            let write = own::write(sources, name, &current, &stored);
            let lend =
                lends.then(|| Lend::new(&current, &mut w.local, Some(&mut local), &busy, &mut w.last_op));
            let early = Early::new(sources, name, &pool, lend);
            if let Some(fresh) = meanwhile(write, rx, &mut w.queued, Some(early)).await? {
                let copy = decoded(&sources.node, name, fresh)?;
                let free = spares::free(&pool, &reserved, &copy.allocated);
                w.local = local;
                sync(w, touch, copy.stored.of_node(&sources.node));
                w.copy = Some(copy);
                w.cursor = walk;
                return Ok(Outcome { free, ..answered });
            }
            // This node's string changed under it (the controller's GC): read, decide again.
            *conflicts += 1;
            tracing::debug!(pool = %name, conflicts = *conflicts, "own string changed under the write");
        } else {
            *conflicts += 1;
            sources
                .metrics
                .conflicts
                .get_or_create(&crate::ipam_service::metrics::IpamMetrics::pool(name))
                .inc();
            // The next round reads the other writer's version (`copy` stays empty) and decides
            // again.
            tracing::debug!(pool = %name, conflicts = *conflicts, "resourceVersion conflict");
        }
        let wait = backoff(writing.elapsed(), *conflicts, nodes);
        tracing::debug!(pool = %name, write_ms = writing.elapsed().as_millis() as u64, wait_ms = wait.as_millis() as u64, "backoff");
        // The round decides again from `w.local`: a spare lent meanwhile is lent there.
        let lend = lends.then(|| Lend::new(&current, &mut w.local, None, &busy, &mut w.last_op));
        let early = Early::new(sources, name, &pool, lend);
        meanwhile(tokio::time::sleep(wait), rx, &mut w.queued, Some(early)).await;
    }
}

/// What a round lets [`meanwhile`] answer before it ends.
pub(super) struct Early<'a> {
    /// The pool the answers carry.
    pool: &'a Arc<Pool>,
    name: &'a str,
    sources: &'a Sources,
    /// Whether, and from what, claims take spares at once.
    lend: Option<Lend<'a>>,
}

/// See [`spares::lend_meanwhile`].
pub(super) struct Lend<'a> {
    /// The copy the round decided on.
    copy: &'a Copy,
    before: &'a mut spares::Local,
    after: Option<&'a mut spares::Local>,
    /// The pods of the round's batch: their claims wait for it.
    busy: &'a HashSet<String>,
    /// The writer's last op: a claim lent here counts (the node is not idle).
    last_op: &'a mut Option<std::time::Instant>,
}

impl<'a> Lend<'a> {
    fn new(
        copy: &'a Copy,
        before: &'a mut spares::Local,
        after: Option<&'a mut spares::Local>,
        busy: &'a HashSet<String>,
        last_op: &'a mut Option<std::time::Instant>,
    ) -> Lend<'a> {
        Lend {
            copy,
            before,
            after,
            busy,
            last_op,
        }
    }
}

impl<'a> Early<'a> {
    fn new(sources: &'a Sources, name: &'a str, pool: &'a Arc<Pool>, lend: Option<Lend<'a>>) -> Early<'a> {
        Early {
            pool,
            name,
            sources,
            lend,
        }
    }
}

/// Awaits `fut` (a call to the API server, a backoff) while ops queue for the writer: each goes
/// to `queued` for the next round, or with `early` is answered at once:
/// - A release: it changes nothing another pod could get before its round (its address stays
///   held until then), and the DEL that asked deletes the pod's endpoint only after the answer,
///   so an agent that dies first finds a lent address a spare again, and the controller's GC
///   frees a written one. Without this every DEL of a node waited for the write in flight: 1.5 s
///   for a flush at 10 nodes (hack/bench-cluster.sh 1000 10 200), the whole release p99.
/// - A claim that a spare serves whatever the write's fate ([`spares::lend_meanwhile`]): it is
///   done, not queued. Without this a node's claims waited for each refill, conflicts included.
pub(super) async fn meanwhile<T>(
    fut: impl std::future::Future<Output = T>,
    rx: &mut mpsc::UnboundedReceiver<PoolOp>,
    queued: &mut Vec<PoolOp>,
    mut early: Option<Early<'_>>,
) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            Some(mut op) = rx.recv() => {
                let Some(early) = early.as_mut() else {
                    queued.push(op);
                    continue;
                };
                match &op.op {
                    decide::Op::Release { .. } => {
                        answer_now(&mut op, Decision::Release(Vec::new()), early.pool);
                        queued.push(op);
                    }
                    decide::Op::Claim(entry) => {
                        let sources = early.sources;
                        let lent = early.lend.as_mut().and_then(|l| {
                            let waits = l.busy.contains(&entry.pod_uid)
                                || queued.iter().any(|q| pod_uid_of(&q.op) == entry.pod_uid);
                            // Not once this agent lets go of the spares, nor from a stale spec.
                            if waits || sources.right.right() != Right::Held || !unchanged(sources, l.copy) {
                                return None;
                            }
                            // Reservations made since the round decided count too.
                            let usable = early.pool.set.subtract(&(sources.reserved)());
                            let lent = spares::lend_meanwhile(&l.copy.allocated, l.before, l.after.as_deref_mut(), entry, &usable);
                            if lent.is_some() {
                                *l.last_op = Some(std::time::Instant::now());
                            }
                            lent
                        });
                        match lent.and_then(|ip| ip.parse().ok()) {
                            Some(ip) => {
                                sources.metrics.allocated.get_or_create(&IpamMetrics::pool(early.name)).inc();
                                answer_now(&mut op, Decision::Claim(Some(ip)), early.pool);
                            }
                            None => queued.push(op),
                        }
                    }
                }
            }
        }
    }
}

/// Answers, before the round's write, each claim of `batch` lent a spare the node had before the
/// round (`before`), lent there too: whatever the write's fate the claim keeps it (a round that
/// decides again finds the pod holding it). Without this the claims that start a refill wait for
/// its write, conflicts included. Not a pod with more than one op in the batch: a release of it
/// decided again could free the spare.
fn answer_lent(before: &mut spares::Local, batch: &mut [PoolOp], decisions: &[Decision], pool: &Arc<Pool>) {
    let mut ops_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for p in batch.iter() {
        *ops_of.entry(pod_uid_of(&p.op).to_string()).or_default() += 1;
    }
    for (op, decision) in batch.iter_mut().zip(decisions) {
        let (decide::Op::Claim(entry), Decision::Claim(Some(ip))) = (&op.op, decision) else {
            continue;
        };
        let ip = ip.to_string();
        if entry.owner_stateful_set.is_some()
            || ops_of.get(&entry.pod_uid) != Some(&1)
            || op.reply.is_closed()
            || !before.spares.contains(&ip)
        {
            continue;
        }
        before.lend_spare(&ip, entry);
        answer_now(op, decision.clone(), pool);
    }
}

/// Answers `op` now; it stays, with its reply spent, for the round that carries it out.
fn answer_now(op: &mut PoolOp, decision: Decision, pool: &Arc<Pool>) {
    let (spent, _) = tokio::sync::oneshot::channel();
    let reply = std::mem::replace(&mut op.reply, spent);
    drop(reply.send(Ok(super::Answer {
        decision,
        pool: pool.clone(),
        refused: None,
    })));
}

fn pod_uid_of(op: &decide::Op) -> &str {
    match op {
        decide::Op::Claim(entry) => &entry.pod_uid,
        decide::Op::Release { pod_uid, .. } => pod_uid,
    }
}

/// Whether the watch shows nothing newer of the pool's spec and deletion mark than `copy`.
fn unchanged(sources: &Sources, copy: &Copy) -> bool {
    !(sources.meta)().is_some_and(|(generation, deleting)| {
        generation != copy.pool.metadata.generation
            || deleting != copy.pool.metadata.deletion_timestamp.is_some()
    })
}

/// Whether `op` is a release already answered (by [`meanwhile`]) or whose asker has gone: one
/// nobody waits for, to keep for the next round when this one failed.
pub(super) fn answered_release(op: &PoolOp) -> bool {
    matches!(op.op, decide::Op::Release { .. }) && op.reply.is_closed()
}

/// Brings the writer's spares to a copy just read; without the right to them it keeps none (the
/// view still shows them as taken, so nothing of them is handed out).
fn sync(w: &mut Writer, touch: bool, own: Option<&BTreeMap<String, PoolIPAllocation>>) {
    if touch {
        w.local.sync(own);
    } else {
        w.local = spares::Local::default();
    }
}

/// The most nodes holding addresses of a pool for its writers to lend spares (see `decide_and_write`).
const LAZY_NODES: usize = 20;

/// Whether the watch has seen a newer version of the pool than `copy`.
fn stale(sources: &Sources, copy: &Copy) -> bool {
    (sources.latest)() > version_of(&copy.pool)
}

/// How long a writer waits after losing its `conflicts`-th round in a row (counted from 1): a
/// random time (full jitter) up to `write` (what the lost write took) doubled per lost round, at
/// most 64 writes' time, and at most as many writes' time as `nodes` share the pool (rounded up
/// to a power of two): at 10 nodes a node that had lost 6 refills in a row waited up to 64, and
/// its claims 3.4 s while the others went on. Losers that read and write again at once make the next round as crowded
/// as the last: at 100 agents on one pool that was 12.8 PATCHes per allocation, the API server
/// busy with writes that fail, and 10% of ADDs past the plugin's 60 s limit; with this, none.
/// At 10 agents it costs some p99 (hack/bench-cluster.sh; the figures are in #20's notes):
/// starting it only after 3 or 10 lost rounds, or with a smaller cap, measured worse.
fn backoff(write: std::time::Duration, conflicts: u32, nodes: usize) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let most = u32::try_from(nodes.max(2).next_power_of_two())
        .unwrap_or(u32::MAX)
        .min(64);
    let cap = write.saturating_mul((1u32 << conflicts.min(6)).min(most));
    // A fresh random key per call: enough randomness for jitter, without a dependency.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::backoff;

    #[test]
    fn backoff_is_random_within_doubling_write_times_capped_at_64() {
        let write = Duration::from_millis(10);
        for (conflicts, cap_ms) in [(1, 20), (3, 80), (6, 640), (7, 640), (40, 640)] {
            let waits: Vec<Duration> = (0..200).map(|_| backoff(write, conflicts, 100)).collect();
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
