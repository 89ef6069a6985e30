//! Which address a SpiderIPPool gives, decided against one copy of its holders
//! (`status.allocatedIPsByNode`, seen through `Allocations::view`).
//! The agent's pool writer batches every claim and release queued for a pool, decides them here
//! in order and writes the result as one status patch.
//!
//! Order of handing out, the same idea as standalone mode's allocator ([`crate::allocator`]): a
//! cursor walks the pool in address order and wraps around, so an address just released is
//! reused only after every other free address has had its turn (stale ARP and neighbour entries
//! on an underlay then point at nobody rather than at the wrong pod). Standalone mode keeps an
//! exact least-recently-released queue in its store; cluster mode cannot, because its only state
//! is the pool's status, shared by every agent in Spiderpool's format, which records holders, not
//! release order. Its cursor lives in each agent's writer and starts at the pool's lowest
//! address when the agent starts or the pool's ranges change.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use spiderpool_api::crd::PoolIPAllocation;

use crate::allocator::Cursor;
use crate::pool::Pool;
use crate::range::{IpSet, ip_to_key, key_to_ip};

/// One queued request against a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An address for the entry's pod and interface: the one it already holds, if any (a repeated
    /// ADD, an agent restarted between the pool write and the endpoint write, or a StatefulSet
    /// pod recreated under the same name), else a free one.
    Claim(PoolIPAllocation),
    /// Drops every address held by `pod_uid` on `interface` (all interfaces when `None`).
    Release {
        pod_uid: String,
        interface: Option<String>,
    },
}

/// The answer to one [`Op`], in the batch's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `None`: the pool has no free address (or is terminating and the pod holds none).
    Claim(Option<IpAddr>),
    /// The addresses released.
    Release(Vec<IpAddr>),
}

/// What [`decide`] reads besides the batch.
pub struct Context<'a> {
    pub pool: &'a Pool,
    /// SpiderReservedIP addresses.
    pub reserved: &'a IpSet,
    /// `false` for a terminating pool: it hands out nothing new, but releases and addresses
    /// already held still go through.
    pub accept_new: bool,
}

