//! Property tests of the parsers that read what users and netconfs write: ranges, address sets,
//! pools and the netconf itself. No input panics; what parses prints back to what it was.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use serde_json::json;
use spiderpool_cni::NetConf;
use spiderpool_ipam::config::{ClusterConfig, IpamConfig};
use spiderpool_ipam::pool::{Pool, PoolSpec};
use spiderpool_ipam::range::{Family, IpSet, Range, ip_to_key, key_to_ip, parse_range};

/// Strings that look like what people write in `ips` fields: addresses, ranges, near misses.
fn range_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!(
            "{}-{}",
            Ipv4Addr::from(a),
            Ipv4Addr::from(b)
        )),
        (any::<u128>(), any::<u128>()).prop_map(|(a, b)| format!(
            "{}-{}",
            Ipv6Addr::from(a),
            Ipv6Addr::from(b)
        )),
        (any::<u32>(), any::<u128>()).prop_map(|(a, b)| format!(
            "{} - {}",
            Ipv4Addr::from(a),
            Ipv6Addr::from(b)
        )),
        "[0-9.:a-f/ -]{0,40}",
    ]
}

/// Small address sets over a tiny space, so a naive set can check the range arithmetic.
fn small_set() -> impl Strategy<Value = (IpSet, BTreeSet<u128>)> {
    prop::collection::vec((0u128..64, 0u128..8), 0..6).prop_map(|spans| {
        let ranges: Vec<Range> = spans
            .iter()
            .map(|(s, len)| Range {
                start: *s,
                end: s + len,
            })
            .collect();
        let naive = spans.iter().flat_map(|(s, len)| *s..=s + len).collect();
        (IpSet::from_ranges(ranges), naive)
    })
}

fn members(set: &IpSet) -> BTreeSet<u128> {
    set.ranges().iter().flat_map(|r| r.start..=r.end).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_range_never_panics(text in range_text()) {
        let _ = parse_range(&text);
    }

    #[test]
    fn ipv4_ranges_round_trip(a: u32, b: u32) {
        let (lo, hi) = (a.min(b), a.max(b));
        let text = format!("{}-{}", Ipv4Addr::from(lo), Ipv4Addr::from(hi));
        let (family, range) = parse_range(&text).unwrap();
        prop_assert_eq!(family, Family::V4);
        prop_assert_eq!(key_to_ip(range.start), IpAddr::V4(lo.into()));
        prop_assert_eq!(key_to_ip(range.end), IpAddr::V4(hi.into()));
        prop_assert_eq!(range.size(), u128::from(hi - lo) + 1);
        if lo != hi {
            let reversed = format!("{}-{}", Ipv4Addr::from(hi), Ipv4Addr::from(lo));
            prop_assert!(parse_range(&reversed).is_err());
        }
    }

    #[test]
    fn ipv6_ranges_round_trip(a: u128, b: u128) {
        let (lo, hi) = (a.min(b), a.max(b));
        let text = format!("{}-{}", Ipv6Addr::from(lo), Ipv6Addr::from(hi));
        match parse_range(&text) {
            Ok((_, range)) => {
                prop_assert_eq!(range.start, ip_to_key(IpAddr::V6(lo.into())));
                prop_assert_eq!(range.end, ip_to_key(IpAddr::V6(hi.into())));
            }
            // Mixed: one end IPv4-mapped, which reads as IPv4, the other not.
            Err(e) => prop_assert!(e.to_string().contains("mixes"), "{}", e),
        }
    }

    #[test]
    fn address_sets_agree_with_a_naive_set((a, na) in small_set(), (b, nb) in small_set()) {
        prop_assert_eq!(members(&a), na.clone());
        let diff = a.subtract(&b);
        prop_assert_eq!(members(&diff), na.difference(&nb).copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(diff.len(), na.difference(&nb).count() as u128);
        for k in 0u128..80 {
            prop_assert_eq!(a.contains(k), na.contains(&k));
            prop_assert_eq!(a.next_after(Some(k)), na.range(k + 1..).next().copied());
        }
        // Sorted, disjoint and not adjacent.
        for w in a.ranges().windows(2) {
            prop_assert!(w[0].end + 1 < w[1].start);
        }
    }

    #[test]
    fn pools_from_any_strings_never_panic(
        subnet in "[0-9a-f.:/]{0,45}",
        ips in prop::collection::vec(range_text(), 0..4),
        exclude in prop::collection::vec(range_text(), 0..3),
        gateway in proptest::option::of("[0-9a-f.:]{0,40}"),
        version in proptest::option::of(any::<u8>()),
    ) {
        let spec = PoolSpec {
            name: Some("p".into()),
            ip_version: version,
            subnet,
            ips,
            exclude_ips: exclude,
            gateway,
            ..PoolSpec::default()
        };
        if let Ok(pool) = Pool::from_spec(&spec, None) {
            // What a valid pool may hand out is inside its subnet.
            if let Some(first) = pool.set.next_after(None) {
                prop_assert!(pool.subnet.contains(&key_to_ip(first)));
            }
        }
    }

    #[test]
    fn plausible_ipv4_pools_hand_out_inside_their_subnet(net: u32, len in 8u8..=30, a: u32, b: u32) {
        let subnet = ipnet::IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(net), len).unwrap().trunc());
        let size = 1u32 << (32 - len);
        let base = match subnet.network() {
            IpAddr::V4(v4) => u32::from(v4),
            IpAddr::V6(_) => unreachable!("an IPv4 subnet"),
        };
        let (lo, hi) = ((a % size).min(b % size), (a % size).max(b % size));
        let spec = PoolSpec {
            name: Some("p".into()),
            subnet: subnet.to_string(),
            ips: vec![format!("{}-{}", Ipv4Addr::from(base + lo), Ipv4Addr::from(base + hi))],
            ..PoolSpec::default()
        };
        if let Ok(pool) = Pool::from_spec(&spec, None) {
            for r in pool.set.ranges() {
                prop_assert!(subnet.contains(&key_to_ip(r.start)) && subnet.contains(&key_to_ip(r.end)));
            }
            prop_assert!(pool.set.len() <= u128::from(hi - lo) + 1);
        }
    }

    #[test]
    fn the_netconf_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = NetConf::parse(&bytes);
    }

    #[test]
    fn the_ipam_section_decoder_never_panics(
        key in prop_oneof![
            Just("pools"), Just("poolFile"), Just("dataDir"), Just("default_ipv4_ippool"),
            Just("ipam_unix_socket_path"), Just("clean_gateway"),
        ],
        value in prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            prop::collection::vec(any::<String>(), 0..3).prop_map(serde_json::Value::from),
            Just(json!([{"name": "p", "subnet": "10.0.0.0/24", "ips": ["10.0.0.1"]}])),
            Just(json!({"a": [1, {"b": null}]})),
        ],
    ) {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan",
                          "ipam": {"type": "spiderpool", key: value}});
        let _ = IpamConfig::load(&conf);
        let _ = ClusterConfig::load(&conf);
        let _ = IpamConfig::load_data_dir(&conf);
        let _ = NetConf::parse(conf.to_string().as_bytes());
    }
}
