//! The planner against the committed fixture inventories.

use super::*;
use spiderpool_api::inventory::Bond;
use spiderpool_api::policy::{NicSelector, PolicySpec, VfSettings};
use spiderpool_linux::links::LinkFacts;

pub(super) fn inventory(name: &str) -> Inventory {
    spiderpool_testing::fixtures::fixture_inventory(name)
}

pub(super) fn policy(name: &str, spec: PolicySpec) -> SpiderNetworkNodePolicy {
    SpiderNetworkNodePolicy {
        api_version: None,
        kind: None,
        metadata: spiderpool_api::policy::Metadata { name: name.into() },
        spec,
    }
}

pub(super) fn pf0(spec: PolicySpec) -> PolicySpec {
    PolicySpec {
        nic_selector: NicSelector {
            pf_names: vec!["ens1f0np0".into()],
            ..NicSelector::default()
        },
        ..spec
    }
}

struct World {
    inv: Inventory,
    links: LinkTable,
    labels: BTreeMap<String, String>,
    allocated: BTreeMap<String, String>,
}

impl World {
    fn new(fixture: &str) -> World {
        World {
            inv: inventory(fixture),
            links: LinkTable::default(),
            labels: BTreeMap::new(),
            allocated: BTreeMap::new(),
        }
    }
    fn plan(&self, policies: &[SpiderNetworkNodePolicy]) -> Plan {
        plan(
            policies,
            &Observed {
                inventory: &self.inv,
                links: &self.links,
                node_labels: &self.labels,
                allocated: &self.allocated,
            },
        )
    }
}

fn actions(p: &Plan) -> Vec<Action> {
    p.steps.iter().map(|s| s.action.clone()).collect()
}

#[test]
fn raising_vfs_on_a_fresh_pf_and_then_the_settings() {
    let mut w = World::new("cx6dx");
    w.inv.nics[0].sriov.as_mut().unwrap().vfs.clear();
    w.inv.nics[0].sriov.as_mut().unwrap().num_vfs = Some(0);
    let p = policy(
        "p",
        pf0(PolicySpec {
            num_vfs: Some(6),
            vf: VfSettings {
                trust: Some(true),
                ..VfSettings::default()
            },
            ..PolicySpec::default()
        }),
    );
    let plan = w.plan(std::slice::from_ref(&p));
    assert_eq!(
        actions(&plan),
        [Action::SetNumVfs {
            pf: "ens1f0np0".into(),
            pci: "0000:3b:00.0".into(),
            count: 6
        }]
    );
    assert!(matches!(plan.status["ens1f0np0"], Status::Pending(_)));
    assert!(
        !plan.status.contains_key("ens1f1np1"),
        "not selected, not touched"
    );
}

#[test]
fn lowering_goes_through_zero_and_waits_for_vfs_in_use() {
    let mut w = World::new("cx6dx");
    let p = policy(
        "p",
        pf0(PolicySpec {
            num_vfs: Some(2),
            ..PolicySpec::default()
        }),
    );
    assert_eq!(
        actions(&w.plan(std::slice::from_ref(&p))),
        [
            Action::SetNumVfs {
                pf: "ens1f0np0".into(),
                pci: "0000:3b:00.0".into(),
                count: 0
            },
            Action::SetNumVfs {
                pf: "ens1f0np0".into(),
                pci: "0000:3b:00.0".into(),
                count: 2
            }
        ]
    );
    // A VF in a pod (netdev gone from this namespace) blocks it ...
    w.inv.nics[0].sriov.as_mut().unwrap().vfs[1].name = None;
    let plan = w.plan(std::slice::from_ref(&p));
    assert!(plan.steps.is_empty());
    let Status::Pending(why) = &plan.status["ens1f0np0"] else {
        panic!("{plan:?}")
    };
    assert!(why.contains("0000:3b:00.3") && why.contains("force"), "{why}");
    // ... as does one the device plugin handed out; `force` overrides.
    w.inv.nics[0].sriov.as_mut().unwrap().vfs[1].name = Some("ens1f0v1".into());
    w.allocated
        .insert("0000:3b:00.2".into(), "pod 7c1e, container app".into());
    let plan = w.plan(std::slice::from_ref(&p));
    assert!(plan.steps.is_empty());
    let Status::Pending(why) = &plan.status["ens1f0np0"] else {
        panic!("{plan:?}")
    };
    assert!(why.contains("0000:3b:00.2 (pod 7c1e, container app)"), "{why}");
    let forced = policy(
        "p",
        pf0(PolicySpec {
            num_vfs: Some(2),
            force: true,
            ..PolicySpec::default()
        }),
    );
    assert_eq!(w.plan(&[forced]).steps.len(), 2);
}

