//! Where an agent looks for a free address of a pool whose holders are SpiderIPClaims
//! (`spiderpool_api::crd::claim`): one object per address, so an agent learns that an address is
//! taken from the API server's AlreadyExists, not from a shared copy of the pool.
//!
//! Each agent starts its walk at its share of the pool: the `rank`th of `of` equal parts, its
//! place among the nodes the pool admits ([`Placement::share`]), so agents that allocate at once
//! start apart, and a lone node hands addresses out in order from the lowest. After a miss (past
//! a taken address another agent is likely walking the same way) it jumps: with a share, to its
//! part moved by 1/2, then 1/4, 3/4, 1/8 … of the pool (the van der Corput sequence), skipping
//! places it believes taken, so agents that overflow their parts at once land apart; without one,
//! to a place of its own (a hash of its node and the address) inside the widest stretch it
//! believes free. What it believes taken comes from what the agent knew when it started the walk
//! ([`Placement::start`]: its own claims of the pool, and what agents from before claims hold in
//! its status), a list of the pool's claims (at its first miss, again after [`LIST_AFTER_MISSES`]
//! misses in a row, and when it believes the pool full), its own creates and deletes, and its
//! misses. A pool's first claims need no list: in its own
//! part an agent rarely finds another's claim, and a list is read when it does (of a hundred
//! agents starting at once, each reading the pool's claims cost more than the misses it saved).
//! An address it never saw released is not handed out until the next list, which costs a little
//! reuse, never an address twice: the API server decides that.
//!
//! The walk moves on from the last address it gave, so an address just released is reused only
//! after the others had their turn.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::range::{IpSet, ip_to_key, key_to_ip};

/// Misses in a row after which the pool's claims are listed again.
pub const LIST_AFTER_MISSES: u32 = 16;

/// Places of its share's sequence an agent tries per miss before it jumps by hash instead.
const MOST_JUMPS: u32 = 64;

/// One agent's knowledge of one pool's claims and its walk.
#[derive(Debug, Default)]
pub struct Placement {
    /// Addresses known claimed, by anyone.
    taken: HashSet<u128>,
    /// Addresses this agent is creating claims of now.
    pending: HashSet<u128>,
    /// The last address handed out or jumped to, for the pool's addresses of `fingerprint`.
    cursor: Option<u128>,
    fingerprint: Option<u64>,
    misses: u32,
    /// Whether the walk has what it starts from ([`Placement::start`] or a list).
    started: bool,
    /// Whether the pool's claims were ever listed.
    listed: bool,
    /// This agent's part of the pool: `(rank, of)`; `None` is the whole pool, from the lowest.
    share: Option<(u128, u128)>,
    /// Jumps made from the share: the next one's place in the van der Corput sequence.
    jumps: u32,
}

/// What to do after a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterMiss {
    TryNext,
    ListFirst,
}

impl Placement {
    /// Whether the walk has started: [`Placement::start`] or [`Placement::listed`] came first.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Starts the walk without a list: what the agent knows is held (its own claims of the pool,
    /// the holders agents from before claims left in its status) is `known`; the rest is believed
    /// free until a miss says otherwise.
    pub fn start(&mut self, known: impl IntoIterator<Item = IpAddr>) {
        self.taken.extend(known.into_iter().map(ip_to_key));
        self.started = true;
    }

    /// Whether the pool's claims were ever listed (a first list may come from the API server's
    /// cache; later ones, after misses, from etcd).
    pub fn has_listed(&self) -> bool {
        self.listed
    }

    /// The pool's claims as listed: every address in `taken` is held.
    pub fn listed(&mut self, taken: impl IntoIterator<Item = IpAddr>) {
        self.taken = taken.into_iter().map(ip_to_key).collect();
        self.listed = true;
        self.started = true;
        self.misses = 0;
    }

    /// This agent is the `rank`th (from 0) of `of` agents sharing the pool: a walk that starts
    /// (the first, or after the pool's addresses changed) starts at the `rank`th of `of` equal
    /// parts of it. A rank out of range is ignored.
    pub fn share(&mut self, rank: usize, of: usize) {
        self.share = (rank < of).then_some((rank as u128, of as u128));
    }

