//! How nodes stand against SpiderNetworkNodePolicies. Each agent writes its node's part into its
//! SpiderNodeInventory status (`policies`, one entry per policy that selects the node); the
//! controller sums those into each policy's status, which `kubectl get
//! spidernetworknodepolicies` shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every selected NIC, bond, VLAN and setting is as the policy says.
pub const APPLIED: &str = "Applied";
/// Something is still to do or waits (a VF in use, the agent has not acted on this generation).
pub const PENDING: &str = "Pending";
/// Something could not be done (the reason says what).
pub const FAILED: &str = "Failed";
/// The policy no longer selects the node (deleted, or its nodeSelector no longer matches) and
/// what it made here is being removed; the reason says what still waits.
pub const REMOVING: &str = "Removing";

/// One node against one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyState {
    /// The policy's `metadata.generation` the node acted on.
    pub generation: i64,
    /// `Applied`, `Pending` or `Failed`: the worst of the parts.
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Per selected PF, bond, VLAN and the RDMA netns mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PolicyPart>,
    /// PFs whose VFs this policy created here (from none): they go back to 0 when the policy
    /// no longer selects the node and none is in use. A PF has no mark of its own, so this
    /// record is what keeps VFs someone else made from being removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_vfs: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPart {
    /// `pf`, `bond`, `vlan` or `rdma`.
    pub kind: String,
    pub name: String,
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A policy's status, written by the controller from the nodes' reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The generation the counts are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes whose labels the `nodeSelector` matches.
    #[serde(default)]
    pub matched: i64,
    /// Matched nodes that report the current generation applied.
    #[serde(default)]
    pub applied: i64,
    /// Matched nodes still at work on it, waiting, or not reporting the current generation yet.
    #[serde(default)]
    pub pending: i64,
    /// Matched nodes that report a failure.
    #[serde(default)]
    pub failed: i64,
    /// Nodes no longer matched that are still removing what the policy made there.
    #[serde(default)]
    pub removing: i64,
    /// Node → why, for the nodes not applied (the first few, by name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_applied: BTreeMap<String, String>,
}

/// The worse of two phases: `Failed` over `Pending` over `Applied`.
pub fn worse<'a>(a: &'a str, b: &'a str) -> &'a str {
    let rank = |p: &str| match p {
        FAILED => 2,
        PENDING => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}
