//! `ifacer`: a CNI plugin, first in a chain, that makes sure the host has the bond and/or VLAN
//! sub-interface the next plugin (macvlan, ipvlan, ...) uses as its master. Spiderpool's netconf:
//! `interfaces[]`, `vlanID`, `bond{name, mode, options}`. It creates what is missing (marked with an
//! ifalias), accepts what is there, passes prevResult through, and DEL leaves the host interfaces
//! alone: other pods share them.

use serde::Deserialize;
use spiderpool_cni::{CniError, CniResult, ErrorCode, Plugin, PluginInfo, Request};
use spiderpool_linux::links::{LinkFacts, set_bond_option};
use spiderpool_linux::rtnl::{IfExists, Rtnl};
use spiderpool_linux::sysfs::Sysfs;

pub const DEFAULT_BOND: &str = "sp_bond0";
pub const ALIAS: &str = "spiderpool:ifacer";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BondConf {
    #[serde(default)]
    pub name: Option<String>,
    /// 0-6, as the bonding driver numbers its modes.
    #[serde(default)]
    pub mode: u8,
    /// `k=v;k=v`, written to the bond's sysfs options.
    #[serde(default)]
    pub options: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(rename = "vlanID", default)]
    vlan_id: u16,
    #[serde(default)]
    bond: Option<BondConf>,
}

/// A bond to make of the interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bond {
    pub name: String,
    pub mode: u8,
    pub options: Vec<(String, String)>,
}

/// The validated netconf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacerConf {
    pub interfaces: Vec<String>,
    pub vlan_id: Option<u16>,
    pub bond: Option<Bond>,
}

impl IfacerConf {
    pub fn parse(raw: &serde_json::Value) -> Result<IfacerConf, CniError> {
        let wire: Wire = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decoding(format!("ifacer netconf: {e}")))?;
        let bad = |m: String| CniError::invalid_config(m);
        if wire.interfaces.is_empty() {
            return Err(bad(
                "ifacer: interfaces must name at least one host interface".into()
            ));
        }
        for i in &wire.interfaces {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ', ':']) {
                return Err(bad(format!("ifacer: {i:?} is not an interface name")));
            }
        }
        if wire.vlan_id > 4094 {
            return Err(bad(format!("ifacer: vlanID {} is outside 0-4094", wire.vlan_id)));
        }
        let bond = match wire.bond {
            None => None,
            Some(b) => {
                if b.mode > 6 {
                    return Err(bad(format!("ifacer: bond mode {} is outside 0-6", b.mode)));
                }
                let mut options = Vec::new();
                for kv in b
                    .options
                    .as_deref()
                    .unwrap_or("")
                    .split(';')
                    .filter(|s| !s.trim().is_empty())
                {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| bad(format!("ifacer: bond option {kv:?} is not key=value")))?;
                    let (k, v) = (k.trim(), v.trim());
                    if !BOND_OPTIONS.contains(&k) {
                        return Err(bad(format!(
                            "ifacer: bond option {k:?} is not one of the bonding driver's ({})",
                            BOND_OPTIONS.join(", ")
                        )));
                    }
                    // Values go to a sysfs file as written: one short printable token (or the
                    // space-separated list arp_ip_target takes), nothing that could add a line.
                    if v.is_empty() || v.len() > 256 || !v.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                        return Err(bad(format!("ifacer: bond option {k} has an invalid value")));
                    }
                    options.push((k.to_string(), v.to_string()));
                }
                let name = b
                    .name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| DEFAULT_BOND.into());
                Some(Bond {
                    name,
                    mode: b.mode,
                    options,
                })
            }
        };
        if bond.is_none() && wire.vlan_id == 0 {
            return Err(bad("ifacer: nothing to do: set vlanID and/or bond".into()));
        }
        Ok(IfacerConf {
            interfaces: wire.interfaces,
            vlan_id: (wire.vlan_id != 0).then_some(wire.vlan_id),
            bond,
        })
    }

    /// The interface the next plugin should use as master.
    pub fn master(&self) -> String {
        let parent = self
            .bond
            .as_ref()
            .map_or_else(|| self.interfaces[0].clone(), |b| b.name.clone());
        match self.vlan_id {
            Some(id) => format!("{parent}.{id}"),
            None => parent,
        }
    }
}