    /// The next address of `usable` to try, marked as being created; `None` when every address
    /// is believed taken.
    pub fn next(&mut self, usable: &IpSet) -> Option<IpAddr> {
        let fingerprint = usable.fingerprint();
        if self.fingerprint != Some(fingerprint) {
            self.fingerprint = Some(fingerprint);
            self.cursor = self
                .share
                .and_then(|(rank, of)| cursor_before(usable, fraction_of(usable.len(), rank, of)));
        }
        let busy: HashSet<u128> = self.taken.union(&self.pending).copied().collect();
        let mut last = self.cursor;
        let ip = next_free(usable, &busy, &mut last)?;
        self.cursor = last;
        self.pending.insert(ip_to_key(ip));
        Some(ip)
    }

    /// The claim of `ip` was created by this agent.
    pub fn created(&mut self, ip: IpAddr) {
        let key = ip_to_key(ip);
        self.pending.remove(&key);
        self.taken.insert(key);
        self.misses = 0;
    }

    /// The claim of `ip` already existed: the walk jumps to a place of `node`'s own in the
    /// widest stretch of `usable` believed free.
    pub fn missed(&mut self, ip: IpAddr, usable: &IpSet, node: &str) -> AfterMiss {
        let key = ip_to_key(ip);
        self.pending.remove(&key);
        self.taken.insert(key);
        self.misses += 1;
        if !self.jump_from_share(usable) {
            let busy = IpSet::of_keys(self.taken.iter().chain(&self.pending).copied());
            let free = usable.subtract(&busy);
            if let Some(widest) = free.ranges().iter().max_by_key(|r| r.size()) {
                self.cursor = start_in(&IpSet::from_ranges(vec![*widest]), &format!("{node}/{key}"));
            }
        }
        // The first miss of a walk started without a list: what else is taken is unknown.
        if !self.listed || self.misses.is_multiple_of(LIST_AFTER_MISSES) {
            AfterMiss::ListFirst
        } else {
            AfterMiss::TryNext
        }
    }

    /// Moves the cursor to the next place of the share's sequence not believed taken (at most
    /// [`MOST_JUMPS`] tried); `false` without a share of more than one part, or when every place
    /// tried is taken.
    fn jump_from_share(&mut self, usable: &IpSet) -> bool {
        let Some((rank, of)) = self.share.filter(|(_, of)| *of > 1) else {
            return false;
        };
        let len = usable.len();
        let start = fraction_of(len, rank, of);
        for _ in 0..MOST_JUMPS {
            self.jumps = self.jumps.wrapping_add(1).max(1);
            let (num, den) = van_der_corput(self.jumps);
            let at = (start + fraction_of(len, num, den)) % len;
            let cursor = cursor_before(usable, at);
            let free = usable
                .next_after(cursor)
                .is_some_and(|k| !self.taken.contains(&k) && !self.pending.contains(&k));
            if free {
                self.cursor = cursor;
                return true;
            }
        }
        false
    }

    /// Creating the claim of `ip` failed for another reason: nothing is known of it.
    pub fn abandoned(&mut self, ip: IpAddr) {
        self.pending.remove(&ip_to_key(ip));
    }

    /// This agent deleted the claim of `ip`.
    pub fn released(&mut self, ip: IpAddr) {
        self.taken.remove(&ip_to_key(ip));
    }
}

/// `len × num / den`, rounded down, without overflowing for the widest IPv6 pools (`num < den`).
fn fraction_of(len: u128, num: u128, den: u128) -> u128 {
    len / den * num + len % den * num / den
}

/// The `n`th (from 1) of 1/2, 1/4, 3/4, 1/8, 5/8, … as `(numerator, denominator)`: `n`'s bits
/// mirrored behind the binary point.
fn van_der_corput(n: u32) -> (u128, u128) {
    let bits = u32::BITS - n.leading_zeros();
    let mirrored = n.reverse_bits() >> (u32::BITS - bits);
    (u128::from(mirrored), 1u128 << bits)
}

/// Where `salt` starts walking `usable`: the cursor just before a hashed place in it.
fn start_in(usable: &IpSet, salt: &str) -> Option<u128> {
    let len = usable.len();
    if len == 0 {
        return None;
    }
    // FNV-1a: stable across processes and releases, unlike std's hasher.
    let hash = salt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    cursor_before(usable, u128::from(hash) % len)
}