#[test]
fn drift_in_vf_settings_and_mtu_is_corrected_and_an_applied_policy_plans_nothing() {
    let w = World::new("cx6dx");
    let spec = pf0(PolicySpec {
        num_vfs: Some(4),
        mtu: Some(9000),
        vf: VfSettings {
            trust: Some(true),
            spoof_chk: Some(false),
            ..VfSettings::default()
        },
        ..PolicySpec::default()
    });
    let plan = w.plan(&[policy("p", spec.clone())]);
    // VF 0 already has trust on / spoofchk off (netlink in the fixture's pinned JSON says so).
    let vfs: Vec<u32> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::SetVf { vf, .. } => Some(*vf),
            _ => None,
        })
        .collect();
    assert_eq!(vfs, [1, 2, 3]);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::SetMtu { .. })),
        "MTU already 9000"
    );
    let applied = PolicySpec {
        vf: VfSettings::default(),
        ..spec
    };
    let plan = w.plan(&[policy("p", applied)]);
    assert!(plan.steps.is_empty(), "{plan:?}");
    assert_eq!(plan.status["ens1f0np0"], Status::Applied);
}

#[test]
fn vf_link_state_comes_from_netlink_and_bad_values_fail() {
    let mut w = World::new("cx6dx");
    for vf in 0..4 {
        let state = if vf == 2 { "auto" } else { "enable" };
        w.links.set_vf(
            "ens1f0np0",
            vf,
            spiderpool_linux::links::VfConfig {
                link_state: Some(state.into()),
                ..Default::default()
            },
        );
    }
    let spec = pf0(PolicySpec {
        vf: VfSettings {
            link_state: Some("enable".into()),
            ..VfSettings::default()
        },
        ..PolicySpec::default()
    });
    let plan = w.plan(&[policy("p", spec)]);
    assert_eq!(
        actions(&plan),
        [Action::SetVf {
            pf: "ens1f0np0".into(),
            vf: 2,
            trust: None,
            spoof_chk: None,
            link_state: Some("enable".into())
        }]
    );
    let bad = pf0(PolicySpec {
        vf: VfSettings {
            link_state: Some("on".into()),
            ..VfSettings::default()
        },
        ..PolicySpec::default()
    });
    assert!(
        matches!(&w.plan(&[policy("p", bad)]).status["ens1f0np0"], Status::Failed(w) if w.contains("linkState"))
    );
    let bad = pf0(PolicySpec {
        device_type: Some("dpdk".into()),
        ..PolicySpec::default()
    });
    assert!(
        matches!(&w.plan(&[policy("p", bad)]).status["ens1f0np0"], Status::Failed(w) if w.contains("deviceType"))
    );
}

#[test]
fn rdma_netns_mode_follows_the_policy() {
    let w = World::new("cx6dx"); // shared
    let spec = |m: &str| PolicySpec {
        rdma: Some(spiderpool_api::policy::RdmaSpec { netns_mode: m.into() }),
        ..PolicySpec::default()
    };
    assert_eq!(
        actions(&w.plan(&[policy("r", spec("exclusive"))])),
        [Action::SetRdmaNetnsMode { shared: false }]
    );
    assert!(w.plan(&[policy("r", spec("shared"))]).steps.is_empty());
    assert!(matches!(
        &w.plan(&[policy("r", spec("private"))]).status[RDMA_STATUS],
        Status::Failed(_)
    ));
    let plan = w.plan(&[policy("a", spec("shared")), policy("b", spec("exclusive"))]);
    assert!(matches!(&plan.status[RDMA_STATUS], Status::Failed(e) if e.contains("disagree")));
}

#[test]
fn priorities_combine_and_equal_priorities_that_disagree_fail() {
    let w = World::new("cx6dx");
    let low = policy(
        "low",
        pf0(PolicySpec {
            priority: Some(50),
            num_vfs: Some(2),
            ..PolicySpec::default()
        }),
    );
    let high = policy(
        "high",
        pf0(PolicySpec {
            priority: Some(10),
            num_vfs: Some(4),
            ..PolicySpec::default()
        }),
    );
    assert!(
        w.plan(&[low.clone(), high]).steps.is_empty(),
        "priority 10 wins: 4 VFs, as it is"
    );
    let rival = policy(
        "rival",
        pf0(PolicySpec {
            priority: Some(50),
            num_vfs: Some(6),
            ..PolicySpec::default()
        }),
    );
    let plan = w.plan(&[low, rival]);
    let Status::Failed(why) = &plan.status["ens1f0np0"] else {
        panic!("{plan:?}")
    };
    assert!(why.contains("disagree on numVfs"), "{why}");
    assert!(plan.steps.is_empty());
}

