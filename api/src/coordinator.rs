//! SpiderCoordinator: the cluster-wide defaults of the `coordinator` CNI plugin (one object,
//! usually named `default`), with Spiderpool's field names.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderCoordinator",
    shortname = "scc",
    status = "CoordinatorStatus",
    printcolumn = r#"{"name": "MODE", "type": "string", "jsonPath": ".spec.mode"}"#,
    printcolumn = r#"{"name": "PHASE", "type": "string", "jsonPath": ".status.phase"}"#
)]
#[x_kube(validation = Rule::new("!has(self.hijackCIDR) || self.hijackCIDR.all(c, isCIDR(c))").message("hijackCIDR entries must be CIDRs"))]
#[x_kube(validation = Rule::new("!has(self.podMACPrefix) || self.podMACPrefix.matches('^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}$')").message("podMACPrefix is two hex bytes like 0a:1b"))]
#[x_kube(validation = Rule::new("!has(self.vethLinkAddress) || isIP(self.vethLinkAddress)").message("vethLinkAddress must be an IP"))]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSpec {
    /// `auto`, `underlay`, `overlay` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(auto|underlay|overlay|disabled)$"))]
    pub mode: Option<String>,
    /// `auto`, `cluster`, `calico`, `cilium` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podCIDRType")]
    #[schemars(regex(pattern = r"^(auto|cluster|calico|cilium|none)$"))]
    pub pod_cidr_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "hijackCIDR")]
    #[schemars(length(max = 64), inner(length(max = 43)))]
    pub hijack_cidr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podMACPrefix")]
    #[schemars(length(max = 5))]
    pub pod_mac_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune_pod_routes: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "podDefaultRouteNIC"
    )]
    pub pod_default_route_nic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub host_rule_table: Option<i64>,
    /// 0, 1 or 2; negative leaves the sysctl alone.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podRPFilter")]
    #[schemars(range(min = -1, max = 2))]
    pub pod_rp_filter: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tx_queue_len: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    pub veth_link_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vethMTU")]
    #[schemars(range(min = 68, max = 65535))]
    pub veth_mtu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "detectIPConflict")]
    pub detect_ip_conflict: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_gateway: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "overlayPodCIDR")]
    pub overlay_pod_cidr: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "serviceCIDR")]
    pub service_cidr: Vec<String>,
}
