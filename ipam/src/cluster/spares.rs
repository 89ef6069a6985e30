//! Spares: addresses a node's agent sets aside in its own string of a pool's status
//! ([`PoolIPAllocation::spare`]), so that most claims and releases cost no write of the pool.
//!
//! Why: every write of a pool's status carries the whole pool through the API server (tens of
//! milliseconds of its CPU at 1000 holders), and every agent that allocates fights over it with
//! resourceVersion guards. A pod's SpiderEndpoint is written anyway, one small object per pod,
//! so it can carry the truth for a moment: a spare handed to a pod ("lent") is recorded in the
//! pod's endpoint before the ADD answers, and in the pool at the writer's next write, which
//! comes within a fixed delay. A released address ("freed") leaves the pool at that write too.
//! Nobody but the node's agent hands out or removes its spares (the controller's GC leaves them
//! alone), so no other node can give one to a second pod; an agent that restarts finds what it
//! had lent in its node's endpoints ([`lent_from_endpoints`]).
//!
//! A StatefulSet pod's address is written at once, as without spares: its successor may start
//! on another node a moment later and must find the address recorded under its name.
//!
//! Near exhaustion nobody sets more aside and every node gives back what it holds at its next
//! write ([`SPARE_FLOOR`]), so the last addresses go to whichever node asks for them.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::IpAddr;

use spiderpool_api::crd::{PoolIPAllocation, SpiderEndpoint};

use super::decide::{self, Context, Decision, Op, next_free, same_holder};
use crate::allocator::Cursor;
use crate::range::{IpSet, ip_to_key};

/// With fewer free addresses than this (neither held nor set aside by any node) no node sets
/// any aside, and each gives back those it holds at its next write.
pub const SPARE_FLOOR: u128 = 64;

/// The most spares a node keeps.
pub const SPARE_MOST: usize = 128;

/// How many addresses a node sets aside beyond what it needs now, with `free` addresses free and
/// `nodes` nodes holding addresses of the pool: half an even split of what is free past
/// [`SPARE_FLOOR`] (so a refill never brings the pool under it and gives itself back), at most
/// [`SPARE_MOST`]. Half: what a node sets aside and then does not need stays beside what the
/// others still ask for. Measured (hack/bench-cluster.sh 1000 10 200): a quarter of the split
/// and only as many again as waited, 4.2–5.2 s; half and at most 128, 2.9–3.0 s; a whole split,
/// 3.2–3.4 s.
pub fn share(free: u128, nodes: usize) -> usize {
    if free < SPARE_FLOOR {
        0
    } else {
        ((free - SPARE_FLOOR) / (2 * nodes.max(1) as u128)).min(SPARE_MOST as u128) as usize
    }
}

/// What a node's writer knows of its spares beyond the copy of the pool it last read or wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    /// Spare entries of this node's string not handed out, in the order they will be.
    pub spares: VecDeque<String>,
    /// Spare entries handed to pods (address → holder), not yet written as theirs.
    pub lent: BTreeMap<String, PoolIPAllocation>,
    /// Holder entries of this node's string released (address → the entry), not yet removed.
    pub freed: BTreeMap<String, PoolIPAllocation>,
}

impl Local {
    /// Lends the spare `ip` to `entry`'s pod.
    pub fn lend_spare(&mut self, ip: &str, entry: &PoolIPAllocation) {
        self.spares.retain(|s| s != ip);
        self.lent.insert(ip.to_string(), entry.clone());
    }

    /// Whether the pool's status is behind what pods hold.
    pub fn pending(&self) -> bool {
        !self.lent.is_empty() || !self.freed.is_empty()
    }

