//! A fake [`Kernel`]: one network namespace as plain data (links, addresses, routes, rules,
//! neighbours, sysctls, who answers on the wire). It answers the coordinator's reads from that
//! state, changes it the way the kernel would (EEXIST, ENODEV, routes that go with their link),
//! and records every request so tests assert on what was asked, in order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use ipnet::IpNet;
use spiderpool_linux::links::LinkFacts;
use spiderpool_linux::probe::Mac;
use spiderpool_linux::rtnl::{Address, IfExists, Link, NetlinkError, Route, RouteEntry, Rule, RuleEntry};

use crate::kernel::Kernel;

/// One request the coordinator made, with link names instead of indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetMac(String, Mac),
    SetTxQueueLen(String, u32),
    SetMtu(String, u32),
    SetUp(String),
    CreateVeth {
        name: String,
        peer: String,
    },
    DeleteLink(String),
    AddAddress(String, IpAddr, u8),
    /// `add_route` and `copy_route` alike: the route that was asked for.
    AddRoute(Route),
    AddRule(Rule),
    DeleteRule(Rule),
    Neighbour(String, IpAddr, Vec<u8>),
    Sysctl(String, String),
    Probe {
        ifname: String,
        sender: Ipv4Addr,
        target: IpAddr,
    },
    Announce(String, IpAddr),
}

impl Call {
    /// Calls that change something (probes and announcements only look or talk).
    pub fn changes(&self) -> bool {
        !matches!(self, Call::Probe { .. } | Call::Announce(..))
    }
}

/// The namespace's state.
#[derive(Debug, Default)]
pub struct State {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub neighbours: Vec<(u32, IpAddr, Vec<u8>)>,
    pub sysctls: BTreeMap<String, String>,
    /// Who answers ARP/NDP for an address on the wire (holders of pod addresses, gateways).
    pub on_wire: BTreeMap<IpAddr, Mac>,
    pub calls: Vec<Call>,
    /// Requests of this kind (the `Call` variant's name) fail with this errno.
    pub refuse: Option<(&'static str, i32)>,
    /// Another pod's ADD that lands right after the next list of routes or rules (the route
    /// first, then the rule, as ADD writes them): to test DEL against it.
    pub concurrent_add: Option<(Route, Rule)>,
}

impl State {
    pub fn index(&self, name: &str) -> Option<u32> {
        self.links.iter().find(|l| l.name == name).map(|l| l.facts.index)
    }

    fn name(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.facts.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    }

    /// Adds a link; its MAC ends with its index.
    pub fn add_link(&mut self, name: &str) -> u32 {
        let index = self.links.iter().map(|l| l.facts.index).max().unwrap_or(0) + 1;
        self.links.push(Link {
            name: name.into(),
            facts: LinkFacts {
                index,
                mtu: Some(1500),
                ..LinkFacts::default()
            },
            address: vec![0x02, 0, 0, 0, 0, u8::try_from(index).unwrap_or(0xff)],
        });
        index
    }

    pub fn add_address(&mut self, link: &str, cidr: &str, global: bool) {
        let net: IpNet = cidr.parse().expect("test CIDR");
        let index = self.index(link).expect("test link");
        self.addresses.push(Address {
            index,
            ip: net.addr(),
            prefix_len: net.prefix_len(),
            global,
        });
    }

    pub fn link_mut(&mut self, name: &str) -> &mut Link {
        self.links.iter_mut().find(|l| l.name == name).expect("test link")
    }

    /// Records `call`, or refuses it when the test said so.
    fn record(&mut self, call: Call) -> Result<(), NetlinkError> {
        let kind = format!("{call:?}");
        if let Some((refused, errno)) = self.refuse
            && kind.starts_with(refused)
        {
            return Err(NetlinkError::Kernel { what: kind, errno });
        }
        self.calls.push(call);
        Ok(())
    }

    fn existing(&self, index: u32) -> Result<(), NetlinkError> {
        if self.links.iter().any(|l| l.facts.index == index) {
            Ok(())
        } else {
            Err(NetlinkError::Kernel {
                what: format!("link {index}"),
                errno: libc::ENODEV,
            })
        }
    }
}

fn exists(what: String) -> NetlinkError {
    NetlinkError::Kernel {
        what,
        errno: libc::EEXIST,
    }
}

/// A handle on one fake namespace; clones share it.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel(pub Rc<RefCell<State>>);

impl FakeKernel {
    pub fn state(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }

    fn land_concurrent_add(&self) {
        let mut s = self.state();
        if let Some((route, rule)) = s.concurrent_add.take() {
            s.routes.push(route);
            s.rules.push(rule);
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.0.borrow().calls.clone()
    }

    pub fn changes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::changes).collect()
    }
}

impl Kernel for FakeKernel {
    type Namespace = Rc<RefCell<State>>;

