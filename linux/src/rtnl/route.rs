//! Routes, policy rules, addresses and neighbours: typed requests in, typed views of the
//! kernel's dumps out. A dumped route or rule keeps the kernel's message, so copying a route to
//! another table or deleting a rule sends exactly what the kernel has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{IfExists, NetlinkError, Rtnl, is_link_local};

/// A unicast route as this project writes and reads it. Without a gateway it is a link route
/// (`scope link`), with one it goes `via` it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    /// `src` (`RTA_PREFSRC`): the source the kernel picks for packets on this route.
    pub source: Option<IpAddr>,
}

impl Route {
    /// `ip route add DESTINATION dev OIF table TABLE` (scope link).
    pub fn link(destination: IpNet, oif: u32, table: u32) -> Route {
        Route {
            destination,
            gateway: None,
            oif: Some(oif),
            table,
            source: None,
        }
    }

    /// A /32 or /128 link route to one address.
    pub fn host(ip: IpAddr, oif: u32, table: u32) -> Route {
        Route::link(IpNet::from(ip), oif, table)
    }

    /// `ip route add default via GATEWAY dev OIF table TABLE`.
    pub fn default_via(gateway: IpAddr, oif: u32, table: u32) -> Route {
        let any = if gateway.is_ipv4() {
            IpNet::V4(Ipv4Net::default())
        } else {
            IpNet::V6(Ipv6Net::default())
        };
        Route::link(any, oif, table).via(gateway)
    }

    /// The same route `via` a gateway (reached on-link).
    pub fn via(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    /// The same route with a preferred source address.
    pub fn with_source(mut self, source: IpAddr) -> Route {
        self.source = Some(source);
        self
    }

    /// The default route (`0.0.0.0/0`, `::/0`).
    pub fn is_default(&self) -> bool {
        self.destination.prefix_len() == 0
    }

    /// The static route message of this route.
    fn message(&self) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = family(self.destination.addr());
        r.header.destination_prefix_length = self.destination.prefix_len();
        r.header.table = header_table(self.table);
        r.header.protocol = RouteProtocol::Static;
        r.header.scope = if self.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        r.header.kind = RouteType::Unicast;
        if !self.is_default() {
            r.attributes.push(RouteAttribute::Destination(route_address(
                self.destination.addr(),
            )));
        }
        if let Some(gw) = self.gateway {
            r.attributes.push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(oif) = self.oif {
            r.attributes.push(RouteAttribute::Oif(oif));
        }
        r.attributes.push(RouteAttribute::Table(self.table));
        if let Some(src) = self.source {
            r.attributes.push(RouteAttribute::PrefSource(route_address(src)));
        }
        r
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev {oif}")?;
        }
        write!(f, " table {}", self.table)?;
        if let Some(src) = self.source {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}

/// A route from a dump: its typed view and the kernel's message (protocol, metrics, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub route: Route,
    message: RouteMessage,
}

/// What a static route written by this project would look like in a dump (for fakes and tests).
impl From<Route> for RouteEntry {
    fn from(route: Route) -> RouteEntry {
        RouteEntry {
            message: route.message(),
            route,
        }
    }
}

impl RouteEntry {
    fn decode(message: RouteMessage, what: &str) -> Result<RouteEntry, NetlinkError> {
        let mut destination = None;
        let mut route = Route {
            destination: IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            gateway: None,
            oif: None,
            table: u32::from(message.header.table),
            source: None,
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(a) => destination = ip_of(a),
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::PrefSource(a) => route.source = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                // The attribute wins over the 8-bit header field (tables above 255).
                RouteAttribute::Table(t) => route.table = *t,
                _ => {}
            }
        }
        let destination = destination.unwrap_or(if message.header.address_family == AddressFamily::Inet6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        route.destination =
            IpNet::new(destination, message.header.destination_prefix_length).map_err(|e| {
                NetlinkError::Decode {
                    what: what.into(),
                    reason: format!("route to {destination}: {e}"),
                }
            })?;
        Ok(RouteEntry { route, message })
    }
}

/// A policy rule for one address: `from <source>` and/or `to <destination>`, `lookup <table>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub table: u32,
    pub priority: Option<u32>,
}

impl Rule {
    /// `ip rule add from SOURCE lookup TABLE pref PRIORITY`.
    pub fn from_source(source: IpAddr, table: u32, priority: u32) -> Rule {
        Rule {
            source: Some(source),
            destination: None,
            table,
            priority: Some(priority),
        }
    }

    /// `ip rule add to DESTINATION lookup TABLE pref PRIORITY`.
    pub fn to_destination(destination: IpAddr, table: u32, priority: u32) -> Rule {
        Rule {
            source: None,
            destination: Some(destination),
            table,
            priority: Some(priority),
        }
    }

    fn message(&self) -> RuleMessage {
        let mut rule = RuleMessage::default();
        rule.header.family = match self.source.or(self.destination) {
            Some(ip) => family(ip),
            None => AddressFamily::Inet,
        };
        rule.header.table = header_table(self.table);
        rule.header.action = RuleAction::ToTable;
        if let Some(ip) = self.source {
            rule.header.src_len = host_len(ip);
            rule.attributes.push(RuleAttribute::Source(ip));
        }
        if let Some(ip) = self.destination {
            rule.header.dst_len = host_len(ip);
            rule.attributes.push(RuleAttribute::Destination(ip));
        }
        rule.attributes.push(RuleAttribute::Table(self.table));
        if let Some(priority) = self.priority {
            rule.attributes.push(RuleAttribute::Priority(priority));
        }
        rule
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.source {
            write!(f, "from {ip} ")?;
        }
        if let Some(ip) = self.destination {
            write!(f, "to {ip} ")?;
        }
        write!(f, "lookup {}", self.table)?;
        if let Some(priority) = self.priority {
            write!(f, " pref {priority}")?;
        }
        Ok(())
    }
}

