//! What rtnetlink knows about links that sysfs does not: alternative names (`IFLA_PROP_LIST`)
//! and the VF settings a PF holds (`IFLA_VFINFO_LIST`: MAC, VLAN, trust, spoof check).

use std::collections::HashMap;

use netlink_packet_route::link::{
    InfoData, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, Prop, VfInfo, VfLinkState,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::{NetlinkError, NetlinkSocket};
use crate::rtnl::Rtnl;
use crate::sysfs::Sysfs;

/// A VF as its PF reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfConfig {
    /// `None` when the administrator set none (all zeroes).
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub trust: Option<bool>,
    pub spoof_chk: Option<bool>,
    /// `auto`, `enable` or `disable`.
    pub link_state: Option<String>,
}

/// What a link is, beyond its name: for planners that must recognise what they created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub alias: Option<String>,
    /// `IFLA_INFO_KIND`: `bond`, `vlan`, `veth`, ...; `None` for plain NICs.
    pub kind: Option<String>,
    pub vlan_id: Option<u16>,
    /// `IFLA_LINK`: the parent's index (VLANs, macvlans).
    pub parent: Option<u32>,
    /// The parent lives in another network namespace (`IFLA_LINK_NETNSID` present): a macvlan
    /// or VLAN moved into a pod, seen from the pod.
    pub parent_elsewhere: bool,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// Link facts keyed by interface name: filled from a netlink dump, or by hand in tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkTable {
    names: Vec<String>,
    facts: HashMap<String, LinkFacts>,
    alt_names: HashMap<String, Vec<String>>,
    vfs: HashMap<(String, u32), VfConfig>,
}

impl LinkTable {
    /// Every link seen, in dump order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn facts(&self, ifname: &str) -> Option<&LinkFacts> {
        self.facts.get(ifname)
    }

    pub fn set_facts(&mut self, ifname: &str, facts: LinkFacts) {
        if self.facts.insert(ifname.to_string(), facts).is_none() {
            self.names.push(ifname.to_string());
        }
    }

    pub fn name_of(&self, index: u32) -> Option<&str> {
        self.facts
            .iter()
            .find(|(_, f)| f.index == index)
            .map(|(n, _)| n.as_str())
    }

    pub fn alt_names(&self, ifname: &str) -> Vec<String> {
        self.alt_names.get(ifname).cloned().unwrap_or_default()
    }

    pub fn vf(&self, pf: &str, vf_id: u32) -> Option<&VfConfig> {
        self.vfs.get(&(pf.to_string(), vf_id))
    }

    pub fn set_alt_names(&mut self, ifname: &str, names: Vec<String>) {
        self.alt_names.insert(ifname.to_string(), names);
    }

    pub fn set_vf(&mut self, pf: &str, vf_id: u32, config: VfConfig) {
        self.vfs.insert((pf.to_string(), vf_id), config);
    }

    /// Dumps every link of the current network namespace (no privileges needed).
    pub fn dump() -> Result<LinkTable, NetlinkError> {
        LinkTable::dump_with(&mut Rtnl::new()?)
    }

    /// Dumps every link through an open socket (its namespace).
    pub fn dump_with(rtnl: &mut Rtnl) -> Result<LinkTable, NetlinkError> {
        let mut table = LinkTable::default();
        for link in rtnl.links()? {
            table.add(&link);
        }
        Ok(table)
    }

    fn add(&mut self, link: &LinkMessage) {
        let Some((name, facts)) = link_facts(link) else {
            return;
        };
        self.names.push(name.clone());
        self.facts.insert(name.clone(), facts);
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::PropList(props) => {
                    let names = props
                        .iter()
                        .filter_map(|p| match p {
                            Prop::AltIfName(n) => Some(n.clone()),
                            _ => None,
                        })
                        .collect();
                    self.alt_names.insert(name.clone(), names);
                }
                LinkAttribute::VfInfoList(vfs) => {
                    for vf in vfs {
                        let (id, config) = vf_config(&vf.0);
                        if let Some(id) = id {
                            self.vfs.insert((name.clone(), id), config);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The name and facts of a link message (`None` without a name).
pub(crate) fn link_facts(link: &LinkMessage) -> Option<(String, LinkFacts)> {
    let name = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let mut facts = LinkFacts {
        index: link.header.index,
        up: link.header.flags.contains(LinkFlags::Up),
        ..LinkFacts::default()
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfAlias(a) => facts.alias = Some(a.clone()),
            LinkAttribute::Link(parent) => facts.parent = Some(*parent),
            LinkAttribute::LinkNetNsId(_) => facts.parent_elsewhere = true,
            LinkAttribute::Mtu(mtu) => facts.mtu = Some(*mtu),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => facts.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vlan(vlan)) => {
                            facts.vlan_id = vlan.iter().find_map(|v| match v {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((name, facts))
}

/// Writes a bonding option (`miimon`, `primary`, ...) to the bond's sysfs directory: rtnetlink
/// takes some of them, sysfs every one, by the names the policies and netconfs use.
pub fn set_bond_option(sysfs: &Sysfs, bond: &str, option: &str, value: &str) -> std::io::Result<()> {
    sysfs.write(format!("class/net/{bond}/bonding/{option}"), value)
}

/// `RTMGRP_LINK`: the multicast group of link changes (up/down, new/removed links).
const RTMGRP_LINK: u32 = 1;

/// Calls `on_event` (on a thread of its own) every time the kernel reports a link change in
/// the current network namespace, until `on_event` returns `false`. The message content is not
/// decoded: callers rescan, which keeps one code path for events and periodic resyncs.
pub fn watch_link_events(mut on_event: impl FnMut() -> bool + Send + 'static) -> Result<(), NetlinkError> {
    let mut socket = NetlinkSocket::subscribe(NETLINK_ROUTE, RTMGRP_LINK)?;
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match socket.next_datagram(&mut buffer) {
                    Ok(_) => {}
                    // Events were dropped; a rescan covers them all the same.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(_) => return,
                }
                if !on_event() {
                    return;
                }
            }
        })
        .map_err(|source| NetlinkError::Io {
            what: "start the link event thread".into(),
            source,
        })?;
    Ok(())
}

fn vf_config(infos: &[VfInfo]) -> (Option<u32>, VfConfig) {
    let mut id = None;
    let mut config = VfConfig::default();
    for info in infos {
        match info {
            VfInfo::Mac(m) => {
                id = Some(m.vf_id);
                // The attribute has room for 32 bytes; Ethernet uses the first 6.
                let mac = &m.mac[..6];
                if mac.iter().any(|&b| b != 0) {
                    config.mac = Some(
                        mac.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    );
                }
            }
            VfInfo::Vlan(v) => config.vlan = u16::try_from(v.vlan_id).ok(),
            VfInfo::Trust(t) => config.trust = Some(t.enabled),
            VfInfo::SpoofCheck(s) => config.spoof_chk = Some(s.enabled),
            VfInfo::LinkState(l) => {
                config.link_state = Some(
                    match l.state {
                        VfLinkState::Auto => "auto",
                        VfLinkState::Enable => "enable",
                        VfLinkState::Disable => "disable",
                        _ => "other",
                    }
                    .into(),
                )
            }
            _ => {}
        }
    }
    (id, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_sees_loopback() {
        // Works unprivileged in any network namespace: `lo` always exists.
        let table = LinkTable::dump().unwrap();
        assert!(table.names().iter().any(|n| n == "lo"), "{:?}", table.names());
        let lo = table.facts("lo").unwrap();
        assert!(lo.index > 0);
        assert_eq!(table.name_of(lo.index), Some("lo"));
    }
}
