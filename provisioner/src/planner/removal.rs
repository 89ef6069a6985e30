//! What a policy leaves on a node once it no longer selects it (deleted, or its nodeSelector no
//! longer matches): the bonds and VLANs carrying its mark are deleted and the VFs it created go
//! back to 0, each only when nothing uses it; what is in use waits, named. Nothing without its
//! mark or its record is touched, and nothing a remaining policy still asks for.

use std::collections::HashSet;

use super::pf::busy_vfs;
use super::*;

/// A policy gone from this node, with the PFs whose VFs it created (the agent's record: a PF
/// carries no mark of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftover {
    pub policy: String,
    pub created_vfs: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    pub steps: Vec<Step>,
    /// What waits, and for what.
    pub waiting: Vec<String>,
    /// `(PF, policy)`: VFs a remaining policy still asks for; they are that policy's from now on.
    pub handed_over: Vec<(String, String)>,
}

impl Removal {
    /// Nothing left to remove and nothing waiting.
    pub fn is_done(&self) -> bool {
        self.steps.is_empty() && self.waiting.is_empty()
    }
}

/// The links carrying `policy`'s mark, with their indexes.
pub fn marked_links(policy: &str, links: &LinkTable) -> Vec<(String, u32)> {
    let mark = format!("{ALIAS_PREFIX}{policy}");
    links
        .names()
        .iter()
        .filter_map(|n| {
            let f = links.facts(n)?;
            (f.alias.as_deref() == Some(mark.as_str())).then(|| (n.clone(), f.index))
        })
        .collect()
}

/// The removal of `leftover`. `users_elsewhere` maps a link index to the links in other
/// namespaces built on it (asked for the indexes of [`marked_links`]).
pub fn plan_removal(
    leftover: &Leftover,
    remaining: &[SpiderNetworkNodePolicy],
    observed: &Observed<'_>,
    users_elsewhere: &BTreeMap<u32, Vec<String>>,
) -> Removal {
    let mut out = Removal::default();
    let here: Vec<&SpiderNetworkNodePolicy> = remaining
        .iter()
        .filter(|p| p.spec.selects_node(observed.node_labels))
        .collect();
    remove_links(leftover, &here, observed, users_elsewhere, &mut out);
    for pf in &leftover.created_vfs {
        remove_vfs(leftover, pf, &here, observed, &mut out);
    }
    out
}

fn remove_links(
    leftover: &Leftover,
    here: &[&SpiderNetworkNodePolicy],
    observed: &Observed<'_>,
    users_elsewhere: &BTreeMap<u32, Vec<String>>,
    out: &mut Removal,
) {
    let links = observed.links;
    let wanted: HashSet<String> = here
        .iter()
        .flat_map(|p| parts_of(p, observed.inventory))
        .filter(|(kind, _)| matches!(*kind, "bond" | "vlan"))
        .map(|(_, name)| name)
        .collect();
    let mut removable: BTreeMap<String, u32> = marked_links(&leftover.policy, links)
        .into_iter()
        .filter(|(name, _)| !wanted.contains(name))
        .collect();
    // A link stays while anything outside the removal is built on it, here or in a pod; a link
    // that stays keeps its parent, so this runs until nothing changes.
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let before = removable.len();
        let snapshot = removable.clone();
        for (name, index) in &snapshot {
            let here_users: Vec<String> = links
                .names()
                .iter()
                .filter(|n| !snapshot.contains_key(*n))
                .filter(|n| {
                    links
                        .facts(n)
                        .is_some_and(|f| f.parent == Some(*index) && !f.parent_elsewhere)
                })
                .cloned()
                .collect();
            let users: Vec<String> = here_users
                .into_iter()
                .chain(users_elsewhere.get(index).cloned().unwrap_or_default())
                .collect();
            if !users.is_empty() {
                removable.remove(name);
                kept.insert(name.clone(), users.join(", "));
            }
        }
        if removable.len() == before {
            break;
        }
    }
    let is_vlan = |n: &str| links.facts(n).and_then(|f| f.kind.as_deref()) == Some("vlan");
    // VLANs before the bonds they sit on.
    let mut order: Vec<&String> = removable.keys().collect();
    order.sort_by_key(|n| !is_vlan(n));
    for name in order {
        out.steps.push(Step {
            action: Action::DeleteLink { link: name.clone() },
            reason: format!(
                "{name} was created for policy {}, which no longer selects this node",
                leftover.policy
            ),
        });
    }
    for (name, users) in kept {
        out.waiting.push(format!("{name} is in use by {users}"));
    }
}

fn remove_vfs(
    leftover: &Leftover,
    pf: &str,
    here: &[&SpiderNetworkNodePolicy],
    observed: &Observed<'_>,
    out: &mut Removal,
) {
    let Some(nic) = observed
        .inventory
        .nics
        .iter()
        .find(|n| n.name.as_deref() == Some(pf) || n.pci_address == pf)
    else {
        return; // the PF is gone: nothing of it to remove
    };
    if let Some(keeper) = here.iter().find(|p| p.spec.num_vfs.is_some() && selects(p, nic)) {
        out.handed_over
            .push((pf.to_string(), keeper.metadata.name.clone()));
        return;
    }
    let Some(sriov) = nic.sriov.as_ref() else {
        return;
    };
    let have = sriov.num_vfs.unwrap_or(0);
    if have == 0 {
        return;
    }
    let busy = busy_vfs(sriov, observed);
    if !busy.is_empty() {
        out.waiting.push(format!(
            "{pf} keeps its {have} VFs while {} in use: {}",
            busy.len(),
            busy.join(", ")
        ));
        return;
    }
    out.steps.push(Step {
        action: Action::SetNumVfs {
            pf: pf.to_string(),
            pci: nic.pci_address.clone(),
            count: 0,
        },
        reason: format!(
            "{pf} numVfs {have} -> 0: policy {} created them and no longer selects this node",
            leftover.policy
        ),
    });
}