/// A rule from a dump: its typed view and the kernel's message (to delete exactly that rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    pub rule: Rule,
    message: RuleMessage,
}

/// What a rule written by this project would look like in a dump (for fakes and tests).
impl From<Rule> for RuleEntry {
    fn from(rule: Rule) -> RuleEntry {
        RuleEntry {
            message: rule.message(),
            rule,
        }
    }
}

impl RuleEntry {
    fn decode(message: RuleMessage) -> RuleEntry {
        let mut rule = Rule {
            source: None,
            destination: None,
            table: u32::from(message.header.table),
            priority: None,
        };
        for attribute in &message.attributes {
            match attribute {
                RuleAttribute::Source(ip) => rule.source = Some(*ip),
                RuleAttribute::Destination(ip) => rule.destination = Some(*ip),
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Priority(p) => rule.priority = Some(*p),
                _ => {}
            }
        }
        RuleEntry { rule, message }
    }
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// `scope global`: what others reach this namespace by (not link-local, not loopback).
    pub global: bool,
}

/// Tables above 255 live only in the attribute; the header then says `RT_TABLE_COMPAT`.
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(252)
}

fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn family_of(ipv6: bool) -> AddressFamily {
    if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Rtnl {
    /// Every route of a family (IPv4 or IPv6), all tables.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteEntry>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family_of(ipv6);
        let what = if ipv6 {
            "dump IPv6 routes"
        } else {
            "dump IPv4 routes"
        };
        self.dump(what, RouteNetlinkMessage::GetRoute(request))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(RouteEntry::decode(r, what)),
                _ => None,
            })
            .collect()
    }

    pub fn add_route(&mut self, route: &Route, if_exists: IfExists) -> Result<(), NetlinkError> {
        self.create(
            || format!("add route {route}"),
            RouteNetlinkMessage::NewRoute(route.message()),
            if_exists,
        )
    }

    /// Adds a copy of a dumped route (protocol, scope, source and metrics kept) in `table`.
    pub fn copy_route(
        &mut self,
        entry: &RouteEntry,
        table: u32,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        let mut copy = entry.message.clone();
        copy.header.table = header_table(table);
        copy.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_) | RouteAttribute::CacheInfo(_)));
        copy.attributes.push(RouteAttribute::Table(table));
        self.create(
            || format!("copy route {} to table {table}", entry.route),
            RouteNetlinkMessage::NewRoute(copy),
            if_exists,
        )
    }

    /// Every policy rule of a family.
    pub fn rules(&mut self, ipv6: bool) -> Result<Vec<RuleEntry>, NetlinkError> {
        let mut request = RuleMessage::default();
        request.header.family = family_of(ipv6);
        let what = if ipv6 {
            "dump IPv6 rules"
        } else {
            "dump IPv4 rules"
        };
        Ok(self
            .dump(what, RouteNetlinkMessage::GetRule(request))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(RuleEntry::decode(r)),
                _ => None,
            })
            .collect())
    }

    pub fn add_rule(&mut self, rule: &Rule, if_exists: IfExists) -> Result<(), NetlinkError> {
        self.create(
            || format!("add rule {rule}"),
            RouteNetlinkMessage::NewRule(rule.message()),
            if_exists,
        )
    }

    /// Deletes a rule as dumped; `Ok(false)` when it was gone already.
    pub fn delete_rule(&mut self, entry: &RuleEntry) -> Result<bool, NetlinkError> {
        self.change(
            || format!("delete rule {}", entry.rule),
            RouteNetlinkMessage::DelRule(entry.message.clone()),
            Some(libc::ENOENT),
        )
    }

    /// Every address of every link.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let answers = self.dump(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        let mut out = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewAddress(a) = answer else {
                continue;
            };
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer's on point-to-point links.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push(Address {
                    index: a.header.index,
                    ip,
                    prefix_len: a.header.prefix_len,
                    global: a.header.scope == AddressScope::Universe,
                });
            }
        }
        Ok(out)
    }

    /// `ip addr add IP/PREFIX dev INDEX` (scope link for link-local addresses).
    pub fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix_len;
        msg.header.family = family(ip);
        msg.header.scope = if is_link_local(ip) {
            AddressScope::Link
        } else {
            AddressScope::Universe
        };
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        self.create(
            || format!("add address {ip}/{prefix_len} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            if_exists,
        )
    }

    /// `ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`: an entry learnt before is
    /// overwritten.
    pub fn set_permanent_neighbour(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
        mac: &[u8],
    ) -> Result<(), NetlinkError> {
        let mut n = NeighbourMessage::default();
        n.header.family = family(ip);
        n.header.ifindex = ifindex;
        n.header.state = NeighbourState::Permanent;
        n.header.kind = RouteType::Unicast;
        n.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.create(
            || format!("set neighbour {ip} on link {ifindex}"),
            RouteNetlinkMessage::NewNeighbour(n),
            IfExists::Replace,
        )
    }
}
