//! The pure part of provisioning: (policies, what the node has) → the ordered actions that make the
//! node match, each with its reason, and a status per PF. No I/O: the applier executes the steps,
//! rescans and plans again until nothing is left (VFs created in one round get their settings and
//! drivers in the next).

use std::collections::{BTreeMap, HashSet};

use spiderpool_api::inventory::{Inventory, Nic};
use spiderpool_api::policy::{BondSpec, SpiderNetworkNodePolicy, VlanSpec};
use spiderpool_linux::links::LinkTable;

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
    /// VF PCI addresses the device plugin has handed to pods.
    pub allocated: &'a HashSet<String>,
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

/// The value of one setting for a PF: the highest-priority (lowest number) policy that sets it;
/// two policies of that priority that disagree are a conflict.
fn merged<T: Clone + PartialEq + std::fmt::Debug>(
    policies: &[&SpiderNetworkNodePolicy],
    what: &str,
    get: impl Fn(&SpiderNetworkNodePolicy) -> Option<T>,
) -> Result<Option<T>, String> {
    let mut best: Option<(u32, &str, T)> = None;
    for p in policies {
        let Some(v) = get(p) else { continue };
        match &best {
            None => best = Some((p.spec.priority(), &p.metadata.name, v)),
            Some((prio, name, value)) if *prio == p.spec.priority() && *value != v => {
                return Err(format!(
                    "policies {name} and {} (priority {prio}) disagree on {what}: {value:?} vs {v:?}",
                    p.metadata.name
                ));
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
        .filter(|p| {
            p.spec
                .node_selector
                .iter()
                .all(|(k, v)| observed.node_labels.get(k) == Some(v))
        })
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
                out.status.insert(key, Status::Failed(e));
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
            out.status.insert(RDMA_STATUS.into(), Status::Failed(e));
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

/// The status key of the node-wide RDMA netns mode.
pub const RDMA_STATUS: &str = "rdma-netns-mode";

/// Steps for one PF; `Ok(Some(reason))` when it must wait.
fn plan_pf(
    nic: &Nic,
    policies: &[&SpiderNetworkNodePolicy],
    observed: &Observed<'_>,
    steps: &mut Vec<Step>,
) -> Result<Option<String>, String> {
    let num_vfs = merged(policies, "numVfs", |p| p.spec.num_vfs)?;
    let mtu = merged(policies, "mtu", |p| p.spec.mtu)?;
    let trust = merged(policies, "vf.trust", |p| p.spec.vf.trust)?;
    let spoof_chk = merged(policies, "vf.spoofChk", |p| p.spec.vf.spoof_chk)?;
    let link_state = merged(policies, "vf.linkState", |p| p.spec.vf.link_state.clone())?;
    if let Some(l) = &link_state
        && !matches!(l.as_str(), "auto" | "enable" | "disable")
    {
        return Err(format!("vf.linkState {l:?}: want auto, enable or disable"));
    }
    let device_type = merged(policies, "deviceType", |p| p.spec.device_type.clone())?;
    if let Some(d) = &device_type
        && !matches!(d.as_str(), "netdevice" | "vfio-pci")
    {
        return Err(format!("deviceType {d:?}: want netdevice or vfio-pci"));
    }
    let force = policies.iter().any(|p| p.spec.force);
    let pf = nic
        .name
        .clone()
        .ok_or("the PF has no netdev (bound to vfio-pci?)")?;
    if let Some(mtu) = mtu
        && nic.mtu != Some(mtu)
    {
        steps.push(Step {
            action: Action::SetMtu {
                link: pf.clone(),
                mtu,
            },
            reason: format!(
                "{pf} MTU {} -> {mtu}",
                nic.mtu.map_or("?".into(), |m| m.to_string())
            ),
        });
    }
    let sriov = nic.sriov.as_ref();
    if let Some(want) = num_vfs {
        let sriov = sriov.ok_or_else(|| format!("{pf} cannot do SR-IOV"))?;
        if let Some(total) = sriov.total_vfs
            && want > total
        {
            return Err(format!(
                "{pf} supports at most {total} VFs, the policy asks for {want}"
            ));
        }
        let have = sriov.num_vfs.unwrap_or(0);
        if have != want {
            let busy: Vec<String> = sriov
                .vfs
                .iter()
                .filter(|vf| {
                    observed.allocated.contains(&vf.pci_address)
                        // A VF bound to a network driver whose netdev is not in this namespace has
                        // been moved into a pod.
                        || (vf.name.is_none() && vf.driver.as_deref().is_some_and(|d| d != "vfio-pci"))
                })
                .map(|vf| vf.pci_address.clone())
                .collect();
            if have > 0 && !busy.is_empty() && !force {
                return Ok(Some(format!(
                    "numVfs {have} -> {want} needs all VFs removed, and {} in use: {} (set force to override)",
                    busy.len(),
                    busy.join(", ")
                )));
            }
            if have > 0 {
                steps.push(Step {
                    action: Action::SetNumVfs {
                        pf: pf.clone(),
                        pci: nic.pci_address.clone(),
                        count: 0,
                    },
                    reason: format!("{pf} numVfs {have} -> {want}: the kernel wants 0 in between"),
                });
            }
            // Some PFs (igb) fail to bring their VFs up while they are down themselves.
            if want > 0 && observed.links.facts(&pf).is_some_and(|f| !f.up) {
                steps.push(Step {
                    action: Action::LinkUp { link: pf.clone() },
                    reason: format!("{pf} up before its VFs"),
                });
            }
            if want > 0 {
                steps.push(Step {
                    action: Action::SetNumVfs {
                        pf: pf.clone(),
                        pci: nic.pci_address.clone(),
                        count: want,
                    },
                    reason: format!("{pf} numVfs {have} -> {want}"),
                });
            }
            return Ok(None); // VF settings follow in the next round, once the VFs exist
        }
    }
    for vf in sriov.map(|s| s.vfs.as_slice()).unwrap_or_default() {
        let trust_off = trust.is_some_and(|t| vf.trust != Some(t));
        let spoof_off = spoof_chk.is_some_and(|s| vf.spoof_chk != Some(s));
        // The inventory has no VF link state; netlink (the link table) does.
        let have_state = observed
            .links
            .vf(&pf, vf.vf_id)
            .and_then(|c| c.link_state.clone());
        let state_off = link_state
            .as_ref()
            .is_some_and(|l| have_state.as_ref() != Some(l));
        if trust_off || spoof_off || state_off {
            steps.push(Step {
                action: Action::SetVf {
                    pf: pf.clone(),
                    vf: vf.vf_id,
                    trust: trust.filter(|_| trust_off),
                    spoof_chk: spoof_chk.filter(|_| spoof_off),
                    link_state: link_state.clone().filter(|_| state_off),
                },
                reason: format!(
                    "{pf} VF {} trust/spoofchk/link state differ from the policy",
                    vf.vf_id
                ),
            });
        }
        if device_type.as_deref() == Some("vfio-pci") && vf.driver.as_deref() != Some("vfio-pci") {
            steps.push(Step {
                action: Action::BindDriver {
                    pci: vf.pci_address.clone(),
                    driver: "vfio-pci".into(),
                },
                reason: format!("{pf} VF {} deviceType vfio-pci", vf.vf_id),
            });
        }
    }
    Ok(None)
}

fn plan_bond(policy: &SpiderNetworkNodePolicy, bond: &BondSpec, observed: &Observed<'_>, out: &mut Plan) {
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

fn plan_vlan(
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

#[cfg(test)]
mod tests {
    use super::*;
    use spiderpool_api::inventory::Bond;
    use spiderpool_api::policy::{NicSelector, PolicySpec, VfSettings};
    use spiderpool_linux::links::LinkFacts;

    fn inventory(name: &str) -> Inventory {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../tests/fixtures/sysfs/{name}.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn policy(name: &str, spec: PolicySpec) -> SpiderNetworkNodePolicy {
        SpiderNetworkNodePolicy {
            api_version: None,
            kind: None,
            metadata: spiderpool_api::policy::Metadata { name: name.into() },
            spec,
        }
    }

    fn pf0(spec: PolicySpec) -> PolicySpec {
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
        allocated: HashSet<String>,
    }

    impl World {
        fn new(fixture: &str) -> World {
            World {
                inv: inventory(fixture),
                links: LinkTable::default(),
                labels: BTreeMap::new(),
                allocated: HashSet::new(),
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
        w.allocated.insert("0000:3b:00.2".into());
        assert!(w.plan(std::slice::from_ref(&p)).steps.is_empty());
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
}
