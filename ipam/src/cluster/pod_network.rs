//! A pod's own routes and DNS, from its annotations, as Spiderpool reads them:
//! `ipam.spidernet.io/routes` (`[{"dst": CIDR, "gw": IP}]`: each route goes to the interface
//! whose allocated subnet holds its gateway, after the pool's own routes; one whose gateway is in
//! none of them is not this interface's) and `ipam.spidernet.io/dns` (the CNI result's `dns`
//! object: `nameservers`, `domain`, `search`, `options`; Spiderpool defines the key without using
//! it, so the CNI spec's shape is taken). A value that cannot be read fails the ADD, naming the
//! annotation; nothing is half applied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use spiderpool_cni::{Dns, Route};

use super::select::BadAnnotation;

pub const ANNOTATION_ROUTES: &str = "ipam.spidernet.io/routes";
pub const ANNOTATION_DNS: &str = "ipam.spidernet.io/dns";
/// Read by the agent for the coordinator: the pod's NIC that keeps the default route.
pub const ANNOTATION_DEFAULT_ROUTE_NIC: &str = "ipam.spidernet.io/default-route-nic";

/// Routes, nameservers and search entries a pod may ask for, at most.
const MAX_ENTRIES: usize = 64;

/// One route a pod asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpNet,
    pub gw: IpAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteWire {
    dst: String,
    gw: String,
}

