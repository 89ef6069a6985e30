//! SpiderSubnet auto-pools, as Spiderpool names them so existing manifests work: the annotations
//! an application's pod template carries, the labels and pod affinity of the pool created for it,
//! and the subnet's `controlledIPPools` status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `{"interface"?: "eth0", "ipv4": ["subnet"], "ipv6": ["subnet"]}`: one NIC's subnets.
pub const ANNOTATION_SUBNET: &str = "ipam.spidernet.io/subnet";
/// `[{"interface": "eth0", "ipv4": [...], "ipv6": [...]}, ...]`: wins over `subnet`.
pub const ANNOTATION_SUBNETS: &str = "ipam.spidernet.io/subnets";
/// `"N"` (a fixed pool size) or `"+N"` (replicas + N); absent: `+1`.
pub const ANNOTATION_IP_NUMBER: &str = "ipam.spidernet.io/ippool-ip-number";
/// `"true"` (default): the pool goes with its application; `"false"`: it stays for a new one of
/// the same name.
pub const ANNOTATION_RECLAIM: &str = "ipam.spidernet.io/ippool-reclaim";

pub const LABEL_OWNER_SUBNET: &str = "ipam.spidernet.io/owner-spider-subnet";
pub const LABEL_APP_GV: &str = "ipam.spidernet.io/owner-application-gv";
pub const LABEL_APP_KIND: &str = "ipam.spidernet.io/owner-application-kind";
pub const LABEL_APP_NAMESPACE: &str = "ipam.spidernet.io/owner-application-namespace";
pub const LABEL_APP_NAME: &str = "ipam.spidernet.io/owner-application-name";
pub const LABEL_APP_UID: &str = "ipam.spidernet.io/owner-application-uid";
pub const LABEL_INTERFACE: &str = "ipam.spidernet.io/interface";
pub const LABEL_RECLAIM: &str = "ipam.spidernet.io/ippool-reclaim";
pub const LABEL_IP_VERSION: &str = "ipam.spidernet.io/ip-version";
pub const LABEL_CIDR: &str = "ipam.spidernet.io/ippool-cidr";

/// The keys of an auto-pool's `podAffinity.matchLabels`. They describe the pod's top controller,
/// not labels the pod carries: the IPAM matches them against the controller it finds through the
/// pod's owner references.
pub const AFFINITY_APP_GROUP: &str = "ipam.spidernet.io/app-api-group";
pub const AFFINITY_APP_VERSION: &str = "ipam.spidernet.io/app-api-version";
pub const AFFINITY_APP_KIND: &str = "ipam.spidernet.io/app-kind";
pub const AFFINITY_APP_NAMESPACE: &str = "ipam.spidernet.io/app-namespace";
pub const AFFINITY_APP_NAME: &str = "ipam.spidernet.io/app-name";

/// `status.controlledIPPools` of a SpiderSubnet, decoded: pool name → its addresses inside the
/// subnet, and for an auto-pool its application (`group_version_Kind_namespace_name`).
pub type ControlledIPPools = BTreeMap<String, ControlledPool>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlledPool {
    /// IPs and ranges `a-b`.
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
}

/// Whether a pool was created for an application (Spiderpool's test: the app-name label).
pub fn is_auto_pool(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(LABEL_APP_NAME)
}

/// A CIDR as a label value: `.`, `:` and `/` become `-` (`172.16.0.0/16` → `172-16-0-0-16`).
pub fn cidr_label_value(cidr: &str) -> String {
    cidr.replace(['.', ':', '/'], "-")
}
