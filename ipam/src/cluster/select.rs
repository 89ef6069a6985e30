//! Which pools a pod's interface may use, as Spiderpool decides it: the pod's `ippools` /
//! `ippool` annotation, then the namespace's default pools, then the netconf's, then the pools
//! marked `default: true`; each candidate is then dropped when it is disabled, terminating, or
//! its node, namespace, pod or multus affinity does not match. The order the user wrote is kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use spiderpool_api::crd::auto_pool::is_auto_pool;
use spiderpool_api::crd::{IPPoolSpec, SpiderIPPool};

/// A pod's pool annotation that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid annotation {key}: {reason}")]
pub struct BadAnnotation {
    pub key: String,
    pub reason: String,
}

pub const ANNOTATION_IPPOOLS: &str = "ipam.spidernet.io/ippools";
pub const ANNOTATION_IPPOOL: &str = "ipam.spidernet.io/ippool";
pub const NS_DEFAULT_V4: &str = "ipam.spidernet.io/default-ipv4-ippool";
pub const NS_DEFAULT_V6: &str = "ipam.spidernet.io/default-ipv6-ippool";

/// Candidate pool names per family, and whether the gateway is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub clean_gateway: bool,
    /// Where the names came from, for error messages.
    pub source: &'static str,
}

/// One interface's entry of `ippools` (and of `subnets`, which has no `cleangateway`).
#[derive(Debug, Deserialize)]
pub(crate) struct IppoolsEntry {
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub ipv6: Vec<String>,
    #[serde(default, rename = "cleangateway")]
    pub clean_gateway: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct IppoolAnnotation {
    #[serde(default)]
    ipv4: Vec<String>,
    #[serde(default)]
    ipv6: Vec<String>,
}

pub struct Inputs<'a> {
    pub ifname: &'a str,
    pub pod_annotations: &'a BTreeMap<String, String>,
    pub namespace_annotations: &'a BTreeMap<String, String>,
    pub netconf_v4: &'a [String],
    pub netconf_v6: &'a [String],
    pub netconf_clean_gateway: bool,
    /// Every pool known, for `default: true`.
    pub pools: &'a [Arc<SpiderIPPool>],
}

/// An annotation that names no pool at all: a mistake, not a request for the defaults.
fn names_no_pool(key: &str) -> BadAnnotation {
    BadAnnotation {
        key: key.to_string(),
        reason: "names no pool (ipv4 and ipv6 are both empty)".into(),
    }
}

