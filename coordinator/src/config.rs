//! The coordinator's netconf: its keys and defaults, their validation, and the cluster's
//! SpiderCoordinator (from the agent) folded in.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use spiderpool_cni::paths::{self, PathKind};
use spiderpool_cni::{CniError, ErrorCode, Request};

/// How long the agent may take to say what the SpiderCoordinator is (it answers from a cache).
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorConf {
    /// The pod's `ipam.spidernet.io/dns`, from the agent (never from the netconf): main plugins
    /// such as macvlan return their netconf's DNS in place of the IPAM's, so the coordinator,
    /// last in the chain, puts the annotation's back when the result has none.
    #[serde(skip)]
    pub pod_dns: Option<spiderpool_cni::Dns>,
    /// `auto`, `underlay`, `overlay` or `disabled` (see [`crate::pod::underlay`]).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default = "yes", alias = "detectIPConflict")]
    pub detect_ip_conflict: bool,
    #[serde(default = "yes")]
    pub detect_gateway: bool,
    /// Spiderpool's `tunePodRoutes`: a NIC without the default route gets its own table, so
    /// replies leave by the NIC a request came in on; `false` leaves the routes as the main plugin
    /// wrote them.
    #[serde(default = "yes")]
    pub tune_pod_routes: bool,
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
    /// (`podDefaultRouteNIC` as README, CRD and Spiderpool spell it; camelCase would read `Nic`.)
    #[serde(rename = "podDefaultRouteNIC", alias = "podDefaultRouteNic", default)]
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
    // Without a SpiderCoordinator the agent still answers with what it knows of the pod.
    if settings.is_null() || settings.get("spec").is_none() {
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
            } else {
                // A netconf may spell the NIC key as Spiderpool's NADs do: it wins all the same.
                let set_by_netconf = out.contains_key(key)
                    || (key == "podDefaultRouteNIC" && out.contains_key("podDefaultRouteNic"));
                if !set_by_netconf {
                    out.insert(key.clone(), value.clone());
                }
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
        if socket.is_empty() {
            return CoordinatorConf::parse(raw);
        }
        let socket = match paths::confine("agentSocket", Path::new(&socket), PathKind::AgentSocket) {
            Ok(s) => s,
            Err(e) if strict => return Err(e),
            // DEL must go through: it cleans up from the netconf alone.
            Err(_) => return CoordinatorConf::parse(raw),
        };
        if !socket.exists() {
            return CoordinatorConf::parse(raw);
        }
        let network = raw["name"].as_str().unwrap_or_default();
        let pod = match (&req.args.k8s_pod_namespace, &req.args.k8s_pod_name) {
            (Some(ns), Some(name)) => Some((ns.as_str(), name.as_str())),
            _ => None,
        };
        match spiderpool_cni::agent::coordinator_settings(&socket, network, pod, AGENT_TIMEOUT) {
            Ok(settings) => {
                let mut conf = CoordinatorConf::parse(&with_cluster_settings(raw, &settings, strict)?)?;
                conf.pod_dns = serde_json::from_value(settings["podDns"].clone()).ok();
                Ok(conf)
            }
            Err(e) if strict => Err(e),
            Err(_) => CoordinatorConf::parse(raw),
        }
    }

    pub fn parse(raw: &serde_json::Value) -> Result<CoordinatorConf, CniError> {
        let conf: CoordinatorConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decoding(format!("coordinator netconf: {e}")))?;
        if matches!(conf.host_rule_table, 0 | 253..=255) {
            return Err(CniError::invalid_config(format!(
                "coordinator: hostRuleTable {} is one of the kernel's own tables (unspec 0, default 253, main 254, local 255); routes to pods there would mix with the node's own",
                conf.host_rule_table
            )));
        }
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
pub(crate) fn mac_prefix(prefix: &str) -> Result<[u8; 2], CniError> {
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
        // No SpiderCoordinator, only the pod's DNS: the netconf as it is, not "not ready".
        let only_dns = serde_json::json!({"podDns": {"nameservers": ["10.0.0.53"]}});
        assert_eq!(with_cluster_settings(&raw, &only_dns, true).unwrap(), raw);
        // The default-route NIC: the netconf (in either spelling) over the cluster's (which is
        // the pod's annotation when it has one).
        let nic =
            json!({"name": "default", "spec": {"podDefaultRouteNIC": "net1"}, "status": {"phase": "Synced"}});
        for (raw, want) in [
            (json!({"type": "coordinator"}), "net1"),
            (
                json!({"type": "coordinator", "podDefaultRouteNic": "net2"}),
                "net2",
            ),
            (
                json!({"type": "coordinator", "podDefaultRouteNIC": "net3"}),
                "net3",
            ),
        ] {
            let c = CoordinatorConf::parse(&with_cluster_settings(&raw, &nic, true).unwrap()).unwrap();
            assert_eq!(c.pod_default_route_nic.as_deref(), Some(want), "{raw}");
        }
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
}