    /// Brings it to a copy just read, in which `own` is this node's string: the spares are that
    /// string's spare entries not lent (in the order known, new ones after), a freed entry
    /// someone else removed meanwhile is forgotten. Lent entries stay: their pods hold them.
    pub fn sync(&mut self, own: Option<&BTreeMap<String, PoolIPAllocation>>) {
        let empty = BTreeMap::new();
        let own = own.unwrap_or(&empty);
        let own_spares: BTreeSet<&String> = own
            .iter()
            .filter(|(ip, e)| e.is_spare() && !self.lent.contains_key(*ip))
            .map(|(ip, _)| ip)
            .collect();
        let mut spares: VecDeque<String> = self
            .spares
            .iter()
            .filter(|ip| own_spares.contains(ip))
            .cloned()
            .collect();
        let known: HashSet<String> = spares.iter().cloned().collect();
        spares.extend(own_spares.into_iter().filter(|ip| !known.contains(*ip)).cloned());
        self.spares = spares;
        self.freed.retain(|ip, e| own.get(ip) == Some(e));
    }
}

/// When the writer asks [`decide`] to write even if nothing needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Only when the batch needs a write (new spares, a StatefulSet pod's address).
    No,
    /// Also to record what is lent and freed, and give back spares past what a node keeps.
    Due,
    /// As `Due`, and every spare goes back (the node has been idle).
    ReturnAll,
}

/// What [`decide`] answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// One per op, in order.
    pub decisions: Vec<Decision>,
    /// The writer's state once `write` has landed (at once when there is none).
    pub local: Local,
    /// The holders to write (the whole view, as [`decide::decide`] works on it); `None`: no write.
    pub write: Option<BTreeMap<String, PoolIPAllocation>>,
    /// Addresses neither held nor set aside, afterwards.
    pub free: u128,
    /// Addresses other nodes have set aside.
    pub others_spare: usize,
    /// Whether `write` changes only entries this node already had (lent spares become holders,
    /// released holders and spares go): then it needs no guard against other nodes' writes.
    pub own_only: bool,
}

/// Who decides: the node, and whether it lends spares and defers releases (`lazy`) or writes
/// every claim and release at once, as without spares.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub node: &'a str,
    pub lazy: bool,
}

