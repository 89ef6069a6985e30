//! SpiderSubnet auto-pools, the decisions: what an application's pod template asks for
//! (`ipam.spidernet.io/subnet(s)`, `ippool-ip-number`, `ippool-reclaim`), the pool's name,
//! labels and affinity as Spiderpool writes them, and which addresses of the subnet it gets as the
//! application scales. Pure; the controller creates and resizes the pools, the agent finds them.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use spiderpool_api::crd::auto_pool::{self as keys, ControlledIPPools, ControlledPool};
use spiderpool_api::crd::{SpiderIPPool, SpiderSubnet};

use super::select::{BadAnnotation, IppoolsEntry};
use crate::pool::Pool;
use crate::range::{Family, IpSet, set_of_entries};

/// Spiderpool's default when `ippool-ip-number` is absent: one address more than replicas.
pub const DEFAULT_FLEXIBLE: u64 = 1;

/// One NIC's subnets: the first name of each family's list, as Spiderpool uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetChoice {
    pub interface: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

impl SubnetChoice {
    pub fn of(&self, family: Family) -> Option<&str> {
        match family {
            Family::V4 => self.ipv4.as_deref(),
            Family::V6 => self.ipv6.as_deref(),
        }
    }
}

fn bad(key: &str, reason: impl Into<String>) -> BadAnnotation {
    BadAnnotation {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The subnets the annotations ask for, one entry per NIC; `None` when neither annotation is
/// there. `subnets` wins over `subnet`; an entry without an interface is `eth0`'s.
pub fn subnets_of(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Vec<SubnetChoice>>, BadAnnotation> {
    let (key, entries) = if let Some(text) = annotations.get(keys::ANNOTATION_SUBNETS) {
        let key = keys::ANNOTATION_SUBNETS;
        let entries: Vec<IppoolsEntry> = serde_json::from_str(text).map_err(|e| bad(key, e.to_string()))?;
        (key, entries)
    } else if let Some(text) = annotations.get(keys::ANNOTATION_SUBNET) {
        let key = keys::ANNOTATION_SUBNET;
        let entry: IppoolsEntry = serde_json::from_str(text).map_err(|e| bad(key, e.to_string()))?;
        (key, vec![entry])
    } else {
        return Ok(None);
    };
    if entries.is_empty() {
        return Err(bad(key, "names no subnet"));
    }
    let mut out: Vec<SubnetChoice> = Vec::new();
    for e in entries {
        let interface = e.interface.unwrap_or_else(|| "eth0".into());
        if interface.is_empty() || interface.len() > 15 {
            return Err(bad(key, format!("interface {interface:?} is not a NIC name")));
        }
        let first = |list: &[String]| -> Result<Option<String>, BadAnnotation> {
            match list.first() {
                Some(s) if s.is_empty() => Err(bad(key, "a subnet name is empty")),
                other => Ok(other.cloned()),
            }
        };
        let choice = SubnetChoice {
            ipv4: first(&e.ipv4)?,
            ipv6: first(&e.ipv6)?,
            interface,
        };
        if choice.ipv4.is_none() && choice.ipv6.is_none() {
            return Err(bad(
                key,
                format!("interface {} names no subnet", choice.interface),
            ));
        }
        if out.iter().any(|o| o.interface == choice.interface) {
            return Err(bad(key, format!("interface {} is named twice", choice.interface)));
        }
        out.push(choice);
    }
    Ok(Some(out))
}

/// `ippool-ip-number`: a fixed size or replicas plus a margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpNumber {
    Fixed(u64),
    Flexible(u64),
}

impl IpNumber {
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<IpNumber, BadAnnotation> {
        let key = keys::ANNOTATION_IP_NUMBER;
        let Some(text) = annotations.get(key) else {
            return Ok(IpNumber::Flexible(DEFAULT_FLEXIBLE));
        };
        let (flexible, digits) = match text.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        // Digits only: `parse` would also take a second sign.
        let n: u64 = Some(digits)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .filter(|n| *n <= 1 << 20)
            .ok_or_else(|| bad(key, format!("{text:?} is neither N nor +N (N from 0 to 1048576)")))?;
        Ok(if flexible {
            IpNumber::Flexible(n)
        } else {
            IpNumber::Fixed(n)
        })
    }

    /// The pool's size for `replicas` pods.
    pub fn size(self, replicas: u64) -> u64 {
        match self {
            IpNumber::Fixed(n) => n,
            IpNumber::Flexible(n) => replicas.saturating_add(n),
        }
    }

    /// As the pool's annotation writes it.
    pub fn text(self) -> String {
        match self {
            IpNumber::Fixed(n) => n.to_string(),
            IpNumber::Flexible(n) => format!("+{n}"),
        }
    }
}

/// `ippool-reclaim`, default true.
pub fn reclaim_of(annotations: &BTreeMap<String, String>) -> Result<bool, BadAnnotation> {
    let key = keys::ANNOTATION_RECLAIM;
    match annotations.get(key).map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("true") | Some("1") | Some("t") => Ok(true),
        Some("false") | Some("0") | Some("f") => Ok(false),
        Some(other) => Err(bad(key, format!("{other:?} is not true or false"))),
    }
}

/// The `(owner-application-gv, kind)` pairs spiderpool-controller watches: it sizes their pools
/// from their replicas and reclaims them when the application is gone. Pods of any other
/// controller stand for it, which then needs a fixed `ippool-ip-number`.
pub const WATCHED: [(&str, &str); 6] = [
    ("apps_v1", "Deployment"),
    ("apps_v1", "StatefulSet"),
    ("apps_v1", "ReplicaSet"),
    ("apps_v1", "DaemonSet"),
    ("batch_v1", "Job"),
    ("batch_v1", "CronJob"),
];

/// `group_version_Kind_namespace_name` (`gv` already `group_version`), as `controlledIPPools`
/// names an auto-pool's application.
fn application_text(gv: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{gv}_{kind}_{namespace}_{name}")
}

/// The application a pool is for: a pod's top controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl App {
    /// From an ownerReference's `apiVersion`.
    pub fn new(api_version: &str, kind: &str, namespace: &str, name: &str, uid: &str) -> App {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        App {
            group,
            version,
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// Whether spiderpool-controller watches this kind ([`WATCHED`]).
    pub fn is_watched(&self) -> bool {
        let gv = self.gv_label();
        WATCHED.iter().any(|(g, k)| *g == gv && *k == self.kind)
    }

    /// Refuses a flexible size for an application whose replicas nobody can read.
    pub fn check_number(&self, number: IpNumber) -> Result<(), String> {
        if self.is_watched() || matches!(number, IpNumber::Fixed(_)) {
            return Ok(());
        }
        Err(format!(
            "{}/{}/{} only supports a fixed {} (N, not +N): its replicas cannot be read",
            self.kind,
            self.namespace,
            self.name,
            keys::ANNOTATION_IP_NUMBER
        ))
    }

    /// `apps_v1`, or `v1` for the core group.
    fn gv_label(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}_{}", self.group, self.version)
        }
    }

    /// `status.controlledIPPools`' `application`: `group_version_Kind_namespace_name`.
    pub fn application(&self) -> String {
        application_text(&self.gv_label(), &self.kind, &self.namespace, &self.name)
    }

    /// What an auto-pool's `podAffinity.matchLabels` holds for this application.
    pub fn affinity(&self) -> BTreeMap<String, String> {
        [
            (keys::AFFINITY_APP_GROUP, self.group.as_str()),
            (keys::AFFINITY_APP_VERSION, self.version.as_str()),
            (keys::AFFINITY_APP_KIND, self.kind.as_str()),
            (keys::AFFINITY_APP_NAMESPACE, self.namespace.as_str()),
            (keys::AFFINITY_APP_NAME, self.name.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    pub fn pod_affinity(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.affinity()),
            match_expressions: None,
        }
    }

    /// Whether `labels` (an existing pool's) name this application, its UID aside: a pool kept
    /// (`ippool-reclaim: false`) for an application of the same name is reused.
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
        is(keys::LABEL_APP_GV, &self.gv_label())
            && is(keys::LABEL_APP_KIND, &self.kind)
            && is(keys::LABEL_APP_NAMESPACE, &self.namespace)
            && is(keys::LABEL_APP_NAME, &self.name)
    }
}

