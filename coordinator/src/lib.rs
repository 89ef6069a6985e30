//! `coordinator`: a CNI meta-plugin after the main plugin (macvlan, ipvlan, SR-IOV). This first
//! part checks, inside the pod, that no one else on the wire holds the pod's addresses (ARP/NDP)
//! and that the gateways answer, and gives every NIC but the default-route one its own routing
//! table with `from <ip>` rules, so replies leave by the NIC the request came in on.
//! In underlay mode it also links the pod to its node: a veth pair (`veth0` in the pod), the
//! node's addresses routed through it in the pod, and the pod's addresses routed back on the node
//! in `hostRuleTable` with `to <ip>` rules. DEL removes the node side.
//! It also sets the NIC's MAC prefix, queue length and sysctls, and routes `hijackCIDR` through the
//! node, and announces the addresses (gratuitous ARP, unsolicited NA) once all is set. CHECK
//! verifies the veth, the node routes and the policy rules. `vethMTU` sets both veth ends' MTU;
//! `vethLinkAddress` puts a link-local address on the pod's `veth0` (a service mesh's iptables
//! redirect drops packets arriving on an interface without an address).
//! In a cluster (the agent's socket exists) the SpiderCoordinator's spec gives the defaults for
//! every key the netconf leaves out, and its status adds the cluster's pod and service CIDRs
//! (found per `podCIDRType` by the controller) to the hijacked CIDRs: through veth0 in underlay
//! mode, through eth0's gateway in overlay mode (so they never follow an underlay default route).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use spiderpool_cni::{CniError, CniResult, ErrorCode, Plugin, PluginInfo, Request};
use spiderpool_linux::netns::NetNs;
use spiderpool_linux::probe::{arp_probe, format_mac, ndp_probe};
use spiderpool_linux::rtnl::{
    MAIN_TABLE, Rtnl, route_destination, route_oif, route_table, rule_destination, rule_source, rule_table,
};

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
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
/// How long the agent may take to say what the SpiderCoordinator is (it answers from a cache).
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Priority of the node's `to <pod ip>` rules.
pub const HOST_RULE_PRIORITY: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorConf {
    /// `auto`, `underlay`, `overlay`, `disabled`; only the checks and policy routing exist so far.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default = "yes", alias = "detectIPConflict")]
    pub detect_ip_conflict: bool,
    #[serde(default = "yes")]
    pub detect_gateway: bool,
    /// CIDRs the pod reaches through the node (service and cluster CIDRs, and others), via veth0.
    #[serde(rename = "hijackCIDR", default)]
    pub hijack_cidr: Vec<ipnet::IpNet>,
    /// Two bytes, e.g. `0a:1b`: the NIC's MAC becomes them plus its IPv4 address (or the last four
    /// bytes of its IPv6 one), so MACs say which IP they carry.
    #[serde(rename = "podMACPrefix", default)]
    pub pod_mac_prefix: Option<String>,
    #[serde(default)]
    pub tx_queue_len: Option<u32>,
    /// `rp_filter` for the NIC and `all` (0, 1, 2); absent or negative: untouched.
    #[serde(rename = "podRPFilter", default)]
    pub pod_rp_filter: Option<i32>,
    /// Node-side table of the routes to pod addresses (Spiderpool's default 500).
    #[serde(default = "five_hundred")]
    pub host_rule_table: u32,
    /// The NIC that keeps the main table's default route; default: the one that has it.
    #[serde(default)]
    pub pod_default_route_nic: Option<String>,
    /// A link-local address (169.254.0.0/16 or fe80::/10) for the pod's veth0.
    #[serde(rename = "vethLinkAddress", default)]
    pub veth_link_address: Option<IpAddr>,
    /// MTU of both ends of the veth pair (default: the kernel's, 1500).
    #[serde(rename = "vethMTU", default)]
    pub veth_mtu: Option<u32>,
    /// Probes per address, `probeIntervalMs` apart (Spiderpool: 3 × 100 ms).
    #[serde(default = "three")]
    pub probe_tries: u32,
    #[serde(default = "hundred")]
    pub probe_interval_ms: u64,
}

fn yes() -> bool {
    true
}
fn five_hundred() -> u32 {
    500
}
fn three() -> u32 {
    3
}
fn hundred() -> u64 {
    100
}

/// The SpiderCoordinator phase in which the plugin trusts its CIDRs.
pub const PHASE_SYNCED: &str = "Synced";

