//! One writer task per SpiderIPPool. Every claim and release for that pool in this agent queues
//! here; the task takes everything queued and decides it against its copy of the pool and the
//! addresses this node has set aside (`ipam::cluster::spares`): most claims take one of those
//! spares and most releases give one back without any write, the pod's SpiderEndpoint being the
//! record until the writer's next write, which comes within [`FLUSH_AFTER`]. A write is one merge
//! patch of `status` (this node's `allocatedIPsByNode` string and the counts) guarded by the
//! copy's resourceVersion; another agent's write in between makes the API server answer 409, and
//! the task waits a random while ([`round::backoff`]), reads the pool again and decides again, so
//! no address is ever given twice.
//!
//! Ops that queue while a round awaits the API server are answered without waiting for it where
//! the write's fate cannot change the answer (`round::meanwhile`).
//!
//! Only the agent holding its node's right to the spares (`super::lend_right`) lends, takes or
//! gives them back; without it a writer writes every claim at once and treats them as taken.
//!
//! A pool gives new addresses only while the SpiderIPPoolRegistry lists it at the generation the
//! copy has (`ipam::cluster::registry` says why that keeps two overlapping pools from both
//! handing out); a writer that finds its pool missing there registers it first.

mod own;
mod round;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use spiderpool_api::crd::{SpiderEndpoint, SpiderIPPool, SpiderIPPoolRegistry};
use spiderpool_ipam::allocator::Cursor;
use spiderpool_ipam::cluster::decide::{Decision, Op};
use spiderpool_ipam::cluster::spares::{Flush, Local, SPARE_FLOOR};
use spiderpool_ipam::pool::Pool;
use spiderpool_ipam::range::IpSet;
use tokio::sync::{mpsc, oneshot};

use super::ServiceError;
use super::lend_right::{LendRight, Right};

/// Reserved addresses (all SpiderReservedIP objects).
pub type ReservedFn = Arc<dyn Fn() -> IpSet + Send + Sync>;

/// The newest resourceVersion of the pool the agent's (metadata) watch has seen, if any.
pub type LatestFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The pool's generation and whether it is being deleted, as the metadata watch last saw them.
pub type MetaFn = Arc<dyn Fn() -> Option<(Option<i64>, bool)> + Send + Sync>;

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
    pub meta: MetaFn,
    pub registry: Api<SpiderIPPoolRegistry>,
    pub registered: RegisteredFn,
    /// Every namespace's endpoints: read once after a restart, for spares lent before it.
    pub endpoints: Api<SpiderEndpoint>,
    pub metrics: Arc<super::metrics::IpamMetrics>,
    /// Whether this writer may lend spares at all (`--ipam-spares`).
    pub spares: bool,
    /// Whether this agent of the node may touch the node's spares at all.
    pub right: Arc<LendRight>,
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
    /// When it was queued: a claim waits for other nodes' spares until [`SPARE_WAIT`] after.
    pub since: Instant,
}

impl PoolOp {
    pub fn new(op: Op, reply: oneshot::Sender<Result<Answer, ServiceError>>) -> PoolOp {
        PoolOp {
            op,
            reply,
            since: Instant::now(),
        }
    }
}

/// How long the pool's status may lag behind what was lent and released (the status is what
/// `kubectl get`, the controller and other nodes read), with up to 10 nodes holding addresses of
/// the pool. Each node writes at most this often, so with more nodes it grows with them
/// ([`flush_after`]): the pool's write rate, and with it the API server's work (every write
/// carries the whole pool), stays that of 10 nodes. Measured at 100 nodes with a fixed 500 ms:
/// 1.6 pool writes per DEL, and 243 of 1000 DELs past the plugin's time limit.
pub const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// [`FLUSH_AFTER`] for a pool `nodes` nodes hold addresses of: 500 ms per 10 nodes, at most 10 s.
pub fn flush_after(nodes: usize) -> Duration {
    (FLUSH_AFTER * u32::try_from(nodes.div_ceil(10).max(1)).unwrap_or(u32::MAX)).min(Duration::from_secs(10))
}