/// Decides `batch` for `writer`'s node against `view` (the pool's holders as read, this node's
/// first) and what the writer keeps (`local`).
pub fn decide(
    view: &BTreeMap<String, PoolIPAllocation>,
    local: &Local,
    cursor: &mut Option<Cursor>,
    cx: &Context<'_>,
    writer: &Writer<'_>,
    batch: &[&Op],
    flush: Flush,
) -> Outcome {
    let node = writer.node;
    let usable = cx.pool.set.subtract(cx.reserved);
    let usable_ip = |ip: &str| offers(&usable, ip);
    let mut local = local.clone();
    // A spare the pool no longer offers (its ranges edited, the address reserved) is handed to
    // nobody and goes at the next write.
    let (kept, dropped): (VecDeque<String>, VecDeque<String>) =
        local.spares.drain(..).partition(|ip| usable_ip(ip));
    local.spares = kept;
    // What the pool holds as this writer sees it: lent spares as their pods'.
    let mut work = view.clone();
    for (ip, e) in &local.lent {
        work.insert(ip.clone(), e.clone());
    }
    let mut decisions: Vec<Option<Decision>> = vec![None; batch.len()];
    // Claims that found no spare, and claims that are written at once.
    let mut waiting = Vec::new();
    let mut direct = Vec::new();
    let mut direct_changed = false;
    let mut lent_any = false;
    for (i, op) in batch.iter().enumerate() {
        match op {
            Op::Claim(entry) => {
                // Released and claimed again before the release was written: it stays.
                let held = match local.freed.iter().find(|(_, a)| same_holder(a, entry)) {
                    Some((ip, _)) => {
                        let ip = ip.clone();
                        local.freed.remove(&ip);
                        Some(ip)
                    }
                    None => work
                        .iter()
                        .find(|(_, a)| same_holder(a, entry))
                        .map(|(ip, _)| ip.clone()),
                };
                if let Some(ip) = held {
                    // A StatefulSet pod recreated under its name: the entry becomes the new pod's.
                    if work.get(&ip) != Some(entry) {
                        work.insert(ip.clone(), entry.clone());
                        match local.lent.get_mut(&ip) {
                            Some(lent) => *lent = entry.clone(),
                            None => direct_changed = true,
                        }
                    }
                    decisions[i] = Some(Decision::Claim(ip.parse().ok()));
                } else if !cx.accept_new {
                    decisions[i] = Some(Decision::Claim(None));
                } else if entry.owner_stateful_set.is_some() || !writer.lazy {
                    match local.spares.pop_front() {
                        Some(ip) => {
                            work.insert(ip.clone(), entry.clone());
                            direct_changed = true;
                            decisions[i] = Some(Decision::Claim(ip.parse().ok()));
                        }
                        None => direct.push(i),
                    }
                } else if let Some(ip) = local.spares.pop_front() {
                    lend(&mut local, &mut work, ip, entry, &mut decisions[i]);
                    lent_any = true;
                } else {
                    waiting.push(i);
                }
            }
            Op::Release { pod_uid, interface } => {
                let matches = |a: &PoolIPAllocation| {
                    &a.pod_uid == pod_uid && (interface.is_none() || &a.interface == interface)
                };
                let mut released = Vec::new();
                let lent: Vec<String> = local
                    .lent
                    .iter()
                    .filter(|(_, a)| matches(a))
                    .map(|(ip, _)| ip.clone())
                    .collect();
                for ip in lent {
                    local.lent.remove(&ip);
                    work.insert(ip.clone(), PoolIPAllocation::spare(node));
                    // Last in line: reused after every other spare (see `decide`'s cursor).
                    local.spares.push_back(ip.clone());
                    released.push(ip);
                }
                let own: Vec<(String, PoolIPAllocation)> = work
                    .iter()
                    .filter(|(ip, a)| {
                        a.node.as_deref() == Some(node)
                            && !a.is_spare()
                            && matches(a)
                            && !local.freed.contains_key(*ip)
                    })
                    .map(|(ip, a)| (ip.clone(), a.clone()))
                    .collect();
                for (ip, a) in own {
                    if writer.lazy {
                        local.freed.insert(ip.clone(), a);
                    } else {
                        work.remove(&ip);
                        direct_changed = true;
                    }
                    released.push(ip);
                }
                decisions[i] = Some(Decision::Release(
                    released.iter().filter_map(|ip| ip.parse().ok()).collect(),
                ));
            }
        }
    }
    let fingerprint = cx.pool.set.fingerprint();
    let mut refilled = false;
    // A node that lends refills before its spares run out: the refill's write is then in flight
    // while the rest are lent (the writer lends during its writes), and no claim waits for it.
    let early = lent_any && cx.accept_new && flush != Flush::ReturnAll;
    if !waiting.is_empty() || early {
        let free = free_of(&usable, &work);
        let nodes = work
            .values()
            .filter_map(|a| a.node.as_deref())
            .chain([node])
            .collect::<BTreeSet<_>>()
            .len();
        let share = share(free, nodes);
        let want = if !waiting.is_empty() {
            // What waits and its share of what is free again.
            waiting.len() + share
        } else if local.spares.len() < share / 2 {
            share - local.spares.len()
        } else {
            0
        };
        if share > 0 && want > 0 {
            let want = want.min(usize::try_from(free).unwrap_or(usize::MAX));
            let mut taken = taken_of(&work);
            let mut last = cursor
                .filter(|c| c.fingerprint == fingerprint)
                .and_then(|c| c.last);
            for _ in 0..want {
                let Some(addr) = next_free(&usable, &taken, &mut last) else {
                    break;
                };
                taken.insert(ip_to_key(addr));
                work.insert(addr.to_string(), PoolIPAllocation::spare(node));
                local.spares.push_back(addr.to_string());
                refilled = true;
            }
            *cursor = Some(Cursor { fingerprint, last });
            for i in waiting {
                let Op::Claim(entry) = batch[i] else { continue };
                match local.spares.pop_front() {
                    Some(ip) => lend(&mut local, &mut work, ip, entry, &mut decisions[i]),
                    None => direct.push(i),
                }
            }
        } else {
            // Too few left to set any aside: each claim takes its address with a write.
            direct.extend(waiting);
        }
    }
    if !direct.is_empty() && !local.freed.is_empty() {
        // Claims that take their address with a write: what this node released and has not
        // written yet is free for them, its removal riding in the same write (near exhaustion
        // those may be the only free addresses).
        for (ip, e) in std::mem::take(&mut local.freed) {
            if work.get(&ip) == Some(&e) {
                work.remove(&ip);
                direct_changed = true;
            }
        }
    }
    if !direct.is_empty() {
        direct.sort_unstable();
        let ops: Vec<&Op> = direct.iter().map(|i| batch[*i]).collect();
        let (ds, changed) = decide::decide(&mut work, cursor, cx, ops);
        direct_changed |= changed;
        for (i, d) in direct.iter().zip(ds) {
            decisions[*i] = Some(d);
        }
    }
    let decisions: Vec<Decision> = decisions
        .into_iter()
        .map(|d| d.unwrap_or(Decision::Claim(None)))
        .collect();
    let free = free_of(&usable, &work);
    // What a node keeps set aside when it writes: none near exhaustion, after an idle while or
    // in a pool that gives nothing new.
    let keep = if !cx.accept_new || !writer.lazy || flush == Flush::ReturnAll || free < SPARE_FLOOR {
        0
    } else {
        SPARE_MOST
    };
    let wanted = refilled
        || direct_changed
        || (flush != Flush::No && (local.pending() || !dropped.is_empty() || local.spares.len() > keep));
    let others_spare = work
        .values()
        .filter(|a| a.is_spare() && a.node.as_deref() != Some(node))
        .count();
    if !wanted {
        return Outcome {
            decisions,
            local,
            write: None,
            free,
            others_spare,
            own_only: true,
        };
    }
    for ip in dropped {
        if work
            .get(&ip)
            .is_some_and(|a| a.is_spare() && a.node.as_deref() == Some(node))
        {
            work.remove(&ip);
        }
    }
    for (ip, e) in std::mem::take(&mut local.freed) {
        if work.get(&ip) != Some(&e) {
            continue;
        }
        if local.spares.len() < keep && usable_ip(&ip) {
            // A released address stays this node's, last in line.
            work.insert(ip.clone(), PoolIPAllocation::spare(node));
            local.spares.push_back(ip);
        } else {
            work.remove(&ip);
        }
    }
    while local.spares.len() > keep {
        if let Some(ip) = local.spares.pop_back() {
            work.remove(&ip);
        }
    }
    // Written as their pods' now.
    local.lent.clear();
    let free = free_of(&usable, &work);
    Outcome {
        decisions,
        local,
        write: Some(work),
        free,
        others_spare,
        own_only: !refilled && !direct_changed,
    }
}