/// The netconf with the cluster's SpiderCoordinator folded in (`settings` is what the agent
/// answers: `{"name", "spec", "status"}` or null). Keys the netconf sets win; `hijackCIDR` is the
/// union of both plus the status's pod and service CIDRs. With `require_synced` (ADD, CHECK), a
/// coordinator whose status is not `Synced` refuses (code 11, try again later) rather than start
/// a pod without its routes; DEL takes the spec regardless (its `hostRuleTable` say where to clean).
pub fn with_cluster_settings(
    raw: &serde_json::Value,
    settings: &serde_json::Value,
    require_synced: bool,
) -> Result<serde_json::Value, CniError> {
    if settings.is_null() {
        return Ok(raw.clone());
    }
    let name = settings["name"].as_str().unwrap_or("default");
    let status = &settings["status"];
    if require_synced && status["phase"].as_str() != Some(PHASE_SYNCED) {
        return Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "coordinator: SpiderCoordinator {name} is not ready ({}): {}",
                status["phase"].as_str().unwrap_or("no status yet"),
                status["reason"]
                    .as_str()
                    .unwrap_or("the controller has not written its status")
            ),
        ));
    }
    let mut merged = raw.clone();
    let Some(out) = merged.as_object_mut() else {
        return Err(CniError::decoding("coordinator netconf is not an object"));
    };
    let mut hijack: Vec<serde_json::Value> = out
        .get("hijackCIDR")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    if let Some(spec) = settings["spec"].as_object() {
        for (key, value) in spec {
            if key == "hijackCIDR" {
                hijack.extend(value.as_array().into_iter().flatten().cloned());
            } else if !out.contains_key(key) {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    for key in ["overlayPodCIDR", "serviceCIDR"] {
        hijack.extend(status[key].as_array().into_iter().flatten().cloned());
    }
    let mut seen = std::collections::HashSet::new();
    hijack.retain(|c| seen.insert(c.to_string()));
    out.insert("hijackCIDR".into(), serde_json::Value::Array(hijack));
    Ok(merged)
}

impl CoordinatorConf {
    /// The netconf of `req`, with the cluster's SpiderCoordinator folded in when the agent's
    /// socket (`agentSocket`, default the agent's path; `""`: never ask) exists. It is read from
    /// the raw netconf because it decides what is parsed. `strict` (ADD, CHECK): an agent that does not answer, or a coordinator not
    /// `Synced`, is an error; else (DEL, which must succeed with the agent gone) the netconf alone
    /// is used, or with the spec's defaults.
    pub fn load(req: &Request, strict: bool) -> Result<CoordinatorConf, CniError> {
        let raw = &req.conf.raw;
        let socket = match raw.get("agentSocket") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(CniError::decoding(format!(
                    "coordinator: agentSocket must be a string, not {other}"
                )));
            }
            None => spiderpool_cni::agent::DEFAULT_AGENT_SOCKET.to_string(),
        };
        if socket.is_empty() || !Path::new(&socket).exists() {
            return CoordinatorConf::parse(raw);
        }
        let network = raw["name"].as_str().unwrap_or_default();
        match spiderpool_cni::agent::coordinator_settings(Path::new(&socket), network, AGENT_TIMEOUT) {
            Ok(settings) => CoordinatorConf::parse(&with_cluster_settings(raw, &settings, strict)?),
            Err(e) if strict => Err(e),
            Err(_) => CoordinatorConf::parse(raw),
        }
    }

    pub fn parse(raw: &serde_json::Value) -> Result<CoordinatorConf, CniError> {
        let conf: CoordinatorConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decoding(format!("coordinator netconf: {e}")))?;
        if let Some(m) = &conf.mode
            && !matches!(m.as_str(), "auto" | "underlay" | "overlay" | "disabled")
        {
            return Err(CniError::invalid_config(format!(
                "coordinator: mode {m:?}: want auto, underlay, overlay or disabled"
            )));
        }
        if let Some(prefix) = &conf.pod_mac_prefix {
            mac_prefix(prefix)?;
        }
        if let Some(ip) = conf.veth_link_address
            && !spiderpool_linux::rtnl::is_link_local(ip)
        {
            return Err(CniError::invalid_config(format!(
                "coordinator: vethLinkAddress {ip} is not link-local (169.254.0.0/16 or fe80::/10)"
            )));
        }
        if conf.veth_mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            return Err(CniError::invalid_config("coordinator: vethMTU is 68-65535"));
        }
        if conf.pod_rp_filter.is_some_and(|v| v > 2) {
            return Err(CniError::invalid_config("coordinator: podRPFilter is 0, 1 or 2"));
        }
        if conf.probe_tries == 0
            || conf.probe_tries > 20
            || conf.probe_interval_ms == 0
            || conf.probe_interval_ms > 5000
        {
            return Err(CniError::invalid_config(
                "coordinator: probeTries 1-20 and probeIntervalMs 1-5000",
            ));
        }
        Ok(conf)
    }
}

