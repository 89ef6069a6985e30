//! ADD: what is asked of the pod's and the node's kernels, in order, and how ADD fails.

use std::net::Ipv4Addr;

use serde_json::json;
use spiderpool_linux::rtnl::{MAIN_TABLE, Route, Rule};

use super::fake::Call;
use super::*;
use crate::{
    CODE_GATEWAY_UNREACHABLE, CODE_IP_CONFLICT, HOST_RULE_PRIORITY, POD_VETH, RULE_PRIORITY, TABLE_BASE,
};

#[test]
fn underlay_add_tunes_the_nic_and_links_pod_and_node() {
    let mut w = World::underlay();
    let conf = json!({"hijackCIDR": ["10.96.0.0/12", "fd00:96::/108"], "podMACPrefix": "0a:1b",
        "txQueueLen": 2000, "podRPFilter": 2, "vethMTU": 1400});
    w.add(&conf).unwrap();
    let (host_veth, host_index) = w.host_veth();
    let veth = w.pod.state().index(POD_VETH).unwrap();
    let veth_mac = w.pod.state().link_mut(POD_VETH).address.clone();
    let host_mac = w.node.state().link_mut(&host_veth).address.clone();
    let s = |v: &str| v.to_string();
    assert_eq!(
        w.pod.changes(),
        [
            Call::SetMac(s("net1"), [0x0a, 0x1b, 10, 6, 0, 10]),
            Call::SetTxQueueLen(s("net1"), 2000),
            Call::Sysctl(s("net/ipv4/conf/all/rp_filter"), s("2")),
            Call::Sysctl(s("net/ipv4/conf/net1/rp_filter"), s("2")),
            Call::Sysctl(s("net/ipv6/conf/net1/disable_ipv6"), s("0")),
            // net1 has the default route: no table of its own.
            Call::CreateVeth {
                name: s(POD_VETH),
                peer: host_veth.clone()
            },
            Call::SetMtu(s(POD_VETH), 1400),
            Call::SetUp(s(POD_VETH)),
            Call::AddRoute(Route::host(ip("10.6.0.254"), veth, MAIN_TABLE)),
            Call::Neighbour(s(POD_VETH), ip("10.6.0.254"), host_mac.clone()),
            Call::AddRoute(Route::host(ip("fd00:6::fe"), veth, MAIN_TABLE)),
            Call::Neighbour(s(POD_VETH), ip("fd00:6::fe"), host_mac),
            Call::AddRoute(Route::link(net("10.96.0.0/12"), veth, MAIN_TABLE).via(ip("10.6.0.254"))),
            Call::AddRoute(Route::link(net("fd00:96::/108"), veth, MAIN_TABLE).via(ip("fd00:6::fe"))),
        ]
    );
    assert_eq!(
        w.node.changes(),
        [
            Call::SetMtu(host_veth.clone(), 1400),
            Call::SetUp(host_veth.clone()),
            Call::AddRoute(Route::host(ip("10.6.0.10"), host_index, 500)),
            Call::AddRule(Rule::to_destination(ip("10.6.0.10"), 500, HOST_RULE_PRIORITY)),
            Call::Neighbour(host_veth.clone(), ip("10.6.0.10"), veth_mac.clone()),
            Call::AddRoute(Route::host(ip("fd00:6::10"), host_index, 500)),
            Call::AddRule(Rule::to_destination(ip("fd00:6::10"), 500, HOST_RULE_PRIORITY)),
            Call::Neighbour(host_veth, ip("fd00:6::10"), veth_mac),
        ]
    );
    // Probes before anything is announced: the address as 0.0.0.0 (RFC 5227), then the gateway.
    let talk: Vec<Call> = w.pod.calls().into_iter().filter(|c| !c.changes()).collect();
    let probe = |sender: Ipv4Addr, target: &str| Call::Probe {
        ifname: s("net1"),
        sender,
        target: ip(target),
    };
    assert_eq!(
        talk,
        [
            probe(Ipv4Addr::UNSPECIFIED, "10.6.0.10"),
            probe(Ipv4Addr::new(10, 6, 0, 10), "10.6.0.1"),
            probe(Ipv4Addr::UNSPECIFIED, "fd00:6::10"),
            probe(Ipv4Addr::UNSPECIFIED, "fd00:6::1"),
            Call::Announce(s("net1"), ip("10.6.0.10")),
            Call::Announce(s("net1"), ip("fd00:6::10")),
        ]
    );
}