/// The longest the pool's status lags behind a node that keeps claiming and releasing: during a
/// burst the writer waits for a pause before recording what it lent, so the burst's pool
/// writes are the refills alone.
pub const MOST_LAG: Duration = Duration::from_secs(5);

/// A node without claims or releases for this long gives its spares back.
pub const IDLE_RETURN: Duration = Duration::from_secs(1);

/// How long a claim that found no free address waits for other nodes to give their spares back
/// (they do within [`FLUSH_AFTER`] of seeing the pool nearly full, or [`IDLE_RETURN`]).
pub const SPARE_WAIT: Duration = Duration::from_secs(8);

/// How often such a claim looks again.
const SPARE_RETRY: Duration = Duration::from_millis(250);

/// The longest a writer steps aside after a contended batch (see `run`).
const YIELD_AT_MOST: Duration = Duration::from_millis(100);

pub fn spawn(sources: Sources, name: String) -> mpsc::UnboundedSender<PoolOp> {
    spawn_with(sources, name, false)
}

/// As [`spawn`], for a pool where this node has spares that no op may come for: the writer
/// reads the pool at once (finding what the node had lent in its endpoints), so that it gives the
/// rest back once idle. An agent that restarts starts one for each such pool: without it a node
/// whose pods of a pool had all gone kept the pool's spares until another came, and in a full
/// pool other nodes' claims failed waiting for them.
pub fn adopt(sources: Sources, name: String) -> mpsc::UnboundedSender<PoolOp> {
    spawn_with(sources, name, true)
}

fn spawn_with(sources: Sources, name: String, adopt: bool) -> mpsc::UnboundedSender<PoolOp> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(sources, name, rx, adopt));
    tx
}

/// What a writer keeps between batches.
#[derive(Default)]
struct Writer {
    /// The last copy written or read, with its decoded allocations; `None` forces a read.
    copy: Option<round::Copy>,
    /// Where the walk for free addresses goes on from (see `decide`).
    cursor: Option<Cursor>,
    registered: crate::ipam_service::admission::Registered,
    /// This node's spares, and what it lent and freed since its last write.
    local: Local,
    /// Whether the endpoints were searched for spares lent before a restart.
    rebuilt: bool,
    /// Addresses free (not held, not set aside) in the last decision.
    free: Option<u128>,
    /// Since when the status lags behind `local`.
    pending_since: Option<Instant>,
    last_op: Option<Instant>,
    /// Claims waiting for other nodes' spares.
    held_over: Vec<PoolOp>,
    /// Ops that queued while a round awaited the API server, for the next round; the releases
    /// among them already answered ([`round::meanwhile`]).
    queued: Vec<PoolOp>,
    /// No round without a new op before this (after a failed one).
    not_before: Option<Instant>,
    /// Nodes holding addresses of the pool, in the last decision.
    nodes: usize,
    /// The right the last round ran under.
    right_seen: Option<Right>,
    /// Read the pool without an op (see [`adopt`]).
    adopt: bool,
}

impl Writer {
    /// Whether it keeps anything of the node's spares: spares, or what it lent and released
    /// and has not written.
    fn keeps(&self) -> bool {
        !self.local.spares.is_empty() || self.local.pending() || !self.queued.is_empty()
    }

    /// Before a round under `right`: an agent that has just got the right reads the pool and its
    /// node's endpoints again before lending; one without it keeps nothing of the spares.
    fn enter(&mut self, right: Right) {
        if right == Right::Held && self.right_seen != Some(Right::Held) {
            self.copy = None;
            self.rebuilt = false;
            self.local = Local::default();
        }
        if !right.touches_spares() {
            self.local = Local::default();
            self.rebuilt = false;
        }
        self.right_seen = Some(right);
    }