/// Addresses of `pool` neither held nor set aside in `view`, nor reserved.
pub fn free(pool: &crate::pool::Pool, reserved: &IpSet, view: &BTreeMap<String, PoolIPAllocation>) -> u128 {
    free_of(&pool.set.subtract(reserved), view)
}

/// A claim decided while a write of the pool decided from `before` is in flight (`before`: the
/// writer's state should the write fail, `after`: once it lands; `None` when the round will decide
/// again from `before` anyway): a spare both keep is lent to `entry` in both, so the write's fate
/// does not matter, and the claim does not wait for it. `view` is the copy the round decided on;
/// `usable`: what the pool offers now (reservations made since count).
/// `None`, left to the next round: a StatefulSet pod (written at once), a pod that holds or has
/// released anything of the pool here (its address must stay the same), no such spare left.
pub fn lend_meanwhile(
    view: &BTreeMap<String, PoolIPAllocation>,
    before: &mut Local,
    after: Option<&mut Local>,
    entry: &PoolIPAllocation,
    usable: &IpSet,
) -> Option<String> {
    if entry.owner_stateful_set.is_some() {
        return None;
    }
    let mut known = view
        .values()
        .chain(before.lent.values())
        .chain(before.freed.values());
    if known.any(|a| same_holder(a, entry)) {
        return None;
    }
    if let Some(after) = after.as_deref()
        && after
            .lent
            .values()
            .chain(after.freed.values())
            .any(|a| same_holder(a, entry))
    {
        return None;
    }
    let ip = before
        .spares
        .iter()
        .find(|ip| offers(usable, ip) && after.as_deref().is_none_or(|a| a.spares.contains(ip)))?
        .clone();
    before.lend_spare(&ip, entry);
    if let Some(after) = after {
        after.lend_spare(&ip, entry);
    }
    Some(ip)
}

