//! SpiderMultusConfig: a Multus NetworkAttachmentDefinition described by its CNI type and the
//! fields users set, with Spiderpool's v2beta1 field names, so a Spiderpool manifest applies
//! unchanged and loses nothing. The controller renders it into the NetworkAttachmentDefinition
//! (`spiderpool_controller::multus`). Combinations that cannot make a NAD are refused by the
//! API server (the CEL rules below); what CEL cannot see (JSON inside strings, annotations) the
//! controller reports as an Event.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::coordinator::CoordinatorSpec;

/// `cniType` → its block's field (`custom` has none).
const BLOCKS: [(&str, &str); 7] = [
    ("macvlan", "macvlan"),
    ("ipvlan", "ipvlan"),
    ("vlan", "vlan"),
    ("sriov", "sriov"),
    ("ib-sriov", "ibsriov"),
    ("ipoib", "ipoib"),
    ("ovs", "ovs"),
];

/// The block of the spec's `cniType` is there (`custom`, the default, takes `customCNI`).
fn block_present() -> String {
    let each: Vec<String> = BLOCKS
        .iter()
        .map(|(t, b)| format!("(self.cniType == '{t}' && has(self.{b}))"))
        .collect();
    format!(
        "!has(self.cniType) || self.cniType == 'custom' || {}",
        each.join(" || ")
    )
}

/// No block other than the one of `cniType`.
fn only_its_block() -> String {
    let each: Vec<String> = BLOCKS
        .iter()
        .map(|(t, b)| format!("(!has(self.{b}) || (has(self.cniType) && self.cniType == '{t}'))"))
        .collect();
    each.join(" && ")
}

/// For the master-based blocks: two or more masters make a bond, which needs its name.
fn bond_for_many(block: &str) -> String {
    format!("!has(self.{block}) || self.{block}.master.size() < 2 || has(self.{block}.bond)")
}

fn no_match_master_subnet(block: &str) -> String {
    format!(
        "!has(self.{block}) || !has(self.{block}.ippools) || !has(self.{block}.ippools.matchMasterSubnet) || \
         !self.{block}.ippools.matchMasterSubnet"
    )
}

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderMultusConfig",
    namespaced,
    shortname = "smc",
    printcolumn = r#"{"name": "CNI-TYPE", "type": "string", "jsonPath": ".spec.cniType"}"#
)]
#[x_kube(validation = Rule::new(block_present()).message("cniType names a CNI block that is missing: cniType macvlan needs spec.macvlan, ib-sriov spec.ibsriov, and so on"))]
#[x_kube(validation = Rule::new(only_its_block()).message("only the block of cniType may be given (custom, the default, takes customCNI and no block)"))]
#[x_kube(validation = Rule::new("!has(self.customCNI) || !has(self.cniType) || self.cniType == 'custom'").message("customCNI is for cniType custom"))]
#[x_kube(validation = Rule::new(bond_for_many("macvlan")).message("macvlan with two or more masters needs bond"))]
#[x_kube(validation = Rule::new(bond_for_many("ipvlan")).message("ipvlan with two or more masters needs bond"))]
#[x_kube(validation = Rule::new(bond_for_many("vlan")).message("vlan with two or more masters needs bond"))]
#[x_kube(validation = Rule::new(no_match_master_subnet("macvlan")).message("ippools.matchMasterSubnet is not supported for macvlan"))]
#[x_kube(validation = Rule::new(no_match_master_subnet("ipvlan")).message("ippools.matchMasterSubnet is not supported for ipvlan"))]
#[x_kube(validation = Rule::new("!has(self.vlan) || (has(self.vlan.vlanID) && self.vlan.vlanID > 0)").message("vlan needs vlanID (1-4094)"))]
#[x_kube(validation = Rule::new("!has(self.vlan) || !has(self.vlan.vlanMode) || self.vlan.vlanMode == 'manual'").message("vlanMode auto (VLAN ids chosen per pod) is not supported: use vlanMode manual with vlanID"))]
#[x_kube(validation = Rule::new("!has(self.sriov) || !has(self.sriov.minTxRateMbps) || !has(self.sriov.maxTxRateMbps) || self.sriov.maxTxRateMbps == 0 || self.sriov.minTxRateMbps <= self.sriov.maxTxRateMbps").message("sriov minTxRateMbps must not exceed maxTxRateMbps"))]
#[x_kube(validation = Rule::new("!has(self.ovs) || !has(self.ovs.trunk) || self.ovs.trunk.all(t, !has(t.minID) || !has(t.maxID) || t.minID <= t.maxID)").message("ovs trunk: minID must not exceed maxID"))]
#[serde(rename_all = "camelCase")]
pub struct MultusConfigSpec {
    /// `macvlan`, `ipvlan`, `vlan`, `sriov`, `ib-sriov`, `ipoib`, `ovs` or `custom` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(macvlan|ipvlan|vlan|sriov|ovs|ib-sriov|ipoib|custom)$"))]
    pub cni_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<MasterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvlan: Option<MasterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<MasterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<SriovConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ibsriov: Option<IbSriovConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipoib: Option<IpoibConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs: Option<OvsConfig>,
    /// Default true (false for `custom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_coordinator: Option<bool>,
    /// The main plugin without `ipam` (Spiderpool deprecates it for `ipam.enabled`, which wins).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "disableIPAM")]
    pub disable_ipam: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamSwitch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorSpec>,
    /// More plugins after the main one, each a JSON object with a `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "chainCNIJsonData")]
    #[schemars(length(max = 16), inner(length(max = 65536)))]
    pub chain_cni_json_data: Vec<String>,
    /// The whole CNI config as JSON, for `cniType: custom`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "customCNI")]
    #[schemars(length(max = 262144))]
    pub custom_cni: Option<String>,
}

