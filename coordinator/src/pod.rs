//! The pod side of ADD, through the pod's [`Kernel`]: the NIC's MAC, queue length and sysctls;
//! the conflict and gateway probes; a table of its own for a NIC without the default route; the
//! announcements; and in overlay mode the hijacked CIDRs through eth0's gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use spiderpool_cni::{CniError, CniResult};
use spiderpool_linux::probe::format_mac;
use spiderpool_linux::rtnl::{IfExists, MAIN_TABLE, Route, RouteEntry, Rule};

use crate::config::{CoordinatorConf, mac_for, mac_prefix};
use crate::kernel::Kernel;
use crate::{CODE_GATEWAY_UNREACHABLE, CODE_IP_CONFLICT, RULE_PRIORITY, TABLE_BASE, io_failure};

/// The interface an overlay CNI gives a pod; beside it, underlay NICs need no veth to the node.
pub const OVERLAY_NIC: &str = "eth0";

/// An address prevResult gave the NIC, with its gateway.
pub type NicAddress = (IpNet, Option<IpAddr>);

/// The addresses (and their gateways) prevResult gave `ifname`.
pub fn addresses_of(result: &CniResult, ifname: &str) -> Vec<NicAddress> {
    let index = result.interfaces.iter().position(|i| i.name == ifname);
    result
        .ips
        .iter()
        .filter(|ip| match (ip.interface, index) {
            (Some(i), Some(want)) => usize::try_from(i).ok() == Some(want),
            // Without interface indexes (an IPAM-only result), every address is this NIC's.
            _ => true,
        })
        .map(|ip| (ip.address, ip.gateway))
        .collect()
}

/// Whether this NIC gets the veth to the node. `auto` (the default): yes when the NIC is `eth0`
/// itself or the pod has no `eth0` (no overlay beside it); `overlay`: never; `underlay`: always.
pub fn underlay(conf: &CoordinatorConf, ifname: &str, pod: &mut impl Kernel) -> Result<bool, CniError> {
    Ok(match conf.mode.as_deref() {
        Some("underlay") => true,
        Some("overlay") | Some("disabled") => false,
        _ => ifname == OVERLAY_NIC || pod.link(OVERLAY_NIC).map_err(io_failure)?.is_none(),
    })
}

/// The index of a link that must exist.
pub(crate) fn index_of(kernel: &mut impl Kernel, name: &str) -> Result<u32, CniError> {
    kernel
        .link(name)
        .map_err(io_failure)?
        .map(|l| l.facts.index)
        .ok_or_else(|| io_failure(format!("no link {name}")))
}

/// The NIC's settings, the conflict and gateway checks, policy routing, then the announcements.
pub fn set_up_nic(
    conf: &CoordinatorConf,
    ifname: &str,
    addrs: &[NicAddress],
    pod: &mut impl Kernel,
) -> Result<(), CniError> {
    let nic = Nic {
        index: index_of(pod, ifname)?,
        name: ifname,
        addrs,
    };
    tune_nic(pod, conf, &nic)?;
    probe_addresses(pod, conf, &nic)?;
    if conf.tune_pod_routes {
        policy_route(pod, conf, &nic)?;
    }
    // Neighbours that cached another MAC for these addresses (a previous pod) learn this one now.
    for (addr, _) in addrs {
        pod.announce(ifname, addr.addr())
            .map_err(|e| io_failure(format!("announcing {} on {ifname}: {e}", addr.addr())))?;
    }
    Ok(())
}

/// The NIC being set up: its index in the pod, its name, what prevResult gave it.
struct Nic<'a> {
    index: u32,
    name: &'a str,
    addrs: &'a [NicAddress],
}

/// MAC prefix, queue length and sysctls of the NIC, before anyone sees it (the checks come next).
fn tune_nic(pod: &mut impl Kernel, conf: &CoordinatorConf, nic: &Nic<'_>) -> Result<(), CniError> {
    let Nic {
        index,
        name: ifname,
        addrs,
    } = *nic;
    if let Some(prefix) = &conf.pod_mac_prefix {
        let ip = addrs
            .iter()
            .map(|(a, _)| a.addr())
            .find(IpAddr::is_ipv4)
            .or_else(|| addrs.first().map(|(a, _)| a.addr()));
        if let Some(ip) = ip {
            pod.set_mac(index, mac_for(mac_prefix(prefix)?, ip))
                .map_err(io_failure)?;
        }
    }
    if let Some(len) = conf.tx_queue_len.filter(|l| *l > 0) {
        pod.set_tx_queue_len(index, len).map_err(io_failure)?;
    }
    if let Some(v) = conf.pod_rp_filter.filter(|v| *v >= 0) {
        for scope in ["all", ifname] {
            pod.set_sysctl(&format!("net/ipv4/conf/{scope}/rp_filter"), &v.to_string())
                .map_err(|e| io_failure(format!("rp_filter of {scope}: {e}")))?;
        }
    }
    if addrs.iter().any(|(a, _)| a.addr().is_ipv6()) {
        pod.set_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")
            .map_err(|e| io_failure(format!("enabling IPv6 on {ifname}: {e}")))?;
    }
    Ok(())
}