/// Kubernetes' longest object name.
const NAME_MAX: usize = 253;

/// `auto4-<app>-<interface>-<the first 5 characters of the UID's last segment>`, the app's name
/// shortened when the whole would pass 253 characters.
pub fn pool_name(app: &App, family: Family, interface: &str) -> String {
    let suffix: String = app
        .uid
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .chars()
        .take(5)
        .collect::<String>()
        .to_lowercase();
    let interface = interface.to_lowercase();
    let fixed = "autoN---".len() + interface.len() + suffix.len();
    let name: String = app
        .name
        .to_lowercase()
        .chars()
        .take(NAME_MAX.saturating_sub(fixed))
        .collect();
    format!("auto{}-{name}-{interface}-{suffix}", family.number())
}

/// The labels of an auto-pool.
pub fn pool_labels(
    app: &App,
    subnet: &str,
    cidr: &str,
    interface: &str,
    family: Family,
    reclaim: bool,
) -> BTreeMap<String, String> {
    [
        (keys::LABEL_OWNER_SUBNET, subnet.to_string()),
        (keys::LABEL_APP_GV, app.gv_label()),
        (keys::LABEL_APP_KIND, app.kind.clone()),
        (keys::LABEL_APP_NAMESPACE, app.namespace.clone()),
        (keys::LABEL_APP_NAME, app.name.clone()),
        (keys::LABEL_APP_UID, app.uid.clone()),
        (keys::LABEL_INTERFACE, interface.to_string()),
        (keys::LABEL_RECLAIM, reclaim.to_string()),
        (keys::LABEL_IP_VERSION, format!("IPv{}", family.number())),
        (keys::LABEL_CIDR, keys::cidr_label_value(cidr)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Label values are at most 63 characters: an application whose name is longer cannot have an
/// auto-pool (Spiderpool's labels have the same limit).
pub fn labels_fit(labels: &BTreeMap<String, String>) -> Result<(), String> {
    match labels.iter().find(|(_, v)| v.len() > 63) {
        Some((k, v)) => Err(format!("label {k}={v} is longer than 63 characters")),
        None => Ok(()),
    }
}

/// Not enough free addresses in the subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the subnet has {free} free addresses, the pool needs {missing} more")]
pub struct SubnetFull {
    pub free: u128,
    pub missing: u128,
}

/// The addresses a pool should have for `want`: it keeps what it has; it grows by the lowest of
/// `free` (the subnet's addresses no other pool and no SpiderReservedIP has); it shrinks only by
/// addresses nobody `held`, the highest first, and never below what is held (a later pass
/// finishes once those are released).
pub fn resize(current: &IpSet, held: &IpSet, free: &IpSet, want: u128) -> Result<IpSet, SubnetFull> {
    let have = current.len();
    if have < want {
        let missing = want - have;
        let free = free.subtract(current);
        if free.len() < missing {
            return Err(SubnetFull {
                free: free.len(),
                missing,
            });
        }
        return Ok(current.union(&free.lowest(missing)));
    }
    let spare = current.subtract(held);
    let drop = (have - want).min(spare.len());
    Ok(current.subtract(&spare.highest(drop)))
}

/// A SpiderSubnet's addresses as a pool of the same spec would hand them out.
pub fn subnet_pool(subnet: &SpiderSubnet) -> Result<Pool, String> {
    let name = subnet.metadata.name.clone().unwrap_or_default();
    let spec = serde_json::to_value(&subnet.spec).map_err(|e| e.to_string())?;
    Pool::from_spec_json(spec, &name).map_err(|e| e.to_string())
}

/// Whether two CIDRs name the same network (`10.0.0.0/16` and `10.0.3.0/16` do).
pub fn same_cidr(a: &str, b: &str) -> bool {
    match (a.parse::<IpNet>(), b.parse::<IpNet>()) {
        (Ok(a), Ok(b)) => a.trunc() == b.trunc(),
        _ => false,
    }
}

/// A pool's addresses: what its spec lists (its `ips`, as written) plus what it holds.
pub fn pool_addresses(pool: &SpiderIPPool) -> IpSet {
    set_of_entries(pool.spec.ips.iter().map(String::as_str)).union(&held_addresses(pool))
}

/// The addresses `pool` holds (its status), as a set.
pub fn held_addresses(pool: &SpiderIPPool) -> IpSet {
    let held = pool
        .status
        .as_ref()
        .and_then(|s| s.held().ok())
        .unwrap_or_default();
    set_of_entries(held.keys().map(String::as_str))
}

/// `status.controlledIPPools` of `subnet`: every pool of its CIDR with its addresses inside the
/// subnet, and each auto-pool's application.
pub fn controlled<'a>(
    subnet: &SpiderSubnet,
    subnet_set: &IpSet,
    pools: impl IntoIterator<Item = &'a SpiderIPPool>,
) -> ControlledIPPools {
    let mut out = ControlledIPPools::new();
    for pool in pools {
        if !same_cidr(&pool.spec.subnet, &subnet.spec.subnet) || pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let inside = pool_addresses(pool).intersect(subnet_set);
        if inside.is_empty() {
            continue;
        }
        let labels = pool.metadata.labels.clone().unwrap_or_default();
        let application = keys::is_auto_pool(&labels).then(|| {
            let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
            application_text(
                get(keys::LABEL_APP_GV),
                get(keys::LABEL_APP_KIND),
                get(keys::LABEL_APP_NAMESPACE),
                get(keys::LABEL_APP_NAME),
            )
        });
        out.insert(
            pool.metadata.name.clone().unwrap_or_default(),
            ControlledPool {
                ips: inside.texts(),
                application,
            },
        );
    }
    out
}

/// The number of addresses `controlled` lists.
pub fn controlled_count(controlled: &ControlledIPPools) -> u128 {
    controlled
        .values()
        .map(|c| set_of_entries(c.ips.iter().map(String::as_str)).len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn subnets_annotations_as_spiderpool_reads_them() {
        assert_eq!(subnets_of(&map(&[])).unwrap(), None);
        let one = subnets_of(&map(&[(keys::ANNOTATION_SUBNET, r#"{"ipv4":["s4","x"]}"#)]))
            .unwrap()
            .unwrap();
        assert_eq!(
            one,
            vec![SubnetChoice {
                interface: "eth0".into(),
                ipv4: Some("s4".into()),
                ipv6: None
            }]
        );
        let many = map(&[
            (keys::ANNOTATION_SUBNET, r#"{"ipv4":["ignored"]}"#),
            (
                keys::ANNOTATION_SUBNETS,
                r#"[{"interface":"net1","ipv4":["a"],"ipv6":["b"]},{"interface":"net2","ipv6":["c"]}]"#,
            ),
        ]);
        let got = subnets_of(&many).unwrap().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].of(Family::V6), Some("b"));
        assert_eq!(got[1].interface, "net2");
        for bad_value in [
            "",
            "[]",
            r#"[{"interface":"a"}]"#,
            r#"[{"interface":"a","ipv4":[""]}]"#,
            r#"[{"interface":"a","ipv4":["x"]},{"interface":"a","ipv4":["y"]}]"#,
            r#"[{"interface":"much-too-long-name","ipv4":["x"]}]"#,
            r#"{"ipv4":["x"]}"#,
        ] {
            let err = subnets_of(&map(&[(keys::ANNOTATION_SUBNETS, bad_value)])).unwrap_err();
            assert_eq!(err.key, keys::ANNOTATION_SUBNETS, "{bad_value}");
        }
    }

    #[test]
    fn ip_number_fixed_flexible_default_and_refusals() {
        let n = |v: &str| IpNumber::parse(&map(&[(keys::ANNOTATION_IP_NUMBER, v)]));
        assert_eq!(IpNumber::parse(&map(&[])).unwrap(), IpNumber::Flexible(1));
        assert_eq!(n("+2").unwrap().size(3), 5);
        assert_eq!(n("4").unwrap().size(30), 4);
        assert_eq!(n("+2").unwrap().text(), "+2");
        for v in ["", "+", "++1", "-1", "x", "1.5", "99999999999"] {
            assert!(n(v).is_err(), "{v}");
        }
        assert!(reclaim_of(&map(&[])).unwrap());
        assert!(!reclaim_of(&map(&[(keys::ANNOTATION_RECLAIM, "False")])).unwrap());
        assert!(reclaim_of(&map(&[(keys::ANNOTATION_RECLAIM, "maybe")])).is_err());
    }

    #[test]
    fn name_labels_and_affinity_as_spiderpool_writes_them() {
        let app = App::new(
            "apps/v1",
            "Deployment",
            "ns",
            "Web",
            "0b3c2d1e-aaaa-bbbb-cccc-a5bd3f00e1d2",
        );
        assert_eq!(pool_name(&app, Family::V4, "eth0"), "auto4-web-eth0-a5bd3");
        let long = App {
            name: "x".repeat(300),
            ..app.clone()
        };
        assert_eq!(pool_name(&long, Family::V6, "net1").len(), 253);
        let labels = pool_labels(&app, "sub", "10.6.0.0/16", "eth0", Family::V4, true);
        assert_eq!(labels[keys::LABEL_APP_GV], "apps_v1");
        assert_eq!(labels[keys::LABEL_CIDR], "10-6-0-0-16");
        assert_eq!(labels[keys::LABEL_IP_VERSION], "IPv4");
        assert!(app.owns(&labels));
        assert!(labels_fit(&labels).is_ok());
        assert!(labels_fit(&pool_labels(&long, "s", "10.0.0.0/8", "e", Family::V4, true)).is_err());
        assert_eq!(app.application(), "apps_v1_Deployment_ns_Web");
        let pod = App::new("v1", "Pod", "ns", "p", "u");
        assert_eq!(pod.application(), "v1_Pod_ns_p");
        assert_eq!(pod.affinity()[keys::AFFINITY_APP_GROUP], "");
    }

    #[test]
    fn resize_grows_by_the_lowest_free_and_shrinks_by_unheld_highest() {
        let set = |e: &[&str]| set_of_entries(e.iter().copied());
        let free = set(&["10.0.0.1-10.0.0.20"]);
        let none = IpSet::default();
        let five = resize(&none, &none, &free, 5).unwrap();
        assert_eq!(five.texts(), vec!["10.0.0.1-10.0.0.5"]);
        // Others took 6-7 meanwhile: growth skips them and keeps what the pool has.
        let free2 = free.subtract(&set(&["10.0.0.6-10.0.0.7"]));
        let eight = resize(&five, &none, &free2, 8).unwrap();
        assert_eq!(eight.texts(), vec!["10.0.0.1-10.0.0.5", "10.0.0.8-10.0.0.10"]);
        // Shrinking keeps the held 10 and drops free addresses from the top.
        let held = set(&["10.0.0.2", "10.0.0.10"]);
        let four = resize(&eight, &held, &free2, 4).unwrap();
        assert_eq!(four.texts(), vec!["10.0.0.1-10.0.0.3", "10.0.0.10"]);
        // Never below what is held.
        let all_held = resize(&eight, &eight, &free2, 2).unwrap();
        assert_eq!(all_held, eight);
        let err = resize(&none, &none, &set(&["10.0.0.1-10.0.0.3"]), 5).unwrap_err();
        assert_eq!(err, SubnetFull { free: 3, missing: 5 });
    }
}
