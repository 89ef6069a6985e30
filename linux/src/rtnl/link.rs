//! Link requests: look a link up by name, create bonds, VLANs and veth pairs, enslave, delete,
//! and the settings `ip link set` changes. The provisioner's applier and the ifacer plugin create
//! bonds and VLANs through these same calls.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBond, InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoSpoofCheck, VfInfoTrust, VfLinkState,
};

use super::{IfExists, NetlinkError, Rtnl, bond_mode};
use crate::links::{LinkFacts, link_facts};

/// One link as the kernel reports it by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub facts: LinkFacts,
    /// `IFLA_ADDRESS`: the MAC of Ethernet links.
    pub address: Vec<u8>,
}

impl Rtnl {
    /// Every link of the namespace, with the VF settings PFs hold.
    pub(crate) fn links(&mut self) -> Result<Vec<LinkMessage>, NetlinkError> {
        let mut request = LinkMessage::default();
        // Without RTEXT_FILTER_VF the kernel leaves the VF list out of the dump.
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
        Ok(self
            .dump("dump links", RouteNetlinkMessage::GetLink(request))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut request = LinkMessage::default();
        request.attributes.push(LinkAttribute::IfName(name.into()));
        let answer = match self.socket.get("", RouteNetlinkMessage::GetLink(request)) {
            Ok(RouteNetlinkMessage::NewLink(link)) => link,
            Ok(_) => return Ok(None),
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => return Ok(None),
            Err(e) => return Err(e.about(format!("look up link {name}"))),
        };
        let address = answer
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => Some(mac.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(link_facts(&answer).map(|(name, facts)| Link { name, facts, address }))
    }

    /// The index of the link called `name`, `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link(name)?.map(|l| l.facts.index))
    }

    fn set(&mut self, what: &str, index: u32, attributes: Vec<LinkAttribute>) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes = attributes;
        self.change(
            || format!("{what} of link {index}"),
            RouteNetlinkMessage::SetLink(link),
            None,
        )
        .map(drop)
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<(), NetlinkError> {
        self.set("set mac", index, vec![LinkAttribute::Address(mac.to_vec())])
    }

    pub fn set_tx_queue_len(&mut self, index: u32, len: u32) -> Result<(), NetlinkError> {
        self.set("set txqueuelen", index, vec![LinkAttribute::TxQueueLen(len)])
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set("set mtu", index, vec![LinkAttribute::Mtu(mtu)])
    }

    /// The ifalias: this project marks what it creates with it.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        self.set("set alias", index, vec![LinkAttribute::IfAlias(alias.into())])
    }

    /// Makes `index` a port of `controller` (0 releases it). The port must be down.
    pub fn set_controller(&mut self, index: u32, controller: u32) -> Result<(), NetlinkError> {
        self.set("set master", index, vec![LinkAttribute::Controller(controller)])
    }

    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.change_mask = LinkFlags::Up;
        if up {
            link.header.flags = LinkFlags::Up;
        }
        self.change(
            || format!("set link {index} {}", if up { "up" } else { "down" }),
            RouteNetlinkMessage::SetLink(link),
            None,
        )
        .map(drop)
    }

    /// Makes `port` a port of `bond`: a port must be down to join, and comes up again after.
    pub fn enslave(&mut self, port: u32, bond: u32) -> Result<(), NetlinkError> {
        self.set_up(port, false)?;
        self.set_controller(port, bond)?;
        self.set_up(port, true)
    }

    /// VF settings held by the PF; `link_state` is `auto`, `enable` or `disable`.
    pub fn set_vf(
        &mut self,
        pf: u32,
        vf: u32,
        trust: Option<bool>,
        spoof_chk: Option<bool>,
        link_state: Option<&str>,
    ) -> Result<(), NetlinkError> {
        let mut infos = Vec::new();
        if let Some(state) = link_state {
            let state = match state {
                "auto" => VfLinkState::Auto,
                "enable" => VfLinkState::Enable,
                "disable" => VfLinkState::Disable,
                other => {
                    return Err(NetlinkError::Invalid {
                        what: format!("set vf {vf} of link {pf}"),
                        reason: format!("link state {other:?}: want auto, enable or disable"),
                    });
                }
            };
            infos.push(VfInfo::LinkState(VfInfoLinkState::new(vf, state)));
        }
        if let Some(t) = trust {
            infos.push(VfInfo::Trust(VfInfoTrust::new(vf, t)));
        }
        if let Some(s) = spoof_chk {
            infos.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, s)));
        }
        if infos.is_empty() {
            return Ok(());
        }
        self.set(
            "set vf",
            pf,
            vec![LinkAttribute::VfInfoList(vec![LinkVfInfo(infos)])],
        )
    }

    /// A bond in `mode` (a name or number, see [`bond_mode`]).
    pub fn create_bond(&mut self, name: &str, mode: &str, if_exists: IfExists) -> Result<(), NetlinkError> {
        let mode = bond_mode(mode).map_err(|e| e.about(format!("create bond {name}")))?;
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bond),
            LinkInfo::Data(InfoData::Bond(vec![InfoBond::Mode(mode)])),
        ]));
        self.create(
            || format!("create bond {name}"),
            RouteNetlinkMessage::NewLink(link),
            if_exists,
        )
    }

    /// VLAN `id` on the link `parent`.
    pub fn create_vlan(
        &mut self,
        name: &str,
        parent: u32,
        id: u16,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::Link(parent));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
        ]));
        self.create(
            || format!("create vlan {name} (id {id} on link {parent})"),
            RouteNetlinkMessage::NewLink(link),
            if_exists,
        )
    }

    /// A veth pair: `name` here, `peer` in the namespace of `peer_netns` (an open nsfs file).
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.into()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.create(
            || format!("create veth {name} (peer {peer})"),
            RouteNetlinkMessage::NewLink(link),
            IfExists::Fail,
        )
    }

    /// Deletes link `index`; `Ok(false)` when it was gone already.
    pub fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        self.change(
            || format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(link),
            Some(libc::ENODEV),
        )
    }
}
