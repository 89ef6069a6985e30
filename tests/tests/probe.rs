//! netns tier: ARP and NDP probes between two namespaces over a veth, as the coordinator's IP
//! conflict and gateway checks use them. Root only; hack/test.sh runs these with `--ignored`.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use spiderpool_e2e::ip;
use spiderpool_linux::netns::NetNs;
use spiderpool_linux::probe::{arp_announce, arp_probe, format_mac, na_announce, ndp_probe};

#[test]
#[ignore = "netns tier: needs root and iproute2"]
fn arp_and_ndp_find_who_holds_an_address_and_time_out_when_nobody_does() {
    let tag = std::process::id();
    let a = NetNs::create(&format!("spprobe-a-{tag}")).unwrap();
    let b = NetNs::create(&format!("spprobe-b-{tag}")).unwrap();
    ip(
        &a,
        &[
            "link",
            "add",
            "a0",
            "type",
            "veth",
            "peer",
            "name",
            "b0",
            "netns",
            b.name(),
        ],
    )
    .unwrap();
    ip(&a, &["addr", "add", "10.20.0.1/24", "dev", "a0"]).unwrap();
    ip(&a, &["addr", "add", "fd00:20::1/64", "dev", "a0", "nodad"]).unwrap();
    ip(&b, &["addr", "add", "10.20.0.2/24", "dev", "b0"]).unwrap();
    ip(&b, &["addr", "add", "fd00:20::2/64", "dev", "b0", "nodad"]).unwrap();
    ip(&a, &["link", "set", "a0", "up"]).unwrap();
    ip(&b, &["link", "set", "b0", "up"]).unwrap();
    let b_mac = {
        let out = ip(&b, &["-j", "link", "show", "b0"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    let step = Duration::from_millis(100);
    let (conflict, free, gateway, v6_conflict, v6_free, free_took) = a
        .run(|| {
            let conflict = arp_probe(
                "a0",
                "0.0.0.0".parse().unwrap(),
                "10.20.0.2".parse().unwrap(),
                3,
                step,
            )
            .unwrap();
            let start = Instant::now();
            let free = arp_probe(
                "a0",
                "0.0.0.0".parse().unwrap(),
                "10.20.0.99".parse().unwrap(),
                3,
                step,
            )
            .unwrap();
            let free_took = start.elapsed();
            let gateway = arp_probe(
                "a0",
                "10.20.0.1".parse().unwrap(),
                "10.20.0.2".parse().unwrap(),
                3,
                step,
            )
            .unwrap();
            let v6_conflict = ndp_probe("a0", "fd00:20::2".parse().unwrap(), 3, step).unwrap();
            let v6_free = ndp_probe("a0", "fd00:20::99".parse().unwrap(), 3, step).unwrap();
            (conflict, free, gateway, v6_conflict, v6_free, free_took)
        })
        .unwrap();
    assert_eq!(
        conflict.map(|m| format_mac(&m)),
        Some(b_mac.clone()),
        "an ARP probe (sender 0.0.0.0) is answered"
    );
    assert_eq!(free, None);
    assert!(
        free_took >= Duration::from_millis(300),
        "3 tries x 100 ms before saying free: {free_took:?}"
    );
    assert_eq!(gateway.map(|m| format_mac(&m)), Some(b_mac.clone()));
    assert_eq!(v6_conflict.map(|m| format_mac(&m)), Some(b_mac));
    assert_eq!(v6_free, None);

    // Announcements: B learns (arp_accept) or replaces (override) its entry for an address of A.
    let a_mac = {
        let out = ip(&a, &["-j", "link", "show", "a0"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    assert!(
        b.command("sh")
            .arg("-c")
            .arg("echo 1 > /proc/sys/net/ipv4/conf/b0/arp_accept")
            .status()
            .unwrap()
            .success()
    );
    ip(
        &b,
        &[
            "neigh",
            "add",
            "fd00:20::7",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "b0",
            "nud",
            "stale",
        ],
    )
    .unwrap();
    a.run(|| {
        arp_announce("a0", "10.20.0.7".parse().unwrap()).unwrap();
        na_announce("a0", "fd00:20::7".parse().unwrap()).unwrap();
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let v4 = ip(&b, &["neigh", "show", "10.20.0.7", "dev", "b0"]).unwrap();
    assert!(v4.contains(&a_mac), "gratuitous ARP learnt: {v4}");
    let v6 = ip(&b, &["neigh", "show", "fd00:20::7", "dev", "b0"]).unwrap();
    assert!(v6.contains(&a_mac), "unsolicited NA overrode the old MAC: {v6}");
}