pub fn candidates(input: &Inputs<'_>) -> Result<Candidates, BadAnnotation> {
    let bad = |key: &str, e: serde_json::Error| BadAnnotation {
        key: key.to_string(),
        reason: e.to_string(),
    };
    if let Some(text) = input.pod_annotations.get(ANNOTATION_IPPOOLS) {
        let entries: Vec<IppoolsEntry> =
            serde_json::from_str(text).map_err(|e| bad(ANNOTATION_IPPOOLS, e))?;
        let mine = match entries
            .iter()
            .find(|e| e.interface.as_deref() == Some(input.ifname))
        {
            Some(e) => Some(e),
            // One entry without an interface serves the pod's only NIC.
            None if entries.len() == 1 && entries[0].interface.is_none() => entries.first(),
            None => None,
        };
        if let Some(e) = mine {
            if e.ipv4.is_empty() && e.ipv6.is_empty() {
                return Err(names_no_pool(ANNOTATION_IPPOOLS));
            }
            return Ok(Candidates {
                ipv4: e.ipv4.clone(),
                ipv6: e.ipv6.clone(),
                clean_gateway: e.clean_gateway.unwrap_or(input.netconf_clean_gateway),
                source: "pod annotation ipam.spidernet.io/ippools",
            });
        }
    }
    if let Some(text) = input.pod_annotations.get(ANNOTATION_IPPOOL) {
        let a: IppoolAnnotation = serde_json::from_str(text).map_err(|e| bad(ANNOTATION_IPPOOL, e))?;
        if a.ipv4.is_empty() && a.ipv6.is_empty() {
            return Err(names_no_pool(ANNOTATION_IPPOOL));
        }
        return Ok(Candidates {
            ipv4: a.ipv4,
            ipv6: a.ipv6,
            clean_gateway: input.netconf_clean_gateway,
            source: "pod annotation ipam.spidernet.io/ippool",
        });
    }
    let ns_list = |key: &str| -> Result<Vec<String>, BadAnnotation> {
        match input.namespace_annotations.get(key) {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(text).map_err(|e| bad(key, e)),
        }
    };
    let (v4, v6) = (ns_list(NS_DEFAULT_V4)?, ns_list(NS_DEFAULT_V6)?);
    if !v4.is_empty() || !v6.is_empty() {
        return Ok(Candidates {
            ipv4: v4,
            ipv6: v6,
            clean_gateway: input.netconf_clean_gateway,
            source: "namespace default pools",
        });
    }
    if !input.netconf_v4.is_empty() || !input.netconf_v6.is_empty() {
        return Ok(Candidates {
            ipv4: input.netconf_v4.to_vec(),
            ipv6: input.netconf_v6.to_vec(),
            clean_gateway: input.netconf_clean_gateway,
            source: "netconf default pools",
        });
    }
    let mut defaults: Vec<&SpiderIPPool> = input
        .pools
        .iter()
        .map(|p| &**p)
        .filter(|p| p.spec.default == Some(true))
        .collect();
    defaults.sort_by_key(|p| p.metadata.name.clone());
    let of = |version: i64| {
        defaults
            .iter()
            .filter(|p| family_of(p) == Some(version))
            .filter_map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    };
    Ok(Candidates {
        ipv4: of(4),
        ipv6: of(6),
        clean_gateway: input.netconf_clean_gateway,
        source: "pools with default: true",
    })
}

/// 4 or 6, from `ipVersion` or else the subnet.
pub fn family_of(pool: &SpiderIPPool) -> Option<i64> {
    pool.spec.ip_version.or_else(|| {
        let net: ipnet::IpNet = pool.spec.subnet.parse().ok()?;
        Some(if net.addr().is_ipv4() { 4 } else { 6 })
    })
}

/// What a pool's affinities are compared with.
pub struct Subject<'a> {
    pub node: &'a str,
    pub node_labels: Option<&'a BTreeMap<String, String>>,
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub pod_labels: &'a BTreeMap<String, String>,
    /// The CNI network name (Multus: the NetworkAttachmentDefinition).
    pub network: &'a str,
    /// The pod's top controller as an auto-pool's `podAffinity` names it
    /// ([`super::auto_pool::App::affinity`]); `None` when not looked up or there is none.
    pub app: Option<&'a BTreeMap<String, String>>,
}

/// Why a pool may not serve a pod's interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