#[test]
fn node_selector_and_limits() {
    let mut w = World::new("cx6dx");
    let p = policy(
        "p",
        pf0(PolicySpec {
            num_vfs: Some(64),
            node_selector: BTreeMap::from([("rack".into(), "a".into())]),
            ..PolicySpec::default()
        }),
    );
    assert!(
        w.plan(std::slice::from_ref(&p)).status.is_empty(),
        "another node's policy"
    );
    w.labels.insert("rack".into(), "a".into());
    let Status::Failed(why) = &w.plan(&[p]).status["ens1f0np0"] else {
        panic!()
    };
    assert!(why.contains("at most 8"), "{why}");
    let empty = policy(
        "all",
        PolicySpec {
            num_vfs: Some(1),
            ..PolicySpec::default()
        },
    );
    assert!(
        w.plan(&[empty]).status.is_empty(),
        "a selector naming nothing selects nothing"
    );
}

#[test]
fn bonds_and_vlans_are_created_marked_and_foreign_ones_left_alone() {
    let mut w = World::new("bond");
    let spec = |members: Vec<&str>| PolicySpec {
        bonds: vec![BondSpec {
            name: "bond1".into(),
            mode: "active-backup".into(),
            options: BTreeMap::from([("miimon".into(), "100".into())]),
            members: members.into_iter().map(String::from).collect(),
            mtu: Some(9000),
            vlans: vec![VlanSpec {
                parent: None,
                id: 100,
                name: None,
            }],
        }],
        ..PolicySpec::default()
    };
    // Members already in the foreign bond0.
    let plan = w.plan(&[policy("b", spec(vec!["enp94s0f0", "enp94s0f1"]))]);
    let Status::Failed(why) = &plan.status["bond1"] else {
        panic!("{plan:?}")
    };
    assert!(why.contains("already in bond bond0"), "{why}");
    // bond0 itself is not ours.
    let foreign = PolicySpec {
        bonds: vec![BondSpec {
            name: "bond0".into(),
            ..spec(vec!["enp94s0f0"]).bonds[0].clone()
        }],
        ..PolicySpec::default()
    };
    let Status::Failed(why) = &w.plan(&[policy("b", foreign)]).status["bond0"] else {
        panic!()
    };
    assert!(why.contains("not created by spiderpool"), "{why}");
    // Free the ports: a fresh bond with options, members, MTU and its VLAN.
    for nic in &mut w.inv.nics {
        nic.bond_master = None;
    }
    w.inv.bonds.clear();
    let plan = w.plan(&[policy("b", spec(vec!["enp94s0f0", "enp94s0f1"]))]);
    assert_eq!(
        actions(&plan),
        [
            Action::CreateBond {
                name: "bond1".into(),
                mode: "active-backup".into()
            },
            Action::SetAlias {
                link: "bond1".into(),
                alias: "spiderpool:b".into()
            },
            Action::SetBondOption {
                bond: "bond1".into(),
                option: "miimon".into(),
                value: "100".into()
            },
            Action::Enslave {
                link: "enp94s0f0".into(),
                bond: "bond1".into()
            },
            Action::Enslave {
                link: "enp94s0f1".into(),
                bond: "bond1".into()
            },
            Action::SetMtu {
                link: "bond1".into(),
                mtu: 9000
            },
            Action::LinkUp { link: "bond1".into() },
            Action::CreateVlan {
                name: "bond1.100".into(),
                parent: "bond1".into(),
                id: 100
            },
            Action::SetAlias {
                link: "bond1.100".into(),
                alias: "spiderpool:b".into()
            },
            Action::LinkUp {
                link: "bond1.100".into()
            },
        ]
    );
    // Once it exists: a member change releases and enslaves; nothing else.
    w.inv.bonds.push(Bond {
        name: "bond1".into(),
        mode: Some("active-backup".into()),
        slaves: vec!["enp94s0f0".into(), "enp94s0f1".into()],
        vlans: vec!["bond1.100".into()],
    });
    w.inv.nics.push(Nic {
        name: Some("bond1".into()),
        mtu: Some(9000),
        ..Nic::default()
    });
    w.links.set_facts(
        "bond1",
        LinkFacts {
            index: 10,
            alias: Some("spiderpool:b".into()),
            kind: Some("bond".into()),
            up: true,
            mtu: Some(9000),
            ..LinkFacts::default()
        },
    );
    w.links.set_facts(
        "bond1.100",
        LinkFacts {
            index: 11,
            alias: Some("spiderpool:b".into()),
            kind: Some("vlan".into()),
            vlan_id: Some(100),
            parent: Some(10),
            up: true,
            mtu: Some(9000),
            ..LinkFacts::default()
        },
    );
    let plan = w.plan(&[policy("b", spec(vec!["enp94s0f0", "enp94s0f1"]))]);
    assert!(plan.steps.is_empty(), "{plan:?}");
    let plan = w.plan(&[policy("b", spec(vec!["enp94s0f1"]))]);
    assert_eq!(
        actions(&plan),
        [Action::Release {
            link: "enp94s0f0".into()
        }]
    );
}