/// `0a:1b` → [0x0a, 0x1b]; the first byte must name a unicast address.
fn mac_prefix(prefix: &str) -> Result<[u8; 2], CniError> {
    let bad = || {
        CniError::invalid_config(format!(
            "coordinator: podMACPrefix {prefix:?}: want two hex bytes like 0a:1b, unicast"
        ))
    };
    let parts: Vec<&str> = prefix.split(':').collect();
    if parts.len() != 2 {
        return Err(bad());
    }
    let a = u8::from_str_radix(parts[0], 16).map_err(|_| bad())?;
    let b = u8::from_str_radix(parts[1], 16).map_err(|_| bad())?;
    if a & 1 == 1 {
        return Err(bad());
    }
    Ok([a, b])
}

/// The NIC's MAC from the prefix and its address.
pub fn mac_for(prefix: [u8; 2], ip: IpAddr) -> [u8; 6] {
    let tail = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [prefix[0], prefix[1], tail[0], tail[1], tail[2], tail[3]]
}

/// MAC prefix, queue length and sysctls of the NIC, before anyone sees it (the checks come next).
fn tune_nic(
    rtnl: &mut Rtnl,
    index: u32,
    conf: &CoordinatorConf,
    ifname: &str,
    addrs: &[(ipnet::IpNet, Option<IpAddr>)],
) -> Result<(), CniError> {
    if let Some(prefix) = &conf.pod_mac_prefix {
        let ip = addrs
            .iter()
            .map(|(a, _)| a.addr())
            .find(IpAddr::is_ipv4)
            .or_else(|| addrs.first().map(|(a, _)| a.addr()));
        if let Some(ip) = ip {
            rtnl.set_mac(index, &mac_for(mac_prefix(prefix)?, ip))
                .map_err(io)?;
        }
    }
    if let Some(len) = conf.tx_queue_len.filter(|l| *l > 0) {
        rtnl.set_tx_queue_len(index, len).map_err(io)?;
    }
    // /proc/sys/net follows the opening thread's network namespace: this one is the pod's.
    if let Some(v) = conf.pod_rp_filter.filter(|v| *v >= 0) {
        for scope in ["all", ifname] {
            std::fs::write(
                format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter"),
                v.to_string(),
            )
            .map_err(|e| io(format!("rp_filter of {scope}: {e}")))?;
        }
    }
    if addrs.iter().any(|(a, _)| a.addr().is_ipv6()) {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "0")
            .map_err(|e| io(format!("enabling IPv6 on {ifname}: {e}")))?;
    }
    Ok(())
}

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

/// The interface an overlay CNI gives a pod; beside it, underlay NICs need no veth to the node.
pub const OVERLAY_NIC: &str = "eth0";

/// Whether this NIC gets the veth to the node. `auto` (the default): yes when the NIC is `eth0`
/// itself or the pod has no `eth0` (no overlay beside it); `overlay`: never; `underlay`: always.
fn underlay(conf: &CoordinatorConf, ifname: &str, netns: &NetNs) -> Result<bool, CniError> {
    Ok(match conf.mode.as_deref() {
        Some("underlay") => true,
        Some("overlay") | Some("disabled") => false,
        _ => {
            ifname == OVERLAY_NIC
                || !netns
                    .run(|| spiderpool_linux::probe::ifindex(OVERLAY_NIC).is_ok())
                    .map_err(io)?
        }
    })
}

/// The addresses (and their gateways) prevResult gave `ifname`.
pub fn addresses_of(result: &CniResult, ifname: &str) -> Vec<(ipnet::IpNet, Option<IpAddr>)> {
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

fn io(e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::IoFailure, format!("coordinator: {e}"))
}

