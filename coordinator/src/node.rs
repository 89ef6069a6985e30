//! Underlay mode's link between pod and node: a veth pair (`veth0` in the pod), the node's
//! addresses and the hijacked CIDRs routed through it in the pod, the pod's addresses routed back
//! on the node in `hostRuleTable` with `to <ip>` rules, static neighbours on both ends. DEL
//! removes the node side from the container ID alone.

use std::net::IpAddr;

use spiderpool_cni::CniError;
use spiderpool_linux::rtnl::{IfExists, MAIN_TABLE, Route, Rule};

use crate::config::CoordinatorConf;
use crate::kernel::Kernel;
use crate::pod::{NicAddress, index_of};
use crate::{HOST_RULE_PRIORITY, io_failure};

/// The pod end of the veth pair.
pub const POD_VETH: &str = "veth0";

/// The node end of a pod's veth: `veth` + 11 hex digits of the container ID's FNV-1a hash, so DEL
/// finds it from the container ID alone (no prevResult needed).
pub fn host_veth_name(container_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:011x}", hash & 0xfff_ffff_ffff)
}

/// The MAC of a link that must exist.
fn mac_of<K: Kernel>(kernel: &mut K, name: &str) -> Result<Vec<u8>, CniError> {
    kernel
        .link(name)
        .map_err(io_failure)?
        .map(|l| l.address)
        .ok_or_else(|| io_failure(format!("no link {name}")))
}

/// Creates the veth pair when the pod has none yet, routes the node's addresses (with static
/// neighbours) and the hijacked CIDRs through it in the pod, and routes this NIC's addresses back
/// through it on the node.
pub fn link_to_node<K: Kernel>(
    conf: &CoordinatorConf,
    container_id: &str,
    addrs: &[NicAddress],
    pod: &mut K,
    node: &mut K,
) -> Result<(), CniError> {
    let host_veth = host_veth_name(container_id);
    let pod_ips: Vec<IpAddr> = addrs.iter().map(|(a, _)| a.addr()).collect();
    // The node's own addresses are what the pod must reach.
    let node_ips: Vec<IpAddr> = node
        .addresses()
        .map_err(io_failure)?
        .into_iter()
        .filter(|a| a.global && !pod_ips.contains(&a.ip))
        .map(|a| a.ip)
        .collect();
    // The pair (a second NIC's ADD finds it), its node end created in the node's namespace.
    if pod.link(POD_VETH).map_err(io_failure)?.is_none() {
        pod.create_veth(POD_VETH, &host_veth, node.namespace())
            .map_err(io_failure)?;
    }
    let veth = index_of(pod, POD_VETH)?;
    if let Some(mtu) = conf.veth_mtu {
        pod.set_mtu(veth, mtu).map_err(io_failure)?;
    }
    if let Some(ip) = conf.veth_link_address {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        pod.add_address(veth, ip, prefix, IfExists::Keep)
            .map_err(io_failure)?;
    }
    pod.set_up(veth).map_err(io_failure)?;
    let pod_veth_mac = mac_of(pod, POD_VETH)?;

    let index = index_of(node, &host_veth)?;
    if let Some(mtu) = conf.veth_mtu {
        node.set_mtu(index, mtu).map_err(io_failure)?;
    }
    node.set_up(index).map_err(io_failure)?;
    let host_mac = mac_of(node, &host_veth)?;
    for ip in &pod_ips {
        // The route first: a rule without its route is what DEL treats as an orphan.
        node.add_route(&Route::host(*ip, index, conf.host_rule_table), IfExists::Keep)
            .map_err(io_failure)?;
        node.add_rule(
            &Rule::to_destination(*ip, conf.host_rule_table, HOST_RULE_PRIORITY),
            IfExists::Keep,
        )
        .map_err(io_failure)?;
        // Static neighbours: no ARP/NDP across the veth, ever.
        node.set_permanent_neighbour(index, *ip, &pod_veth_mac)
            .map_err(io_failure)?;
    }

    // With an address on veth0 (vethLinkAddress) the kernel would take it as the source towards
    // the node, which cannot answer it: the pod's own address of the family is.
    let source = |dst: &IpAddr| {
        conf.veth_link_address
            .and_then(|_| pod_ips.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4()).copied())
    };
    let with_source = |route: Route, dst: &IpAddr| match source(dst) {
        Some(src) => route.with_source(src),
        None => route,
    };
    for ip in &node_ips {
        pod.add_route(
            &with_source(Route::host(*ip, veth, MAIN_TABLE), ip),
            IfExists::Keep,
        )
        .map_err(io_failure)?;
        pod.set_permanent_neighbour(veth, *ip, &host_mac)
            .map_err(io_failure)?;
    }
    for cidr in &conf.hijack_cidr {
        let Some(via) = node_ips.iter().find(|ip| ip.is_ipv4() == cidr.addr().is_ipv4()) else {
            continue; // no node address of that family to route through
        };
        let route = Route::link(cidr.trunc(), veth, MAIN_TABLE).via(*via);
        pod.add_route(&with_source(route, via), IfExists::Keep)
            .map_err(io_failure)?;
    }
    Ok(())
}

/// DEL's node side: the veth (its routes go with it), then the `to <ip>` rules left without a
/// route. The pod side goes with the pod's namespace.
pub fn unlink_from_node(
    conf: &CoordinatorConf,
    container_id: &str,
    node: &mut impl Kernel,
) -> Result<(), CniError> {
    if let Some(veth) = node.link(&host_veth_name(container_id)).map_err(io_failure)? {
        // Gone meanwhile: a concurrent DEL was first.
        node.delete_link(veth.facts.index).map_err(io_failure)?;
    }
    remove_orphan_rules(node, conf.host_rule_table)
}

/// Deletes `to <ip> lookup TABLE` rules whose route in TABLE is gone (it went with its veth).
/// Rules are listed before routes: ADD writes a pod's route before its rule, so a rule in the
/// first list has its route in the second unless that route is really gone, and a concurrent
/// ADD's rule either misses the first list or has its route in the second.
fn remove_orphan_rules(node: &mut impl Kernel, table: u32) -> Result<(), CniError> {
    for ipv6 in [false, true] {
        let rules = node.rules(ipv6).map_err(io_failure)?;
        let routed: Vec<IpAddr> = node
            .routes(ipv6)
            .map_err(io_failure)?
            .into_iter()
            .filter(|r| r.route.table == table && !r.route.is_default())
            .map(|r| r.route.destination.addr())
            .collect();
        for entry in rules {
            if entry.rule.table != table {
                continue;
            }
            if let Some(dst) = entry.rule.destination
                && !routed.contains(&dst)
            {
                // Gone meanwhile: a concurrent DEL was first.
                node.delete_rule(&entry).map_err(io_failure)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("another"));
        assert_eq!(a, host_veth_name("0123456789abcdef0123456789abcdef"));
    }
}
