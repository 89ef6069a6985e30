//! Changing links through rtnetlink: create bonds and VLANs, enslave, set MTU, alias, up/down and
//! the VF settings a PF holds. Errors keep the kernel's errno so callers can treat EEXIST or
//! ENODEV as idempotent outcomes.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    BondMode, InfoBond, InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoSpoofCheck, VfInfoTrust, VfLinkState,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: {what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel { what: String, errno: i32 },
    #[error("netlink: cannot decode the answer: {0}")]
    Decode(String),
    #[error("unknown bond mode {0:?}")]
    BondMode(String),
}

impl RtnlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Bond modes by name or number, as `ip link` and the bonding driver accept them.
pub fn bond_mode(mode: &str) -> Result<BondMode, RtnlError> {
    Ok(match mode {
        "balance-rr" | "0" => BondMode::BalanceRr,
        "active-backup" | "1" => BondMode::ActiveBackup,
        "balance-xor" | "2" => BondMode::BalanceXor,
        "broadcast" | "3" => BondMode::Broadcast,
        "802.3ad" | "4" => BondMode::Ieee8023Ad,
        "balance-tlb" | "5" => BondMode::BalanceTlb,
        "balance-alb" | "6" => BondMode::BalanceAlb,
        other => return Err(RtnlError::BondMode(other.into())),
    })
}

/// A destination network as (network address, prefix length), so callers need no netlink types.
pub mod ipnet_like {
    pub type Net = (std::net::IpAddr, u8);
}

/// `RT_TABLE_MAIN`.
pub const MAIN_TABLE: u32 = 254;

/// 169.254.0.0/16 or fe80::/10.
pub fn is_link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// The table a route message belongs to (the attribute wins over the 8-bit header field).
pub fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// The destination of a rule message, if it has one.
pub fn rule_destination(rule: &RuleMessage) -> Option<std::net::IpAddr> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(ip) => Some(*ip),
        _ => None,
    })
}

/// The source of a rule message, if it has one.
pub fn rule_source(rule: &RuleMessage) -> Option<std::net::IpAddr> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    })
}

/// The table a rule points to.
pub fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// The destination of a route message.
pub fn route_destination(route: &RouteMessage) -> Option<std::net::IpAddr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(std::net::IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(std::net::IpAddr::V6(*v6)),
        _ => None,
    })
}

/// The gateway (`via`) of a route message.
pub fn route_gateway(route: &RouteMessage) -> Option<std::net::IpAddr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(std::net::IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(std::net::IpAddr::V6(*v6)),
        _ => None,
    })
}

