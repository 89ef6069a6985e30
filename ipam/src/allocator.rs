//! The allocator: which address a pool hands out next, and what a release does. Pure logic over
//! an [`AllocState`], so the same code runs against the embedded store and, in tests, a map.
//!
//! Order of handing out, per pool:
//! 1. addresses never handed out before, in address order (a cursor walks the pool once);
//! 2. then released addresses, least recently released first,
//!
//! so an address that was just released is not reused while any other address is free: stale
//! ARP and neighbour entries on an underlay network then point at nobody rather than at the
//! wrong pod.

use std::net::IpAddr;

use crate::pool::Pool;
use crate::range::{ip_to_key, key_to_ip};

/// What the store knows about one address (of any pool: the key space is shared, so an address
/// that two pools contain is still handed out once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Allocated {
        pool: String,
        owner: String,
    },
    /// Released at sequence number `seq`; the same number orders the pool's release queue.
    Released {
        pool: String,
        seq: u64,
    },
}

/// How far a pool's walk over never-used addresses got, and over which address set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// [`crate::range::IpSet::fingerprint`] of the set walked; another value restarts the walk.
    pub fingerprint: u64,
    /// The last address the walk handed out or passed.
    pub last: Option<u128>,
}

/// Storage the allocator needs. Implementations run inside one transaction.
pub trait AllocState {
    type Error;
    fn slot(&self, ip: u128) -> Result<Option<Slot>, Self::Error>;
    fn put_slot(&mut self, ip: u128, slot: &Slot) -> Result<(), Self::Error>;
    fn remove_slot(&mut self, ip: u128) -> Result<(), Self::Error>;
    fn cursor(&self, pool: &str) -> Result<Option<Cursor>, Self::Error>;
    fn put_cursor(&mut self, pool: &str, cursor: Cursor) -> Result<(), Self::Error>;
    /// A new number, larger than every one handed out before.
    fn next_seq(&mut self) -> Result<u64, Self::Error>;
    fn push_released(&mut self, pool: &str, seq: u64, ip: u128) -> Result<(), Self::Error>;
    /// Removes and returns the pool's oldest release-queue entry.
    fn pop_oldest_released(&mut self, pool: &str) -> Result<Option<(u64, u128)>, Self::Error>;
}

/// Hands out the pool's next address to `owner`, or `None` when the pool has none free.
pub fn allocate<S: AllocState>(state: &mut S, pool: &Pool, owner: &str) -> Result<Option<IpAddr>, S::Error> {
    let fingerprint = pool.set.fingerprint();
    let mut last = match state.cursor(&pool.name)? {
        Some(c) if c.fingerprint == fingerprint => c.last,
        _ => None, // new pool, or its addresses changed: walk it again from the start
    };
    while let Some(ip) = pool.set.next_after(last) {
        last = Some(ip);
        if state.slot(ip)?.is_none() {
            state.put_cursor(&pool.name, Cursor { fingerprint, last })?;
            claim(state, pool, owner, ip)?;
            return Ok(Some(key_to_ip(ip)));
        }
    }
    // Every address was handed out at least once; remember that, so later calls skip the walk.
    state.put_cursor(&pool.name, Cursor { fingerprint, last })?;
    while let Some((seq, ip)) = state.pop_oldest_released(&pool.name)? {
        let current =
            matches!(state.slot(ip)?, Some(Slot::Released { pool: p, seq: s }) if p == pool.name && s == seq);
        if !current {
            continue; // queued again later, or taken since: a stale queue entry
        }
        if pool.set.contains(ip) {
            claim(state, pool, owner, ip)?;
            return Ok(Some(key_to_ip(ip)));
        }
        // The pool no longer holds this address: forget it.
        state.remove_slot(ip)?;
    }
    Ok(None)
}

fn claim<S: AllocState>(state: &mut S, pool: &Pool, owner: &str, ip: u128) -> Result<(), S::Error> {
    state.put_slot(
        ip,
        &Slot::Allocated {
            pool: pool.name.clone(),
            owner: owner.to_string(),
        },
    )
}