/// Conflict and gateway checks, then policy routing; runs on a thread inside the pod netns.
fn add_in_pod(
    conf: &CoordinatorConf,
    ifname: &str,
    addrs: &[(ipnet::IpNet, Option<IpAddr>)],
) -> Result<(), CniError> {
    // One netlink socket and one index lookup serve every step in the pod.
    let mut rtnl = Rtnl::new().map_err(io)?;
    let index = spiderpool_linux::probe::ifindex(ifname).map_err(io)?;
    tune_nic(&mut rtnl, index, conf, ifname, addrs)?;
    let interval = Duration::from_millis(conf.probe_interval_ms);
    for (addr, gateway) in addrs {
        let ip = addr.addr();
        if conf.detect_ip_conflict {
            let holder = match ip {
                IpAddr::V4(v4) => arp_probe(
                    ifname,
                    std::net::Ipv4Addr::UNSPECIFIED,
                    v4,
                    conf.probe_tries,
                    interval,
                ),
                IpAddr::V6(v6) => ndp_probe(ifname, v6, conf.probe_tries, interval),
            }
            .map_err(|e| io(format!("probing {ip} on {ifname}: {e}")))?;
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
        if conf.detect_gateway
            && let Some(gw) = gateway
        {
            let answer = match (ip, gw) {
                (IpAddr::V4(src), IpAddr::V4(g)) => arp_probe(ifname, src, *g, conf.probe_tries, interval),
                (_, IpAddr::V6(g)) => ndp_probe(ifname, *g, conf.probe_tries, interval),
                _ => Ok(Some([0; 6])), // mixed families cannot happen in a valid result
            }
            .map_err(|e| io(format!("probing gateway {gw} on {ifname}: {e}")))?;
            if answer.is_none() {
                return Err(CniError {
                    code: CODE_GATEWAY_UNREACHABLE,
                    msg: format!("gateway {gw} of {ip} does not answer on {ifname}"),
                    details: String::new(),
                });
            }
        }
    }
    policy_route(&mut rtnl, index, conf, ifname, addrs)?;
    // Neighbours that cached another MAC for these addresses (a previous pod) learn this one now.
    for (addr, _) in addrs {
        match addr.addr() {
            IpAddr::V4(v4) => spiderpool_linux::probe::arp_announce(ifname, v4),
            IpAddr::V6(v6) => spiderpool_linux::probe::na_announce(ifname, v6),
        }
        .map_err(|e| io(format!("announcing {} on {ifname}: {e}", addr.addr())))?;
    }
    Ok(())
}

/// Gives a NIC that does not carry the default route its own table: its routes copied there, a
/// default route via its gateway, and `from <ip>` rules.
fn policy_route(
    rtnl: &mut Rtnl,
    index: u32,
    conf: &CoordinatorConf,
    ifname: &str,
    addrs: &[(ipnet::IpNet, Option<IpAddr>)],
) -> Result<(), CniError> {
    for ipv6 in [false, true] {
        let mine: Vec<_> = addrs.iter().filter(|(a, _)| a.addr().is_ipv6() == ipv6).collect();
        if mine.is_empty() {
            continue;
        }
        let routes = rtnl.routes(ipv6).map_err(io)?;
        let default_nic = match &conf.pod_default_route_nic {
            Some(nic) => Some(nic.as_str() == ifname),
            None => {
                let default_oif = routes.iter().find(|r| {
                    route_table(r) == MAIN_TABLE
                        && r.header.destination_prefix_length == 0
                        && route_oif(r).is_some()
                });
                // No default route yet: this NIC is the first, it keeps the main table.
                Some(default_oif.and_then(route_oif).is_none_or(|oif| oif == index))
            }
        };
        if default_nic == Some(true) {
            continue;
        }
        let table = TABLE_BASE + index;
        for r in routes
            .iter()
            .filter(|r| route_table(r) == MAIN_TABLE && route_oif(r) == Some(index))
        {
            if r.header.destination_prefix_length == 0 {
                continue; // the default route of this table is added below, via this NIC's gateway
            }
            match rtnl.add_route_to_table(r, table) {
                Err(e) if e.errno() == Some(EEXIST) => {}
                other => other.map_err(io)?,
            }
        }
        for (addr, gateway) in &mine {
            if let Some(gw) = gateway {
                match rtnl.add_default_route(*gw, index, table) {
                    Err(e) if e.errno() == Some(EEXIST) => {}
                    other => other.map_err(io)?,
                }
            }
            match rtnl.add_source_rule(addr.addr(), table, RULE_PRIORITY) {
                Err(e) if e.errno() == Some(EEXIST) => {}
                other => other.map_err(io)?,
            }
        }
    }
    Ok(())
}

/// Creates the veth pair when the pod has none yet, routes the node's addresses (with static
/// neighbours) and the hijacked CIDRs through it in the pod, and routes this NIC's addresses back
/// through it on the node.
fn link_to_node(
    conf: &CoordinatorConf,
    container_id: &str,
    netns: &NetNs,
    addrs: &[(ipnet::IpNet, Option<IpAddr>)],
) -> Result<(), CniError> {
    use std::os::fd::AsRawFd;
    let host_veth = host_veth_name(container_id);
    let mut host = Rtnl::new().map_err(io)?;
    let pod_ips: Vec<IpAddr> = addrs.iter().map(|(a, _)| a.addr()).collect();
    // The node's own addresses, read in the node's namespace, are what the pod must reach.
    let node_ips: Vec<IpAddr> = host
        .global_addresses()
        .map_err(io)?
        .into_iter()
        .map(|(_, ip)| ip)
        .filter(|ip| !pod_ips.contains(ip))
        .collect();
    let node_ns = std::fs::File::open("/proc/thread-self/ns/net").map_err(io)?;
    // First visit: the pair (the node end lands in the node's namespace) and the pod end's MAC.
    let pod_veth_mac = netns
        .run(|| -> Result<[u8; 6], CniError> {
            let mut pod = Rtnl::new().map_err(io)?;
            if spiderpool_linux::probe::ifindex(POD_VETH).is_err() {
                pod.add_veth(POD_VETH, &host_veth, node_ns.as_raw_fd())
                    .map_err(io)?;
            }
            let veth = spiderpool_linux::probe::ifindex(POD_VETH).map_err(io)?;
            if let Some(mtu) = conf.veth_mtu {
                pod.set_mtu(veth, mtu).map_err(io)?;
            }
            if let Some(ip) = conf.veth_link_address {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                match pod.add_address(veth, ip, prefix) {
                    Err(e) if e.errno() == Some(EEXIST) => {} // a second NIC's visit
                    other => other.map_err(io)?,
                }
            }
            pod.set_up(veth, true).map_err(io)?;
            spiderpool_linux::probe::hardware_address(POD_VETH).map_err(io)
        })
        .map_err(io)??;
    let index = spiderpool_linux::probe::ifindex(&host_veth).map_err(io)?;
    if let Some(mtu) = conf.veth_mtu {
        host.set_mtu(index, mtu).map_err(io)?;
    }
    host.set_up(index, true).map_err(io)?;
    let host_mac = spiderpool_linux::probe::hardware_address(&host_veth).map_err(io)?;
    for ip in &pod_ips {
        // The route first: a rule without its route is what DEL treats as an orphan.
        match host.add_link_route(*ip, index, conf.host_rule_table) {
            Err(e) if e.errno() == Some(EEXIST) => {}
            other => other.map_err(io)?,
        }
        match host.add_destination_rule(*ip, conf.host_rule_table, HOST_RULE_PRIORITY) {
            Err(e) if e.errno() == Some(EEXIST) => {}
            other => other.map_err(io)?,
        }
        // Static neighbours: no ARP/NDP across the veth, ever.
        host.set_permanent_neighbour(index, *ip, &pod_veth_mac)
            .map_err(io)?;
    }
    // Second visit: the pod's routes to the node and through it.
    netns
        .run(|| -> Result<(), CniError> {
            let mut pod = Rtnl::new().map_err(io)?;
            let veth = spiderpool_linux::probe::ifindex(POD_VETH).map_err(io)?;
            // With an address on veth0 (vethLinkAddress) the kernel would take it as the source
            // towards the node, which cannot answer it: the pod's own address of the family is.
            let source = |dst: &IpAddr| {
                conf.veth_link_address
                    .and_then(|_| pod_ips.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4()).copied())
            };
            for ip in &node_ips {
                let host_len = if ip.is_ipv4() { 32 } else { 128 };
                let added = match source(ip) {
                    Some(src) => pod.add_route_with_source((*ip, host_len), None, veth, MAIN_TABLE, src),
                    None => pod.add_link_route(*ip, veth, MAIN_TABLE),
                };
                match added {
                    Err(e) if e.errno() == Some(EEXIST) => {}
                    other => other.map_err(io)?,
                }
                pod.set_permanent_neighbour(veth, *ip, &host_mac).map_err(io)?;
            }
            for cidr in &conf.hijack_cidr {
                let Some(via) = node_ips.iter().find(|ip| ip.is_ipv4() == cidr.addr().is_ipv4()) else {
                    continue; // no node address of that family to route through
                };
                let dst = (cidr.network(), cidr.prefix_len());
                let added = match source(via) {
                    Some(src) => pod.add_route_with_source(dst, Some(*via), veth, MAIN_TABLE, src),
                    None => pod.add_route_via(dst, *via, veth, MAIN_TABLE),
                };
                match added {
                    Err(e) if e.errno() == Some(EEXIST) => {}
                    other => other.map_err(io)?,
                }
            }
            Ok(())
        })
        .map_err(io)??;
    Ok(())
}