/// The options the bonding driver has in `/sys/class/net/<bond>/bonding/` that a netconf may set
/// (`mode` has its own field; `slaves` and `active_slave` are the plugin's business).
const BOND_OPTIONS: &[&str] = &[
    "ad_actor_sys_prio",
    "ad_actor_system",
    "ad_select",
    "ad_user_port_key",
    "all_slaves_active",
    "arp_all_targets",
    "arp_interval",
    "arp_ip_target",
    "arp_missed_max",
    "arp_validate",
    "downdelay",
    "fail_over_mac",
    "lacp_active",
    "lacp_rate",
    "lp_interval",
    "miimon",
    "min_links",
    "num_grat_arp",
    "num_unsol_na",
    "packets_per_slave",
    "peer_notif_delay",
    "primary",
    "primary_reselect",
    "resend_igmp",
    "tlb_dynamic_lb",
    "updelay",
    "use_carrier",
    "xmit_hash_policy",
];

fn io(e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::IoFailure, format!("ifacer: {e}"))
}

/// The host link called `name`, which the netconf says exists.
fn existing(rtnl: &mut Rtnl, name: &str) -> Result<LinkFacts, CniError> {
    rtnl.link(name).map_err(io)?.map(|l| l.facts).ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("ifacer: host interface {name} does not exist"),
        )
    })
}

/// Creates what is missing; returns the master interface. Bonds and VLANs are made with the same
/// link requests as the provisioner's applier; one another ADD made meanwhile is kept.
pub fn ensure(conf: &IfacerConf, sysfs: &Sysfs) -> Result<String, CniError> {
    let mut rtnl = Rtnl::new().map_err(io)?;
    let mut parent = conf.interfaces[0].clone();
    if let Some(Bond { name, mode, options }) = &conf.bond {
        let mut ports = Vec::with_capacity(conf.interfaces.len());
        let addresses = rtnl.addresses().map_err(io)?;
        for i in &conf.interfaces {
            let index = existing(&mut rtnl, i)?.index;
            // Enslaving takes a NIC's addresses off the node: one the node is reached by (its
            // management NIC, a storage network) never becomes a port of a bond a netconf asks
            // for. Checked before anything is created.
            if let Some(a) = addresses.iter().find(|a| a.index == index && a.global) {
                return Err(CniError::invalid_config(format!(
                    "ifacer: {i} carries the node's address {}/{}; a NIC in use by the node is never made a bond port",
                    a.ip, a.prefix_len
                )));
            }
            ports.push((i, index));
        }
        let bond = match rtnl.link(name).map_err(io)? {
            Some(l) if l.facts.kind.as_deref() != Some("bond") => {
                return Err(CniError::invalid_config(format!(
                    "ifacer: {name} exists and is not a bond"
                )));
            }
            Some(l) => l.facts.index,
            None => {
                rtnl.create_bond(name, &mode.to_string(), IfExists::Keep)
                    .map_err(io)?;
                let b = existing(&mut rtnl, name)?.index;
                rtnl.set_alias(b, ALIAS).map_err(io)?;
                for (k, v) in options {
                    set_bond_option(sysfs, name, k, v).map_err(|e| io(format!("bond option {k}: {e}")))?;
                }
                b
            }
        };
        for (i, index) in ports {
            match sysfs.link_name(format!("class/net/{i}/master")).as_deref() {
                Some(m) if m == name => continue,
                Some(m) => {
                    return Err(CniError::invalid_config(format!(
                        "ifacer: {i} is already a port of {m}"
                    )));
                }
                None => {}
            }
            rtnl.enslave(index, bond).map_err(io)?;
        }
        rtnl.set_up(bond, true).map_err(io)?;
        parent = name.clone();
    }
    if let Some(id) = conf.vlan_id {
        let name = format!("{parent}.{id}");
        let p = existing(&mut rtnl, &parent)?.index;
        match rtnl.link(&name).map_err(io)?.map(|l| l.facts) {
            Some(f) if f.kind.as_deref() != Some("vlan") || f.vlan_id != Some(id) || f.parent != Some(p) => {
                return Err(CniError::invalid_config(format!(
                    "ifacer: {name} exists and is not VLAN {id} on {parent}"
                )));
            }
            Some(f) => rtnl.set_up(f.index, true).map_err(io)?,
            None => {
                rtnl.create_vlan(&name, p, id, IfExists::Keep).map_err(io)?;
                let v = existing(&mut rtnl, &name)?.index;
                rtnl.set_alias(v, ALIAS).map_err(io)?;
                rtnl.set_up(v, true).map_err(io)?;
            }
        }
        rtnl.set_up(p, true).map_err(io)?;
        return Ok(name);
    }
    Ok(parent)
}

