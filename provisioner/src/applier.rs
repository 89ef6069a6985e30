//! Executes plans: rounds of plan → apply → rescan until the planner has nothing left (VFs made in
//! one round get their settings in the next). The kernel sits behind [`Kernel`], so the loop is
//! tested with a recording fake and runs for real on sysfs and rtnetlink.

use std::collections::{BTreeMap, HashSet};

use spiderpool_api::inventory::Inventory;
use spiderpool_api::policy::SpiderNetworkNodePolicy;
use spiderpool_linux::links::{LinkTable, set_bond_option};
use spiderpool_linux::rtnl::{IfExists, NetlinkError, Rtnl};
use spiderpool_linux::sysfs::Sysfs;

use crate::planner::{Action, Observed, Plan, Status, Step, plan};

/// What one round looks at, owned.
pub struct Observation {
    pub inventory: Inventory,
    pub links: LinkTable,
    pub node_labels: BTreeMap<String, String>,
    /// VFs kubelet gave to pods → who holds each (empty when unknown).
    pub allocated: BTreeMap<String, String>,
}

impl Observation {
    pub fn plan(&self, policies: &[SpiderNetworkNodePolicy]) -> Plan {
        plan(
            policies,
            &Observed {
                inventory: &self.inventory,
                links: &self.links,
                node_labels: &self.node_labels,
                allocated: &self.allocated,
            },
        )
    }
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("no link {0}")]
    NoLink(String),
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// What the node refused, as a kernel without an error code of its own says it (a model
    /// node in tests).
    #[error("{0}")]
    Refused(String),
}

/// Carries out single actions.
pub trait Kernel {
    fn apply(&mut self, action: &Action) -> Result<(), ApplyError>;
}

#[derive(Debug, Default)]
pub struct Report {
    /// Every step tried, with its outcome, in order.
    pub executed: Vec<(Step, Result<(), ApplyError>)>,
    /// Status after the last rescan.
    pub status: BTreeMap<String, Status>,
    pub rounds: usize,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.status.values().any(|s| matches!(s, Status::Failed(_)))
    }
}

/// The link or PF a step changes, so a failure stops the later steps on the same thing only.
pub fn target(action: &Action) -> &str {
    match action {
        Action::SetNumVfs { pf, .. } | Action::SetVf { pf, .. } => pf,
        Action::SetMtu { link, .. }
        | Action::Enslave { link, .. }
        | Action::Release { link }
        | Action::SetAlias { link, .. }
        | Action::LinkUp { link }
        | Action::DeleteLink { link } => link,
        Action::BindDriver { pci, .. } => pci,
        Action::CreateBond { name, .. } | Action::CreateVlan { name, .. } => name,
        Action::SetBondOption { bond, .. } => bond,
        Action::SetRdmaNetnsMode { .. } => crate::planner::RDMA_STATUS,
    }
}

pub const MAX_ROUNDS: usize = 4;

pub fn apply(
    policies: &[SpiderNetworkNodePolicy],
    observe: &mut dyn FnMut() -> Observation,
    kernel: &mut dyn Kernel,
) -> Report {
    let mut report = Report::default();
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let plan = observe().plan(policies);
        let steps: Vec<Step> = plan
            .steps
            .into_iter()
            .filter(|s| !failures.contains_key(target(&s.action)))
            .collect();
        if steps.is_empty() || report.rounds == MAX_ROUNDS {
            report.status = plan.status;
            for (t, why) in failures {
                report.status.insert(t, Status::Failed(why));
            }
            if !steps.is_empty() {
                for s in &steps {
                    report
                        .status
                        .entry(target(&s.action).to_string())
                        .or_insert_with(|| {
                            Status::Pending(format!("did not converge in {MAX_ROUNDS} rounds"))
                        });
                }
            }
            return report;
        }
        report.rounds += 1;
        let mut broken: HashSet<String> = HashSet::new();
        for step in steps {
            let t = target(&step.action).to_string();
            if broken.contains(&t) {
                continue;
            }
            let outcome = kernel.apply(&step.action);
            if let Err(e) = &outcome {
                broken.insert(t.clone());
                failures.insert(t, format!("{}: {e}", step.reason));
            }
            report.executed.push((step, outcome));
        }
    }
}

/// The real kernel: sysfs writes and rtnetlink requests.
pub struct LiveKernel {
    pub sysfs: Sysfs,
    rtnl: Rtnl,
}