    /// When the next round is due without a new op, and with which flush (`None`: only look
    /// again). `deleting`: the watch shows the pool being deleted; `closing`: this agent is
    /// letting go of the node's spares.
    fn due(&self, deleting: bool, closing: bool) -> Option<(Instant, Option<Flush>)> {
        let now = Instant::now();
        let at = |t: Instant| t.max(self.not_before.unwrap_or(now));
        if closing && self.keeps() {
            return Some((at(now), Some(Flush::ReturnAll)));
        }
        if self.adopt {
            return Some((at(now), Some(Flush::No)));
        }
        if !self.queued.is_empty() {
            return Some((at(now), Some(Flush::No)));
        }
        if !self.held_over.is_empty() {
            return Some((at(now + SPARE_RETRY), Some(Flush::No)));
        }
        if let Some(since) = self.pending_since {
            if self.free.is_some_and(|f| f < SPARE_FLOOR) {
                // Nearly full: other nodes' claims wait for what this one lent and released.
                return Some((at(now), Some(Flush::Due)));
            }
            // Once the node's claims and releases pause, or the lag reaches MOST_LAG.
            let quiet = self.last_op.unwrap_or(since) + flush_after(self.nodes);
            return Some((at(quiet.min(since + MOST_LAG)), Some(Flush::Due)));
        }
        if self.local.spares.is_empty() {
            return None;
        }
        if deleting {
            // A pool being deleted goes once nothing is held: its spares go back at once.
            return Some((at(now), Some(Flush::ReturnAll)));
        }
        if self.free.is_some_and(|f| f < SPARE_FLOOR) {
            // Nearly full: the spares go back at once to whichever node needs them (a node
            // that waits until it idles keeps other nodes' claims waiting for the whole burst).
            return Some((at(now), Some(Flush::Due)));
        }
        let last = self.last_op.unwrap_or(now);
        let idle = last + IDLE_RETURN.max(flush_after(self.nodes));
        if idle <= now + LOOK_AGAIN {
            Some((at(idle), Some(Flush::ReturnAll)))
        } else {
            Some((now + LOOK_AGAIN, None))
        }
    }
}

/// How often a writer holding spares looks whether its pool is being deleted.
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// How long a writer waits after a failed round before one no new op asked for.
const AFTER_ERROR: Duration = Duration::from_secs(1);

