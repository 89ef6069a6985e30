//! The decisions behind the SpiderIPPoolRegistry ([`spiderpool_api::crd::registry`]): what a
//! pool's entry covers, whether it may join, and which entries are gone. Pure; the read and the
//! guarded write are in [`super::register`].
//!
//! Why a registry and not a check at pool creation: two pools created (or edited) at the same
//! moment would each pass a check that reads the other's old state, and the agents' writes are
//! guarded per pool, so nothing else would stop both from handing out the same address. An entry
//! joins only through a write guarded by the registry's own resourceVersion, so each admission
//! has seen every one before it.
//!
//! Why it is enough: a writer decides on one read of its pool and writes guarded by that read's
//! resourceVersion; the entry it relies on changes only when the pool's spec changes (a new
//! generation), when the pool is deleted, or when it leaves the registry after deletion, and each
//! of those changes the pool's resourceVersion first. A writer that decided on an entry that is
//! no longer there therefore always loses its write.

use std::net::IpAddr;

use spiderpool_api::crd::{IPPoolRegistrySpec, RegisteredPool, SpiderIPPool};

use super::pool_of;
use crate::range::{Family, IpSet, Range, ip_to_key, parse_range};

/// A pool as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub family: Family,
    /// What the pool may hand out at this generation, plus what it holds outside that (addresses
    /// given under an earlier spec stay its own until they are released).
    pub footprint: IpSet,
}

/// The registry entry a SpiderIPPool object needs, or why it cannot have one (an invalid spec, an
/// unreadable status).
pub fn candidate_of(obj: &SpiderIPPool) -> Result<Candidate, String> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let pool = pool_of(obj).map_err(|e| e.to_string())?;
    let held = obj
        .status
        .as_ref()
        .map(|s| s.held())
        .transpose()
        .map_err(|e| format!("pool {name}: status.allocatedIPsByNode: {e}"))?
        .unwrap_or_default();
    let mut ranges = pool.set.ranges().to_vec();
    for ip in held.keys().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
        let key = ip_to_key(ip);
        if Family::of(ip) == pool.family && !pool.set.contains(key) {
            ranges.push(Range { start: key, end: key });
        }
    }
    Ok(Candidate {
        name,
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        generation: obj.metadata.generation.unwrap_or(0),
        family: pool.family,
        footprint: IpSet::from_ranges(ranges),
    })
}

/// Whether the registry lists the pool `uid` at `generation`: only then may it hand out new
/// addresses.
pub fn is_registered(spec: &IPPoolRegistrySpec, uid: &str, generation: i64) -> bool {
    spec.pools
        .iter()
        .any(|p| p.uid == uid && p.generation == generation)
}

/// What [`admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Already listed at this generation: nothing to write.
    Registered,
    /// Its addresses are another entry's: the reason, naming both.
    Refused(String),
    /// The registry with the candidate's entry added or replaced, to be written guarded by the
    /// resourceVersion `spec` was read at.
    Write(IPPoolRegistrySpec),
}

/// Decides whether `cand` may join the registry `spec` (read from the API server): it may when
/// none of its addresses is in another entry. Its own older entry is replaced.
pub fn admit(spec: &IPPoolRegistrySpec, cand: &Candidate) -> Admission {
    if is_registered(spec, &cand.uid, cand.generation) {
        return Admission::Registered;
    }
    for other in spec.pools.iter().filter(|p| p.uid != cand.uid) {
        let theirs = match entry_set(other) {
            Ok(s) => s,
            Err(bad) => {
                // Written only by this code; if it cannot be read, no overlap can be ruled out.
                return Admission::Refused(format!(
                    "the registry entry of pool {} is unreadable ({bad}); no address can be checked against it",
                    other.name
                ));
            }
        };
        let common = cand.footprint.subtract(&cand.footprint.subtract(&theirs));
        if let Some(first) = common.ranges().first() {
            return Admission::Refused(format!(
                "{} of its addresses ({}{}) belong to pool {}, which was in use first",
                common.len(),
                first.text(),
                if common.ranges().len() > 1 { ", …" } else { "" },
                other.name
            ));
        }
    }
    let mut pools: Vec<RegisteredPool> = spec.pools.iter().filter(|p| p.uid != cand.uid).cloned().collect();
    pools.push(RegisteredPool {
        name: cand.name.clone(),
        uid: cand.uid.clone(),
        generation: cand.generation,
        ips: cand.footprint.ranges().iter().map(Range::text).collect(),
    });
    pools.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uid.cmp(&b.uid)));
    Admission::Write(IPPoolRegistrySpec { pools })
}

/// The registry without the entries `keep` refuses, or `None` when it keeps them all.
pub fn prune(
    spec: &IPPoolRegistrySpec,
    keep: impl Fn(&RegisteredPool) -> bool,
) -> Option<IPPoolRegistrySpec> {
    let pools: Vec<RegisteredPool> = spec.pools.iter().filter(|p| keep(p)).cloned().collect();
    (pools.len() != spec.pools.len()).then_some(IPPoolRegistrySpec { pools })
}

