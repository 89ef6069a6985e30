//! A PF's part of the plan: VF count, VF settings, MTU, driver binding.

use super::*;

/// The VFs of `sriov` in use, each with its holder when kubelet's checkpoint names one.
pub(super) fn busy_vfs(sriov: &Sriov, observed: &Observed<'_>) -> Vec<String> {
    sriov
        .vfs
        .iter()
        .filter(|vf| {
            observed.allocated.contains_key(&vf.pci_address)
                // A VF bound to a network driver whose netdev is not in this namespace has
                // been moved into a pod.
                || (vf.name.is_none() && vf.driver.as_deref().is_some_and(|d| d != "vfio-pci"))
        })
        .map(|vf| match observed.allocated.get(&vf.pci_address) {
            Some(holder) if !holder.is_empty() => format!("{} ({holder})", vf.pci_address),
            _ => vf.pci_address.clone(),
        })
        .collect()
}

/// Steps for one PF; `Ok(Some(reason))` when it must wait.
pub(super) fn plan_pf(
    nic: &Nic,
    policies: &[&SpiderNetworkNodePolicy],
    observed: &Observed<'_>,
    steps: &mut Vec<Step>,
) -> Result<Option<String>, Unplannable> {
    let num_vfs = merged(policies, "numVfs", |p| p.spec.num_vfs)?;
    let mtu = merged(policies, "mtu", |p| p.spec.mtu)?;
    let trust = merged(policies, "vf.trust", |p| p.spec.vf.trust)?;
    let spoof_chk = merged(policies, "vf.spoofChk", |p| p.spec.vf.spoof_chk)?;
    let link_state = merged(policies, "vf.linkState", |p| p.spec.vf.link_state.clone())?;
    if let Some(l) = &link_state
        && !matches!(l.as_str(), "auto" | "enable" | "disable")
    {
        return Err(Unplannable(format!(
            "vf.linkState {l:?}: want auto, enable or disable"
        )));
    }
    let device_type = merged(policies, "deviceType", |p| p.spec.device_type.clone())?;
    if let Some(d) = &device_type
        && !matches!(d.as_str(), "netdevice" | "vfio-pci")
    {
        return Err(Unplannable(format!(
            "deviceType {d:?}: want netdevice or vfio-pci"
        )));
    }
    let force = policies.iter().any(|p| p.spec.force);
    let pf = nic
        .name
        .clone()
        .ok_or_else(|| Unplannable("the PF has no netdev (bound to vfio-pci?)".into()))?;
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
        let sriov = sriov.ok_or_else(|| Unplannable(format!("{pf} cannot do SR-IOV")))?;
        if let Some(total) = sriov.total_vfs
            && want > total
        {
            return Err(Unplannable(format!(
                "{pf} supports at most {total} VFs, the policy asks for {want}"
            )));
        }
        let have = sriov.num_vfs.unwrap_or(0);
        if have != want {
            let busy = busy_vfs(sriov, observed);
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