async fn run(sources: Sources, name: String, mut rx: mpsc::UnboundedReceiver<PoolOp>, adopt: bool) {
    let mut w = Writer {
        adopt,
        ..Writer::default()
    };
    let mut right_changed = sources.right.subscribe();
    loop {
        let deleting = (sources.meta)().is_some_and(|(_, deleting)| deleting);
        let due = w.due(deleting, sources.right.right() == Right::Closing);
        let (mut batch, flush) = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => (vec![op], Flush::No),
                None => break,
            },
            _ = sleep_until(due.map(|d| d.0)) => match due.and_then(|d| d.1) {
                Some(flush) => (Vec::new(), flush),
                None => continue,
            },
            Ok(()) = right_changed.changed() => continue,
        };
        // What queued during the last round goes before what came since (a pod's release before
        // its next claim), and claims waiting for other nodes' spares before both; the round
        // reads the pool only if the watch shows it changed.
        batch.splice(0..0, std::mem::take(&mut w.queued));
        if !batch.is_empty() {
            w.last_op = Some(Instant::now());
        }
        batch.splice(0..0, std::mem::take(&mut w.held_over));
        let started = Instant::now();
        let mut conflicts = 0u32;
        // The right cannot be let go while this round may touch spares, nor before the writer
        // has said what it keeps afterwards.
        let under = sources.right.enter();
        w.enter(under.right());
        let outcome = round::decide_and_write(
            &sources,
            &name,
            &mut w,
            &mut batch,
            &mut rx,
            round::Mode {
                flush,
                right: under.right(),
            },
            &mut conflicts,
        )
        .await;
        if let Err(e) = &outcome
            && !matches!(e, ServiceError::NotFound(_))
        {
            // Releases answered before their round are not lost with it (a pool gone has
            // nothing left to release).
            let (kept, rest): (Vec<_>, Vec<_>) = batch.drain(..).partition(round::answered_release);
            w.queued.splice(0..0, kept);
            batch.extend(rest);
        }
        sources.right.report(&name, w.keeps());
        drop(under);
        let elapsed = started.elapsed();
        tracing::debug!(pool = %name, ops = batch.len(), ?flush, conflicts, elapsed_ms = elapsed.as_millis() as u64, "batch decided");
        match &outcome {
            Ok(o) => {
                w.free = Some(o.free);
                w.not_before = None;
                w.nodes = o.nodes;
                if std::mem::take(&mut w.adopt) {
                    // The idle return counts from here.
                    w.last_op.get_or_insert_with(Instant::now);
                }
            }
            Err(e) => {
                tracing::warn!(pool = %name, "pool writer: {e}");
                w.not_before = Some(Instant::now() + AFTER_ERROR);
            }
        }
        if w.local.pending() {
            w.pending_since.get_or_insert_with(Instant::now);
        } else {
            // Written, or what was lent came back before it was: nothing to catch up with. Left
            // set, `due` would ask for flushes that have nothing to write, at once and forever,
            // and never for the idle return of the spares.
            w.pending_since = None;
        }
        let outcome = outcome.map(|o| {
            let pairs: Vec<(PoolOp, Decision)> = batch.drain(..).zip(o.decisions.iter().cloned()).collect();
            let waits = o.others_spare > 0 && o.refused.is_none();
            // Nothing free, but other nodes have set addresses aside: such a claim waits for them.
            let (wait, now): (Vec<_>, Vec<_>) = pairs
                .into_iter()
                .partition(|(op, d)| waits && *d == Decision::Claim(None) && op.since.elapsed() < SPARE_WAIT);
            w.held_over = wait.into_iter().map(|(op, _)| op).collect();
            (now, o)
        });
        count(&sources.metrics, &name, &outcome);
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What one round decided, for the answers.
pub(super) struct Outcome {
    /// One per op of the batch, in order.
    pub decisions: Vec<Decision>,
    pub pool: Arc<Pool>,
    pub refused: Option<String>,
    pub free: u128,
    pub others_spare: usize,
    pub nodes: usize,
}

/// What a round answers: each op still in it with its decision, and the round's outcome.
type Answered = Result<(Vec<(PoolOp, Decision)>, Outcome), ServiceError>;

/// What one round answers, for the metrics.
fn count(metrics: &super::metrics::IpamMetrics, name: &str, outcome: &Answered) {
    let pool = super::metrics::IpamMetrics::pool(name);
    let Ok((pairs, o)) = outcome else {
        return;
    };
    metrics.batch.get_or_create(&pool).observe(pairs.len() as f64);
    for (_, d) in pairs {
        match d {
            Decision::Claim(Some(_)) => metrics.allocated.get_or_create(&pool).inc(),
            Decision::Claim(None) if o.refused.is_some() => metrics.refused.get_or_create(&pool).inc(),
            Decision::Claim(None) => metrics.exhausted.get_or_create(&pool).inc(),
            Decision::Release(ips) => metrics.released.get_or_create(&pool).inc_by(ips.len() as u64),
        };
    }
}

/// Answers each op; on an error every op of `batch` (which is then still whole).
fn answer(batch: Vec<PoolOp>, outcome: Answered) {
    match outcome {
        Ok((pairs, o)) => {
            for (op, decision) in pairs {
                drop(op.reply.send(Ok(Answer {
                    decision,
                    pool: o.pool.clone(),
                    refused: o.refused.clone(),
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
