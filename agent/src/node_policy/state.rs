//! What the node reports about each policy that selects it, and which Events a round makes:
//! pure functions of the policies, the node's inventory and the round's outcome.

use std::collections::BTreeMap;

use spiderpool_api::inventory::Inventory;
use spiderpool_api::policy::{Metadata, SpiderNetworkNodePolicy, SpiderNetworkNodePolicyResource};
use spiderpool_api::policy_status::{APPLIED, FAILED, NodePolicyState, PENDING, PolicyPart, worse};
use spiderpool_provisioner::planner::{Status, parts_of};

/// A policy as the planner takes it, with the generation it is at.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub policy: SpiderNetworkNodePolicy,
    pub generation: i64,
}

/// The policies whose `nodeSelector` matches `labels` (every label equal), by name; policies
/// being deleted are left out.
pub fn selected<'a>(
    all: impl IntoIterator<Item = &'a SpiderNetworkNodePolicyResource>,
    labels: &BTreeMap<String, String>,
) -> Vec<Selected> {
    let mut out: Vec<Selected> = all
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.selects_node(labels))
        .map(|p| Selected {
            policy: SpiderNetworkNodePolicy {
                api_version: None,
                kind: None,
                metadata: Metadata {
                    name: p.metadata.name.clone().unwrap_or_default(),
                },
                spec: p.spec.clone(),
            },
            generation: p.metadata.generation.unwrap_or(0),
        })
        .collect();
    out.sort_by(|a, b| a.policy.metadata.name.cmp(&b.policy.metadata.name));
    out
}

/// How the node stands against each selected policy, from the planner's status per PF, bond,
/// VLAN and RDMA mode. `caveat` prefixes the reason of every policy not applied (report-only
/// mode says so there).
pub fn states(
    selected: &[Selected],
    inventory: &Inventory,
    status: &BTreeMap<String, Status>,
    caveat: Option<&str>,
) -> BTreeMap<String, NodePolicyState> {
    let mut out = BTreeMap::new();
    for s in selected {
        let parts: Vec<PolicyPart> = parts_of(&s.policy, inventory)
            .into_iter()
            .map(|(kind, name)| {
                let (phase, reason) = match status.get(&name) {
                    Some(Status::Applied) => (APPLIED, String::new()),
                    Some(Status::Pending(why)) => (PENDING, why.clone()),
                    Some(Status::Failed(why)) => (FAILED, why.clone()),
                    None => (PENDING, "not planned yet".to_string()),
                };
                PolicyPart {
                    kind: kind.into(),
                    name,
                    phase: phase.into(),
                    reason,
                }
            })
            .collect();
        let phase = parts.iter().fold(APPLIED, |acc, p| worse(acc, &p.phase));
        let mut reason = match parts.iter().find(|p| p.phase == phase && phase != APPLIED) {
            Some(first) => {
                let others = parts.iter().filter(|p| p.phase != APPLIED).count() - 1;
                let more = if others > 0 {
                    format!(" (and {others} more)")
                } else {
                    String::new()
                };
                format!("{} {}: {}{more}", first.kind, first.name, first.reason)
            }
            None if parts.is_empty() => "selects no NIC, bond or VLAN on this node".to_string(),
            None => String::new(),
        };
        if let Some(c) = caveat.filter(|_| phase != APPLIED) {
            reason = format!("{c}: {reason}");
        }
        out.insert(
            s.policy.metadata.name.clone(),
            NodePolicyState {
                generation: s.generation,
                phase: phase.into(),
                reason,
                parts,
                created_vfs: Vec::new(),
            },
        );
    }
    out
}

/// Carries each selected policy's record of the VFs it created forward: what it had, the PFs
/// among its parts whose VFs this round created from none (when it asks for VFs), and the PFs it
/// took over from a policy that went.
pub fn keep_records(
    states: &mut BTreeMap<String, NodePolicyState>,
    before: &BTreeMap<String, NodePolicyState>,
    selected: &[Selected],
    created: &[String],
    handed_over: &[(String, String)],
) {
    for s in selected {
        let name = &s.policy.metadata.name;
        let Some(state) = states.get_mut(name) else {
            continue;
        };
        let mut record: Vec<String> = before
            .get(name)
            .map(|b| b.created_vfs.clone())
            .unwrap_or_default();
        if s.policy.spec.num_vfs.is_some() {
            record.extend(
                created
                    .iter()
                    .filter(|pf| state.parts.iter().any(|p| p.kind == "pf" && &p.name == *pf))
                    .cloned(),
            );
        }
        record.extend(
            handed_over
                .iter()
                .filter(|(_, to)| to == name)
                .map(|(pf, _)| pf.clone()),
        );
        record.sort();
        record.dedup();
        state.created_vfs = record;
    }
}