/// macvlan, ipvlan and vlan: one master, or several bonded by `ifacer`; a VLAN on top.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterConfig {
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 15)))]
    pub master: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub mtu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vlanID")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i64>,
    /// vlan only: `manual` (the default; `auto` is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(manual|auto)$"))]
    pub vlan_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondConfig>,
    /// The RDMA resource pods of this network request (`rdma-resource-inject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_resource_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BondConfig {
    #[schemars(length(min = 1, max = 15))]
    pub name: String,
    /// The kernel's bonding mode number, 0-6.
    #[schemars(range(min = 0, max = 6))]
    pub mode: i64,
    /// `key=value` pairs separated by `;`, as ifacer takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SriovConfig {
    #[schemars(length(min = 1))]
    pub resource_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vlanID")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub mtu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_tx_rate_mbps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_tx_rate_mbps: Option<i64>,
    /// The VF's RDMA device moves into the pod (the `rdma` plugin after `sriov`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_isolation: Option<bool>,
    /// Older Spiderpool's name for `rdmaIsolation`, still taken (`rdmaIsolation` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_rdma: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IbSriovConfig {
    #[schemars(length(min = 1))]
    pub resource_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkey: Option<String>,
    /// `auto`, `enable` (the default) or `disable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(auto|enable|disable)$"))]
    pub link_state: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_isolation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_ib_kubernetes: Option<bool>,
    /// Older Spiderpool's name for `enableIbKubernetes`, still taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ib_kubernetes_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpoibConfig {
    #[schemars(length(min = 1, max = 15))]
    pub master: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OvsConfig {
    #[schemars(length(min = 1))]
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub trunk: Vec<Trunk>,
    /// A VF's PCI address, for OVS hardware offload.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "deviceID")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$"))]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<PoolNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Trunk {
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "minID")]
    #[schemars(range(min = 0, max = 4094))]
    pub min_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "maxID")]
    #[schemars(range(min = 0, max = 4094))]
    pub max_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub id: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolNames {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,
    /// sriov only: pools whose subnet matches the VF's PF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_master_subnet: Option<bool>,
}

/// `spec.ipam`: whether the main plugin gets the `spiderpool` IPAM, and its log options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpamSwitch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_options: Option<LogOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(debug|info|warn|error)$"))]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub log_file_max_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub log_file_max_age: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub log_file_max_count: Option<i64>,
}

/// Multus's NetworkAttachmentDefinition (`k8s.cni.cncf.io/v1`): the CNI config as a string.
/// The chart installs its CRD ([`network_attachment_definition_crd`]) as Multus's manifest does.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    shortname = "net-attach-def",
    namespaced,
    derive = "PartialEq"
)]
pub struct NetworkAttachmentDefinitionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// The NetworkAttachmentDefinition CRD as Multus defines it: `spec` optional (Multus reads a NAD
/// without one as "the config file of that name in its confDir"), `spec.config` a string.
pub fn network_attachment_definition_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = NetworkAttachmentDefinition::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.required = None;
            schema.description = Some(
                "A network pods attach to through Multus (Network Plumbing Working Group): \
                 spec.config is its CNI config or conflist as JSON."
                    .into(),
            );
            if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
                spec.description =
                    Some("The CNI config; without it Multus reads the file of the NAD's name.".into());
            }
        }
    }
    crd
}