fn entry_set(entry: &RegisteredPool) -> Result<IpSet, String> {
    let ranges = entry
        .ips
        .iter()
        .map(|text| parse_range(text).map(|(_, r)| r).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(IpSet::from_ranges(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(name: &str, uid: &str, generation: i64, ips: &[&str], held: &[&str]) -> SpiderIPPool {
        let allocated: serde_json::Map<String, serde_json::Value> = held
            .iter()
            .map(|ip| (ip.to_string(), json!({"pod": "ns/p", "podUid": "u"})))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": name, "uid": uid, "generation": generation},
            "spec": {"subnet": "10.0.0.0/24", "ips": ips},
            "status": {"allocatedIPsByNode": {"n1": serde_json::to_string(&allocated).unwrap()}},
        }))
        .unwrap()
    }

    fn written(a: Admission) -> IPPoolRegistrySpec {
        match a {
            Admission::Write(spec) => spec,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn disjoint_pools_both_join_and_a_repeat_writes_nothing() {
        let a = candidate_of(&pool("a", "ua", 1, &["10.0.0.10-10.0.0.19"], &[])).unwrap();
        let b = candidate_of(&pool("b", "ub", 1, &["10.0.0.20-10.0.0.29"], &[])).unwrap();
        let reg = written(admit(&IPPoolRegistrySpec::default(), &b));
        let reg = written(admit(&reg, &a));
        assert_eq!(
            reg.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(reg.pools[0].ips, ["10.0.0.10-10.0.0.19"]);
        assert_eq!(admit(&reg, &a), Admission::Registered);
        assert!(is_registered(&reg, "ua", 1));
        assert!(!is_registered(&reg, "ua", 2));
    }

    #[test]
    fn an_overlapping_pool_is_refused_naming_the_addresses_and_the_owner() {
        let a = candidate_of(&pool("a", "ua", 1, &["10.0.0.10-10.0.0.19"], &[])).unwrap();
        let b = candidate_of(&pool("b", "ub", 1, &["10.0.0.15-10.0.0.30"], &[])).unwrap();
        let reg = written(admit(&IPPoolRegistrySpec::default(), &a));
        match admit(&reg, &b) {
            Admission::Refused(why) => {
                assert!(why.contains("5 of its addresses (10.0.0.15-10.0.0.19)"), "{why}");
                assert!(why.contains("pool a"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn excluded_addresses_do_not_count_as_overlap() {
        let mut obj = pool("a", "ua", 1, &["10.0.0.10-10.0.0.30"], &[]);
        obj.spec.exclude_ips = vec!["10.0.0.20-10.0.0.30".into()];
        let a = candidate_of(&obj).unwrap();
        let b = candidate_of(&pool("b", "ub", 1, &["10.0.0.20-10.0.0.30"], &[])).unwrap();
        let reg = written(admit(&IPPoolRegistrySpec::default(), &a));
        assert!(matches!(admit(&reg, &b), Admission::Write(_)));
    }

    #[test]
    fn an_edited_pool_keeps_the_addresses_it_still_holds() {
        // a held 10.0.0.12 and was edited to another range: .12 stays a's until released, so b
        // cannot take it, and a's new generation replaces its old entry.
        let a1 = candidate_of(&pool("a", "ua", 1, &["10.0.0.10-10.0.0.19"], &["10.0.0.12"])).unwrap();
        let reg = written(admit(&IPPoolRegistrySpec::default(), &a1));
        let a2 = candidate_of(&pool("a", "ua", 2, &["10.0.0.40-10.0.0.49"], &["10.0.0.12"])).unwrap();
        let reg = written(admit(&reg, &a2));
        assert_eq!(reg.pools.len(), 1);
        assert_eq!(reg.pools[0].generation, 2);
        assert_eq!(reg.pools[0].ips, ["10.0.0.12", "10.0.0.40-10.0.0.49"]);
        let b = candidate_of(&pool("b", "ub", 1, &["10.0.0.10-10.0.0.19"], &[])).unwrap();
        assert!(matches!(admit(&reg, &b), Admission::Refused(why) if why.contains("10.0.0.12")));
    }

    #[test]
    fn a_recreated_pool_of_the_same_name_is_another_entry() {
        let old = candidate_of(&pool("a", "u-old", 1, &["10.0.0.10-10.0.0.19"], &[])).unwrap();
        let new = candidate_of(&pool("a", "u-new", 1, &["10.0.0.10-10.0.0.19"], &[])).unwrap();
        let reg = written(admit(&IPPoolRegistrySpec::default(), &old));
        assert!(matches!(admit(&reg, &new), Admission::Refused(_)));
        let reg = prune(&reg, |p| p.uid != "u-old").unwrap();
        assert!(matches!(admit(&reg, &new), Admission::Write(_)));
        assert_eq!(prune(&reg, |_| true), None);
    }

    #[test]
    fn an_unreadable_entry_refuses_rather_than_guessing() {
        let reg = IPPoolRegistrySpec {
            pools: vec![RegisteredPool {
                name: "x".into(),
                uid: "ux".into(),
                generation: 1,
                ips: vec!["not-an-ip".into()],
            }],
        };
        let a = candidate_of(&pool("a", "ua", 1, &["10.0.0.10"], &[])).unwrap();
        assert!(matches!(admit(&reg, &a), Admission::Refused(why) if why.contains("unreadable")));
    }

    #[test]
    fn an_invalid_spec_has_no_candidate() {
        let mut obj = pool("a", "ua", 1, &["10.0.0.10"], &[]);
        obj.spec.subnet = "nonsense".into();
        assert!(candidate_of(&obj).is_err());
    }
}
