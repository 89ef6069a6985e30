//! The result a plugin prints on success, modelled on spec 1.1.0 and converted to and from the
//! older shapes (0.3.0-0.4.0 carry `"version"` per IP; 1.1.0 added route and interface fields).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CniError;
use crate::version::CniVersion;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0
    #[serde(default, rename = "socketPath", skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, e.g. `10.6.0.10/16`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// A plugin result, independent of the spec version it is read from or written in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

const ROUTE_FIELDS_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];
const INTERFACE_FIELDS_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];

impl CniResult {
    /// Reads a result (e.g. a `prevResult`) written in any supported version. The version is
    /// the result's own `cniVersion` when it has one, else `default_version` (the netconf's).
    pub fn from_json(value: &Value, default_version: CniVersion) -> Result<CniResult, CniError> {
        let version = match value.get("cniVersion") {
            Some(Value::String(v)) => v.parse::<CniVersion>()?,
            Some(other) => {
                return Err(CniError::decoding(format!(
                    "result cniVersion {other} is not a string"
                )));
            }
            None => default_version,
        };
        if version.result_has_ip_version() {
            check_ip_versions(value)?;
        }
        serde_json::from_value(value.clone())
            .map_err(|e| CniError::decoding(format!("failed to parse result: {e}")))
    }

    /// Writes the result in the shape of `version`, with its `cniVersion`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        let Value::Object(map) = &mut value else {
            return Value::Null;
        };
        if version < CniVersion::V1_1_0 {
            strip_fields(map.get_mut("routes"), &ROUTE_FIELDS_1_1);
            strip_fields(map.get_mut("interfaces"), &INTERFACE_FIELDS_1_1);
        }
        if version.result_has_ip_version()
            && let Some(Value::Array(ips)) = map.get_mut("ips")
        {
            for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                if let Value::Object(ip) = ip {
                    let family = if cfg.address.addr().is_ipv4() { "4" } else { "6" };
                    ip.insert("version".into(), Value::String(family.into()));
                }
            }
        }
        map.insert("cniVersion".into(), Value::String(version.as_str().into()));
        value
    }
}

fn strip_fields(list: Option<&mut Value>, fields: &[&str]) {
    if let Some(Value::Array(items)) = list {
        for item in items {
            if let Value::Object(obj) = item {
                for field in fields {
                    obj.remove(*field);
                }
            }
        }
    }
}

/// Pre-1.0 results name each IP's family; a name that contradicts the address is a decode error.
fn check_ip_versions(value: &Value) -> Result<(), CniError> {
    let Some(Value::Array(ips)) = value.get("ips") else {
        return Ok(());
    };
    for ip in ips {
        let (Some(family), Some(address)) = (ip.get("version"), ip.get("address").and_then(Value::as_str))
        else {
            continue;
        };
        let want = match address.parse::<IpNet>() {
            Ok(IpNet::V4(_)) => "4",
            Ok(IpNet::V6(_)) => "6",
            Err(_) => continue, // reported by the typed parse
        };
        if family.as_str() != Some(want) {
            return Err(CniError::decoding(format!(
                "result IP {address} has version {family}, want \"{want}\""
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1500),
                sandbox: Some("/run/netns/a".into()),
                socket_path: None,
                pci_id: Some("0000:3b:00.2".into()),
            }],
            ips: vec![
                IpConfig {
                    address: "10.6.0.10/16".parse().unwrap(),
                    gateway: Some("10.6.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00:6::10/64".parse().unwrap(),
                    gateway: None,
                    interface: None,
                },
            ],
            routes: vec![Route {
                mtu: Some(9000),
                ..Route::new("0.0.0.0/0".parse().unwrap(), Some("10.6.0.1".parse().unwrap()))
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_lose_1_1_fields() {
        let v = sample().to_json(CniVersion::V0_4_0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["address"], "10.6.0.10/16");
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["interfaces"][0].get("pciID").is_none());
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn v1_has_no_ip_version_and_1_1_keeps_new_fields() {
        let v = sample().to_json(CniVersion::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        let v = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v["routes"][0]["mtu"], 9000);
        assert_eq!(v["interfaces"][0]["pciID"], "0000:3b:00.2");
    }

    #[test]
    fn round_trips_through_every_version() {
        let mut reduced = sample();
        reduced.routes[0].mtu = None;
        reduced.interfaces[0].mtu = None;
        reduced.interfaces[0].pci_id = None;
        for version in CniVersion::ALL {
            let back = CniResult::from_json(&sample().to_json(version), CniVersion::V1_1_0).unwrap();
            let want = if version == CniVersion::V1_1_0 {
                sample()
            } else {
                reduced.clone()
            };
            assert_eq!(back, want, "{version}");
        }
    }

    #[test]
    fn prev_result_without_cni_version_uses_the_netconf_version() {
        let prev = json!({"ips": [{"version": "4", "address": "10.1.0.5/24"}]});
        let r = CniResult::from_json(&prev, CniVersion::V0_3_1).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
    }

    #[test]
    fn bad_results_are_decode_errors() {
        let cases = [
            json!({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.1.0.5/24"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.500/24"}]}),
            json!({"cniVersion": "1.0.0", "ips": "nope"}),
            json!({"cniVersion": 1, "ips": []}),
        ];
        for c in cases {
            assert_eq!(
                CniResult::from_json(&c, CniVersion::V1_0_0).unwrap_err().code,
                6,
                "{c}"
            );
        }
        let incompatible = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24"}});
        assert_eq!(
            CniResult::from_json(&incompatible, CniVersion::V1_0_0)
                .unwrap_err()
                .code,
            1
        );
    }
}