/// The cursor from which a walk of `usable` starts at its `n`th address.
fn cursor_before(usable: &IpSet, mut n: u128) -> Option<u128> {
    for r in usable.ranges() {
        if n < r.size() {
            // The walk starts after the cursor; at the set's first address, before it.
            return (r.start + n).checked_sub(1);
        }
        n -= r.size();
    }
    None
}

/// The first free address of `usable` after `last`, wrapping around to its start once; moves
/// `last` to it.
fn next_free(usable: &IpSet, taken: &HashSet<u128>, last: &mut Option<u128>) -> Option<IpAddr> {
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

/// The address a key stands for (for tests and logs).
pub fn address(key: u128) -> IpAddr {
    key_to_ip(key)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{AfterMiss, LIST_AFTER_MISSES, Placement};
    use crate::range::set_of_entries;

    #[test]
    fn a_walk_gives_every_address_once_then_none_and_moves_on_after_a_release() {
        let usable = set_of_entries(["10.0.0.1-10.0.0.8"]);
        let mut p = Placement::default();
        assert!(!p.is_started());
        p.listed(["10.0.0.3".parse().unwrap()]);
        assert!(p.is_started() && p.has_listed());
        let mut got = HashSet::new();
        while let Some(ip) = p.next(&usable) {
            p.created(ip);
            assert!(got.insert(ip), "{ip} twice");
        }
        assert_eq!(got.len(), 7, "all but the listed one");
        assert!(!got.contains(&"10.0.0.3".parse().unwrap()));
        // Two released: both come back, in walk order from where the walk stood, then none.
        let last = p.cursor.unwrap();
        let (five, six): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap());
        p.released(six);
        p.released(five);
        let first = p.next(&usable).unwrap();
        let want_first = if crate::range::ip_to_key(six) > last && crate::range::ip_to_key(five) <= last {
            six
        } else {
            five
        };
        assert_eq!(
            first,
            want_first,
            "the walk moves on from {}",
            super::address(last)
        );
        p.created(first);
        let second = p.next(&usable).unwrap();
        assert_eq!(
            [first, second].into_iter().collect::<HashSet<_>>(),
            [five, six].into()
        );
        p.created(second);
        assert_eq!(p.next(&usable), None);
    }

    #[test]
    fn a_lone_walk_starts_lowest_and_nodes_that_miss_there_jump_apart() {
        let usable = set_of_entries(["10.0.0.0-10.0.3.255"]);
        let lowest: std::net::IpAddr = "10.0.0.0".parse().unwrap();
        let after_miss: HashSet<_> = (0..10)
            .map(|i| {
                let mut p = Placement::default();
                p.listed([]);
                let first = p.next(&usable).unwrap();
                assert_eq!(first, lowest);
                // Another node got it first.
                assert_eq!(p.missed(first, &usable, &format!("node-{i}")), AfterMiss::TryNext);
                p.next(&usable).unwrap()
            })
            .collect();
        assert_eq!(after_miss.len(), 10, "{after_miss:?}");
        let key = crate::range::ip_to_key;
        assert!(
            after_miss.iter().all(|ip| key(*ip) > key(lowest) + 1),
            "jumped, not walked on: {after_miss:?}"
        );
    }

    #[test]
    fn nodes_sharing_a_pool_start_in_their_own_parts_and_fill_it_without_meeting() {
        // Two ranges: the parts count addresses, not the space between ranges.
        let usable = set_of_entries(["10.0.0.0-10.0.0.9", "10.0.1.0-10.0.1.29"]);
        let mut walks: Vec<Placement> = (0..4)
            .map(|rank| {
                let mut p = Placement::default();
                p.share(rank, 4);
                p.listed([]);
                p
            })
            .collect();
        let firsts: Vec<String> = walks
            .iter_mut()
            .map(|p| p.next(&usable).unwrap().to_string())
            .collect();
        assert_eq!(firsts, ["10.0.0.0", "10.0.1.0", "10.0.1.10", "10.0.1.20"]);
        // Each takes its ten in order; none walks into another's part.
        let mut all = HashSet::new();
        for (rank, p) in walks.iter_mut().enumerate() {
            let mut ip = firsts[rank].parse().unwrap();
            for _ in 1..10 {
                p.created(ip);
                ip = p.next(&usable).unwrap();
                assert!(all.insert(ip), "{ip} twice");
            }
        }
        assert_eq!(all.len(), 36);
        // A rank out of range, and one node alone, walk the whole pool from the lowest.
        for (rank, of) in [(4, 4), (0, 1)] {
            let mut p = Placement::default();
            p.share(rank, of);
            p.listed([]);
            assert_eq!(p.next(&usable).unwrap().to_string(), "10.0.0.0");
        }
    }

    #[test]
    fn agents_that_overflow_their_parts_at_once_jump_to_places_apart() {
        assert_eq!(super::van_der_corput(1), (1, 2));
        assert_eq!(super::van_der_corput(2), (1, 4));
        assert_eq!(super::van_der_corput(3), (3, 4));
        assert_eq!(super::van_der_corput(5), (5, 8));
        let usable = set_of_entries(["10.0.0.0-10.0.0.79"]);
        let key = |ip: std::net::IpAddr| crate::range::ip_to_key(ip) as u32 & 0xff;
        // Four of eight parts; each agent misses at the start of the next part.
        let jumped: Vec<u32> = (0..4)
            .map(|rank| {
                let mut p = Placement::default();
                p.share(rank, 8);
                p.listed([]);
                assert_eq!(key(p.next(&usable).unwrap()), 10 * rank as u32);
                let next_part = format!("10.0.0.{}", 10 * (rank + 1)).parse().unwrap();
                p.missed(next_part, &usable, "n");
                key(p.next(&usable).unwrap())
            })
            .collect();
        assert_eq!(jumped, [40, 50, 60, 70], "half the pool on, each its own place");
        // A place believed taken is skipped: the next in the sequence (a quarter on).
        let mut p = Placement::default();
        p.share(0, 8);
        p.listed(["10.0.0.40".parse().unwrap()]);
        p.next(&usable).unwrap();
        p.missed("10.0.0.10".parse().unwrap(), &usable, "n");
        assert_eq!(key(p.next(&usable).unwrap()), 20);
    }

    #[test]
    fn misses_in_a_row_ask_for_a_list_and_a_full_pool_gives_none() {
        let usable = set_of_entries(["10.0.0.1-10.0.0.40"]);
        let mut p = Placement::default();
        p.listed([]);
        for i in 1..=LIST_AFTER_MISSES {
            let ip = p.next(&usable).unwrap();
            let after = p.missed(ip, &usable, "a");
            assert_eq!(after == AfterMiss::ListFirst, i == LIST_AFTER_MISSES, "miss {i}");
        }
        let ip = p.next(&usable).unwrap();
        p.abandoned(ip);
        // Everything taken: none until a list shows some free again.
        p.listed(
            usable
                .ranges()
                .iter()
                .flat_map(|r| r.start..=r.end)
                .map(super::address),
        );
        assert_eq!(p.next(&usable), None);
        p.listed(["10.0.0.1".parse().unwrap()]);
        assert!(p.next(&usable).is_some());
    }

    #[test]
    fn an_address_being_created_is_not_given_to_a_second_claim() {
        let usable = set_of_entries(["10.0.0.1-10.0.0.2"]);
        let mut p = Placement::default();
        p.listed([]);
        let a = p.next(&usable).unwrap();
        let b = p.next(&usable).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.next(&usable), None);
        p.abandoned(a);
        assert_eq!(p.next(&usable), Some(a));
    }

    #[test]
    fn a_walk_started_without_a_list_skips_what_it_knows_and_asks_for_one_at_its_first_miss() {
        let usable = set_of_entries(["10.0.0.1-10.0.0.8"]);
        let mut p = Placement::default();
        p.share(1, 2);
        p.start(["10.0.0.5".parse().unwrap()]);
        assert!(p.is_started() && !p.has_listed());
        assert_eq!(
            p.next(&usable).unwrap().to_string(),
            "10.0.0.6",
            "its part, past its own claim"
        );
        let ip = p.next(&usable).unwrap();
        assert_eq!(
            p.missed(ip, &usable, "n"),
            AfterMiss::ListFirst,
            "the first miss lists"
        );
        p.listed(["10.0.0.5".parse().unwrap(), ip]);
        let next = p.next(&usable).unwrap();
        assert_eq!(
            p.missed(next, &usable, "n"),
            AfterMiss::TryNext,
            "listed: misses go on"
        );
    }
}
