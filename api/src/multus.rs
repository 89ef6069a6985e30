//! SpiderMultusConfig: a Multus NetworkAttachmentDefinition described by its CNI type and the
//! few fields users set, with Spiderpool's field names.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::coordinator::CoordinatorSpec;

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderMultusConfig",
    namespaced,
    shortname = "smc",
    printcolumn = r#"{"name": "CNI-TYPE", "type": "string", "jsonPath": ".spec.cniType"}"#
)]
#[x_kube(validation = Rule::new("self.cniType != 'custom' || has(self.customCNI)").message("cniType custom needs customCNI"))]
#[serde(rename_all = "camelCase")]
pub struct MultusConfigSpec {
    #[schemars(regex(pattern = r"^(macvlan|ipvlan|sriov|ovs|ib-sriov|ipoib|custom)$"))]
    pub cni_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<MacvlanConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvlan: Option<MacvlanConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<SriovConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_coordinator: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "disableIPAM")]
    pub disable_ipam: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorSpec>,
    /// The whole CNI config as JSON, for `cniType: custom`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "customCNI")]
    pub custom_cni: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacvlanConfig {
    #[serde(default)]
    pub master: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vlanID")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_resource_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BondConfig {
    pub name: String,
    #[schemars(range(min = 0, max = 6))]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SriovConfig {
    pub resource_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vlanID")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx_rate_mbps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tx_rate_mbps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_rdma: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PoolNames {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,
}
