//! What the coordinator asks of one network namespace's kernel: netlink requests, sysctls, and
//! ARP/NDP on the wire. ADD, DEL and CHECK take one handle per namespace (the pod's, the node's),
//! opened once per invocation; [`LiveKernel`] is the real one, the tests use a recording fake.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::Duration;

use spiderpool_cni::CniError;
use spiderpool_linux::probe::{Mac, arp_announce, arp_probe, na_announce, ndp_probe};
use spiderpool_linux::rtnl::{
    Address, IfExists, Link, NetlinkError, Route, RouteEntry, Rtnl, Rule, RuleEntry,
};

use crate::io_failure;

/// One network namespace's kernel, as far as the coordinator uses it.
pub trait Kernel {
    /// What another namespace's handle needs to create a veth peer in this one.
    type Namespace;

    fn namespace(&self) -> &Self::Namespace;

    /// The link called `name`, `None` when there is none.
    fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError>;
    fn set_mac(&mut self, index: u32, mac: Mac) -> Result<(), NetlinkError>;
    fn set_tx_queue_len(&mut self, index: u32, len: u32) -> Result<(), NetlinkError>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError>;
    fn set_up(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// A veth pair: `name` here, `peer` in `peer_namespace`.
    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_namespace: &Self::Namespace,
    ) -> Result<(), NetlinkError>;
    /// `Ok(false)`: it was gone already.
    fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError>;

    fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError>;
    fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError>;
    fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteEntry>, NetlinkError>;
    fn add_route(&mut self, route: &Route, if_exists: IfExists) -> Result<(), NetlinkError>;
    /// A dumped route, copied into `table`.
    fn copy_route(&mut self, entry: &RouteEntry, table: u32, if_exists: IfExists)
    -> Result<(), NetlinkError>;
    fn rules(&mut self, ipv6: bool) -> Result<Vec<RuleEntry>, NetlinkError>;
    fn add_rule(&mut self, rule: &Rule, if_exists: IfExists) -> Result<(), NetlinkError>;
    /// `Ok(false)`: it was gone already.
    fn delete_rule(&mut self, entry: &RuleEntry) -> Result<bool, NetlinkError>;
    /// A permanent neighbour entry, replacing what was learnt.
    fn set_permanent_neighbour(&mut self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NetlinkError>;

    /// `/proc/sys/<key>` of this namespace.
    fn set_sysctl(&mut self, key: &str, value: &str) -> io::Result<()>;
    /// Who answers for `target` on `ifname`: ARP (asking as `sender`) or NDP, `tries` times
    /// `interval` apart. `None`: nobody.
    fn probe(
        &mut self,
        ifname: &str,
        sender: Ipv4Addr,
        target: IpAddr,
        tries: u32,
        interval: Duration,
    ) -> io::Result<Option<Mac>>;
    /// Gratuitous ARP or unsolicited NA for `ip` on `ifname`.
    fn announce(&mut self, ifname: &str, ip: IpAddr) -> io::Result<()>;
}

/// The kernel of the network namespace of the thread that opened it. Its netlink socket stays in
/// that namespace whatever thread uses it; sysctls and probes use the calling thread's, so the
/// pod's handle is used from a thread inside the pod.
pub struct LiveKernel {
    rtnl: Rtnl,
    /// nsfs file of the namespace: where the other namespace's veth puts its peer.
    namespace: File,
}

impl LiveKernel {
    pub fn open() -> Result<LiveKernel, CniError> {
        Ok(LiveKernel {
            rtnl: Rtnl::new().map_err(io_failure)?,
            namespace: File::open("/proc/thread-self/ns/net")
                .map_err(|e| io_failure(format!("open this network namespace: {e}")))?,
        })
    }
}

impl Kernel for LiveKernel {
    type Namespace = File;

    fn namespace(&self) -> &File {
        &self.namespace
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.rtnl.link(name)
    }

    fn set_mac(&mut self, index: u32, mac: Mac) -> Result<(), NetlinkError> {
        self.rtnl.set_mac(index, &mac)
    }

    fn set_tx_queue_len(&mut self, index: u32, len: u32) -> Result<(), NetlinkError> {
        self.rtnl.set_tx_queue_len(index, len)
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.rtnl.set_mtu(index, mtu)
    }

    fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.rtnl.set_up(index, true)
    }

    fn create_veth(&mut self, name: &str, peer: &str, peer_namespace: &File) -> Result<(), NetlinkError> {
        self.rtnl.create_veth(name, peer, peer_namespace.as_fd())
    }

    fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        self.rtnl.delete_link(index)
    }

    fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        self.rtnl.addresses()
    }

    fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        self.rtnl.add_address(index, ip, prefix_len, if_exists)
    }

    fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteEntry>, NetlinkError> {
        self.rtnl.routes(ipv6)
    }

    fn add_route(&mut self, route: &Route, if_exists: IfExists) -> Result<(), NetlinkError> {
        self.rtnl.add_route(route, if_exists)
    }

    fn copy_route(
        &mut self,
        entry: &RouteEntry,
        table: u32,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        self.rtnl.copy_route(entry, table, if_exists)
    }

    fn rules(&mut self, ipv6: bool) -> Result<Vec<RuleEntry>, NetlinkError> {
        self.rtnl.rules(ipv6)
    }

    fn add_rule(&mut self, rule: &Rule, if_exists: IfExists) -> Result<(), NetlinkError> {
        self.rtnl.add_rule(rule, if_exists)
    }

    fn delete_rule(&mut self, entry: &RuleEntry) -> Result<bool, NetlinkError> {
        self.rtnl.delete_rule(entry)
    }

    fn set_permanent_neighbour(&mut self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NetlinkError> {
        self.rtnl.set_permanent_neighbour(index, ip, mac)
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> io::Result<()> {
        spiderpool_linux::sysctl::set(key, value)
    }

    fn probe(
        &mut self,
        ifname: &str,
        sender: Ipv4Addr,
        target: IpAddr,
        tries: u32,
        interval: Duration,
    ) -> io::Result<Option<Mac>> {
        match target {
            IpAddr::V4(target) => arp_probe(ifname, sender, target, tries, interval),
            IpAddr::V6(target) => ndp_probe(ifname, target, tries, interval),
        }
    }

    fn announce(&mut self, ifname: &str, ip: IpAddr) -> io::Result<()> {
        match ip {
            IpAddr::V4(v4) => arp_announce(ifname, v4),
            IpAddr::V6(v6) => na_announce(ifname, v6),
        }
    }
}