/// Overlay mode: the hijacked CIDRs (the cluster's pods and services among them) go through eth0's
/// gateway in the main table, so they stay on the overlay even when an underlay NIC carries the
/// default route (`podDefaultRouteNIC`). Runs inside the pod; a family eth0 has no gateway for is
/// left alone.
fn hijack_through_overlay(conf: &CoordinatorConf) -> Result<(), CniError> {
    let Ok(eth0) = spiderpool_linux::probe::ifindex(OVERLAY_NIC) else {
        return Ok(()); // no overlay NIC: nothing to keep the CIDRs on
    };
    let mut rtnl = Rtnl::new().map_err(io)?;
    for ipv6 in [false, true] {
        let gateway = rtnl.routes(ipv6).map_err(io)?.iter().find_map(|r| {
            (route_table(r) == MAIN_TABLE
                && r.header.destination_prefix_length == 0
                && route_oif(r) == Some(eth0))
            .then(|| spiderpool_linux::rtnl::route_gateway(r))
            .flatten()
        });
        let Some(gateway) = gateway else { continue };
        for cidr in conf.hijack_cidr.iter().filter(|c| c.addr().is_ipv6() == ipv6) {
            match rtnl.add_route_via((cidr.network(), cidr.prefix_len()), gateway, eth0, MAIN_TABLE) {
                Err(e) if e.errno() == Some(EEXIST) => {}
                other => other.map_err(io)?,
            }
        }
    }
    Ok(())
}