impl PartialEq<&str> for Unusable {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// `Ok(())` when `pool` may serve `who`, else the reason it may not.
pub fn usable(pool: &SpiderIPPool, who: &Subject<'_>) -> Result<(), Unusable> {
    if pool.spec.disable == Some(true) {
        return Err(Unusable("disabled".into()));
    }
    if pool.metadata.deletion_timestamp.is_some() {
        return Err(Unusable("terminating".into()));
    }
    let spec = &pool.spec;
    let empty = BTreeMap::new();
    admits_node(spec, who.node, who.node_labels.unwrap_or(&empty))?;
    if !spec.namespace_name.is_empty() && !spec.namespace_name.iter().any(|n| n == who.namespace) {
        return Err(Unusable(format!("namespaceName does not list {}", who.namespace)));
    }
    if let Some(sel) = &spec.namespace_affinity
        && !selector_matches(sel, who.namespace_labels)
    {
        return Err(Unusable(format!(
            "namespaceAffinity does not match namespace {}",
            who.namespace
        )));
    }
    if let Some(sel) = &spec.pod_affinity {
        // An auto-pool's affinity names its application, which the pod does not carry as labels.
        let auto = pool.metadata.labels.as_ref().is_some_and(is_auto_pool);
        if auto && !who.app.is_some_and(|app| selector_matches(sel, app)) {
            return Err(Unusable(
                "an auto-pool of another application (its podAffinity names the pod's controller)".into(),
            ));
        }
        if !auto && !selector_matches(sel, who.pod_labels) {
            return Err(Unusable("podAffinity does not match the pod".into()));
        }
    }
    if !spec.multus_name.is_empty() {
        let qualified = format!("{}/{}", who.namespace, who.network);
        if !spec
            .multus_name
            .iter()
            .any(|m| m == who.network || *m == qualified)
        {
            return Err(Unusable(format!(
                "multusName does not list network {}",
                who.network
            )));
        }
    }
    Ok(())
}

/// `Ok(())` when `spec`'s nodeName and nodeAffinity admit the node `node` with `labels`.
pub fn admits_node(spec: &IPPoolSpec, node: &str, labels: &BTreeMap<String, String>) -> Result<(), Unusable> {
    if !spec.node_name.is_empty() && !spec.node_name.iter().any(|n| n == node) {
        return Err(Unusable(format!("nodeName does not list {node}")));
    }
    if let Some(sel) = &spec.node_affinity
        && !selector_matches(sel, labels)
    {
        return Err(Unusable(format!("nodeAffinity does not match node {node}")));
    }
    Ok(())
}

/// Kubernetes label selector semantics: every matchLabels pair and every expression must hold;
/// an empty selector matches everything.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false, // an unknown operator matches nothing, as in the API server
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use spiderpool_api::crd::IPPoolSpec;

