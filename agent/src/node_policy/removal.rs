//! Policies the node reported that no longer select it (deleted, or their nodeSelector no longer
//! matches the node's labels): what they made here is removed through the provisioner's removal
//! planner, and the node keeps reporting them as `Removing` while something waits. The record of
//! the VFs a policy created (`createdVfs`) lives in the node's report, so an agent restarted
//! mid-removal carries on from the API server.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use spiderpool_api::policy::SpiderNetworkNodePolicy;
use spiderpool_api::policy_status::{FAILED, NodePolicyState, REMOVING};
use spiderpool_provisioner::applier::{Kernel, Observation, target};
use spiderpool_provisioner::planner::{Action, Leftover, Observed, marked_links, plan_removal};

use super::state::{Executed, PolicyEvent, Selected, bounded};

/// The links in other namespaces built on the given host link indexes.
pub type UsersFor<'a> = dyn Fn(&HashSet<u32>) -> Result<BTreeMap<u32, Vec<String>>, String> + 'a;

/// The reported policies that are not selected any more.
pub fn leftovers(reported: &BTreeMap<String, NodePolicyState>, selected: &[Selected]) -> Vec<Leftover> {
    reported
        .iter()
        .filter(|(name, _)| !selected.iter().any(|s| &s.policy.metadata.name == *name))
        .map(|(name, state)| Leftover {
            policy: name.clone(),
            created_vfs: state.created_vfs.clone(),
        })
        .collect()
}

/// One leftover's pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub policy: String,
    /// Steps carried out (apply mode), with their errors.
    pub executed: Vec<Executed>,
    /// Steps not carried out (report mode).
    pub planned: Vec<String>,
    pub waiting: Vec<String>,
    /// `(PF, policy)`: VFs a remaining policy takes over.
    pub handed_over: Vec<(String, String)>,
    /// Recorded PFs whose VFs are still there.
    pub created_vfs_left: Vec<String>,
}

/// Plans every leftover's removal on `observation` and, when `kernel` is given, carries it out.
pub fn remove(
    leftovers: &[Leftover],
    remaining: &[SpiderNetworkNodePolicy],
    observation: &Observation,
    users_for: &UsersFor<'_>,
    mut kernel: Option<&mut dyn Kernel>,
) -> Vec<Removed> {
    let marked: HashSet<u32> = leftovers
        .iter()
        .flat_map(|l| marked_links(&l.policy, &observation.links))
        .map(|(_, index)| index)
        .collect();
    // A namespace that cannot be looked into may hold a user: then every marked link waits.
    let elsewhere = if marked.is_empty() {
        BTreeMap::new()
    } else {
        users_for(&marked).unwrap_or_else(|e| {
            let unknown = vec![format!("whatever the other namespaces hold (cannot look: {e})")];
            marked.iter().map(|i| (*i, unknown.clone())).collect()
        })
    };
    let observed = Observed {
        inventory: &observation.inventory,
        links: &observation.links,
        node_labels: &observation.node_labels,
        allocated: &observation.allocated,
    };
    let mut out = Vec::new();
    for leftover in leftovers {
        let plan = plan_removal(leftover, remaining, &observed, &elsewhere);
        let mut removed = Removed {
            policy: leftover.policy.clone(),
            waiting: plan.waiting,
            handed_over: plan.handed_over,
            ..Removed::default()
        };
        let mut zeroed: BTreeSet<String> = BTreeSet::new();
        for step in plan.steps {
            match kernel.as_deref_mut() {
                Some(k) => {
                    let result = k.apply(&step.action);
                    if let (Ok(()), Action::SetNumVfs { pf, .. }) = (&result, &step.action) {
                        zeroed.insert(pf.clone());
                    }
                    removed.executed.push(Executed {
                        target: target(&step.action).to_string(),
                        bond: None,
                        action: step.action.to_string(),
                        error: result.err().map(|e| format!("{}: {e}", step.reason)),
                    });
                }
                None => removed.planned.push(step.action.to_string()),
            }
        }
        let handed: HashSet<&String> = removed.handed_over.iter().map(|(pf, _)| pf).collect();
        removed.created_vfs_left = leftover
            .created_vfs
            .iter()
            .filter(|pf| !zeroed.contains(*pf) && !handed.contains(pf))
            .filter(|pf| has_vfs(observation, pf))
            .cloned()
            .collect();
        out.push(removed);
    }
    out
}

fn has_vfs(observation: &Observation, pf: &str) -> bool {
    observation
        .inventory
        .nics
        .iter()
        .find(|n| n.name.as_deref() == Some(pf) || n.pci_address == pf)
        .and_then(|n| n.sriov.as_ref())
        .is_some_and(|s| s.num_vfs.unwrap_or(0) > 0)
}

/// What the node keeps reporting about a leftover: `None` once nothing of it is left (the entry
/// goes from the report, and with it the record).
pub fn state_after(
    old: &NodePolicyState,
    removed: &Removed,
    caveat: Option<&str>,
) -> Option<NodePolicyState> {
    let failed: Vec<&str> = removed
        .executed
        .iter()
        .filter_map(|e| e.error.as_deref())
        .collect();
    if failed.is_empty() && removed.waiting.is_empty() && removed.planned.is_empty() {
        return None;
    }
    let mut why: Vec<String> = failed.iter().map(|f| f.to_string()).collect();
    why.extend(removed.waiting.iter().map(|w| format!("waits: {w}")));
    if !removed.planned.is_empty() {
        why.push(format!(
            "{}would {}",
            caveat.map(|c| format!("{c}: ")).unwrap_or_default(),
            removed.planned.join("; ")
        ));
    }
    Some(NodePolicyState {
        generation: old.generation,
        phase: if failed.is_empty() { REMOVING } else { FAILED }.into(),
        reason: bounded(format!("no longer selects this node; {}", why.join("; "))),
        parts: Vec::new(),
        created_vfs: removed.created_vfs_left.clone(),
    })
}

/// The Events of a leftover's pass: what was removed (`Removed`), what failed (`RemoveFailed`),
/// and a changed wait (`RemovalWaiting`).
pub fn events(
    node: &str,
    removed: &Removed,
    before: Option<&NodePolicyState>,
    after: Option<&NodePolicyState>,
) -> Vec<PolicyEvent> {
    let mut out = Vec::new();
    let done: Vec<&str> = removed
        .executed
        .iter()
        .filter(|e| e.error.is_none())
        .map(|e| e.action.as_str())
        .collect();
    if !done.is_empty() {
        out.push(PolicyEvent {
            policy: removed.policy.clone(),
            warning: false,
            reason: "Removed",
            note: bounded(format!(
                "node {node}: the policy no longer selects it: {}",
                done.join("; ")
            )),
        });
    }
    let failed: Vec<&str> = removed
        .executed
        .iter()
        .filter_map(|e| e.error.as_deref())
        .collect();
    if !failed.is_empty() {
        out.push(PolicyEvent {
            policy: removed.policy.clone(),
            warning: true,
            reason: "RemoveFailed",
            note: bounded(format!("node {node}: {}", failed.join("; "))),
        });
    }
    if let Some(a) = after
        && failed.is_empty()
        && !removed.waiting.is_empty()
        && before.is_none_or(|b| b.reason != a.reason)
    {
        out.push(PolicyEvent {
            policy: removed.policy.clone(),
            warning: false,
            reason: "RemovalWaiting",
            note: bounded(format!("node {node}: {}", removed.waiting.join("; "))),
        });
    }
    out
}