/// One action a round carried out: the thing it changed (a PF, link or the RDMA mode), what it
/// did, and its error if it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub target: String,
    /// The bond a NIC joined: the change belongs to the bond's policy too.
    pub bond: Option<String>,
    pub action: String,
    pub error: Option<String>,
}

/// An Event about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvent {
    pub policy: String,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The Events of a round on `node`: what it changed for each policy (`Applied`, or
/// `ApplyFailed` with the errors), and each policy whose phase or reason changed to pending or
/// failed since `before` (`Pending`, `Failed`). A round that changes nothing says nothing.
pub fn events(
    node: &str,
    before: &BTreeMap<String, NodePolicyState>,
    after: &BTreeMap<String, NodePolicyState>,
    executed: &[Executed],
) -> Vec<PolicyEvent> {
    let mut out = Vec::new();
    for (name, state) in after {
        let mine: Vec<&Executed> = executed
            .iter()
            .filter(|e| {
                state
                    .parts
                    .iter()
                    .any(|p| p.name == e.target || e.bond.as_ref() == Some(&p.name))
            })
            .collect();
        let failed: Vec<String> = mine
            .iter()
            .filter_map(|e| e.error.as_ref().map(|err| format!("{}: {err}", e.action)))
            .collect();
        let done: Vec<&str> = mine
            .iter()
            .filter(|e| e.error.is_none())
            .map(|e| e.action.as_str())
            .collect();
        if !done.is_empty() {
            out.push(PolicyEvent {
                policy: name.clone(),
                warning: false,
                reason: "Applied",
                note: bounded(format!(
                    "node {node}: {} changes: {}",
                    done.len(),
                    done.join("; ")
                )),
            });
        }
        if !failed.is_empty() {
            out.push(PolicyEvent {
                policy: name.clone(),
                warning: true,
                reason: "ApplyFailed",
                note: bounded(format!("node {node}: {}", failed.join("; "))),
            });
        }
        let old = before.get(name);
        let changed = old.is_none_or(|o| o.phase != state.phase || o.reason != state.reason);
        if changed && state.phase != APPLIED && failed.is_empty() {
            out.push(PolicyEvent {
                policy: name.clone(),
                warning: state.phase == FAILED,
                reason: if state.phase == FAILED {
                    "Failed"
                } else {
                    "Pending"
                },
                note: bounded(format!("node {node}: {}", state.reason)),
            });
        }
    }
    out
}

/// An Event's note is at most 1 kB.
pub(super) fn bounded(mut s: String) -> String {
    if s.len() > 1000 {
        let mut cut = 997;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, spec: serde_json::Value, generation: i64) -> SpiderNetworkNodePolicyResource {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetworkNodePolicy",
            "metadata": {"name": name, "generation": generation}, "spec": spec
        }))
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_policy_selects_nodes_whose_labels_all_match() {
        let all = [
            policy("gpu", json!({"nodeSelector": {"pool": "gpu"}}), 3),
            policy("every", json!({}), 1),
            policy("both", json!({"nodeSelector": {"pool": "gpu", "zone": "a"}}), 1),
        ];
        let names = |l| {
            selected(&all, &l)
                .into_iter()
                .map(|s| s.policy.metadata.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(labels(&[("pool", "gpu")])), ["every", "gpu"]);
        assert_eq!(
            names(labels(&[("pool", "gpu"), ("zone", "a")])),
            ["both", "every", "gpu"]
        );
        assert_eq!(names(labels(&[("pool", "cpu")])), ["every"]);
        assert_eq!(selected(&all, &labels(&[("pool", "gpu")]))[1].generation, 3);
    }

    #[test]
    fn the_state_is_the_worst_part_and_names_it() {
        let inv = spiderpool_testing::fixtures::fixture_inventory("cx6dx");
        let all = [policy(
            "p",
            json!({"nicSelector": {"pfNames": ["ens1f0np0", "ens1f1np1"]}, "numVfs": 4,
                   "bonds": [{"name": "bond0", "mode": "active-backup", "members": ["a", "b"]}]}),
            2,
        )];
        let sel = selected(&all, &BTreeMap::new());
        let mut status = BTreeMap::from([
            ("ens1f0np0".to_string(), Status::Applied),
            (
                "ens1f1np1".to_string(),
                Status::Pending("VF 0000:3b:01.2 is in use by a pod".into()),
            ),
            ("bond0".to_string(), Status::Applied),
        ]);
        let got = &states(&sel, &inv, &status, None)["p"];
        assert_eq!(got.generation, 2);
        assert_eq!(got.phase, PENDING);
        assert_eq!(got.reason, "pf ens1f1np1: VF 0000:3b:01.2 is in use by a pod");
        assert_eq!(got.parts.len(), 3);
        status.insert("bond0".into(), Status::Failed("no member a".into()));
        let got = &states(&sel, &inv, &status, Some("report only"))["p"];
        assert_eq!(got.phase, FAILED);
        assert_eq!(got.reason, "report only: bond bond0: no member a (and 1 more)");
        status.insert("bond0".into(), Status::Applied);
        status.insert("ens1f1np1".into(), Status::Applied);
        let got = &states(&sel, &inv, &status, Some("report only"))["p"];
        assert_eq!((got.phase.as_str(), got.reason.as_str()), (APPLIED, ""));

        let none = [policy("none", json!({"nicSelector": {"vendor": "dead"}}), 1)];
        let got = &states(&selected(&none, &BTreeMap::new()), &inv, &status, None)["none"];
        assert_eq!(got.phase, APPLIED);
        assert_eq!(got.reason, "selects no NIC, bond or VLAN on this node");
    }

    #[test]
    fn the_record_of_created_vfs_names_the_policies_that_asked_for_them() {
        let inv = spiderpool_testing::fixtures::fixture_inventory("cx6dx");
        let all = [
            policy(
                "p",
                json!({"nicSelector": {"pfNames": ["ens1f0np0"]}, "numVfs": 4}),
                1,
            ),
            policy(
                "q",
                json!({"nicSelector": {"pfNames": ["ens1f0np0"]}, "mtu": 9000}),
                1,
            ),
            policy(
                "r",
                json!({"nicSelector": {"pfNames": ["ens1f1np1"]}, "numVfs": 2}),
                1,
            ),
        ];
        let sel = selected(&all, &BTreeMap::new());
        let mut states = states(&sel, &inv, &BTreeMap::new(), None);
        let before = BTreeMap::from([(
            "r".to_string(),
            NodePolicyState {
                created_vfs: vec!["ens1f1np1".into()],
                ..NodePolicyState::default()
            },
        )]);
        let handed = [("ens9".to_string(), "q".to_string())];
        keep_records(&mut states, &before, &sel, &["ens1f0np0".into()], &handed);
        assert_eq!(states["p"].created_vfs, ["ens1f0np0"]);
        assert_eq!(
            states["q"].created_vfs,
            ["ens9"],
            "q asks for no VFs: only what it took over"
        );
        assert_eq!(states["r"].created_vfs, ["ens1f1np1"], "carried forward");
    }

    #[test]
    fn a_nic_joining_a_bond_is_the_bond_policy_s_change() {
        let bonded = NodePolicyState {
            generation: 1,
            phase: APPLIED.into(),
            parts: vec![PolicyPart {
                kind: "bond".into(),
                name: "bond0".into(),
                phase: APPLIED.into(),
                reason: String::new(),
            }],
            ..NodePolicyState::default()
        };
        let after = BTreeMap::from([("b".to_string(), bonded)]);
        let executed = [Executed {
            target: "eth1".into(),
            bond: Some("bond0".into()),
            action: "enslave eth1 to bond0 (12 ms)".into(),
            error: None,
        }];
        let got = events("n1", &BTreeMap::new(), &after, &executed);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].note, "node n1: 1 changes: enslave eth1 to bond0 (12 ms)");
    }

    #[test]
    fn events_say_what_changed_and_nothing_when_nothing_did() {
        let state = |phase: &str, reason: &str| NodePolicyState {
            generation: 1,
            phase: phase.into(),
            reason: reason.into(),
            parts: vec![PolicyPart {
                kind: "pf".into(),
                name: "ens1f0np0".into(),
                phase: phase.into(),
                reason: reason.into(),
            }],
            created_vfs: Vec::new(),
        };
        let applied = BTreeMap::from([("p".to_string(), state(APPLIED, ""))]);
        assert!(events("n1", &applied, &applied, &[]).is_empty());
        let executed = [
            Executed {
                target: "ens1f0np0".into(),
                bond: None,
                action: "ens1f0np0: numVfs 0 -> 4".into(),
                error: None,
            },
            Executed {
                target: "bond9".into(),
                bond: None,
                action: "not this policy's".into(),
                error: None,
            },
        ];
        let got = events("n1", &BTreeMap::new(), &applied, &executed);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].reason, "Applied");
        assert_eq!(got[0].note, "node n1: 1 changes: ens1f0np0: numVfs 0 -> 4");
        let pending = BTreeMap::from([("p".to_string(), state(PENDING, "VF in use"))]);
        let got = events("n1", &applied, &pending, &[]);
        assert_eq!((got[0].reason, got[0].warning), ("Pending", false));
        assert!(events("n1", &pending, &pending, &[]).is_empty(), "no repeat");
        let broken = [Executed {
            target: "ens1f0np0".into(),
            bond: None,
            action: "ens1f0np0: numVfs 0 -> 4".into(),
            error: Some("EIO".into()),
        }];
        let failed = BTreeMap::from([("p".to_string(), state(FAILED, "EIO"))]);
        let got = events("n1", &applied, &failed, &broken);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].reason, got[0].warning), ("ApplyFailed", true));
        assert!(bounded("x".repeat(5000)).len() <= 1000);
    }
}
