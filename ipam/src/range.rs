//! Address sets as sorted, disjoint ranges of integers: what a pool may hand out.
//!
//! Addresses are kept as `u128` in one space for both families (IPv4 as IPv4-mapped IPv6), so a
//! store keyed by that number can never hold one address twice, whatever pool it came from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4-mapped prefix `::ffff:0:0/96`.
const V4_MAPPED: u128 = 0xffff_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// The address as a key in the one shared number space.
pub fn ip_to_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`ip_to_key`].
pub fn key_to_ip(key: u128) -> IpAddr {
    if key >> 32 == V4_MAPPED >> 32 {
        // The mask keeps the low 32 bits, so the conversion cannot truncate.
        IpAddr::V4(Ipv4Addr::from((key & 0xffff_ffff) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(key))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u128,
    pub end: u128,
}

impl Range {
    /// Number of addresses (a range always holds at least one).
    pub fn size(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    /// `a` or `a-b`, as pools and registry entries write it.
    pub fn text(&self) -> String {
        if self.start == self.end {
            key_to_ip(self.start).to_string()
        } else {
            format!("{}-{}", key_to_ip(self.start), key_to_ip(self.end))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{0:?} is not an IP address or an `a-b` range")]
    Malformed(String),
    #[error("range {0:?} mixes IPv4 and IPv6")]
    MixedFamilies(String),
    #[error("range {0:?} ends before it starts")]
    Reversed(String),
}

/// Parses `10.0.0.5` or `10.0.0.5-10.0.0.9` (spaces around the dash tolerated).
pub fn parse_range(text: &str) -> Result<(Family, Range), RangeError> {
    let malformed = || RangeError::Malformed(text.to_string());
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let start: IpAddr = a.parse().map_err(|_| malformed())?;
    let end: IpAddr = b.parse().map_err(|_| malformed())?;
    if Family::of(start) != Family::of(end) {
        return Err(RangeError::MixedFamilies(text.to_string()));
    }
    let (start, end) = (ip_to_key(start), ip_to_key(end));
    if end < start {
        return Err(RangeError::Reversed(text.to_string()));
    }
    Ok((Family::of(key_to_ip(start)), Range { start, end }))
}

/// The addresses that `entries` (single IPs or `a-b` ranges, as SpiderReservedIP lists them)
/// name, as ranges: a reserved /64 costs one range, not 2^64 keys. Entries that do not parse are
/// skipped (the API server's schema refuses them).
pub fn set_of_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> IpSet {
    IpSet::from_ranges(
        entries
            .into_iter()
            .filter_map(|e| parse_range(e).ok())
            .map(|(_, r)| r)
            .collect(),
    )
}

/// A set of addresses of one family: sorted, disjoint, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    ranges: Vec<Range>,
}

impl IpSet {
    /// Builds a set, merging overlapping and adjacent ranges.
    pub fn from_ranges(mut ranges: Vec<Range>) -> IpSet {
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        IpSet { ranges: merged }
    }

    /// The set of single addresses `keys`.
    pub fn of_keys(keys: impl IntoIterator<Item = u128>) -> IpSet {
        IpSet::from_ranges(keys.into_iter().map(|k| Range { start: k, end: k }).collect())
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of addresses (saturating at `u128::MAX`).
    pub fn len(&self) -> u128 {
        self.ranges.iter().fold(0u128, |n, r| n.saturating_add(r.size()))
    }

    pub fn contains(&self, key: u128) -> bool {
        self.index_of_range_at_or_after(key)
            .is_some_and(|i| self.ranges[i].start <= key)
    }

    /// The smallest member strictly greater than `after` (or the first member when `None`).
    pub fn next_after(&self, after: Option<u128>) -> Option<u128> {
        let Some(after) = after else {
            return self.ranges.first().map(|r| r.start);
        };
        let from = after.checked_add(1)?;
        let i = self.index_of_range_at_or_after(from)?;
        Some(self.ranges[i].start.max(from))
    }

    /// Removes every address of `other` from this set.
    pub fn subtract(&self, other: &IpSet) -> IpSet {
        let mut out = Vec::new();
        for r in &self.ranges {
            let mut start = r.start;
            let mut open = true;
            for x in other
                .ranges
                .iter()
                .filter(|x| x.end >= r.start && x.start <= r.end)
            {
                if x.start > start {
                    out.push(Range {
                        start,
                        end: x.start - 1,
                    });
                }
                match x.end.checked_add(1) {
                    Some(next) if next <= r.end => start = start.max(next),
                    _ => {
                        open = false;
                        break;
                    }
                }
            }
            if open && start <= r.end {
                out.push(Range { start, end: r.end });
            }
        }
        IpSet { ranges: out }
    }

    /// Every address of either set.
    pub fn union(&self, other: &IpSet) -> IpSet {
        IpSet::from_ranges(self.ranges.iter().chain(&other.ranges).copied().collect())
    }

    /// The addresses in both sets.
    pub fn intersect(&self, other: &IpSet) -> IpSet {
        self.subtract(&self.subtract(other))
    }

    /// The `n` lowest addresses (all of them when the set is smaller).
    pub fn lowest(&self, n: u128) -> IpSet {
        let mut left = n;
        let mut out = Vec::new();
        for r in &self.ranges {
            if left == 0 {
                break;
            }
            let take = r.size().min(left);
            out.push(Range {
                start: r.start,
                end: r.start + (take - 1),
            });
            left -= take;
        }
        IpSet { ranges: out }
    }

    /// The `n` highest addresses (all of them when the set is smaller).
    pub fn highest(&self, n: u128) -> IpSet {
        let mut left = n;
        let mut out = Vec::new();
        for r in self.ranges.iter().rev() {
            if left == 0 {
                break;
            }
            let take = r.size().min(left);
            out.push(Range {
                start: r.end - (take - 1),
                end: r.end,
            });
            left -= take;
        }
        out.reverse();
        IpSet { ranges: out }
    }

    /// The set as entries `a` / `a-b`, lowest first.
    pub fn texts(&self) -> Vec<String> {
        self.ranges.iter().map(Range::text).collect()
    }

    /// A stable 64-bit digest (FNV-1a), persisted to notice that a pool's addresses changed.
    pub fn fingerprint(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for r in &self.ranges {
            for byte in r.start.to_le_bytes().into_iter().chain(r.end.to_le_bytes()) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    }

    /// Index of the first range whose end is at or after `key`.
    fn index_of_range_at_or_after(&self, key: u128) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.end < key);
        (i < self.ranges.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ip: &str) -> u128 {
        ip_to_key(ip.parse().unwrap())
    }

    fn set(ranges: &[&str]) -> IpSet {
        IpSet::from_ranges(ranges.iter().map(|r| parse_range(r).unwrap().1).collect())
    }

    #[test]
    fn keys_round_trip_and_families_never_collide() {
        for ip in [
            "10.6.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "fd00:6::1",
            "::",
            "::1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(key_to_ip(ip_to_key(ip)), ip);
        }
        assert_ne!(k("1.2.3.4"), k("::1.2.3.4"));
    }

    #[test]
    fn parses_single_ips_and_ranges() {
        assert_eq!(parse_range("10.0.0.5").unwrap().1.size(), 1);
        assert_eq!(parse_range("10.0.0.5-10.0.0.9").unwrap().1.size(), 5);
        assert_eq!(parse_range("10.0.0.5 - 10.0.0.9").unwrap().1.size(), 5);
        let (fam, r) = parse_range("fd00::10-fd00::ffff").unwrap();
        assert_eq!((fam, r.size()), (Family::V6, 0xffff - 0x10 + 1));
    }

    #[test]
    fn rejects_malformed_ranges() {
        assert!(matches!(parse_range("10.0.0.300"), Err(RangeError::Malformed(_))));
        assert!(matches!(parse_range("10.0.0.1-"), Err(RangeError::Malformed(_))));
        assert!(matches!(
            parse_range("10.0.0.0/24"),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            parse_range("10.0.0.1-fd00::1"),
            Err(RangeError::MixedFamilies(_))
        ));
        assert!(matches!(
            parse_range("10.0.0.9-10.0.0.1"),
            Err(RangeError::Reversed(_))
        ));
    }

    #[test]
    fn merges_subtracts_and_walks() {
        let s = set(&["10.0.0.10-10.0.0.20", "10.0.0.21", "10.0.0.30-10.0.0.40"]);
        assert_eq!(s.ranges().len(), 2);
        assert_eq!(s.len(), 12 + 11);
        let s = s.subtract(&set(&["10.0.0.12", "10.0.0.15-10.0.0.35", "10.0.0.40"]));
        let members: Vec<u128> =
            std::iter::successors(s.next_after(None), |&ip| s.next_after(Some(ip))).collect();
        let want: Vec<u128> = ["10.0.0.10", "10.0.0.11", "10.0.0.13", "10.0.0.14"]
            .iter()
            .map(|ip| k(ip))
            .chain((36..=39).map(|i| k(&format!("10.0.0.{i}"))))
            .collect();
        assert_eq!(members, want);
        assert!(s.contains(k("10.0.0.13")));
        assert!(!s.contains(k("10.0.0.12")));
        assert!(!s.contains(k("10.0.0.41")));
        assert_eq!(s.next_after(Some(k("10.0.0.39"))), None);
        assert_eq!(s.next_after(Some(k("10.0.0.1"))), Some(k("10.0.0.10")));
    }

    #[test]
    fn subtract_edges() {
        let s = set(&["10.0.0.1-10.0.0.5"]);
        assert!(s.subtract(&set(&["10.0.0.0-10.0.0.9"])).is_empty());
        assert_eq!(s.subtract(&set(&["10.0.0.1"])).len(), 4);
        assert_eq!(s.subtract(&set(&["10.0.0.5"])).len(), 4);
        assert_eq!(s.subtract(&IpSet::default()), s);
        let all = set(&["::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]);
        assert_eq!(all.len(), u128::MAX);
        assert_eq!(all.subtract(&set(&["::"])).next_after(None), Some(1));
        assert_eq!(all.next_after(Some(u128::MAX)), None);
    }

    #[test]
    fn fingerprint_follows_content() {
        let a = set(&["10.0.0.1-10.0.0.5"]);
        assert_eq!(
            a.fingerprint(),
            set(&["10.0.0.1-10.0.0.3", "10.0.0.4-10.0.0.5"]).fingerprint()
        );
        assert_ne!(a.fingerprint(), set(&["10.0.0.1-10.0.0.6"]).fingerprint());
    }
}
