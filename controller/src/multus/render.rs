//! SpiderMultusConfig → the NetworkAttachmentDefinition Spiderpool generates for it: its name,
//! annotations and CNI conflist. Pure: the reconciler (`super`) writes what this returns.
//!
//! The chain, in order: `ifacer` when a VLAN or a bond of two or more masters is asked for; the
//! main plugin with the `spiderpool` IPAM and the default pools; `rdma` for SR-IOV with RDMA
//! isolation; the `chainCNIJsonData` plugins; `coordinator` when enabled; `tuning` for an SR-IOV
//! MTU.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{Map, Value, json};
use spiderpool_api::multus::{MasterConfig, MultusConfigSpec, PoolNames, SpiderMultusConfig};

/// The NAD's name when it is not the SpiderMultusConfig's own.
pub const CR_NAME: &str = "multus.spidernet.io/cr-name";
/// The conflist's `cniVersion` (default [`DEFAULT_CNI_VERSION`]).
pub const CNI_VERSION: &str = "multus.spidernet.io/cni-version";
/// The conflist's `name` when it is not the NAD's.
pub const CNI_CONFIG_NAME: &str = "cni.spidernet.io/cniconfig-name";
/// The device resource Multus adds to the pod for SR-IOV kinds.
pub const RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";
pub const DEFAULT_CNI_VERSION: &str = "0.3.1";
const CNI_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Annotations of the SpiderMultusConfig that say nothing about the NAD.
const NOT_COPIED: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// What the NAD must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    /// `None` for `cniType: custom` without `customCNI`.
    pub config: Option<String>,
}