#[test]
fn a_repeated_add_keeps_what_the_first_made() {
    let mut w = World::underlay();
    let conf = json!({"hijackCIDR": ["10.96.0.0/12"], "vethLinkAddress": "169.254.200.1"});
    w.add(&conf).unwrap();
    let after_first = w.snapshot();
    let first_calls = w.pod.calls().len();
    w.add(&conf).unwrap();
    assert_eq!(w.snapshot(), after_first, "a second ADD changes nothing");
    let again = &w.pod.calls()[first_calls..];
    assert!(
        !again.iter().any(|c| matches!(c, Call::CreateVeth { .. })),
        "the pair exists: {again:?}"
    );
    // Each NIC's ADD visits veth0 again: its address is kept, not an error.
    assert!(again.contains(&Call::AddAddress(POD_VETH.into(), ip("169.254.200.1"), 32)));
}

#[test]
fn a_held_address_fails_add_before_any_route() {
    let mut w = World::underlay();
    w.pod
        .state()
        .on_wire
        .insert(ip("10.6.0.10"), [0x02, 0xaa, 0, 0, 0, 7]);
    let e = w.add(&conf()).unwrap_err();
    assert_eq!(e.code, CODE_IP_CONFLICT);
    assert!(e.msg.contains("02:aa:00:00:00:07"), "{}", e.msg);
    let changes = w.pod.changes();
    assert!(
        !changes
            .iter()
            .any(|c| matches!(c, Call::AddRoute(_) | Call::AddRule(_) | Call::CreateVeth { .. })),
        "{changes:?}"
    );
    assert!(w.node.calls().is_empty(), "the node is not touched");
}

#[test]
fn a_silent_gateway_fails_add() {
    let mut w = World::underlay();
    w.pod.state().on_wire.remove(&ip("fd00:6::1"));
    let e = w.add(&conf()).unwrap_err();
    assert_eq!(e.code, CODE_GATEWAY_UNREACHABLE);
    assert!(e.msg.contains("fd00:6::1"), "{}", e.msg);
    assert!(w.node.calls().is_empty());
}

#[test]
fn without_detection_nothing_is_probed() {
    let mut w = World::underlay();
    w.pod.state().on_wire.clear();
    w.add(&json!({"detectIPConflict": false, "detectGateway": false}))
        .unwrap();
    assert!(
        !w.pod.calls().iter().any(|c| matches!(c, Call::Probe { .. })),
        "{:?}",
        w.pod.calls()
    );
}

#[test]
fn an_extra_nic_gets_its_own_table_and_overlay_keeps_the_hijacked_cidrs() {
    let mut w = World::overlay();
    w.add(&conf()).unwrap();
    let net1 = w.pod.state().index("net1").unwrap();
    let eth0 = w.pod.state().index("eth0").unwrap();
    let table = TABLE_BASE + net1;
    let routes: Vec<Call> = w
        .pod
        .changes()
        .into_iter()
        .filter(|c| matches!(c, Call::AddRoute(_) | Call::AddRule(_)))
        .collect();
    assert_eq!(
        routes,
        [
            Call::AddRoute(Route::link(net("10.6.0.0/16"), net1, table)),
            Call::AddRoute(Route::default_via(ip("10.6.0.1"), net1, table)),
            Call::AddRule(Rule::from_source(ip("10.6.0.10"), table, RULE_PRIORITY)),
            // No IPv6 default route in the pod: net1 is the first, it keeps the main table.
            // eth0 has no IPv6 gateway either: only the IPv4 CIDR goes through the overlay.
            Call::AddRoute(Route::link(net("10.96.0.0/12"), eth0, MAIN_TABLE).via(ip("10.244.1.1"))),
        ]
    );
    assert!(
        w.node.calls().is_empty(),
        "beside an overlay eth0 there is no veth"
    );
    assert!(w.pod.state().index(POD_VETH).is_none());
}

