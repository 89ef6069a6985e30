//! `coordinator`: a CNI meta-plugin after the main plugin (macvlan, ipvlan, SR-IOV).
//!
//! In the pod ([`pod`]) it sets the NIC's MAC prefix, queue length and sysctls, checks that no one
//! else on the wire holds the pod's addresses (ARP/NDP) and that the gateways answer, gives every
//! NIC but the default-route one its own routing table with `from <ip>` rules (so replies leave by
//! the NIC the request came in on), and announces the addresses (gratuitous ARP, unsolicited NA).
//! In underlay mode ([`node`]) it links the pod to its node: a veth pair (`veth0` in the pod), the
//! node's addresses and `hijackCIDR` routed through it in the pod, the pod's addresses routed back
//! on the node in `hostRuleTable` with `to <ip>` rules. `vethMTU` sets both veth ends' MTU;
//! `vethLinkAddress` puts a link-local address on the pod's `veth0` (a service mesh's iptables
//! redirect drops packets arriving on an interface without an address). DEL removes the node
//! side; CHECK ([`check`]) verifies the veth, the node routes and the policy rules.
//! In a cluster (the agent's socket exists) the SpiderCoordinator's spec gives the defaults for
//! every key the netconf leaves out, and its status adds the cluster's pod and service CIDRs
//! (found per `podCIDRType` by the controller) to the hijacked CIDRs ([`config`]): through veth0 in
//! underlay mode, through eth0's gateway in overlay mode (so they never follow an underlay default
//! route).
//!
//! The kernel is reached through [`kernel::Kernel`], one handle per network namespace, so ADD, DEL
//! and CHECK run against a fake in the unit tests.

pub mod check;
pub mod config;
pub mod kernel;
pub mod node;
pub mod pod;
#[cfg(test)]
mod tests;

use std::path::Path;

use spiderpool_cni::{CniError, CniResult, ErrorCode, Plugin, PluginInfo, Request};
use spiderpool_linux::netns::NetNs;

pub use config::{CoordinatorConf, PHASE_SYNCED, mac_for, with_cluster_settings};
use kernel::{Kernel, LiveKernel};
pub use node::{POD_VETH, host_veth_name};
pub use pod::{NicAddress, OVERLAY_NIC, addresses_of};

/// ADD found the address in use by someone else.
pub const CODE_IP_CONFLICT: u32 = 102;
/// CHECK found something ADD set missing.
pub const CODE_CHECK_FAILED: u32 = 104;
/// ADD found the gateway silent.
pub const CODE_GATEWAY_UNREACHABLE: u32 = 103;
/// Tables of extra NICs: this plus the NIC's ifindex in the pod.
pub const TABLE_BASE: u32 = 100;
/// Priority of the `from <ip>` rules (before `main` at 32766).
pub const RULE_PRIORITY: u32 = 1000;
/// Priority of the node's `to <pod ip>` rules.
pub const HOST_RULE_PRIORITY: u32 = 1000;

pub(crate) fn io_failure(e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::IoFailure, format!("coordinator: {e}"))
}

/// ADD for one NIC: the underlay decision (before this NIC's own setup, in case it is eth0
/// itself), the pod side, then the link to the node or the overlay's hijacked routes.
pub fn add<K: Kernel>(
    conf: &CoordinatorConf,
    container_id: &str,
    ifname: &str,
    addrs: &[NicAddress],
    pod: &mut K,
    node: &mut K,
) -> Result<(), CniError> {
    let underlay = pod::underlay(conf, ifname, pod)?;
    pod::set_up_nic(conf, ifname, addrs, pod)?;
    if underlay {
        node::link_to_node(conf, container_id, addrs, pod, node)
    } else if !conf.hijack_cidr.is_empty() {
        pod::hijack_through_overlay(conf, pod)
    } else {
        Ok(())
    }
}

/// DEL: the node side only, from the container ID alone (no netns or prevResult needed).
pub fn del(conf: &CoordinatorConf, container_id: &str, node: &mut impl Kernel) -> Result<(), CniError> {
    node::unlink_from_node(conf, container_id, node)
}

/// CHECK for one NIC.
pub fn check<K: Kernel>(
    conf: &CoordinatorConf,
    container_id: &str,
    ifname: &str,
    addrs: &[NicAddress],
    pod: &mut K,
    node: &mut K,
) -> Result<(), CniError> {
    let underlay = pod::underlay(conf, ifname, pod)?;
    check::check(conf, container_id, ifname, addrs, underlay, pod, node)
}

/// Runs `f` with the node's handle (this thread's namespace) and the pod's, both used from a
/// thread inside the pod's namespace: sysctls and probes need that thread, netlink sockets stay
/// in the namespace they were opened in.
fn in_pod<T: Send>(
    netns: &str,
    f: impl FnOnce(&mut LiveKernel, &mut LiveKernel) -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    let netns = NetNs::open(Path::new(netns)).map_err(io_failure)?;
    let mut node = LiveKernel::open()?;
    netns
        .run(|| {
            let mut pod = LiveKernel::open()?;
            f(&mut pod, &mut node)
        })
        .map_err(io_failure)?
}

pub struct Coordinator;

impl Plugin for Coordinator {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            about: format!("spiderpool coordinator CNI plugin {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = CoordinatorConf::load(req, true)?;
        let mut prev = req.conf.prev_result.clone().ok_or_else(|| {
            CniError::invalid_config("coordinator must follow a main plugin: no prevResult")
        })?;
        if prev.dns.is_empty()
            && let Some(dns) = &conf.pod_dns
        {
            prev.dns = dns.clone();
        }
        if conf.mode.as_deref() == Some("disabled") {
            return Ok(prev);
        }
        let addrs = addresses_of(&prev, &req.ifname);
        in_pod(&req.netns, |pod, node| {
            add(&conf, &req.container_id, &req.ifname, &addrs, pod, node)
        })?;
        Ok(prev)
    }

    /// The pod side goes with the pod's netns; the node side (veth end, its routes, the rules to the
    /// pod's addresses) is removed here, from the container ID alone, so a DEL without netns or
    /// prevResult cleans up as well, and a second DEL finds nothing to do.
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let conf = CoordinatorConf::load(req, false)?;
        del(&conf, &req.container_id, &mut LiveKernel::open()?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let conf = CoordinatorConf::load(req, true)?;
        let prev = req
            .conf
            .prev_result
            .clone()
            .ok_or_else(|| CniError::invalid_config("coordinator CHECK needs prevResult"))?;
        if conf.mode.as_deref() == Some("disabled") {
            return Ok(());
        }
        let addrs = addresses_of(&prev, &req.ifname);
        in_pod(&req.netns, |pod, node| {
            check(&conf, &req.container_id, &req.ifname, &addrs, pod, node)
        })
    }
}