    fn pool(name: &str, subnet: &str, default: bool) -> SpiderIPPool {
        let mut p = SpiderIPPool::new(
            name,
            IPPoolSpec {
                subnet: subnet.into(),
                default: Some(default),
                ..IPPoolSpec::default()
            },
        );
        p.metadata.name = Some(name.into());
        p
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn inputs<'a>(
        pod: &'a BTreeMap<String, String>,
        ns: &'a BTreeMap<String, String>,
        pools: &'a [Arc<SpiderIPPool>],
    ) -> Inputs<'a> {
        Inputs {
            ifname: "net1",
            pod_annotations: pod,
            namespace_annotations: ns,
            netconf_v4: &[],
            netconf_v6: &[],
            netconf_clean_gateway: false,
            pools,
        }
    }

    #[test]
    fn precedence_pod_ippools_then_ippool_then_namespace_then_netconf_then_defaults() {
        let pools = vec![
            Arc::new(pool("d4", "10.0.0.0/24", true)),
            Arc::new(pool("d6", "fd00::/64", true)),
            Arc::new(pool("x", "10.1.0.0/24", false)),
        ];
        let empty = BTreeMap::new();
        let c = candidates(&inputs(&empty, &empty, &pools)).unwrap();
        assert_eq!((c.ipv4, c.ipv6), (vec!["d4".to_string()], vec!["d6".to_string()]));

        let mut i = inputs(&empty, &empty, &pools);
        let v4 = vec!["n4".to_string()];
        i.netconf_v4 = &v4;
        assert_eq!(candidates(&i).unwrap().ipv4, v4);

        let ns = map(&[(NS_DEFAULT_V4, r#"["ns4"]"#)]);
        let mut i = inputs(&empty, &ns, &pools);
        i.netconf_v4 = &v4;
        let c = candidates(&i).unwrap();
        assert_eq!(c.ipv4, vec!["ns4".to_string()]);
        assert!(c.ipv6.is_empty());

        let pod = map(&[(ANNOTATION_IPPOOL, r#"{"ipv4":["a4"],"ipv6":["a6"]}"#)]);
        let c = candidates(&inputs(&pod, &ns, &pools)).unwrap();
        assert_eq!((c.ipv4, c.ipv6), (vec!["a4".to_string()], vec!["a6".to_string()]));

        let pod = map(&[
            (ANNOTATION_IPPOOL, r#"{"ipv4":["a4"]}"#),
            (
                ANNOTATION_IPPOOLS,
                r#"[{"interface":"eth0","ipv4":["e0"]},{"interface":"net1","ipv4":["n1"],"cleangateway":true}]"#,
            ),
        ]);
        let c = candidates(&inputs(&pod, &ns, &pools)).unwrap();
        assert_eq!(c.ipv4, vec!["n1".to_string()]);
        assert!(c.clean_gateway);
    }

    #[test]
    fn malformed_annotation_is_a_clear_error() {
        let pod = map(&[(ANNOTATION_IPPOOL, "{nope")]);
        let empty = BTreeMap::new();
        let err = candidates(&inputs(&pod, &empty, &[])).unwrap_err();
        assert!(err.to_string().contains(ANNOTATION_IPPOOL), "{err}");
    }

    #[test]
    fn affinities_filter() {
        let labels = map(&[("zone", "a")]);
        let empty = BTreeMap::new();
        let who = Subject {
            node: "n1",
            node_labels: Some(&labels),
            namespace: "ns",
            namespace_labels: &empty,
            pod_labels: &labels,
            network: "macvlan",
            app: None,
        };
        let mut p = pool("p", "10.0.0.0/24", false);
        assert!(usable(&p, &who).is_ok());
        p.spec.node_name = vec!["n2".into()];
        assert!(usable(&p, &who).unwrap_err().0.contains("nodeName"));
        p.spec.node_name = vec!["n1".into()];
        p.spec.node_affinity = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "In".into(),
                values: Some(vec!["b".into()]),
            }]),
            ..LabelSelector::default()
        });
        assert!(usable(&p, &who).unwrap_err().0.contains("nodeAffinity"));
        p.spec.node_affinity = None;
        p.spec.multus_name = vec!["other/macvlan".into()];
        assert!(usable(&p, &who).unwrap_err().0.contains("multusName"));
        p.spec.multus_name = vec!["ns/macvlan".into()];
        assert!(usable(&p, &who).is_ok());
        p.spec.disable = Some(true);
        assert_eq!(usable(&p, &who).unwrap_err(), "disabled");
    }

    /// Pod and namespace annotations are written by whoever may create pods or namespaces: each
    /// malformed one is an error naming the annotation, none panics, none is half-applied.
    #[test]
    fn hostile_annotations_are_refused_naming_the_annotation() {
        let deep = "[".repeat(20_000);
        let pod_cases = [
            (ANNOTATION_IPPOOL, ""),
            (ANNOTATION_IPPOOL, "null"),
            (ANNOTATION_IPPOOL, "[]"),
            (ANNOTATION_IPPOOL, r#"{"ipv4": [1]}"#),
            (ANNOTATION_IPPOOL, r#"{"ipv4": {"a": 1}}"#),
            (ANNOTATION_IPPOOL, "\u{0}"),
            (ANNOTATION_IPPOOL, deep.as_str()),
            (ANNOTATION_IPPOOLS, "{}"),
            (ANNOTATION_IPPOOLS, r#"[{"interface": 5}]"#),
            (
                ANNOTATION_IPPOOLS,
                r#"[{"interface": "net1", "ipv4": "a", "cleangateway": "yes"}]"#,
            ),
            (ANNOTATION_IPPOOLS, deep.as_str()),
        ];
        let empty = BTreeMap::new();
        for (key, value) in pod_cases {
            let pod = map(&[(key, value)]);
            let err = candidates(&inputs(&pod, &empty, &[])).expect_err(value);
            assert_eq!(err.key, key, "{value:.40}");
        }
        for value in ["not json", "{}", "[5]", deep.as_str()] {
            let ns = map(&[(NS_DEFAULT_V4, value)]);
            let err = candidates(&inputs(&empty, &ns, &[])).expect_err(value);
            assert_eq!(err.key, NS_DEFAULT_V4, "{value:.40}");
        }
    }
}