fn bad(key: &str, reason: impl Into<String>) -> BadAnnotation {
    BadAnnotation {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The pod's routes (none without the annotation).
pub fn routes(annotations: &BTreeMap<String, String>) -> Result<Vec<PodRoute>, BadAnnotation> {
    let Some(text) = annotations.get(ANNOTATION_ROUTES) else {
        return Ok(Vec::new());
    };
    let key = ANNOTATION_ROUTES;
    let wire: Vec<RouteWire> = serde_json::from_str(text).map_err(|e| {
        bad(
            key,
            format!("want a JSON list of {{\"dst\": CIDR, \"gw\": IP}}: {e}"),
        )
    })?;
    if wire.len() > MAX_ENTRIES {
        return Err(bad(key, format!("at most {MAX_ENTRIES} routes")));
    }
    wire.iter()
        .map(|r| {
            let dst: IpNet = r
                .dst
                .trim()
                .parse()
                .map_err(|_| bad(key, format!("dst {:?} is not a CIDR", r.dst)))?;
            let gw: IpAddr =
                r.gw.trim()
                    .parse()
                    .map_err(|_| bad(key, format!("gw {:?} is not an IP", r.gw)))?;
            if dst.addr().is_ipv4() != gw.is_ipv4() {
                return Err(bad(
                    key,
                    format!("dst {} and gw {gw} are not of one family", r.dst),
                ));
            }
            // The network, as the kernel stores it (Spiderpool masks the same way).
            Ok(PodRoute { dst: dst.trunc(), gw })
        })
        .collect()
}

/// The routes of `routes` whose gateway lies in one of `subnets` (the interface's allocated
/// subnets), as CNI routes.
pub fn routes_via(routes: &[PodRoute], subnets: &[IpNet]) -> Vec<Route> {
    routes
        .iter()
        .filter(|r| subnets.iter().any(|s| s.contains(&r.gw)))
        .map(|r| Route::new(r.dst, Some(r.gw)))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsWire {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// The pod's DNS settings (`None` without the annotation).
pub fn dns(annotations: &BTreeMap<String, String>) -> Result<Option<Dns>, BadAnnotation> {
    let Some(text) = annotations.get(ANNOTATION_DNS) else {
        return Ok(None);
    };
    let key = ANNOTATION_DNS;
    let shape = "want {\"nameservers\": [IP], \"domain\": .., \"search\": [..], \"options\": [..]}";
    // An object only (serde would also take a list for a struct).
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(key, format!("{shape}: {e}")))?;
    if !value.is_object() {
        return Err(bad(key, format!("{shape}, not {value}")));
    }
    let wire: DnsWire = serde_json::from_value(value).map_err(|e| bad(key, format!("{shape}: {e}")))?;
    if wire.nameservers.len() > MAX_ENTRIES
        || wire.search.len() > MAX_ENTRIES
        || wire.options.len() > MAX_ENTRIES
    {
        return Err(bad(key, format!("at most {MAX_ENTRIES} entries in each list")));
    }
    for ns in &wire.nameservers {
        ns.trim()
            .parse::<IpAddr>()
            .map_err(|_| bad(key, format!("nameserver {ns:?} is not an IP")))?;
    }
    // resolv.conf lines: a newline or NUL would add lines of its own.
    let texts = wire.domain.iter().chain(&wire.search).chain(&wire.options);
    if let Some(odd) = texts
        .clone()
        .find(|s| s.is_empty() || s.len() > 253 || s.chars().any(char::is_control))
    {
        return Err(bad(
            key,
            format!("{odd:?} is not a domain, search entry or option"),
        ));
    }
    Ok(Some(Dns {
        nameservers: wire.nameservers.iter().map(|s| s.trim().to_string()).collect(),
        domain: wire.domain,
        search: wire.search,
        options: wire.options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(key: &str, value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(key.to_string(), value.to_string())])
    }

    #[test]
    fn routes_are_read_masked_and_go_to_the_interface_of_their_gateway() {
        let got = routes(&annotated(
            ANNOTATION_ROUTES,
            r#"[{"dst": "10.20.1.7/16", "gw": "172.18.40.1"}, {"dst": "fd00:40::/64", "gw": "fd00:1::1"}]"#,
        ))
        .unwrap();
        assert_eq!(got[0].dst.to_string(), "10.20.0.0/16");
        let net1: Vec<IpNet> = vec!["172.18.40.0/24".parse().unwrap()];
        let via = routes_via(&got, &net1);
        assert_eq!(via.len(), 1);
        assert_eq!(via[0].gw, Some("172.18.40.1".parse().unwrap()));
        assert!(routes_via(&got, &["192.168.0.0/24".parse().unwrap()]).is_empty());
        assert!(routes(&BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_routes_name_the_annotation_and_what_is_wrong() {
        let err = |v: &str| routes(&annotated(ANNOTATION_ROUTES, v)).unwrap_err().to_string();
        assert!(err("not json").contains("invalid annotation ipam.spidernet.io/routes: want a JSON list"));
        assert!(err(r#"[{"dst": "10.0.0.0", "gw": "10.0.0.1"}]"#).contains("dst \"10.0.0.0\" is not a CIDR"));
        assert!(err(r#"[{"dst": "10.0.0.0/8", "gw": "x"}]"#).contains("gw \"x\" is not an IP"));
        assert!(err(r#"[{"dst": "10.0.0.0/8", "gw": "fd00::1"}]"#).contains("not of one family"));
        assert!(err(r#"[{"dst": "10.0.0.0/8", "gw": "10.0.0.1", "dev": "eth0"}]"#).contains("unknown field"));
    }

    #[test]
    fn dns_is_the_cni_dns_object_and_refuses_what_resolv_conf_cannot_hold() {
        let got = dns(&annotated(
            ANNOTATION_DNS,
            r#"{"nameservers": ["10.96.0.10", "fd00::a"], "domain": "svc.local", "search": ["a.local"], "options": ["ndots:2"]}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(got.nameservers, ["10.96.0.10", "fd00::a"]);
        assert_eq!(got.domain.as_deref(), Some("svc.local"));
        assert_eq!(dns(&BTreeMap::new()).unwrap(), None);
        let err = |v: &str| dns(&annotated(ANNOTATION_DNS, v)).unwrap_err().to_string();
        assert!(
            err(r#"{"nameservers": ["dns.example"]}"#).contains("nameserver \"dns.example\" is not an IP")
        );
        assert!(
            err(r#"{"search": ["a\nnameserver 1.2.3.4"]}"#)
                .contains("is not a domain, search entry or option")
        );
        assert!(err("[]").contains("invalid annotation ipam.spidernet.io/dns"));
    }
}