impl LiveKernel {
    pub fn new(sysfs: Sysfs) -> Result<LiveKernel, NetlinkError> {
        Ok(LiveKernel {
            sysfs,
            rtnl: Rtnl::new()?,
        })
    }

    fn index(&mut self, link: &str) -> Result<u32, ApplyError> {
        self.rtnl
            .link_index(link)?
            .ok_or_else(|| ApplyError::NoLink(link.to_string()))
    }

    fn write(&self, rel: String, value: &str) -> Result<(), ApplyError> {
        self.sysfs.write(&rel, value).map_err(|source| ApplyError::Write {
            path: rel,
            value: value.to_string(),
            source,
        })
    }
}

impl Kernel for LiveKernel {
    fn apply(&mut self, action: &Action) -> Result<(), ApplyError> {
        let failed = ApplyError::Netlink;
        match action {
            Action::SetNumVfs { pci, count, .. } => {
                self.write(format!("bus/pci/devices/{pci}/sriov_numvfs"), &count.to_string())
            }
            Action::SetMtu { link, mtu } => {
                let i = self.index(link)?;
                self.rtnl.set_mtu(i, *mtu).map_err(failed)
            }
            Action::SetVf {
                pf,
                vf,
                trust,
                spoof_chk,
                link_state,
            } => {
                let i = self.index(pf)?;
                self.rtnl
                    .set_vf(i, *vf, *trust, *spoof_chk, link_state.as_deref())
                    .map_err(failed)
            }
            Action::BindDriver { pci, driver } => {
                self.write(format!("bus/pci/devices/{pci}/driver_override"), driver)?;
                if self.sysfs.exists(format!("bus/pci/devices/{pci}/driver")) {
                    self.write(format!("bus/pci/devices/{pci}/driver/unbind"), pci)?;
                }
                self.write("bus/pci/drivers_probe".into(), pci)
            }
            // The planner asks for what is missing; one made meanwhile is as good.
            Action::CreateBond { name, mode } => {
                self.rtnl.create_bond(name, mode, IfExists::Keep).map_err(failed)
            }
            Action::SetBondOption { bond, option, value } => {
                set_bond_option(&self.sysfs, bond, option, value).map_err(|source| ApplyError::Write {
                    path: format!("class/net/{bond}/bonding/{option}"),
                    value: value.clone(),
                    source,
                })
            }
            Action::Enslave { link, bond } => {
                let (i, b) = (self.index(link)?, self.index(bond)?);
                self.rtnl.enslave(i, b).map_err(failed)
            }
            Action::Release { link } => {
                let i = self.index(link)?;
                self.rtnl.set_controller(i, 0).map_err(failed)
            }
            Action::CreateVlan { name, parent, id } => {
                let p = self.index(parent)?;
                self.rtnl
                    .create_vlan(name, p, *id, IfExists::Keep)
                    .map_err(failed)
            }
            Action::SetAlias { link, alias } => {
                let i = self.index(link)?;
                self.rtnl.set_alias(i, alias).map_err(failed)
            }
            Action::LinkUp { link } => {
                let i = self.index(link)?;
                self.rtnl.set_up(i, true).map_err(failed)
            }
            Action::DeleteLink { link } => {
                // Gone already is as good (the kernel deletes a bond's VLANs with it).
                match self.rtnl.link_index(link)? {
                    Some(i) => self.rtnl.delete_link(i).map(|_| ()).map_err(failed),
                    None => Ok(()),
                }
            }
            Action::SetRdmaNetnsMode { shared } => {
                spiderpool_linux::rdma::set_netns_mode_shared(*shared).map_err(failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spiderpool_api::inventory::Vf;
    use spiderpool_api::policy::{Metadata, NicSelector, PolicySpec, VfSettings};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A kernel that records actions and changes a model node the way the real one would.
    struct FakeKernel {
        node: Rc<RefCell<Inventory>>,
        done: Vec<Action>,
        fail_on: Option<Action>,
    }

    impl Kernel for FakeKernel {
        fn apply(&mut self, action: &Action) -> Result<(), ApplyError> {
            let refused = |why: &str| ApplyError::Refused(why.to_string());
            if self.fail_on.as_ref() == Some(action) {
                return Err(refused("EBUSY"));
            }
            self.done.push(action.clone());
            let mut node = self.node.borrow_mut();
            match action {
                Action::SetNumVfs { pf, count, .. } => {
                    let nic = node
                        .nics
                        .iter_mut()
                        .find(|n| n.name.as_deref() == Some(pf))
                        .ok_or_else(|| refused("no pf"))?;
                    let sriov = nic.sriov.as_mut().ok_or_else(|| refused("no sriov"))?;
                    sriov.num_vfs = Some(*count);
                    sriov.vfs = (0..*count)
                        .map(|i| Vf {
                            vf_id: i,
                            pci_address: format!("0000:3b:00.{}", i + 2),
                            name: Some(format!("{pf}v{i}")),
                            driver: Some("mlx5_core".into()),
                            trust: Some(false),
                            spoof_chk: Some(true),
                            ..Vf::default()
                        })
                        .collect();
                }
                Action::SetVf {
                    pf,
                    vf,
                    trust,
                    spoof_chk,
                    ..
                } => {
                    let nic = node
                        .nics
                        .iter_mut()
                        .find(|n| n.name.as_deref() == Some(pf))
                        .ok_or_else(|| refused("no pf"))?;
                    let v = nic
                        .sriov
                        .as_mut()
                        .and_then(|s| s.vfs.iter_mut().find(|v| v.vf_id == *vf))
                        .ok_or_else(|| refused("no vf"))?;
                    v.trust = trust.or(v.trust);
                    v.spoof_chk = spoof_chk.or(v.spoof_chk);
                }
                _ => {}
            }
            Ok(())
        }
    }

    fn world() -> (Rc<RefCell<Inventory>>, Vec<SpiderNetworkNodePolicy>) {
        let inv = spiderpool_testing::fixtures::fixture_inventory("cx6dx");
        let policy = SpiderNetworkNodePolicy {
            api_version: None,
            kind: None,
            metadata: Metadata { name: "p".into() },
            spec: PolicySpec {
                nic_selector: NicSelector {
                    pf_names: vec!["ens1f0np0".into()],
                    ..NicSelector::default()
                },
                num_vfs: Some(2),
                vf: VfSettings {
                    trust: Some(true),
                    spoof_chk: Some(false),
                    ..VfSettings::default()
                },
                ..PolicySpec::default()
            },
        };
        (Rc::new(RefCell::new(inv)), vec![policy])
    }

    fn observer(node: &Rc<RefCell<Inventory>>) -> impl FnMut() -> Observation {
        let node = node.clone();
        move || Observation {
            inventory: node.borrow().clone(),
            links: LinkTable::default(),
            node_labels: BTreeMap::new(),
            allocated: BTreeMap::new(),
        }
    }

    #[test]
    fn converges_in_rounds_and_a_second_apply_does_nothing() {
        let (node, policies) = world();
        let mut kernel = FakeKernel {
            node: node.clone(),
            done: vec![],
            fail_on: None,
        };
        let report = apply(&policies, &mut observer(&node), &mut kernel);
        assert_eq!(report.rounds, 2, "VFs first, their settings next");
        assert_eq!(
            kernel.done,
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
                },
                Action::SetVf {
                    pf: "ens1f0np0".into(),
                    vf: 0,
                    trust: Some(true),
                    spoof_chk: Some(false),
                    link_state: None
                },
                Action::SetVf {
                    pf: "ens1f0np0".into(),
                    vf: 1,
                    trust: Some(true),
                    spoof_chk: Some(false),
                    link_state: None
                },
            ]
        );
        assert_eq!(report.status["ens1f0np0"], Status::Applied);
        let mut again = FakeKernel {
            node: node.clone(),
            done: vec![],
            fail_on: None,
        };
        let report = apply(&policies, &mut observer(&node), &mut again);
        assert!(again.done.is_empty() && report.rounds == 0);
    }

    #[test]
    fn a_failed_step_fails_its_pf_only_and_stops_its_later_steps() {
        let (node, policies) = world();
        let zero = Action::SetNumVfs {
            pf: "ens1f0np0".into(),
            pci: "0000:3b:00.0".into(),
            count: 0,
        };
        let mut kernel = FakeKernel {
            node: node.clone(),
            done: vec![],
            fail_on: Some(zero),
        };
        let report = apply(&policies, &mut observer(&node), &mut kernel);
        assert!(
            kernel.done.is_empty(),
            "the 0 -> 2 step is not tried after 4 -> 0 failed"
        );
        let Status::Failed(why) = &report.status["ens1f0np0"] else {
            panic!("{report:?}")
        };
        assert!(why.contains("EBUSY"), "{why}");
        assert!(report.failed());
    }
}