    fn namespace(&self) -> &Self::Namespace {
        &self.0
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.0.borrow().links.iter().find(|l| l.name == name).cloned())
    }

    fn set_mac(&mut self, index: u32, mac: Mac) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.existing(index)?;
        let name = s.name(index);
        s.record(Call::SetMac(name.clone(), mac))?;
        s.link_mut(&name).address = mac.to_vec();
        Ok(())
    }

    fn set_tx_queue_len(&mut self, index: u32, len: u32) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.existing(index)?;
        let name = s.name(index);
        s.record(Call::SetTxQueueLen(name, len))
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.existing(index)?;
        let name = s.name(index);
        s.record(Call::SetMtu(name.clone(), mtu))?;
        s.link_mut(&name).facts.mtu = Some(mtu);
        Ok(())
    }

    fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.existing(index)?;
        let name = s.name(index);
        s.record(Call::SetUp(name.clone()))?;
        s.link_mut(&name).facts.up = true;
        Ok(())
    }

    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_namespace: &Self::Namespace,
    ) -> Result<(), NetlinkError> {
        let mut s = self.state();
        let mut other = peer_namespace
            .try_borrow_mut()
            .map_err(|_| NetlinkError::Invalid {
                what: "create veth".into(),
                reason: "the peer namespace is this one".into(),
            })?;
        if s.index(name).is_some() || other.index(peer).is_some() {
            return Err(exists(format!("create veth {name}")));
        }
        s.record(Call::CreateVeth {
            name: name.into(),
            peer: peer.into(),
        })?;
        s.add_link(name);
        other.add_link(peer);
        Ok(())
    }

    fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut s = self.state();
        if s.existing(index).is_err() {
            return Ok(false);
        }
        let name = s.name(index);
        s.record(Call::DeleteLink(name))?;
        // What the kernel removes with a link: its addresses, routes and neighbours.
        s.links.retain(|l| l.facts.index != index);
        s.addresses.retain(|a| a.index != index);
        s.routes.retain(|r| r.oif != Some(index));
        s.neighbours.retain(|n| n.0 != index);
        Ok(true)
    }

    fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        Ok(self.0.borrow().addresses.clone())
    }

    fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.existing(index)?;
        let name = s.name(index);
        s.record(Call::AddAddress(name, ip, prefix_len))?;
        if s.addresses.iter().any(|a| a.index == index && a.ip == ip) {
            return match if_exists {
                IfExists::Fail => Err(exists(format!("address {ip}"))),
                IfExists::Keep | IfExists::Replace => Ok(()),
            };
        }
        s.addresses.push(Address {
            index,
            ip,
            prefix_len,
            global: !spiderpool_linux::rtnl::is_link_local(ip),
        });
        Ok(())
    }

    fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteEntry>, NetlinkError> {
        let listed = self
            .0
            .borrow()
            .routes
            .iter()
            .filter(|r| r.destination.addr().is_ipv6() == ipv6)
            .cloned()
            .map(RouteEntry::from)
            .collect();
        self.land_concurrent_add();
        Ok(listed)
    }

    fn add_route(&mut self, route: &Route, if_exists: IfExists) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.record(Call::AddRoute(route.clone()))?;
        if let Some(oif) = route.oif {
            s.existing(oif)?;
        }
        // The kernel's key: destination and table (same metric).
        let same = |r: &Route| r.destination == route.destination && r.table == route.table;
        match (s.routes.iter().position(same), if_exists) {
            (None, _) => s.routes.push(route.clone()),
            (Some(_), IfExists::Fail) => return Err(exists(format!("route {route}"))),
            (Some(_), IfExists::Keep) => {}
            (Some(i), IfExists::Replace) => s.routes[i] = route.clone(),
        }
        Ok(())
    }

    fn copy_route(
        &mut self,
        entry: &RouteEntry,
        table: u32,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        let copy = Route {
            table,
            ..entry.route.clone()
        };
        self.add_route(&copy, if_exists)
    }

    fn rules(&mut self, ipv6: bool) -> Result<Vec<RuleEntry>, NetlinkError> {
        let listed = self
            .0
            .borrow()
            .rules
            .iter()
            .filter(|r| r.source.or(r.destination).is_some_and(|ip| ip.is_ipv6() == ipv6))
            .cloned()
            .map(RuleEntry::from)
            .collect();
        self.land_concurrent_add();
        Ok(listed)
    }

    fn add_rule(&mut self, rule: &Rule, if_exists: IfExists) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.record(Call::AddRule(rule.clone()))?;
        if s.rules.contains(rule) {
            return match if_exists {
                IfExists::Fail => Err(exists(format!("rule {rule}"))),
                IfExists::Keep | IfExists::Replace => Ok(()),
            };
        }
        s.rules.push(rule.clone());
        Ok(())
    }

    fn delete_rule(&mut self, entry: &RuleEntry) -> Result<bool, NetlinkError> {
        let mut s = self.state();
        let Some(i) = s.rules.iter().position(|r| *r == entry.rule) else {
            return Ok(false);
        };
        s.record(Call::DeleteRule(entry.rule.clone()))?;
        s.rules.remove(i);
        Ok(true)
    }

    fn set_permanent_neighbour(&mut self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NetlinkError> {
        let mut s = self.state();
        s.existing(index)?;
        let name = s.name(index);
        s.record(Call::Neighbour(name, ip, mac.to_vec()))?;
        s.neighbours.retain(|n| !(n.0 == index && n.1 == ip));
        s.neighbours.push((index, ip, mac.to_vec()));
        Ok(())
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> io::Result<()> {
        let mut s = self.state();
        s.record(Call::Sysctl(key.into(), value.into()))
            .map_err(io::Error::other)?;
        s.sysctls.insert(key.into(), value.into());
        Ok(())
    }

    fn probe(
        &mut self,
        ifname: &str,
        sender: Ipv4Addr,
        target: IpAddr,
        _tries: u32,
        _interval: Duration,
    ) -> io::Result<Option<Mac>> {
        let mut s = self.state();
        s.record(Call::Probe {
            ifname: ifname.into(),
            sender,
            target,
        })
        .map_err(io::Error::other)?;
        Ok(s.on_wire.get(&target).copied())
    }

    fn announce(&mut self, ifname: &str, ip: IpAddr) -> io::Result<()> {
        self.state()
            .record(Call::Announce(ifname.into(), ip))
            .map_err(io::Error::other)
    }
}
