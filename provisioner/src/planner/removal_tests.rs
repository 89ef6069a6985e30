//! The removal of a policy that no longer selects the node, against the cx6dx fixture.

use super::tests::{inventory, pf0, policy};
use super::*;
use spiderpool_api::policy::{BondSpec, PolicySpec};
use spiderpool_linux::links::LinkFacts;

fn link(index: u32, alias: Option<&str>, kind: &str, parent: Option<u32>) -> LinkFacts {
    LinkFacts {
        index,
        alias: alias.map(String::from),
        kind: Some(kind.into()),
        parent,
        up: true,
        ..LinkFacts::default()
    }
}

/// bond1 and bond1.100 made for policy b; bond2 made by someone else.
fn links() -> LinkTable {
    let mut t = LinkTable::default();
    t.set_facts("bond1", link(10, Some("spiderpool:b"), "bond", None));
    t.set_facts("bond1.100", link(11, Some("spiderpool:b"), "vlan", Some(10)));
    t.set_facts("bond2", link(12, None, "bond", None));
    t
}

fn removal(
    leftover: &Leftover,
    remaining: &[SpiderNetworkNodePolicy],
    inv: &Inventory,
    links: &LinkTable,
    allocated: &BTreeMap<String, String>,
    elsewhere: &BTreeMap<u32, Vec<String>>,
) -> Removal {
    let labels = BTreeMap::new();
    let observed = Observed {
        inventory: inv,
        links,
        node_labels: &labels,
        allocated,
    };
    plan_removal(leftover, remaining, &observed, elsewhere)
}

fn deleted(r: &Removal) -> Vec<String> {
    r.steps
        .iter()
        .map(|s| match &s.action {
            Action::DeleteLink { link } => link.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn leftover(created_vfs: &[&str]) -> Leftover {
    Leftover {
        policy: "b".into(),
        created_vfs: created_vfs.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn marked_links_go_vlans_first_and_foreign_ones_stay() {
    // The table's order is a hash's: the VLAN must still come first.
    let inv = inventory("cx6dx");
    let (none, nobody) = (BTreeMap::new(), BTreeMap::new());
    let r = removal(&leftover(&[]), &[], &inv, &links(), &none, &nobody);
    assert_eq!(deleted(&r), ["bond1.100", "bond1"]);
    assert!(r.waiting.is_empty() && r.handed_over.is_empty());
    assert!(r.steps[1].reason.contains("policy b"), "{:?}", r.steps[1]);
    // Another policy's mark is not this one's.
    let other = Leftover {
        policy: "c".into(),
        created_vfs: Vec::new(),
    };
    assert!(removal(&other, &[], &inv, &links(), &none, &nobody).is_done());
}

#[test]
fn a_link_in_use_here_or_in_a_pod_waits_and_keeps_its_parent() {
    let inv = inventory("cx6dx");
    let (none, nobody) = (BTreeMap::new(), BTreeMap::new());
    // A macvlan on the VLAN in the host namespace.
    let mut t = links();
    t.set_facts("mv0", link(20, None, "macvlan", Some(11)));
    let r = removal(&leftover(&[]), &[], &inv, &t, &none, &nobody);
    assert!(r.steps.is_empty(), "{r:?}");
    assert_eq!(
        r.waiting,
        ["bond1 is in use by bond1.100", "bond1.100 is in use by mv0"]
    );
    // A link in a pod whose parent index means nothing here is no user of ours.
    let mut t = links();
    t.set_facts(
        "veth0",
        LinkFacts {
            parent_elsewhere: true,
            ..link(21, None, "veth", Some(11))
        },
    );
    assert_eq!(
        deleted(&removal(&leftover(&[]), &[], &inv, &t, &none, &nobody)),
        ["bond1.100", "bond1"]
    );
    // A macvlan moved into a pod, found by the namespace walk.
    let elsewhere = BTreeMap::from([(10, vec!["macvlan net1 in /run/netns/cni-1".to_string()])]);
    let r = removal(&leftover(&[]), &[], &inv, &links(), &none, &elsewhere);
    assert_eq!(deleted(&r), ["bond1.100"]);
    assert_eq!(r.waiting, ["bond1 is in use by macvlan net1 in /run/netns/cni-1"]);
}

#[test]
fn what_a_remaining_policy_declares_stays() {
    let inv = inventory("cx6dx");
    let (none, nobody) = (BTreeMap::new(), BTreeMap::new());
    let keeps_bond = policy(
        "k",
        PolicySpec {
            bonds: vec![BondSpec {
                name: "bond1".into(),
                mode: "active-backup".into(),
                members: vec!["ens1f0np0".into()],
                ..BondSpec::default()
            }],
            ..PolicySpec::default()
        },
    );
    let r = removal(&leftover(&[]), &[keeps_bond], &inv, &links(), &none, &nobody);
    assert_eq!(deleted(&r), ["bond1.100"]);
}

#[test]
fn created_vfs_go_to_zero_only_when_unused_and_unwanted() {
    let inv = inventory("cx6dx");
    let (none, nobody) = (BTreeMap::new(), BTreeMap::new());
    let empty = LinkTable::default();
    let r = removal(&leftover(&["ens1f0np0"]), &[], &inv, &empty, &none, &nobody);
    assert_eq!(
        r.steps.iter().map(|s| s.action.clone()).collect::<Vec<_>>(),
        [Action::SetNumVfs {
            pf: "ens1f0np0".into(),
            pci: "0000:3b:00.0".into(),
            count: 0
        }]
    );
    // Only the PFs on record: ens1f1np1 has VFs too, not this policy's.
    assert_eq!(r.steps.len(), 1);

    // A VF a pod holds: wait, naming it.
    let held = BTreeMap::from([("0000:3b:00.3".to_string(), "pod u1, container c".to_string())]);
    let r = removal(&leftover(&["ens1f0np0"]), &[], &inv, &empty, &held, &nobody);
    assert!(r.steps.is_empty());
    assert_eq!(
        r.waiting,
        ["ens1f0np0 keeps its 4 VFs while 1 in use: 0000:3b:00.3 (pod u1, container c)"]
    );

    // A remaining policy that asks for VFs on the PF takes them over.
    let wants = policy(
        "k",
        pf0(PolicySpec {
            num_vfs: Some(4),
            ..PolicySpec::default()
        }),
    );
    let r = removal(&leftover(&["ens1f0np0"]), &[wants], &inv, &empty, &none, &nobody);
    assert!(r.is_done(), "{r:?}");
    assert_eq!(r.handed_over, [("ens1f0np0".to_string(), "k".to_string())]);

    // Already at 0, or the PF gone: nothing to do.
    let mut zero = inventory("cx6dx");
    if let Some(s) = zero.nics[0].sriov.as_mut() {
        s.num_vfs = Some(0);
        s.vfs.clear();
    }
    assert!(
        removal(
            &leftover(&["ens1f0np0", "ens9"]),
            &[],
            &zero,
            &empty,
            &none,
            &nobody
        )
        .is_done()
    );
}