/// Releases `ip` if `owner` holds it; returns whether it did. Releasing what someone else holds,
/// or what is already free, changes nothing.
pub fn release<S: AllocState>(state: &mut S, ip: IpAddr, owner: &str) -> Result<bool, S::Error> {
    let key = ip_to_key(ip);
    let Some(Slot::Allocated { pool, owner: holder }) = state.slot(key)? else {
        return Ok(false);
    };
    if holder != owner {
        return Ok(false);
    }
    let seq = state.next_seq()?;
    state.put_slot(
        key,
        &Slot::Released {
            pool: pool.clone(),
            seq,
        },
    )?;
    state.push_released(&pool, seq, key)?;
    Ok(true)
}

/// Whether `owner` holds `ip`.
pub fn holds<S: AllocState>(state: &S, ip: IpAddr, owner: &str) -> Result<bool, S::Error> {
    Ok(matches!(state.slot(ip_to_key(ip))?, Some(Slot::Allocated { owner: o, .. }) if o == owner))
}

#[cfg(test)]
pub(crate) mod mem {
    //! An in-memory [`AllocState`] for unit tests of the allocation order.
    use std::collections::{BTreeMap, HashMap};
    use std::convert::Infallible;

    use super::*;

    #[derive(Default)]
    pub struct MemState {
        pub slots: BTreeMap<u128, Slot>,
        cursors: HashMap<String, Cursor>,
        seq: u64,
        queue: BTreeMap<(String, u64), u128>,
    }