/// Why no NAD can be made; the text is the Event's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub fn render(smc: &SpiderMultusConfig) -> Result<Rendered, Invalid> {
    let mut annotations: BTreeMap<String, String> = smc
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name = annotations
        .get(CR_NAME)
        .cloned()
        .unwrap_or_else(|| smc.name_any());
    if !is_dns_subdomain(&name) {
        return Err(Invalid(format!(
            "annotation {CR_NAME}: {name:?} is not a valid object name (lowercase DNS subdomain, at most 253 characters)"
        )));
    }
    let version = annotations
        .get(CNI_VERSION)
        .cloned()
        .unwrap_or_else(|| DEFAULT_CNI_VERSION.to_string());
    if !CNI_VERSIONS.contains(&version.as_str()) {
        return Err(Invalid(format!(
            "annotation {CNI_VERSION}: unsupported CNI version {version:?} (one of {})",
            CNI_VERSIONS.join(", ")
        )));
    }
    let spec = &smc.spec;
    let cni_type = spec.cni_type.as_deref().unwrap_or("custom");
    if cni_type == "custom" {
        let config = match spec.custom_cni.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => Some(text.to_string()),
                _ => return Err(Invalid("customCNI is not a JSON object".into())),
            },
        };
        return Ok(Rendered {
            name,
            annotations,
            config,
        });
    }
    let ipam = ipam(spec);
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let main = match cni_type {
        "macvlan" | "ipvlan" => {
            let block = block(spec, cni_type)?;
            let vlan = block.vlan_id.filter(|v| *v > 0);
            head.extend(ifacer(block, vlan)?);
            let base = master(block, cni_type)?;
            let master = vlan.map_or(base.clone(), |v| format!("{base}.{v}"));
            let mut p = json!({"type": cni_type, "master": master});
            if cni_type == "macvlan" {
                p["mode"] = json!("bridge");
            }
            put(&mut p, "mtu", block.mtu.filter(|m| *m > 0).map(Value::from));
            with_ipam(p, &ipam, block.ippools.as_ref(), false)
        }
        "vlan" => {
            let block = block(spec, cni_type)?;
            // The vlan plugin makes the VLAN itself; ifacer only bonds.
            head.extend(ifacer(block, None)?);
            let mut p = json!({"type": "vlan", "master": master(block, cni_type)?,
                               "vlanId": block.vlan_id.unwrap_or(0)});
            put(&mut p, "mtu", block.mtu.filter(|m| *m > 0).map(Value::from));
            with_ipam(p, &ipam, block.ippools.as_ref(), false)
        }
        "sriov" => {
            let s = spec.sriov.as_ref().ok_or_else(|| missing("sriov"))?;
            annotations.insert(RESOURCE_NAME.into(), s.resource_name.clone());
            let mut p = json!({"type": "sriov"});
            put(&mut p, "vlan", s.vlan_id.map(Value::from));
            put(&mut p, "min_tx_rate", s.min_tx_rate_mbps.map(Value::from));
            put(&mut p, "max_tx_rate", s.max_tx_rate_mbps.map(Value::from));
            if s.rdma_isolation.or(s.enable_rdma).unwrap_or(false) {
                tail.push(json!({"type": "rdma"}));
            }
            with_ipam(p, &ipam, s.ippools.as_ref(), true)
        }
        "ib-sriov" => {
            let s = spec.ibsriov.as_ref().ok_or_else(|| missing("ibsriov"))?;
            annotations.insert(RESOURCE_NAME.into(), s.resource_name.clone());
            let mut p = json!({
                "type": "ib-sriov",
                "link_state": s.link_state.as_deref().unwrap_or("enable"),
                "rdmaIsolation": s.rdma_isolation.unwrap_or(true),
                "ibKubernetesEnabled": s.enable_ib_kubernetes.or(s.ib_kubernetes_enabled).unwrap_or(false),
            });
            put(&mut p, "pkey", s.pkey.clone().map(Value::from));
            with_ipam(p, &ipam, s.ippools.as_ref(), false)
        }
        "ipoib" => {
            let s = spec.ipoib.as_ref().ok_or_else(|| missing("ipoib"))?;
            with_ipam(
                json!({"type": "ipoib", "master": s.master}),
                &ipam,
                s.ippools.as_ref(),
                false,
            )
        }
        "ovs" => {
            let s = spec.ovs.as_ref().ok_or_else(|| missing("ovs"))?;
            let mut p = json!({"type": "ovs", "bridge": s.bridge});
            put(&mut p, "vlan", s.vlan.map(Value::from));
            if !s.trunk.is_empty() {
                p["trunk"] = serde_json::to_value(&s.trunk).unwrap_or_default();
            }
            if let Some(id) = &s.device_id {
                p["deviceID"] = json!(id);
                annotations.insert(
                    RESOURCE_NAME.into(),
                    format!("ovs-cni.network.kubevirt.io/{}", s.bridge),
                );
            }
            with_ipam(p, &ipam, s.ippools.as_ref(), false)
        }
        other => return Err(Invalid(format!("unknown cniType {other:?}"))),
    };
    let mut plugins = head;
    plugins.push(main);
    plugins.extend(tail);
    for (i, entry) in spec.chain_cni_json_data.iter().enumerate() {
        match serde_json::from_str::<Value>(entry) {
            Ok(v)
                if v.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| !t.is_empty()) =>
            {
                plugins.push(v)
            }
            _ => {
                return Err(Invalid(format!(
                    "chainCNIJsonData[{i}] is not a CNI plugin (a JSON object with a \"type\")"
                )));
            }
        }
    }
    if spec.enable_coordinator.unwrap_or(true) {
        let mut c = serde_json::to_value(spec.coordinator.clone().unwrap_or_default()).unwrap_or_default();
        if let Some(obj) = c.as_object_mut() {
            obj.insert("type".into(), json!("coordinator"));
        }
        plugins.push(c);
    }
    if cni_type == "sriov"
        && let Some(mtu) = spec.sriov.as_ref().and_then(|s| s.mtu).filter(|m| *m > 0)
    {
        plugins.push(json!({"type": "tuning", "mtu": mtu}));
    }
    let list_name = annotations
        .get(CNI_CONFIG_NAME)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| name.clone());
    let config = json!({"cniVersion": version, "name": list_name, "plugins": plugins});
    Ok(Rendered {
        name,
        annotations,
        config: Some(config.to_string()),
    })
}

