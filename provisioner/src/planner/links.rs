//! The plan's bonds and VLANs: created, adopted or changed, only when they carry our alias.

use super::*;

pub(super) fn plan_bond(
    policy: &SpiderNetworkNodePolicy,
    bond: &BondSpec,
    observed: &Observed<'_>,
    out: &mut Plan,
) {
    let inv = observed.inventory;
    let alias = format!("{ALIAS_PREFIX}{}", policy.metadata.name);
    let existing = inv.bonds.iter().find(|b| b.name == bond.name);
    let before = out.steps.len();
    let fail = |out: &mut Plan, why: String| {
        out.steps.truncate(before);
        out.status.insert(bond.name.clone(), Status::Failed(why));
    };
    if existing.is_some() && !is_ours(observed.links, &bond.name) {
        return fail(
            out,
            format!(
                "{} exists and was not created by spiderpool: left alone",
                bond.name
            ),
        );
    }
    for member in &bond.members {
        if observed.links.facts(member).is_none()
            && !inv.nics.iter().any(|n| n.name.as_deref() == Some(member))
        {
            return fail(out, format!("member {member} does not exist"));
        }
        let master = inv
            .nics
            .iter()
            .find(|n| n.name.as_deref() == Some(member))
            .and_then(|n| n.bond_master.clone());
        if let Some(m) = master
            && m != bond.name
        {
            return fail(out, format!("member {member} is already in bond {m}"));
        }
    }
    let step = |out: &mut Plan, action: Action, reason: String| out.steps.push(Step { action, reason });
    match existing {
        None => {
            step(
                out,
                Action::CreateBond {
                    name: bond.name.clone(),
                    mode: bond.mode.clone(),
                },
                format!("bond {} missing", bond.name),
            );
            step(
                out,
                Action::SetAlias {
                    link: bond.name.clone(),
                    alias: alias.clone(),
                },
                "mark it as ours".into(),
            );
            for (k, v) in &bond.options {
                step(
                    out,
                    Action::SetBondOption {
                        bond: bond.name.clone(),
                        option: k.clone(),
                        value: v.clone(),
                    },
                    format!("bond option {k}"),
                );
            }
        }
        Some(b) => {
            if b.mode.as_deref() != Some(bond.mode.as_str()) && !mode_equal(b.mode.as_deref(), &bond.mode) {
                return fail(
                    out,
                    format!(
                        "{} is {:?}, the policy wants {}: recreate it to change the mode",
                        bond.name, b.mode, bond.mode
                    ),
                );
            }
            for slave in b.slaves.iter().filter(|s| !bond.members.contains(s)) {
                step(
                    out,
                    Action::Release { link: slave.clone() },
                    format!("{slave} is no longer a member of {}", bond.name),
                );
            }
        }
    }
    let slaves = existing.map(|b| b.slaves.clone()).unwrap_or_default();
    for member in bond.members.iter().filter(|m| !slaves.contains(m)) {
        step(
            out,
            Action::Enslave {
                link: member.clone(),
                bond: bond.name.clone(),
            },
            format!("{member} joins {}", bond.name),
        );
    }
    if let Some(mtu) = bond.mtu {
        // A bond is no NIC: its MTU comes from the link table.
        let have = observed.links.facts(&bond.name).and_then(|f| f.mtu);
        if existing.is_none() || have != Some(mtu) {
            step(
                out,
                Action::SetMtu {
                    link: bond.name.clone(),
                    mtu,
                },
                format!("bond {} MTU {mtu}", bond.name),
            );
        }
    }
    if !observed.links.facts(&bond.name).is_some_and(|f| f.up) {
        step(
            out,
            Action::LinkUp {
                link: bond.name.clone(),
            },
            format!("bond {} up", bond.name),
        );
    }
    let status = if out.steps.len() == before {
        Status::Applied
    } else {
        Status::Pending(format!("{} actions to apply", out.steps.len() - before))
    };
    out.status.insert(bond.name.clone(), status);
    for vlan in &bond.vlans {
        plan_vlan(policy, vlan, &bond.name, observed, out);
    }
}

/// `802.3ad` and `4` name the same mode; sysfs says `802.3ad`.
fn mode_equal(have: Option<&str>, want: &str) -> bool {
    match (
        have.and_then(|h| spiderpool_linux::rtnl::bond_mode(h).ok()),
        spiderpool_linux::rtnl::bond_mode(want).ok(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

pub(super) fn plan_vlan(
    policy: &SpiderNetworkNodePolicy,
    vlan: &VlanSpec,
    parent: &str,
    observed: &Observed<'_>,
    out: &mut Plan,
) {
    let name = vlan.name_under(parent);
    let before = out.steps.len();
    match observed.links.facts(&name) {
        None => {
            out.steps.push(Step {
                action: Action::CreateVlan {
                    name: name.clone(),
                    parent: parent.into(),
                    id: vlan.id,
                },
                reason: format!("VLAN {name} missing"),
            });
            out.steps.push(Step {
                action: Action::SetAlias {
                    link: name.clone(),
                    alias: format!("{ALIAS_PREFIX}{}", policy.metadata.name),
                },
                reason: "mark it as ours".into(),
            });
            out.steps.push(Step {
                action: Action::LinkUp { link: name.clone() },
                reason: format!("VLAN {name} up"),
            });
        }
        Some(_) if !is_ours(observed.links, &name) => {
            out.status.insert(
                name.clone(),
                Status::Failed(format!(
                    "{name} exists and was not created by spiderpool: left alone"
                )),
            );
            return;
        }
        Some(f) => {
            let parent_index = observed.links.facts(parent).map(|p| p.index);
            if f.vlan_id != Some(vlan.id) || (parent_index.is_some() && f.parent != parent_index) {
                out.status.insert(
                    name.clone(),
                    Status::Failed(format!("{name} exists with another id or parent: recreate it")),
                );
                return;
            }
            if !f.up {
                out.steps.push(Step {
                    action: Action::LinkUp { link: name.clone() },
                    reason: format!("VLAN {name} up"),
                });
            }
        }
    }
    let status = if out.steps.len() == before {
        Status::Applied
    } else {
        Status::Pending(format!("{} actions to apply", out.steps.len() - before))
    };
    out.status.insert(name, status);
}