pub struct Ifacer {
    pub sysfs: Sysfs,
}

impl Plugin for Ifacer {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            about: format!("spiderpool ifacer CNI plugin {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = IfacerConf::parse(&req.conf.raw)?;
        ensure(&conf, &self.sysfs)?;
        Ok(req.conf.prev_result.clone().unwrap_or_default())
    }

    /// Shared host interfaces stay: other pods use them.
    fn del(&self, req: &Request) -> Result<(), CniError> {
        IfacerConf::parse(&req.conf.raw).map(|_| ())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let conf = IfacerConf::parse(&req.conf.raw)?;
        let master = conf.master();
        if Rtnl::new().map_err(io)?.link(&master).map_err(io)?.is_none() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("ifacer: {master} is missing"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_spiderpool_netconf_and_names_the_master() {
        let c = IfacerConf::parse(&json!({"interfaces": ["eth1", "eth2"], "vlanID": 100,
            "bond": {"name": "bond1", "mode": 1, "options": "primary=eth1; miimon=100"}}))
        .unwrap();
        assert_eq!(c.master(), "bond1.100");
        assert_eq!(
            c.bond.as_ref().unwrap().options,
            [
                ("primary".to_string(), "eth1".to_string()),
                ("miimon".into(), "100".into())
            ]
        );
        let c = IfacerConf::parse(&json!({"interfaces": ["eth1"], "vlanID": 7})).unwrap();
        assert_eq!(c.master(), "eth1.7");
        let c = IfacerConf::parse(&json!({"interfaces": ["eth1", "eth2"], "bond": {"mode": 4}})).unwrap();
        assert_eq!(c.master(), "sp_bond0");
    }

    #[test]
    fn bad_netconfs_get_their_codes() {
        let cases = [
            (json!({"interfaces": [], "vlanID": 1}), 7),
            (json!({"interfaces": ["eth1"]}), 7),
            (json!({"interfaces": ["eth1"], "vlanID": 4095}), 7),
            (json!({"interfaces": ["eth1"], "bond": {"mode": 9}}), 7),
            (
                json!({"interfaces": ["eth1"], "bond": {"mode": 1, "options": "miimon"}}),
                7,
            ),
            (
                json!({"interfaces": ["eth1"], "bond": {"mode": 1, "options": "../x=1"}}),
                7,
            ),
            (json!({"interfaces": ["a/b"], "vlanID": 1}), 7),
            (json!({"interfaces": "eth1", "vlanID": 1}), 6),
            (
                json!({"interfaces": ["eth1"], "bond": {"mode": 1, "options": "slaves=+eth0"}}),
                7,
            ),
            (
                json!({"interfaces": ["eth1"], "bond": {"mode": 1, "options": "uevent=x"}}),
                7,
            ),
            (
                json!({"interfaces": ["eth1"], "bond": {"mode": 1, "options": "miimon=100\nupdelay=1"}}),
                7,
            ),
            (
                json!({"interfaces": ["eth1"], "bond": {"mode": 1, "options": "miimon="}}),
                7,
            ),
        ];
        for (conf, code) in cases {
            assert_eq!(IfacerConf::parse(&conf).unwrap_err().code, code, "{conf}");
        }
    }
}