fn missing(block: &str) -> Invalid {
    Invalid(format!("spec.{block} is missing"))
}

fn block<'a>(spec: &'a MultusConfigSpec, cni_type: &str) -> Result<&'a MasterConfig, Invalid> {
    match cni_type {
        "macvlan" => spec.macvlan.as_ref(),
        "ipvlan" => spec.ipvlan.as_ref(),
        _ => spec.vlan.as_ref(),
    }
    .ok_or_else(|| missing(cni_type))
}

/// The interface the main plugin sits on: the single master, or the bond of several.
fn master(block: &MasterConfig, cni_type: &str) -> Result<String, Invalid> {
    match block.master.as_slice() {
        [] => Err(Invalid(format!("{cni_type}: master names no interface"))),
        [one] => Ok(one.clone()),
        _ => block
            .bond
            .as_ref()
            .map(|b| b.name.clone())
            .ok_or_else(|| Invalid(format!("{cni_type} with two or more masters needs bond"))),
    }
}

/// `ifacer` when the masters make a bond or a VLAN goes on top.
fn ifacer(block: &MasterConfig, vlan: Option<i64>) -> Result<Option<Value>, Invalid> {
    let bond = block.bond.as_ref().filter(|_| block.master.len() >= 2);
    if vlan.is_none() && bond.is_none() {
        return Ok(None);
    }
    let mut p = json!({"type": "ifacer", "interfaces": block.master});
    put(&mut p, "vlanID", vlan.map(Value::from));
    if let Some(b) = bond {
        let mut bond = json!({"name": b.name, "mode": b.mode});
        put(&mut bond, "options", b.options.clone().map(Value::from));
        p["bond"] = bond;
    }
    Ok(Some(p))
}

/// The `spiderpool` IPAM section without the pools (`None`: IPAM disabled).
fn ipam(spec: &MultusConfigSpec) -> Option<Map<String, Value>> {
    let switch = spec.ipam.as_ref();
    let enabled = switch
        .and_then(|i| i.enabled)
        .unwrap_or(!spec.disable_ipam.unwrap_or(false));
    if !enabled {
        return None;
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("spiderpool"));
    if let Some(log) = switch.and_then(|i| i.log_options.as_ref()) {
        let fields = [
            ("log_level", log.log_level.clone().map(Value::from)),
            ("log_file_path", log.log_file_path.clone().map(Value::from)),
            ("log_file_max_size", log.log_file_max_size.map(Value::from)),
            ("log_file_max_age", log.log_file_max_age.map(Value::from)),
            ("log_file_max_count", log.log_file_max_count.map(Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                out.insert(k.into(), v);
            }
        }
    }
    Some(out)
}

fn with_ipam(
    mut plugin: Value,
    ipam: &Option<Map<String, Value>>,
    pools: Option<&PoolNames>,
    sriov: bool,
) -> Value {
    let Some(base) = ipam else {
        return plugin;
    };
    let mut section = base.clone();
    if let Some(p) = pools {
        if !p.ipv4.is_empty() {
            section.insert("default_ipv4_ippool".into(), json!(p.ipv4));
        }
        if !p.ipv6.is_empty() {
            section.insert("default_ipv6_ippool".into(), json!(p.ipv6));
        }
        if sriov && p.match_master_subnet == Some(true) {
            section.insert("match_master_subnet".into(), json!(true));
        }
    }
    plugin["ipam"] = Value::Object(section);
    plugin
}

fn put(obj: &mut Value, key: &str, value: Option<Value>) {
    if let (Some(v), Some(o)) = (value, obj.as_object_mut()) {
        o.insert(key.into(), v);
    }
}

/// RFC 1123 subdomain: what Kubernetes takes as a NAD's name.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