/// Fails with [`CODE_IP_CONFLICT`] when someone on the wire holds one of the addresses, and with
/// [`CODE_GATEWAY_UNREACHABLE`] when a gateway does not answer.
fn probe_addresses(pod: &mut impl Kernel, conf: &CoordinatorConf, nic: &Nic<'_>) -> Result<(), CniError> {
    let Nic {
        name: ifname, addrs, ..
    } = *nic;
    let interval = Duration::from_millis(conf.probe_interval_ms);
    for (addr, gateway) in addrs {
        let ip = addr.addr();
        if conf.detect_ip_conflict {
            // ARP probes ask as 0.0.0.0 (RFC 5227): the address is not ours until the check passes.
            let holder = pod
                .probe(ifname, Ipv4Addr::UNSPECIFIED, ip, conf.probe_tries, interval)
                .map_err(|e| io_failure(format!("probing {ip} on {ifname}: {e}")))?;
            if let Some(mac) = holder {
                return Err(CniError {
                    code: CODE_IP_CONFLICT,
                    msg: format!(
                        "IP conflict: {ip} on {ifname} is already used by {}",
                        format_mac(&mac)
                    ),
                    details: String::new(),
                });
            }
        }
        let Some(gw) = gateway.filter(|_| conf.detect_gateway) else {
            continue;
        };
        let sender = match (ip, gw) {
            (IpAddr::V4(src), IpAddr::V4(_)) => src,
            (_, IpAddr::V6(_)) => Ipv4Addr::UNSPECIFIED, // NDP: the sender is the link's own
            _ => continue,                               // mixed families cannot happen in a valid result
        };
        let answer = pod
            .probe(ifname, sender, gw, conf.probe_tries, interval)
            .map_err(|e| io_failure(format!("probing gateway {gw} on {ifname}: {e}")))?;
        if answer.is_none() {
            return Err(CniError {
                code: CODE_GATEWAY_UNREACHABLE,
                msg: format!("gateway {gw} of {ip} does not answer on {ifname}"),
                details: String::new(),
            });
        }
    }
    Ok(())
}

/// The main table's default route, if any.
pub(crate) fn main_default_route(routes: &[RouteEntry]) -> Option<&Route> {
    routes
        .iter()
        .map(|r| &r.route)
        .find(|r| r.table == MAIN_TABLE && r.is_default() && r.oif.is_some())
}

/// Whether `ifname` (link `index`) is a NIC without the default route, which gets its own table.
pub(crate) fn is_extra_nic(conf: &CoordinatorConf, ifname: &str, index: u32, routes: &[RouteEntry]) -> bool {
    match &conf.pod_default_route_nic {
        Some(nic) => nic != ifname,
        // No default route yet: this NIC is the first, it keeps the main table.
        None => main_default_route(routes)
            .and_then(|r| r.oif)
            .is_some_and(|oif| oif != index),
    }
}

/// Gives a NIC that does not carry the default route its own table: its routes copied there, a
/// default route via its gateway, and `from <ip>` rules.
fn policy_route(pod: &mut impl Kernel, conf: &CoordinatorConf, nic: &Nic<'_>) -> Result<(), CniError> {
    let Nic {
        index,
        name: ifname,
        addrs,
    } = *nic;
    for ipv6 in [false, true] {
        let mine: Vec<_> = addrs.iter().filter(|(a, _)| a.addr().is_ipv6() == ipv6).collect();
        if mine.is_empty() {
            continue;
        }
        let routes = pod.routes(ipv6).map_err(io_failure)?;
        if !is_extra_nic(conf, ifname, index, &routes) {
            continue;
        }
        let table = TABLE_BASE + index;
        // The default route of this table is added below, via this NIC's gateway.
        for entry in routes
            .iter()
            .filter(|r| r.route.table == MAIN_TABLE && r.route.oif == Some(index) && !r.route.is_default())
        {
            pod.copy_route(entry, table, IfExists::Keep).map_err(io_failure)?;
        }
        for (addr, gateway) in &mine {
            if let Some(gw) = gateway {
                pod.add_route(&Route::default_via(*gw, index, table), IfExists::Keep)
                    .map_err(io_failure)?;
            }
            pod.add_rule(
                &Rule::from_source(addr.addr(), table, RULE_PRIORITY),
                IfExists::Keep,
            )
            .map_err(io_failure)?;
        }
    }
    Ok(())
}

/// Overlay mode: the hijacked CIDRs (the cluster's pods and services among them) go through eth0's
/// gateway in the main table, so they stay on the overlay even when an underlay NIC carries the
/// default route (`podDefaultRouteNIC`). A family eth0 has no gateway for is left alone.
pub fn hijack_through_overlay(conf: &CoordinatorConf, pod: &mut impl Kernel) -> Result<(), CniError> {
    let Some(eth0) = pod.link(OVERLAY_NIC).map_err(io_failure)? else {
        return Ok(()); // no overlay NIC: nothing to keep the CIDRs on
    };
    let eth0 = eth0.facts.index;
    for ipv6 in [false, true] {
        let routes = pod.routes(ipv6).map_err(io_failure)?;
        let gateway = routes
            .iter()
            .map(|r| &r.route)
            .find(|r| r.table == MAIN_TABLE && r.is_default() && r.oif == Some(eth0))
            .and_then(|r| r.gateway);
        let Some(gateway) = gateway else { continue };
        for cidr in conf.hijack_cidr.iter().filter(|c| c.addr().is_ipv6() == ipv6) {
            pod.add_route(
                &Route::link(cidr.trunc(), eth0, MAIN_TABLE).via(gateway),
                IfExists::Keep,
            )
            .map_err(io_failure)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_follow_interface_indexes() {
        let r: CniResult = serde_json::from_value(json!({
            "interfaces": [{"name": "net1"}, {"name": "net2", "sandbox": "/x"}],
            "ips": [{"address": "10.6.0.10/16", "gateway": "10.6.0.1", "interface": 1},
                    {"address": "10.9.0.10/16", "interface": 0}]
        }))
        .unwrap();
        let a = addresses_of(&r, "net2");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0.to_string(), "10.6.0.10/16");
        assert_eq!(a[0].1, Some("10.6.0.1".parse().unwrap()));
    }
}