/// The output interface of a route message.
pub fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_address(ip: std::net::IpAddr) -> RouteAddress {
    match ip {
        std::net::IpAddr::V4(v4) => RouteAddress::Inet(v4),
        std::net::IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn family(ip: std::net::IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A static unicast route to `dst` out of `oif` in `table`, via `gateway` when given.
fn static_route(
    dst: ipnet_like::Net,
    gateway: Option<std::net::IpAddr>,
    oif: u32,
    table: u32,
    scope: RouteScope,
) -> RouteMessage {
    let mut r = RouteMessage::default();
    r.header.address_family = family(dst.0);
    r.header.destination_prefix_length = dst.1;
    // Tables above 255 live only in the attribute; the header then says RT_TABLE_COMPAT.
    r.header.table = u8::try_from(table).unwrap_or(252);
    r.header.protocol = RouteProtocol::Static;
    r.header.scope = scope;
    r.header.kind = RouteType::Unicast;
    if dst.1 > 0 {
        r.attributes
            .push(RouteAttribute::Destination(route_address(dst.0)));
    }
    if let Some(gw) = gateway {
        r.attributes.push(RouteAttribute::Gateway(route_address(gw)));
    }
    r.attributes.push(RouteAttribute::Oif(oif));
    r.attributes.push(RouteAttribute::Table(table));
    r
}

/// A rule for one address (`from` it when `source`, else `to` it) that looks up `table`.
fn host_rule(ip: std::net::IpAddr, source: bool, table: u32, priority: u32) -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.family = family(ip);
    let len = if ip.is_ipv4() { 32 } else { 128 };
    rule.header.table = u8::try_from(table).unwrap_or(252);
    rule.header.action = RuleAction::ToTable;
    if source {
        rule.header.src_len = len;
        rule.attributes.push(RuleAttribute::Source(ip));
    } else {
        rule.header.dst_len = len;
        rule.attributes.push(RuleAttribute::Destination(ip));
    }
    rule.attributes.push(RuleAttribute::Table(table));
    rule.attributes.push(RuleAttribute::Priority(priority));
    rule
}

/// A netlink route socket in the calling thread's network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn new() -> Result<Rtnl, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<(), RtnlError> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| RtnlError::Decode(e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(e) = reply.payload
                {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(RtnlError::Kernel {
                            what: what.into(),
                            errno: -code.get(),
                        }),
                    };
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Sends a dump request and collects every answer.
    fn dump(&mut self, message: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| RtnlError::Decode(e.to_string()))?;
                let len = reply.header.length as usize;
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(RtnlError::Kernel {
                                what: "dump".into(),
                                errno: -code.get(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Every route of a family (IPv4 or IPv6), all tables.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteMessage>, RtnlError> {
        let mut req = RouteMessage::default();
        req.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        Ok(self
            .dump(RouteNetlinkMessage::GetRoute(req))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// Adds a copy of `route` in `table` (EEXIST means it is there already).
    pub fn add_route_to_table(&mut self, route: &RouteMessage, table: u32) -> Result<(), RtnlError> {
        let mut copy = route.clone();
        copy.header.table = u8::try_from(table).unwrap_or(252);
        copy.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_) | RouteAttribute::CacheInfo(_)));
        copy.attributes.push(RouteAttribute::Table(table));
        self.request(
            "add route",
            RouteNetlinkMessage::NewRoute(copy),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip route add default via GW dev OIF table TABLE`.
    pub fn add_default_route(
        &mut self,
        gateway: std::net::IpAddr,
        oif: u32,
        table: u32,
    ) -> Result<(), RtnlError> {
        let default = (
            if gateway.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        );
        self.add_route(
            static_route(default, Some(gateway), oif, table, RouteScope::Universe),
            "add default route",
        )
    }

    /// `ip rule add from SRC lookup TABLE pref PRIORITY`.
    pub fn add_source_rule(
        &mut self,
        source: std::net::IpAddr,
        table: u32,
        priority: u32,
    ) -> Result<(), RtnlError> {
        self.request(
            "add rule",
            RouteNetlinkMessage::NewRule(host_rule(source, true, table, priority)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Global addresses of every link (what a pod must reach the node by).
    pub fn global_addresses(&mut self) -> Result<Vec<(u32, std::net::IpAddr)>, RtnlError> {
        let msgs = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.scope != AddressScope::Universe {
                continue;
            }
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push((a.header.index, ip));
            }
        }
        Ok(out)
    }

    /// Every address on link `index`, any scope.
    pub fn addresses_on(&mut self, index: u32) -> Result<Vec<std::net::IpAddr>, RtnlError> {
        let msgs = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// `ip addr add IP/PREFIX dev INDEX` (scope link for link-local addresses).
    pub fn add_address(&mut self, index: u32, ip: std::net::IpAddr, prefix_len: u8) -> Result<(), RtnlError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix_len;
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.scope = if is_link_local(ip) {
            AddressScope::Link
        } else {
            AddressScope::Universe
        };
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        self.request(
            "add address",
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace of `peer_netns` (an open nsfs fd).
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: std::os::fd::RawFd,
    ) -> Result<(), RtnlError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.into()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            "create veth",
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip route add DST dev OIF table T scope link` (a host route on a point-to-point link).
    pub fn add_link_route(&mut self, dst: std::net::IpAddr, oif: u32, table: u32) -> Result<(), RtnlError> {
        let host = (dst, if dst.is_ipv4() { 32 } else { 128 });
        self.add_route(
            static_route(host, None, oif, table, RouteScope::Link),
            "add route",
        )
    }

    /// `ip rule add to DST lookup TABLE pref PRIORITY`.
    pub fn add_destination_rule(
        &mut self,
        dst: std::net::IpAddr,
        table: u32,
        priority: u32,
    ) -> Result<(), RtnlError> {
        self.request(
            "add rule",
            RouteNetlinkMessage::NewRule(host_rule(dst, false, table, priority)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes a rule as dumped.
    pub fn delete_rule(&mut self, rule: &RuleMessage) -> Result<(), RtnlError> {
        self.request("delete rule", RouteNetlinkMessage::DelRule(rule.clone()), 0)
    }

    /// `ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`.
    pub fn set_permanent_neighbour(
        &mut self,
        ifindex: u32,
        ip: std::net::IpAddr,
        mac: &[u8],
    ) -> Result<(), RtnlError> {
        let mut n = NeighbourMessage::default();
        n.header.family = family(ip);
        n.header.ifindex = ifindex;
        n.header.state = NeighbourState::Permanent;
        n.header.kind = RouteType::Unicast;
        n.attributes.push(NeighbourAttribute::Destination(match ip {
            std::net::IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            std::net::IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        // NLM_F_REPLACE: an entry learnt before is overwritten, not an error.
        self.request(
            "set neighbour",
            RouteNetlinkMessage::NewNeighbour(n),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip route add DST via GW dev OIF table T` (the gateway reached on-link).
    pub fn add_route_via(
        &mut self,
        dst: ipnet_like::Net,
        gateway: std::net::IpAddr,
        oif: u32,
        table: u32,
    ) -> Result<(), RtnlError> {
        self.add_route(
            static_route(dst, Some(gateway), oif, table, RouteScope::Universe),
            "add route",
        )
    }

    /// [`Rtnl::add_link_route`] or [`Rtnl::add_route_via`] (with `via`), with a preferred source
    /// address (`src`): what the kernel would pick on that link may not be the one to answer to.
    pub fn add_route_with_source(
        &mut self,
        dst: ipnet_like::Net,
        via: Option<std::net::IpAddr>,
        oif: u32,
        table: u32,
        source: std::net::IpAddr,
    ) -> Result<(), RtnlError> {
        let scope = if via.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        let mut route = static_route(dst, via, oif, table, scope);
        route.attributes.push(RouteAttribute::PrefSource(source.into()));
        self.add_route(route, "add route")
    }

    fn add_route(&mut self, route: RouteMessage, what: &str) -> Result<(), RtnlError> {
        self.request(
            what,
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<(), RtnlError> {
        self.set("set mac", index, vec![LinkAttribute::Address(mac.to_vec())])
    }

    pub fn set_tx_queue_len(&mut self, index: u32, len: u32) -> Result<(), RtnlError> {
        self.set("set txqueuelen", index, vec![LinkAttribute::TxQueueLen(len)])
    }

    /// Every policy rule of a family.
    pub fn rules(&mut self, ipv6: bool) -> Result<Vec<RuleMessage>, RtnlError> {
        let mut req = RuleMessage::default();
        req.header.family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        Ok(self
            .dump(RouteNetlinkMessage::GetRule(req))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    fn set(&mut self, what: &str, index: u32, attributes: Vec<LinkAttribute>) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes = attributes;
        self.request(what, RouteNetlinkMessage::SetLink(link), 0)
    }

    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.change_mask = LinkFlags::Up;
        if up {
            link.header.flags = LinkFlags::Up;
        }
        self.request(
            if up { "set link up" } else { "set link down" },
            RouteNetlinkMessage::SetLink(link),
            0,
        )
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), RtnlError> {
        self.set("set mtu", index, vec![LinkAttribute::Mtu(mtu)])
    }

    /// The ifalias: this project marks what it creates with it.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), RtnlError> {
        self.set("set alias", index, vec![LinkAttribute::IfAlias(alias.into())])
    }

    /// Makes `index` a port of `controller` (0 releases it). The port must be down.
    pub fn set_controller(&mut self, index: u32, controller: u32) -> Result<(), RtnlError> {
        self.set("set master", index, vec![LinkAttribute::Controller(controller)])
    }

    /// VF settings held by the PF; `link_state` is `auto`, `enable` or `disable`.
    pub fn set_vf(
        &mut self,
        pf: u32,
        vf: u32,
        trust: Option<bool>,
        spoof_chk: Option<bool>,
        link_state: Option<&str>,
    ) -> Result<(), RtnlError> {
        let mut infos = Vec::new();
        if let Some(state) = link_state {
            let state = match state {
                "auto" => VfLinkState::Auto,
                "enable" => VfLinkState::Enable,
                "disable" => VfLinkState::Disable,
                other => {
                    return Err(RtnlError::Kernel {
                        what: format!("vf link state {other:?}"),
                        errno: 22,
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

    pub fn add_bond(&mut self, name: &str, mode: &str) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bond),
            LinkInfo::Data(InfoData::Bond(vec![InfoBond::Mode(bond_mode(mode)?)])),
        ]));
        self.request(
            "create bond",
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn add_vlan(&mut self, name: &str, parent: u32, id: u16) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::Link(parent));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
        ]));
        self.request(
            "create vlan",
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete(&mut self, index: u32) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        self.request("delete link", RouteNetlinkMessage::DelLink(link), 0)
    }
}
