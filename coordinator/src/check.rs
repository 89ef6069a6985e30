//! CHECK: what ADD set is still there. In underlay mode the node's veth end and its routes to the
//! pod's addresses, the pod's `veth0` with its `vethLinkAddress` and `vethMTU`; for a NIC without
//! the default route, its `from <ip>` rules. Anything missing fails with [`CODE_CHECK_FAILED`].

use spiderpool_cni::CniError;

use crate::config::CoordinatorConf;
use crate::kernel::Kernel;
use crate::node::{POD_VETH, host_veth_name};
use crate::pod::{NicAddress, is_extra_nic};
use crate::{CODE_CHECK_FAILED, TABLE_BASE, io_failure};

fn failed(msg: String) -> CniError {
    CniError {
        code: CODE_CHECK_FAILED,
        msg,
        details: String::new(),
    }
}

pub fn check<K: Kernel>(
    conf: &CoordinatorConf,
    container_id: &str,
    ifname: &str,
    addrs: &[NicAddress],
    underlay: bool,
    pod: &mut K,
    node: &mut K,
) -> Result<(), CniError> {
    if underlay {
        check_node_side(conf, container_id, addrs, node)?;
        check_pod_veth(conf, pod)?;
    }
    let index = pod
        .link(ifname)
        .map_err(io_failure)?
        .ok_or_else(|| failed(format!("{ifname} is missing")))?
        .facts
        .index;
    for (addr, _) in addrs {
        let ipv6 = addr.addr().is_ipv6();
        let routes = pod.routes(ipv6).map_err(io_failure)?;
        if !conf.tune_pod_routes || !is_extra_nic(conf, ifname, index, &routes) {
            continue;
        }
        let table = TABLE_BASE + index;
        let ruled = pod
            .rules(ipv6)
            .map_err(io_failure)?
            .iter()
            .any(|r| r.rule.table == table && r.rule.source == Some(addr.addr()));
        if !ruled {
            return Err(failed(format!("no rule from {} to table {table}", addr.addr())));
        }
    }
    Ok(())
}

/// The node's veth end, and a route to each of the pod's addresses through it.
fn check_node_side(
    conf: &CoordinatorConf,
    container_id: &str,
    addrs: &[NicAddress],
    node: &mut impl Kernel,
) -> Result<(), CniError> {
    let host_veth = host_veth_name(container_id);
    let index = node
        .link(&host_veth)
        .map_err(io_failure)?
        .ok_or_else(|| failed(format!("node veth {host_veth} is missing")))?
        .facts
        .index;
    for (addr, _) in addrs {
        let routed = node
            .routes(addr.addr().is_ipv6())
            .map_err(io_failure)?
            .iter()
            .any(|r| {
                r.route.table == conf.host_rule_table
                    && !r.route.is_default()
                    && r.route.destination.addr() == addr.addr()
                    && r.route.oif == Some(index)
            });
        if !routed {
            return Err(failed(format!(
                "no route to {} via {host_veth} in table {}",
                addr.addr(),
                conf.host_rule_table
            )));
        }
    }
    Ok(())
}

/// The pod's `veth0`, with the address and MTU the netconf asks for.
fn check_pod_veth(conf: &CoordinatorConf, pod: &mut impl Kernel) -> Result<(), CniError> {
    let veth = pod
        .link(POD_VETH)
        .map_err(io_failure)?
        .ok_or_else(|| failed(format!("{POD_VETH} is missing in the pod")))?;
    if let Some(ip) = conf.veth_link_address {
        let present = pod
            .addresses()
            .map_err(io_failure)?
            .iter()
            .any(|a| a.index == veth.facts.index && a.ip == ip);
        if !present {
            return Err(failed(format!("{POD_VETH} lacks vethLinkAddress {ip}")));
        }
    }
    if let Some(mtu) = conf.veth_mtu
        && veth.facts.mtu != Some(mtu)
    {
        return Err(failed(format!(
            "{POD_VETH} has MTU {:?}, vethMTU is {mtu}",
            veth.facts.mtu
        )));
    }
    Ok(())
}