/// Whether `usable` holds the address `ip` (written as in a pool's status).
fn offers(usable: &IpSet, ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| usable.contains(ip_to_key(a)))
}

fn lend(
    local: &mut Local,
    work: &mut BTreeMap<String, PoolIPAllocation>,
    ip: String,
    entry: &PoolIPAllocation,
    decision: &mut Option<Decision>,
) {
    *decision = Some(Decision::Claim(ip.parse().ok()));
    work.insert(ip.clone(), entry.clone());
    local.lent.insert(ip, entry.clone());
}

fn taken_of(work: &BTreeMap<String, PoolIPAllocation>) -> HashSet<u128> {
    work.keys()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(ip_to_key)
        .collect()
}

/// Addresses of `usable` nobody holds or has set aside.
fn free_of(usable: &IpSet, work: &BTreeMap<String, PoolIPAllocation>) -> u128 {
    let taken = taken_of(work).into_iter().filter(|k| usable.contains(*k)).count();
    usable.len().saturating_sub(taken as u128)
}

/// The spares of `own` (this node's string of pool `pool`) that pods of `node` hold by their
/// SpiderEndpoints: what an agent had lent before it restarted, as holders to write.
pub fn lent_from_endpoints<'a>(
    endpoints: impl IntoIterator<Item = &'a SpiderEndpoint>,
    pool: &str,
    node: &str,
    own: &BTreeMap<String, PoolIPAllocation>,
) -> BTreeMap<String, PoolIPAllocation> {
    let mut out = BTreeMap::new();
    for ep in endpoints {
        let Some(status) = &ep.status else { continue };
        if status.current.node != node {
            continue;
        }
        let pod = format!(
            "{}/{}",
            ep.metadata.namespace.as_deref().unwrap_or_default(),
            ep.metadata.name.as_deref().unwrap_or_default()
        );
        let sts = (status.owner_controller_type.as_deref() == Some("StatefulSet"))
            .then(|| status.owner_controller_name.clone())
            .flatten();
        for d in &status.current.ips {
            for (ip, p) in [(&d.ipv4, &d.ipv4_pool), (&d.ipv6, &d.ipv6_pool)] {
                let (Some(ip), Some(p)) = (ip, p) else { continue };
                let addr = ip.split('/').next().unwrap_or_default();
                if p != pool || !own.get(addr).is_some_and(PoolIPAllocation::is_spare) {
                    continue;
                }
                out.insert(
                    addr.to_string(),
                    PoolIPAllocation {
                        pod: pod.clone(),
                        pod_uid: status.current.uid.clone(),
                        interface: Some(d.interface.clone()),
                        node: Some(node.to_string()),
                        owner_stateful_set: sts.clone(),
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "spares_tests.rs"]
mod tests;
