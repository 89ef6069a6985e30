//! DEL (node side only, twice, without a pod) and CHECK (each thing ADD made, missing in turn).

use serde_json::json;
use spiderpool_cni::{Command, NetConf, Plugin, Request};
use spiderpool_linux::rtnl::{Route, Rule};

use super::fake::Call;
use super::*;
use crate::{CODE_CHECK_FAILED, Coordinator, HOST_RULE_PRIORITY, POD_VETH};

#[test]
fn del_removes_the_node_side_and_a_second_del_finds_nothing() {
    let mut w = World::underlay();
    w.add(&conf()).unwrap();
    // Another pod's rule, whose route is still there, stays.
    let other = w.node.state().add_link("vethother");
    w.node
        .state()
        .routes
        .push(Route::host(ip("10.6.0.11"), other, 500));
    let others_rule = Rule::to_destination(ip("10.6.0.11"), 500, HOST_RULE_PRIORITY);
    w.node.state().rules.push(others_rule.clone());
    let (host_veth, _) = w.host_veth();
    let pod_before = w.pod.calls().len();
    let node_before = w.node.calls().len();

    w.del(&conf()).unwrap();
    assert_eq!(
        &w.node.calls()[node_before..],
        [
            Call::DeleteLink(host_veth),
            Call::DeleteRule(Rule::to_destination(ip("10.6.0.10"), 500, HOST_RULE_PRIORITY)),
            Call::DeleteRule(Rule::to_destination(ip("fd00:6::10"), 500, HOST_RULE_PRIORITY)),
        ]
    );
    assert_eq!(w.node.state().rules, [others_rule]);
    assert_eq!(w.pod.calls().len(), pod_before, "DEL never enters the pod");

    let node_after = w.node.calls().len();
    w.del(&conf()).unwrap();
    assert_eq!(w.node.calls().len(), node_after, "nothing left to delete");
}

/// Another pod's ADD landing in the middle of this DEL's look for orphan rules (after its first
/// list, whichever it is) keeps its rule: the node can still reach that pod.
#[test]
fn a_concurrent_add_keeps_its_rule_through_a_del() {
    let mut w = World::underlay();
    w.add(&conf()).unwrap();
    let other = w.node.state().add_link("vethother");
    let rule = Rule::to_destination(ip("10.6.0.11"), 500, HOST_RULE_PRIORITY);
    w.node.state().concurrent_add = Some((Route::host(ip("10.6.0.11"), other, 500), rule.clone()));
    w.del(&conf()).unwrap();
    assert!(
        w.node.state().concurrent_add.is_none(),
        "the ADD landed during the DEL"
    );
    assert_eq!(w.node.state().rules, [rule], "only this pod's rules went");
}

#[test]
fn del_cleans_the_table_the_netconf_names() {
    let mut w = World::underlay();
    w.add(&json!({"hostRuleTable": 600})).unwrap();
    w.del(&conf()).unwrap();
    assert_eq!(
        w.node.state().rules.len(),
        2,
        "table 500 had nothing of this pod's"
    );
    w.del(&json!({"hostRuleTable": 600})).unwrap();
    assert!(w.node.state().rules.is_empty());
}

/// A request as the runtime sends it, for the plugin's entry points.
fn request(command: Command, conf: serde_json::Value) -> Request {
    Request {
        command,
        container_id: CONTAINER.into(),
        netns: String::new(),
        ifname: "net1".into(),
        args: Default::default(),
        path: Vec::new(),
        conf: NetConf::parse(conf.to_string().as_bytes()).unwrap(),
    }
}

#[test]
fn del_without_netns_runs_unprivileged_on_the_real_kernel() {
    // Nothing of this container exists here: DEL finds nothing, needs no netns, no root, no agent.
    let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "coordinator", "agentSocket": ""});
    Coordinator.del(&request(Command::Del, conf.clone())).unwrap();
    Coordinator.del(&request(Command::Del, conf)).unwrap();
}

#[test]
fn disabled_mode_passes_the_result_through_untouched() {
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.10/16"}]});
    let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "coordinator", "agentSocket": "",
        "mode": "disabled", "prevResult": prev});
    // No netns: a plugin that touched the pod would fail.
    let out = Coordinator.add(&request(Command::Add, conf.clone())).unwrap();
    assert_eq!(out.ips.len(), 1);
    Coordinator.check(&request(Command::Check, conf)).unwrap();
    let no_prev = json!({"cniVersion": "1.0.0", "name": "net", "type": "coordinator", "agentSocket": ""});
    assert_eq!(
        Coordinator.add(&request(Command::Add, no_prev)).unwrap_err().code,
        7
    );
}

#[test]
fn check_passes_after_add() {
    for (mut w, conf) in [
        (
            World::underlay(),
            json!({"vethLinkAddress": "fe80::10", "vethMTU": 1400}),
        ),
        (World::overlay(), conf()),
    ] {
        w.add(&conf).unwrap();
        let changes = w.pod.changes().len() + w.node.changes().len();
        w.check(&conf).unwrap();
        assert_eq!(
            w.pod.changes().len() + w.node.changes().len(),
            changes,
            "CHECK changes nothing"
        );
    }
}

#[test]
fn check_finds_each_missing_piece() {
    let conf = json!({"vethLinkAddress": "169.254.200.1", "vethMTU": 1400});
    let broken = |damage: &dyn Fn(&World), want: &str| {
        let mut w = World::underlay();
        w.add(&conf).unwrap();
        damage(&w);
        let e = w.check(&conf).unwrap_err();
        assert_eq!(e.code, CODE_CHECK_FAILED, "{}", e.msg);
        assert!(e.msg.contains(want), "{want:?} not in {:?}", e.msg);
    };
    broken(
        &|w| {
            let (name, _) = w.host_veth();
            w.node.state().links.retain(|l| l.name != name);
        },
        "node veth",
    );
    broken(
        &|w| {
            w.node
                .state()
                .routes
                .retain(|r| r.destination != net("fd00:6::10/128"))
        },
        "no route to fd00:6::10",
    );
    broken(
        &|w| w.pod.state().links.retain(|l| l.name != POD_VETH),
        "veth0 is missing",
    );
    broken(
        &|w| w.pod.state().addresses.retain(|a| a.ip != ip("169.254.200.1")),
        "lacks vethLinkAddress",
    );
    broken(
        &|w| w.pod.state().link_mut(POD_VETH).facts.mtu = Some(1500),
        "vethMTU is 1400",
    );
    broken(
        &|w| w.pod.state().links.retain(|l| l.name != "net1"),
        "net1 is missing",
    );
}

#[test]
fn check_finds_a_missing_source_rule_of_an_extra_nic() {
    let mut w = World::overlay();
    w.add(&conf()).unwrap();
    w.pod.state().rules.clear();
    let e = w.check(&conf()).unwrap_err();
    assert_eq!(e.code, CODE_CHECK_FAILED);
    assert!(e.msg.contains("no rule from 10.6.0.10"), "{}", e.msg);
}
