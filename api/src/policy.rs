//! SpiderNetworkNodePolicy: what a node's NICs should look like (VFs, MTU, VF settings, bonds,
//! VLANs, RDMA netns mode) and which device-plugin resource the selected VFs feed. Policies are
//! read from YAML files (`spiderpool-agent apply -f`, `device-plugin --policy`) or, in a cluster,
//! from the cluster-scoped CRD (`SpiderNetworkNodePolicyResource`, below): every agent applies the
//! policies that select its node and reports in its SpiderNodeInventory; the controller sums the
//! reports into the policy's status (`crate::policy_status`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const KIND: &str = "SpiderNetworkNodePolicy";
/// Policies without `priority` get this one; a lower number wins, as in the SR-IOV operator.
pub const DEFAULT_PRIORITY: u32 = 99;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderNetworkNodePolicy {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metadata {
    pub name: String,
}

/// The CRD object is `SpiderNetworkNodePolicyResource` (cluster-scoped); standalone mode reads
/// the same spec through [`SpiderNetworkNodePolicy`].
#[derive(
    kube::CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderNetworkNodePolicy",
    root = "SpiderNetworkNodePolicyResource",
    shortname = "snnp",
    status = "crate::policy_status::PolicyStatus",
    printcolumn = r#"{"name": "RESOURCE", "type": "string", "jsonPath": ".spec.resourceName"}"#,
    printcolumn = r#"{"name": "VFS", "type": "integer", "jsonPath": ".spec.numVfs"}"#,
    printcolumn = r#"{"name": "PRIORITY", "type": "integer", "jsonPath": ".spec.priority"}"#,
    printcolumn = r#"{"name": "MATCHED", "type": "integer", "jsonPath": ".status.matched"}"#,
    printcolumn = r#"{"name": "APPLIED", "type": "integer", "jsonPath": ".status.applied"}"#,
    printcolumn = r#"{"name": "PENDING", "type": "integer", "jsonPath": ".status.pending"}"#,
    printcolumn = r#"{"name": "FAILED", "type": "integer", "jsonPath": ".status.failed"}"#,
    printcolumn = r#"{"name": "REMOVING", "type": "integer", "priority": 1, "jsonPath": ".status.removing"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Node labels that must all match (empty: every node).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub nic_selector: NicSelector,
    #[serde(default)]
    pub num_vfs: Option<u32>,
    /// MTU of the selected PFs.
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub vf: VfSettings,
    /// `netdevice` (default) or `vfio-pci`.
    #[serde(default)]
    pub device_type: Option<String>,
    #[serde(default)]
    pub is_rdma: bool,
    #[serde(default)]
    pub bonds: Vec<BondSpec>,
    #[serde(default)]
    pub vlans: Vec<VlanSpec>,
    #[serde(default)]
    pub rdma: Option<RdmaSpec>,
    /// The device-plugin resource the selected VFs feed.
    #[serde(default)]
    pub resource_name: Option<String>,
    /// Lower `numVfs` even while some of the VFs are in use.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NicSelector {
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(rename = "deviceID", default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub pf_names: Vec<String>,
    #[serde(default)]
    pub root_devices: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VfSettings {
    #[serde(default)]
    pub trust: Option<bool>,
    #[serde(default)]
    pub spoof_chk: Option<bool>,
    /// `auto`, `enable` or `disable`.
    #[serde(default)]
    pub link_state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BondSpec {
    pub name: String,
    /// A bonding mode by name (`balance-rr`, `active-backup`, `balance-xor`, `broadcast`,
    /// `802.3ad`, `balance-tlb`, `balance-alb`) or number (0-6).
    #[schemars(regex(
        pattern = r"^(balance-rr|active-backup|balance-xor|broadcast|802\.3ad|balance-tlb|balance-alb|[0-6])$"
    ))]
    pub mode: String,
    /// Bonding driver options, e.g. `miimon: "100"`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[schemars(length(min = 1, max = 16))]
    pub members: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub vlans: Vec<VlanSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VlanSpec {
    /// Omitted for the VLANs of a bond (the bond is the parent).
    #[serde(default)]
    pub parent: Option<String>,
    /// 1-4094 (0 and 4095 are reserved by 802.1Q).
    #[schemars(range(min = 1, max = 4094))]
    pub id: u16,
    /// Default `<parent>.<id>`.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RdmaSpec {
    /// `shared` or `exclusive`.
    #[schemars(regex(pattern = "^(shared|exclusive)$"))]
    pub netns_mode: String,
}

/// Why a policy file could not be read: which YAML document, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {reason}")]
pub struct DocumentError {
    /// 1-based, as a user counts documents in the file.
    pub document: usize,
    pub reason: String,
}

/// Reads YAML with one or more SpiderNetworkNodePolicy documents (empty documents are skipped,
/// other kinds are an error).
pub fn parse_documents(text: &str) -> Result<Vec<SpiderNetworkNodePolicy>, DocumentError> {
    use serde::Deserialize;
    let mut policies = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let bad = |reason: String| DocumentError {
            document: i + 1,
            reason,
        };
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let policy: SpiderNetworkNodePolicy =
            serde_yaml_ng::from_value(value).map_err(|e| bad(e.to_string()))?;
        if policy.kind.as_deref().is_some_and(|k| k != KIND) {
            return Err(bad(format!("kind {:?} is not {KIND}", policy.kind)));
        }
        policies.push(policy);
    }
    Ok(policies)
}

impl PolicySpec {
    pub fn priority(&self) -> u32 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    /// Whether a node with `labels` is one this policy is for: every `nodeSelector` label equal.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl VlanSpec {
    pub fn name_under(&self, parent: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{parent}.{}", self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moderate alias bomb (9^6 leaves): refused as a policy, in bounded memory.
    fn laughs() -> String {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, next) in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f")] {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            text.push_str(&format!("{next}: &{next} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn hostile_policy_files_are_refused_by_document_and_never_panic() {
        let head = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderNetworkNodePolicy\nmetadata: {name: p}\n";
        let cases = [
            ("another kind", "kind: Pod\nspec: {}\n".to_string()),
            ("negative numVfs", format!("{head}spec: {{numVfs: -1}}\n")),
            (
                "numVfs past u32",
                format!("{head}spec: {{numVfs: 99999999999}}\n"),
            ),
            ("numVfs a string", format!("{head}spec: {{numVfs: many}}\n")),
            (
                "nodeSelector a list",
                format!("{head}spec: {{nodeSelector: [a]}}\n"),
            ),
            ("spec a scalar", format!("{head}spec: 5\n")),
            ("alias bomb", laughs()),
            ("deep nesting", format!("{head}spec: {}", "[".repeat(20_000))),
            ("not YAML", "\u{0}: [".to_string()),
            ("a tab indent", "kind: x\n\tspec: {}\n".to_string()),
            (
                "second document bad",
                format!("{head}spec: {{}}\n---\n{head}spec: {{numVfs: -1}}\n"),
            ),
        ];
        for (what, text) in cases {
            match parse_documents(&text) {
                Err(e) => assert!(e.document >= 1 && !e.reason.is_empty(), "{what}: {e}"),
                Ok(p) => panic!("{what}: accepted {p:?}"),
            }
        }
        let err = parse_documents(&cases_second()).unwrap_err();
        assert_eq!(err.document, 2, "the error names the document");
    }

    fn cases_second() -> String {
        "kind: SpiderNetworkNodePolicy\nmetadata: {name: a}\nspec: {}\n---\nkind: Pod\n".into()
    }
}
