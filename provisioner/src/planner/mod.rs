//! The pure part of provisioning: (policies, what the node has) → the ordered actions that make the
//! node match, each with its reason, and a status per PF. No I/O: the applier executes the steps,
//! rescans and plans again until nothing is left (VFs created in one round get their settings and
//! drivers in the next).

use std::collections::BTreeMap;

use spiderpool_api::inventory::{Inventory, Nic, Sriov};
use spiderpool_api::policy::{BondSpec, SpiderNetworkNodePolicy, VlanSpec};
use spiderpool_linux::links::LinkTable;

mod links;
mod pf;
mod removal;
#[cfg(test)]
mod removal_tests;
#[cfg(test)]
mod tests;

pub use removal::{Leftover, Removal, marked_links, plan_removal};

use links::{plan_bond, plan_vlan};
use pf::plan_pf;

/// The ifalias this project puts on what it creates; anything without it is never changed.
pub const ALIAS_PREFIX: &str = "spiderpool:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SetNumVfs {
        pf: String,
        pci: String,
        count: u32,
    },
    SetMtu {
        link: String,
        mtu: u32,
    },
    SetVf {
        pf: String,
        vf: u32,
        trust: Option<bool>,
        spoof_chk: Option<bool>,
        /// `auto`, `enable` or `disable`.
        link_state: Option<String>,
    },
    BindDriver {
        pci: String,
        driver: String,
    },
    CreateBond {
        name: String,
        mode: String,
    },
    SetBondOption {
        bond: String,
        option: String,
        value: String,
    },
    Enslave {
        link: String,
        bond: String,
    },
    Release {
        link: String,
    },
    CreateVlan {
        name: String,
        parent: String,
        id: u16,
    },
    SetAlias {
        link: String,
        alias: String,
    },
    LinkUp {
        link: String,
    },
    /// Deletes a bond or VLAN this project created (removal of a policy).
    DeleteLink {
        link: String,
    },
    /// The RDMA subsystem's netns mode (`rdma system set netns`).
    SetRdmaNetnsMode {
        shared: bool,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::SetNumVfs { pf, pci, count } => write!(f, "set {pf} ({pci}) sriov_numvfs = {count}"),
            Action::SetMtu { link, mtu } => write!(f, "set {link} mtu {mtu}"),
            Action::SetVf {
                pf,
                vf,
                trust,
                spoof_chk,
                link_state,
            } => {
                write!(f, "set {pf} vf {vf}")?;
                if let Some(l) = link_state {
                    write!(f, " state {l}")?;
                }
                if let Some(t) = trust {
                    write!(f, " trust {}", if *t { "on" } else { "off" })?;
                }
                if let Some(s) = spoof_chk {
                    write!(f, " spoofchk {}", if *s { "on" } else { "off" })?;
                }
                Ok(())
            }
            Action::BindDriver { pci, driver } => write!(f, "bind {pci} to {driver}"),
            Action::CreateBond { name, mode } => write!(f, "create bond {name} mode {mode}"),
            Action::SetBondOption { bond, option, value } => {
                write!(f, "set {bond} bonding {option} = {value}")
            }
            Action::Enslave { link, bond } => write!(f, "enslave {link} to {bond}"),
            Action::Release { link } => write!(f, "release {link} from its bond"),
            Action::CreateVlan { name, parent, id } => write!(f, "create vlan {name} on {parent} id {id}"),
            Action::SetAlias { link, alias } => write!(f, "set {link} alias {alias}"),
            Action::LinkUp { link } => write!(f, "set {link} up"),
            Action::DeleteLink { link } => write!(f, "delete {link}"),
            Action::SetRdmaNetnsMode { shared } => {
                write!(
                    f,
                    "set rdma netns mode {}",
                    if *shared { "shared" } else { "exclusive" }
                )
            }
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Applied => write!(f, "applied"),
            Status::Pending(why) => write!(f, "pending: {why}"),
            Status::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Applied,
    Pending(String),
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Per PF (netdev name, or PCI address without one), and per bond/VLAN by name.
    pub status: BTreeMap<String, Status>,
}

/// What the planner looks at.
pub struct Observed<'a> {
    pub inventory: &'a Inventory,
    pub links: &'a LinkTable,
    pub node_labels: &'a BTreeMap<String, String>,
    /// VF PCI addresses the device plugin has handed to pods → who holds each (empty when
    /// unknown).
    pub allocated: &'a BTreeMap<String, String>,
}

fn selects(policy: &SpiderNetworkNodePolicy, nic: &Nic) -> bool {
    let sel = &policy.spec.nic_selector;
    let eq = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| {
            have.as_ref()
                .is_some_and(|h| h.eq_ignore_ascii_case(w.trim_start_matches("0x")))
        })
    };
    eq(&sel.vendor, &nic.vendor_id)
        && eq(&sel.device_id, &nic.device_id)
        && (sel.pf_names.is_empty()
            || nic.name.as_ref().is_some_and(|n| sel.pf_names.contains(n) || nic.alt_names.iter().any(|a| sel.pf_names.contains(a))))
        && (sel.root_devices.is_empty() || sel.root_devices.contains(&nic.pci_address))
        // A selector that names nothing would touch every NIC: require at least one criterion.
        && (sel.vendor.is_some() || sel.device_id.is_some() || !sel.pf_names.is_empty() || !sel.root_devices.is_empty())
}

/// Why a PF cannot be planned: policies that disagree, or a value no kernel takes. Its text is
/// the PF's `Failed` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplannable(pub String);