/// Deletes `to <ip> lookup TABLE` rules whose route in TABLE is gone (it went with its veth).
fn remove_orphan_rules(rtnl: &mut Rtnl, table: u32) -> Result<(), CniError> {
    for ipv6 in [false, true] {
        let routed: Vec<IpAddr> = rtnl
            .routes(ipv6)
            .map_err(io)?
            .iter()
            .filter(|r| route_table(r) == table)
            .filter_map(route_destination)
            .collect();
        for rule in rtnl.rules(ipv6).map_err(io)? {
            if rule_table(&rule) != table {
                continue;
            }
            if let Some(dst) = rule_destination(&rule)
                && !routed.contains(&dst)
            {
                match rtnl.delete_rule(&rule) {
                    Err(e) if e.errno() == Some(2) => {} // ENOENT: a concurrent DEL was first
                    other => other.map_err(io)?,
                }
            }
        }
    }
    Ok(())
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
        let prev = req.conf.prev_result.clone().ok_or_else(|| {
            CniError::invalid_config("coordinator must follow a main plugin: no prevResult")
        })?;
        if conf.mode.as_deref() == Some("disabled") {
            return Ok(prev);
        }
        let addrs = addresses_of(&prev, &req.ifname);
        let netns = NetNs::open(Path::new(&req.netns)).map_err(io)?;
        let ifname = req.ifname.clone();
        // Decided before this NIC's own setup (in case the NIC itself is eth0).
        let underlay_mode = underlay(&conf, &req.ifname, &netns)?;
        netns.run(|| add_in_pod(&conf, &ifname, &addrs)).map_err(io)??;
        if underlay_mode {
            link_to_node(&conf, &req.container_id, &netns, &addrs)?;
        } else if !conf.hijack_cidr.is_empty() {
            netns.run(|| hijack_through_overlay(&conf)).map_err(io)??;
        }
        Ok(prev)
    }

    /// The pod side goes with the pod's netns; the node side (veth end, its routes, the rules to the
    /// pod's addresses) is removed here, from the container ID alone, so a DEL without netns or
    /// prevResult cleans up as well, and a second DEL finds nothing to do.
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let conf = CoordinatorConf::load(req, false)?;
        let mut rtnl = Rtnl::new().map_err(io)?;
        if let Ok(index) = spiderpool_linux::probe::ifindex(&host_veth_name(&req.container_id)) {
            match rtnl.delete(index) {
                Err(e) if e.errno() == Some(ENODEV) => {}
                other => other.map_err(io)?,
            }
        }
        remove_orphan_rules(&mut rtnl, conf.host_rule_table)
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
        let failed = |msg: String| CniError {
            code: CODE_CHECK_FAILED,
            msg,
            details: String::new(),
        };
        let netns = NetNs::open(Path::new(&req.netns)).map_err(io)?;
        let underlay_mode = underlay(&conf, &req.ifname, &netns)?;
        if underlay_mode {
            let host_veth = host_veth_name(&req.container_id);
            let index = spiderpool_linux::probe::ifindex(&host_veth)
                .map_err(|_| failed(format!("node veth {host_veth} is missing")))?;
            let mut host = Rtnl::new().map_err(io)?;
            for (addr, _) in &addrs {
                let routed = host.routes(addr.addr().is_ipv6()).map_err(io)?.iter().any(|r| {
                    route_table(r) == conf.host_rule_table
                        && route_destination(r) == Some(addr.addr())
                        && route_oif(r) == Some(index)
                });
                if !routed {
                    return Err(failed(format!(
                        "no route to {} via {host_veth} in table {}",
                        addr.addr(),
                        conf.host_rule_table
                    )));
                }
            }
        }
        let ifname = req.ifname.clone();
        netns
            .run(|| -> Result<(), CniError> {
                let mut rtnl = Rtnl::new().map_err(io)?;
                if underlay_mode {
                    let veth = spiderpool_linux::probe::ifindex(POD_VETH)
                        .map_err(|_| failed(format!("{POD_VETH} is missing in the pod")))?;
                    if let Some(ip) = conf.veth_link_address
                        && !rtnl.addresses_on(veth).map_err(io)?.contains(&ip)
                    {
                        return Err(failed(format!("{POD_VETH} lacks vethLinkAddress {ip}")));
                    }
                    if let Some(mtu) = conf.veth_mtu {
                        let links = spiderpool_linux::links::LinkTable::dump().map_err(io)?;
                        let got = links.facts(POD_VETH).and_then(|f| f.mtu);
                        if got != Some(mtu) {
                            return Err(failed(format!("{POD_VETH} has MTU {got:?}, vethMTU is {mtu}")));
                        }
                    }
                }
                let index = spiderpool_linux::probe::ifindex(&ifname)
                    .map_err(|_| failed(format!("{ifname} is missing")))?;
                for (addr, _) in &addrs {
                    let ipv6 = addr.addr().is_ipv6();
                    let default_oif = rtnl.routes(ipv6).map_err(io)?.iter().find_map(|r| {
                        (route_table(r) == MAIN_TABLE && r.header.destination_prefix_length == 0)
                            .then(|| route_oif(r))
                            .flatten()
                    });
                    let extra_nic = match &conf.pod_default_route_nic {
                        Some(nic) => nic != &ifname,
                        None => default_oif.is_some_and(|oif| oif != index),
                    };
                    if extra_nic {
                        let table = TABLE_BASE + index;
                        let ruled = rtnl
                            .rules(ipv6)
                            .map_err(io)?
                            .iter()
                            .any(|r| rule_table(r) == table && rule_source(r) == Some(addr.addr()));
                        if !ruled {
                            return Err(failed(format!("no rule from {} to table {table}", addr.addr())));
                        }
                    }
                }
                Ok(())
            })
            .map_err(io)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn netconf_defaults_and_errors() {
        let c = CoordinatorConf::parse(&json!({"type": "coordinator"})).unwrap();
        assert!(c.detect_ip_conflict && c.detect_gateway);
        assert_eq!((c.probe_tries, c.probe_interval_ms), (3, 100));
        assert_eq!(
            CoordinatorConf::parse(&json!({"mode": "weird"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            CoordinatorConf::parse(&json!({"probeTries": 0}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            CoordinatorConf::parse(&json!({"detectGateway": "no"}))
                .unwrap_err()
                .code,
            6
        );
    }

    #[test]
    fn veth_settings_are_checked() {
        let c = CoordinatorConf::parse(&json!({"vethMTU": 9000, "vethLinkAddress": "fe80::10"})).unwrap();
        assert_eq!(c.veth_mtu, Some(9000));
        assert_eq!(c.veth_link_address, Some("fe80::10".parse().unwrap()));
        for bad in [
            json!({"vethLinkAddress": "10.0.0.1"}),
            json!({"vethLinkAddress": "fd00::1"}),
            json!({"vethMTU": 60}),
            json!({"vethMTU": 70000}),
        ] {
            assert_eq!(CoordinatorConf::parse(&bad).unwrap_err().code, 7, "{bad}");
        }
        assert_eq!(
            CoordinatorConf::parse(&json!({"vethLinkAddress": "nope"}))
                .unwrap_err()
                .code,
            6
        );
    }

    #[test]
    fn mac_prefix_rules() {
        assert_eq!(
            mac_for(mac_prefix("0a:1b").unwrap(), "10.6.0.10".parse().unwrap()),
            [0x0a, 0x1b, 10, 6, 0, 10]
        );
        assert_eq!(
            mac_for([2, 0], "fd00::1:2:3:4".parse().unwrap()),
            [2, 0, 0, 3, 0, 4]
        );
        for bad in ["0a", "0b:1b", "zz:00", "0a:1b:2c"] {
            assert_eq!(
                CoordinatorConf::parse(&json!({"podMACPrefix": bad}))
                    .unwrap_err()
                    .code,
                7,
                "{bad}"
            );
        }
        assert_eq!(
            CoordinatorConf::parse(&json!({"podRPFilter": 3}))
                .unwrap_err()
                .code,
            7
        );
        let c = CoordinatorConf::parse(&json!({"hijackCIDR": ["10.96.0.0/12", "fd00:96::/108"]})).unwrap();
        assert_eq!(c.hijack_cidr.len(), 2);
    }

    #[test]
    fn cluster_settings_fill_in_what_the_netconf_leaves_out() {
        let settings = json!({"name": "default",
            "spec": {"mode": "underlay", "podCIDRType": "cluster", "hostRuleTable": 600, "vethMTU": 1400,
                     "detectIPConflict": false, "hijackCIDR": ["172.20.0.0/16"]},
            "status": {"phase": "Synced", "overlayPodCIDR": ["10.244.0.0/16", "fd00:244::/56"],
                       "serviceCIDR": ["10.96.0.0/12", "172.20.0.0/16"]}});
        let raw = json!({"type": "coordinator", "hostRuleTable": 700, "hijackCIDR": ["192.168.9.0/24"]});
        let merged = with_cluster_settings(&raw, &settings, true).unwrap();
        let c = CoordinatorConf::parse(&merged).unwrap();
        assert_eq!(c.host_rule_table, 700, "the netconf wins");
        assert_eq!(c.mode.as_deref(), Some("underlay"));
        assert_eq!(c.veth_mtu, Some(1400));
        assert!(!c.detect_ip_conflict, "Spiderpool's spelling detectIPConflict");
        let hijack: Vec<String> = c.hijack_cidr.iter().map(ToString::to_string).collect();
        assert_eq!(
            hijack,
            [
                "192.168.9.0/24",
                "172.20.0.0/16",
                "10.244.0.0/16",
                "fd00:244::/56",
                "10.96.0.0/12"
            ],
            "netconf, spec, pod CIDRs, service CIDRs, each once"
        );
        assert_eq!(
            with_cluster_settings(&raw, &serde_json::Value::Null, true).unwrap(),
            raw
        );
    }

    #[test]
    fn a_coordinator_not_synced_refuses_pods() {
        let raw = json!({"type": "coordinator"});
        let not_ready = json!({"name": "default", "spec": {}, "status": {"phase": "NotReady",
            "reason": "podCIDRType calico: the Calico IPPool CRD is not installed"}});
        let e = with_cluster_settings(&raw, &not_ready, true).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("Calico IPPool CRD"), "{}", e.msg);
        let no_status = json!({"name": "default", "spec": {}, "status": null});
        assert!(
            with_cluster_settings(&raw, &no_status, true)
                .unwrap_err()
                .msg
                .contains("no status yet")
        );
        // DEL: the spec still applies.
        let del = with_cluster_settings(
            &raw,
            &json!({"spec": {"hostRuleTable": 600}, "status": null}),
            false,
        )
        .unwrap();
        assert_eq!(del["hostRuleTable"], 600);
    }

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("another"));
        assert_eq!(a, host_veth_name("0123456789abcdef0123456789abcdef"));
    }

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