/// Decides every op of `batch` against `allocated`, updating it and the walk's `cursor`;
/// `true` when `allocated` changed (and so must be written).
pub fn decide<'a>(
    allocated: &mut BTreeMap<String, PoolIPAllocation>,
    cursor: &mut Option<Cursor>,
    cx: &Context<'_>,
    batch: impl IntoIterator<Item = &'a Op>,
) -> (Vec<Decision>, bool) {
    let mut changed = false;
    let mut taken: HashSet<u128> = allocated
        .keys()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(ip_to_key)
        .collect();
    let fingerprint = cx.pool.set.fingerprint();
    // What the walk may hand out, reserved ranges skipped whole.
    let usable = cx.pool.set.subtract(cx.reserved);
    let mut last = cursor
        .filter(|c| c.fingerprint == fingerprint)
        .and_then(|c| c.last);
    let batch = batch.into_iter();
    let mut decisions = Vec::with_capacity(batch.size_hint().0);
    for op in batch {
        match op {
            Op::Claim(entry) => {
                let held = allocated
                    .iter()
                    .find_map(|(ip, a)| same_holder(a, entry).then(|| ip.clone()));
                let ip = match held {
                    Some(ip) => ip.parse::<IpAddr>().ok(),
                    None if cx.accept_new => next_free(&usable, &taken, &mut last),
                    None => None,
                };
                if let Some(addr) = ip {
                    let key = addr.to_string();
                    if allocated.get(&key) != Some(entry) {
                        taken.insert(ip_to_key(addr));
                        allocated.insert(key, entry.clone());
                        changed = true;
                    }
                }
                decisions.push(Decision::Claim(ip));
            }
            Op::Release { pod_uid, interface } => {
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
    *cursor = Some(Cursor { fingerprint, last });
    (decisions, changed)
}

/// Whether `held` is `claim`'s pod and interface: the same UID, or for a StatefulSet pod the same
/// name (its address follows the name).
pub fn same_holder(held: &PoolIPAllocation, claim: &PoolIPAllocation) -> bool {
    let same_pod = held.pod_uid == claim.pod_uid
        || (held.owner_stateful_set.is_some()
            && held.owner_stateful_set == claim.owner_stateful_set
            && held.pod == claim.pod);
    same_pod && held.interface == claim.interface
}

/// The first free address of `usable` after `last`, wrapping around to its start once; moves
/// `last` to it.
pub(crate) fn next_free(usable: &IpSet, taken: &HashSet<u128>, last: &mut Option<u128>) -> Option<IpAddr> {
    let free = |key: &u128| !taken.contains(key);
    let start = *last;
    let mut walk = start;
    // Ahead of the cursor, then from the start up to and including it.
    while let Some(key) = usable.next_after(walk) {
        if free(&key) {
            *last = Some(key);
            return Some(key_to_ip(key));
        }
        walk = Some(key);
    }
    let mut walk = None;
    while let Some(key) = usable.next_after(walk) {
        if start.is_some_and(|s| key > s) {
            break;
        }
        if free(&key) {
            *last = Some(key);
            return Some(key_to_ip(key));
        }
        walk = Some(key);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolSpec;

    fn pool(ips: &[&str]) -> Pool {
        Pool::from_spec(
            &PoolSpec {
                subnet: "10.0.0.0/24".into(),
                ips: ips.iter().map(|s| s.to_string()).collect(),
                ..PoolSpec::default()
            },
            Some("p"),
        )
        .unwrap()
    }

    fn entry(uid: &str, ifname: &str) -> PoolIPAllocation {
        PoolIPAllocation {
            pod: format!("ns/{uid}"),
            pod_uid: uid.into(),
            interface: Some(ifname.into()),
            node: Some("n1".into()),
            owner_stateful_set: None,
        }
    }

    fn claim(uid: &str) -> Op {
        Op::Claim(entry(uid, "eth0"))
    }

    fn release(uid: &str) -> Op {
        Op::Release {
            pod_uid: uid.into(),
            interface: Some("eth0".into()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    struct Run {
        pool: Pool,
        reserved: IpSet,
        allocated: BTreeMap<String, PoolIPAllocation>,
        cursor: Option<Cursor>,
        accept_new: bool,
    }

    impl Run {
        fn new(pool: Pool) -> Run {
            Run {
                pool,
                reserved: IpSet::default(),
                allocated: BTreeMap::new(),
                cursor: None,
                accept_new: true,
            }
        }

        fn batch(&mut self, ops: &[Op]) -> (Vec<Decision>, bool) {
            let cx = Context {
                pool: &self.pool,
                reserved: &self.reserved,
                accept_new: self.accept_new,
            };
            decide(&mut self.allocated, &mut self.cursor, &cx, ops)
        }
    }

    #[test]
    fn a_batch_hands_out_distinct_addresses_in_order_and_reports_exhaustion() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.12"]));
        let (d, changed) = run.batch(&[claim("a"), claim("b"), claim("c"), claim("d")]);
        assert!(changed);
        assert_eq!(
            d,
            [
                Decision::Claim(Some(ip("10.0.0.10"))),
                Decision::Claim(Some(ip("10.0.0.11"))),
                Decision::Claim(Some(ip("10.0.0.12"))),
                Decision::Claim(None),
            ]
        );
        assert_eq!(run.allocated.len(), 3);
    }

    #[test]
    fn a_repeated_claim_gets_the_same_address_and_writes_nothing() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.12"]));
        run.batch(&[claim("a")]);
        let (d, changed) = run.batch(&[claim("a")]);
        assert_eq!(d, [Decision::Claim(Some(ip("10.0.0.10")))]);
        assert!(!changed, "nothing to write for a repeated ADD");
    }

    #[test]
    fn a_released_address_is_reused_only_after_every_other_free_one() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.13"]));
        run.batch(&[claim("a"), claim("b")]); // .10 .11
        let (d, _) = run.batch(&[release("a"), claim("c"), claim("d"), claim("e")]);
        assert_eq!(
            d,
            [
                Decision::Release(vec![ip("10.0.0.10")]),
                Decision::Claim(Some(ip("10.0.0.12"))),
                Decision::Claim(Some(ip("10.0.0.13"))),
                // The walk wraps around: .10 is free again, and now its turn.
                Decision::Claim(Some(ip("10.0.0.10"))),
            ]
        );
        let (d, _) = run.batch(&[claim("f")]);
        assert_eq!(d, [Decision::Claim(None)]);
    }

    #[test]
    fn the_cursor_restarts_when_the_pool_changes() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.13"]));
        run.batch(&[claim("a"), claim("b"), release("a")]);
        run.pool = pool(&["10.0.0.10-10.0.0.20"]);
        let (d, _) = run.batch(&[claim("c")]);
        assert_eq!(
            d,
            [Decision::Claim(Some(ip("10.0.0.10")))],
            "a new address set is walked from its start"
        );
    }

    #[test]
    fn reserved_and_foreign_holders_are_skipped() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.13"]));
        run.reserved = crate::range::set_of_entries(["10.0.0.10"]);
        run.allocated.insert("10.0.0.11".into(), entry("other", "eth0"));
        let (d, _) = run.batch(&[claim("a")]);
        assert_eq!(d, [Decision::Claim(Some(ip("10.0.0.12")))]);
    }

    #[test]
    fn a_stateful_set_pod_recreated_under_its_name_keeps_its_address() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.13"]));
        let mut first = entry("uid-1", "eth0");
        first.pod = "ns/web-0".into();
        first.owner_stateful_set = Some("web".into());
        run.batch(&[claim("x"), Op::Claim(first.clone())]);
        let mut second = first.clone();
        second.pod_uid = "uid-2".into();
        let (d, changed) = run.batch(&[Op::Claim(second.clone())]);
        assert_eq!(d, [Decision::Claim(Some(ip("10.0.0.11")))]);
        assert!(changed, "the holder's UID is updated");
        assert_eq!(run.allocated["10.0.0.11"], second);
    }

    #[test]
    fn a_terminating_pool_gives_nothing_new_but_keeps_holders_and_releases() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.13"]));
        run.batch(&[claim("a")]);
        run.accept_new = false;
        let (d, _) = run.batch(&[claim("a"), claim("b"), release("a")]);
        assert_eq!(
            d,
            [
                Decision::Claim(Some(ip("10.0.0.10"))),
                Decision::Claim(None),
                Decision::Release(vec![ip("10.0.0.10")]),
            ]
        );
    }

    #[test]
    fn release_of_one_interface_keeps_the_others() {
        let mut run = Run::new(pool(&["10.0.0.10-10.0.0.13"]));
        run.batch(&[claim("a"), Op::Claim(entry("a", "net1"))]);
        let (d, changed) = run.batch(&[release("a")]);
        assert_eq!(d, [Decision::Release(vec![ip("10.0.0.10")])]);
        assert!(changed);
        assert_eq!(run.allocated.len(), 1);
        let (d, changed) = run.batch(&[release("nobody")]);
        assert_eq!(d, [Decision::Release(vec![])]);
        assert!(!changed);
    }
}