    impl AllocState for MemState {
        type Error = Infallible;
        fn slot(&self, ip: u128) -> Result<Option<Slot>, Infallible> {
            Ok(self.slots.get(&ip).cloned())
        }
        fn put_slot(&mut self, ip: u128, slot: &Slot) -> Result<(), Infallible> {
            self.slots.insert(ip, slot.clone());
            Ok(())
        }
        fn remove_slot(&mut self, ip: u128) -> Result<(), Infallible> {
            self.slots.remove(&ip);
            Ok(())
        }
        fn cursor(&self, pool: &str) -> Result<Option<Cursor>, Infallible> {
            Ok(self.cursors.get(pool).copied())
        }
        fn put_cursor(&mut self, pool: &str, cursor: Cursor) -> Result<(), Infallible> {
            self.cursors.insert(pool.to_string(), cursor);
            Ok(())
        }
        fn next_seq(&mut self) -> Result<u64, Infallible> {
            self.seq += 1;
            Ok(self.seq)
        }
        fn push_released(&mut self, pool: &str, seq: u64, ip: u128) -> Result<(), Infallible> {
            self.queue.insert((pool.to_string(), seq), ip);
            Ok(())
        }
        fn pop_oldest_released(&mut self, pool: &str) -> Result<Option<(u64, u128)>, Infallible> {
            let first = self
                .queue
                .range((pool.to_string(), 0)..)
                .next()
                .map(|((p, s), ip)| (p.clone(), *s, *ip));
            Ok(match first {
                Some((p, seq, ip)) if p == pool => {
                    self.queue.remove(&(p, seq));
                    Some((seq, ip))
                }
                _ => None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mem::MemState;
    use super::*;
    use crate::pool::PoolSpec;

    fn pool(name: &str, ips: &[&str]) -> Pool {
        let spec = PoolSpec {
            name: Some(name.into()),
            subnet: "10.0.0.0/24".into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            ..PoolSpec::default()
        };
        Pool::from_spec(&spec, None).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn alloc(state: &mut MemState, p: &Pool, owner: &str) -> Option<String> {
        allocate(state, p, owner).unwrap().map(|ip| ip.to_string())
    }

    #[test]
    fn hands_out_in_order_once_each_then_runs_dry() {
        let p = pool("p", &["10.0.0.10-10.0.0.12"]);
        let mut s = MemState::default();
        let got: Vec<_> = (0..4).map(|i| alloc(&mut s, &p, &format!("c{i}"))).collect();
        assert_eq!(
            got,
            [
                Some("10.0.0.10".into()),
                Some("10.0.0.11".into()),
                Some("10.0.0.12".into()),
                None
            ]
        );
    }

    #[test]
    fn a_just_released_address_waits_behind_every_other_free_one() {
        let p = pool("p", &["10.0.0.10-10.0.0.14"]);
        let mut s = MemState::default();
        for i in 0..3 {
            alloc(&mut s, &p, &format!("c{i}"));
        }
        assert!(release(&mut s, ip("10.0.0.10"), "c0").unwrap());
        // Never-used addresses first.
        assert_eq!(alloc(&mut s, &p, "d0").as_deref(), Some("10.0.0.13"));
        assert_eq!(alloc(&mut s, &p, "d1").as_deref(), Some("10.0.0.14"));
        // Then least recently released first, whatever the address order.
        assert!(release(&mut s, ip("10.0.0.12"), "c2").unwrap());
        assert!(release(&mut s, ip("10.0.0.11"), "c1").unwrap());
        assert_eq!(alloc(&mut s, &p, "d2").as_deref(), Some("10.0.0.10"));
        assert_eq!(alloc(&mut s, &p, "d3").as_deref(), Some("10.0.0.12"));
        assert_eq!(alloc(&mut s, &p, "d4").as_deref(), Some("10.0.0.11"));
        assert_eq!(alloc(&mut s, &p, "d5"), None);
    }

    #[test]
    fn release_needs_the_holder() {
        let p = pool("p", &["10.0.0.10"]);
        let mut s = MemState::default();
        alloc(&mut s, &p, "a");
        assert!(!release(&mut s, ip("10.0.0.10"), "b").unwrap());
        assert!(holds(&s, ip("10.0.0.10"), "a").unwrap());
        assert!(release(&mut s, ip("10.0.0.10"), "a").unwrap());
        assert!(
            !release(&mut s, ip("10.0.0.10"), "a").unwrap(),
            "second release is a no-op"
        );
        assert!(!holds(&s, ip("10.0.0.10"), "a").unwrap());
    }

    #[test]
    fn overlapping_pools_never_share_an_address() {
        let a = pool("a", &["10.0.0.10-10.0.0.11"]);
        let b = pool("b", &["10.0.0.11-10.0.0.12"]);
        let mut s = MemState::default();
        let mut got = vec![
            alloc(&mut s, &a, "x"),
            alloc(&mut s, &a, "y"),
            alloc(&mut s, &b, "z"),
            alloc(&mut s, &b, "w"),
        ];
        got.sort();
        assert_eq!(
            got,
            [
                None,
                Some("10.0.0.10".into()),
                Some("10.0.0.11".into()),
                Some("10.0.0.12".into())
            ]
        );
    }

    #[test]
    fn a_changed_pool_is_walked_again() {
        let mut s = MemState::default();
        let small = pool("p", &["10.0.0.20-10.0.0.21"]);
        alloc(&mut s, &small, "a");
        alloc(&mut s, &small, "b");
        assert_eq!(alloc(&mut s, &small, "c"), None);
        // Grown below the cursor: the new addresses are found.
        let grown = pool("p", &["10.0.0.10", "10.0.0.20-10.0.0.21"]);
        assert_eq!(alloc(&mut s, &grown, "c").as_deref(), Some("10.0.0.10"));
        // Shrunk: a released address the pool no longer holds is dropped, not handed out.
        release(&mut s, ip("10.0.0.21"), "b").unwrap();
        let shrunk = pool("p", &["10.0.0.10", "10.0.0.20"]);
        assert_eq!(alloc(&mut s, &shrunk, "d"), None);
        assert!(!s.slots.contains_key(&ip_to_key(ip("10.0.0.21"))));
    }

    #[test]
    fn stale_queue_entries_are_skipped() {
        let p = pool("p", &["10.0.0.10-10.0.0.11"]);
        let mut s = MemState::default();
        alloc(&mut s, &p, "a");
        alloc(&mut s, &p, "b");
        release(&mut s, ip("10.0.0.10"), "a").unwrap(); // seq 1
        assert_eq!(alloc(&mut s, &p, "c").as_deref(), Some("10.0.0.10"));
        release(&mut s, ip("10.0.0.10"), "c").unwrap(); // seq 2
        release(&mut s, ip("10.0.0.11"), "b").unwrap(); // seq 3
        assert_eq!(alloc(&mut s, &p, "d").as_deref(), Some("10.0.0.10"));
        assert_eq!(alloc(&mut s, &p, "e").as_deref(), Some("10.0.0.11"));
        assert_eq!(alloc(&mut s, &p, "f"), None);
    }
}
