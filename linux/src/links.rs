//! What rtnetlink knows about links that sysfs does not: alternative names (`IFLA_PROP_LIST`)
//! and the VF settings a PF holds (`IFLA_VFINFO_LIST`: MAC, VLAN, trust, spoof check).

use std::collections::HashMap;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoVlan, LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage, Prop, VfInfo, VfLinkState,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

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

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: cannot decode a link message: {0}")]
    Decode(String),
    #[error("netlink: the kernel answered with error {0}")]
    Kernel(i32),
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
        self.facts.insert(ifname.to_string(), facts);
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
    pub fn dump() -> Result<LinkTable, LinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;

        let mut request = LinkMessage::default();
        // Without RTEXT_FILTER_VF the kernel leaves the VF list out of the dump.
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut message = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(request)),
        );
        message.finalize();
        let mut buf = vec![0u8; message.buffer_len()];
        message.serialize(&mut buf);
        socket.send(&buf, 0)?;

        let mut table = LinkTable::default();
        loop {
            let (data, _) = socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| LinkError::Decode(e.to_string()))?;
                let len = reply.header.length as usize;
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(table),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(LinkError::Kernel(code.get())),
                        None => return Ok(table),
                    },
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => table.add(&link),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    fn add(&mut self, link: &LinkMessage) {
        let Some(name) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            return;
        };
        self.names.push(name.clone());
        let mut facts = LinkFacts {
            index: link.header.index,
            up: link
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up),
            ..LinkFacts::default()
        };
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::IfAlias(a) => facts.alias = Some(a.clone()),
                LinkAttribute::Link(parent) => facts.parent = Some(*parent),
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

/// `RTMGRP_LINK`: the multicast group of link changes (up/down, new/removed links).
const RTMGRP_LINK: u32 = 1;

/// Calls `on_event` (on a thread of its own) every time the kernel reports a link change in
/// the current network namespace, until `on_event` returns `false`. The message content is not
/// decoded: callers rescan, which keeps one code path for events and periodic resyncs.
pub fn watch_link_events(mut on_event: impl FnMut() -> bool + Send + 'static) -> Result<(), LinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match socket.recv(&mut &mut buf[..], 0) {
                    Ok(_) => {
                        if !on_event() {
                            return;
                        }
                    }
                    // ENOBUFS: events were dropped; a rescan covers them all the same.
                    Err(e) if e.raw_os_error() == Some(105) => {
                        if !on_event() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
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