impl std::fmt::Display for Unplannable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The value of one setting for a PF: the highest-priority (lowest number) policy that sets it;
/// two policies of that priority that disagree are a conflict.
fn merged<T: Clone + PartialEq + std::fmt::Debug>(
    policies: &[&SpiderNetworkNodePolicy],
    what: &str,
    get: impl Fn(&SpiderNetworkNodePolicy) -> Option<T>,
) -> Result<Option<T>, Unplannable> {
    let mut best: Option<(u32, &str, T)> = None;
    for p in policies {
        let Some(v) = get(p) else { continue };
        match &best {
            None => best = Some((p.spec.priority(), &p.metadata.name, v)),
            Some((prio, name, value)) if *prio == p.spec.priority() && *value != v => {
                return Err(Unplannable(format!(
                    "policies {name} and {} (priority {prio}) disagree on {what}: {value:?} vs {v:?}",
                    p.metadata.name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(best.map(|(_, _, v)| v))
}

fn is_ours(links: &LinkTable, name: &str) -> bool {
    links
        .facts(name)
        .and_then(|f| f.alias.as_deref())
        .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
}

pub fn plan(policies: &[SpiderNetworkNodePolicy], observed: &Observed<'_>) -> Plan {
    let mut out = Plan::default();
    let here: Vec<&SpiderNetworkNodePolicy> = policies
        .iter()
        .filter(|p| p.spec.selects_node(observed.node_labels))
        .collect();
    for nic in &observed.inventory.nics {
        let mut mine: Vec<&SpiderNetworkNodePolicy> =
            here.iter().copied().filter(|p| selects(p, nic)).collect();
        if mine.is_empty() {
            continue; // nothing selects it: never touched
        }
        mine.sort_by_key(|p| (p.spec.priority(), p.metadata.name.clone()));
        let key = nic.name.clone().unwrap_or_else(|| nic.pci_address.clone());
        let before = out.steps.len();
        match plan_pf(nic, &mine, observed, &mut out.steps) {
            Ok(None) if out.steps.len() == before => {
                out.status.insert(key, Status::Applied);
            }
            Ok(None) => {
                out.status.insert(
                    key,
                    Status::Pending(format!("{} actions to apply", out.steps.len() - before)),
                );
            }
            Ok(Some(waiting)) => {
                out.status.insert(key, Status::Pending(waiting));
            }
            Err(e) => {
                out.steps.truncate(before);
                out.status.insert(key, Status::Failed(e.0));
            }
        }
    }
    plan_rdma_netns(&here, observed, &mut out);
    for policy in &here {
        for bond in &policy.spec.bonds {
            plan_bond(policy, bond, observed, &mut out);
        }
        for vlan in &policy.spec.vlans {
            match &vlan.parent {
                Some(parent) => plan_vlan(policy, vlan, parent, observed, &mut out),
                None => {
                    let name = vlan.name.clone().unwrap_or_else(|| format!("vlan{}", vlan.id));
                    out.status.insert(
                        name,
                        Status::Failed("a VLAN outside a bond needs `parent`".into()),
                    );
                }
            }
        }
    }
    out
}

/// The node-wide RDMA netns mode, as the highest-priority policy that sets it says.
fn plan_rdma_netns(policies: &[&SpiderNetworkNodePolicy], observed: &Observed<'_>, out: &mut Plan) {
    let mut sorted: Vec<&SpiderNetworkNodePolicy> = policies.to_vec();
    sorted.sort_by_key(|p| (p.spec.priority(), p.metadata.name.clone()));
    let wanted = match merged(&sorted, "rdma.netnsMode", |p| {
        p.spec.rdma.as_ref().map(|r| r.netns_mode.clone())
    }) {
        Ok(Some(w)) => w,
        Ok(None) => return,
        Err(e) => {
            out.status.insert(RDMA_STATUS.into(), Status::Failed(e.0));
            return;
        }
    };
    if !matches!(wanted.as_str(), "shared" | "exclusive") {
        out.status.insert(
            RDMA_STATUS.into(),
            Status::Failed(format!("rdma.netnsMode {wanted:?}: want shared or exclusive")),
        );
        return;
    }
    let have = observed.inventory.node.rdma_netns_mode.as_deref();
    if have == Some(wanted.as_str()) {
        out.status.insert(RDMA_STATUS.into(), Status::Applied);
        return;
    }
    out.steps.push(Step {
        action: Action::SetRdmaNetnsMode {
            shared: wanted == "shared",
        },
        reason: format!("rdma netns mode {} -> {wanted}", have.unwrap_or("unknown")),
    });
    out.status
        .insert(RDMA_STATUS.into(), Status::Pending("1 action to apply".into()));
}

/// What `policy` is judged by on a node with `inventory`: `(kind, key of Plan::status)` for each
/// PF it selects (`pf`), each of its bonds (`bond`) and VLANs (`vlan`), and the node's RDMA netns
/// mode when it sets one (`rdma`). Empty when it selects nothing here.
pub fn parts_of(policy: &SpiderNetworkNodePolicy, inventory: &Inventory) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = inventory
        .nics
        .iter()
        .filter(|nic| selects(policy, nic))
        .map(|nic| ("pf", nic.name.clone().unwrap_or_else(|| nic.pci_address.clone())))
        .collect();
    for bond in &policy.spec.bonds {
        out.push(("bond", bond.name.clone()));
        out.extend(bond.vlans.iter().map(|v| ("vlan", v.name_under(&bond.name))));
    }
    for vlan in &policy.spec.vlans {
        let name = match &vlan.parent {
            Some(parent) => vlan.name_under(parent),
            None => vlan.name.clone().unwrap_or_else(|| format!("vlan{}", vlan.id)),
        };
        out.push(("vlan", name));
    }
    if policy.spec.rdma.is_some() {
        out.push(("rdma", RDMA_STATUS.to_string()));
    }
    out
}

/// The status key of the node-wide RDMA netns mode.
pub const RDMA_STATUS: &str = "rdma-netns-mode";