/// `tunePodRoutes: false` (netconf or SpiderCoordinator): the extra NIC keeps the main plugin's
/// routes, no table of its own and no rules; CHECK does not ask for them.
#[test]
fn tune_pod_routes_false_leaves_an_extra_nic_s_routes_alone() {
    let mut w = World::overlay();
    let conf = json!({"tunePodRoutes": false});
    w.add(&conf).unwrap();
    let net1 = w.pod.state().index("net1").unwrap();
    let tabled: Vec<Call> = w
        .pod
        .changes()
        .into_iter()
        .filter(|c| match c {
            Call::AddRoute(r) => r.table == TABLE_BASE + net1,
            Call::AddRule(_) => true,
            _ => false,
        })
        .collect();
    assert!(tabled.is_empty(), "{tabled:?}");
    w.check(&conf).unwrap();
}

#[test]
fn pod_default_route_nic_moves_the_default_nic() {
    let mut w = World::underlay();
    w.add(&json!({"mode": "overlay", "podDefaultRouteNIC": "eth0"}))
        .unwrap();
    let net1 = w.pod.state().index("net1").unwrap();
    let rules: Vec<Call> = w
        .pod
        .changes()
        .into_iter()
        .filter(|c| matches!(c, Call::AddRule(_)))
        .collect();
    assert_eq!(
        rules,
        [
            Call::AddRule(Rule::from_source(
                ip("10.6.0.10"),
                TABLE_BASE + net1,
                RULE_PRIORITY
            )),
            Call::AddRule(Rule::from_source(
                ip("fd00:6::10"),
                TABLE_BASE + net1,
                RULE_PRIORITY
            )),
        ]
    );
}

#[test]
fn veth_link_address_keeps_the_pods_own_source_towards_the_node() {
    let mut w = World::underlay();
    w.add(&json!({"vethLinkAddress": "169.254.200.1", "hijackCIDR": ["10.96.0.0/12"]}))
        .unwrap();
    let veth = w.pod.state().index(POD_VETH).unwrap();
    let changes = w.pod.changes();
    for want in [
        Call::AddAddress(POD_VETH.into(), ip("169.254.200.1"), 32),
        Call::AddRoute(Route::host(ip("10.6.0.254"), veth, MAIN_TABLE).with_source(ip("10.6.0.10"))),
        Call::AddRoute(Route::host(ip("fd00:6::fe"), veth, MAIN_TABLE).with_source(ip("fd00:6::10"))),
        Call::AddRoute(
            Route::link(net("10.96.0.0/12"), veth, MAIN_TABLE)
                .via(ip("10.6.0.254"))
                .with_source(ip("10.6.0.10")),
        ),
    ] {
        assert!(changes.contains(&want), "{want:?} not in {changes:?}");
    }
}

#[test]
fn a_missing_nic_or_a_refused_request_fails_with_io_failure() {
    let mut w = World::underlay();
    w.pod.state().links.retain(|l| l.name != "net1");
    let e = w.add(&conf()).unwrap_err();
    assert_eq!(e.code, 5);
    assert!(e.msg.contains("no link net1"), "{}", e.msg);

    let mut w = World::underlay();
    w.node.state().refuse = Some(("AddRule", libc::EPERM));
    let e = w.add(&conf()).unwrap_err();
    assert_eq!(e.code, 5);
    assert!(
        e.msg.contains("AddRule") && e.msg.contains("not permitted"),
        "{}",
        e.msg
    );
}
