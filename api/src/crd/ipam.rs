//! The IPAM kinds: SpiderIPPool, SpiderSubnet, SpiderReservedIP and SpiderEndpoint.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Allocations;
use super::validation as v;

/// Bounds that keep the CEL cost estimate of the pairwise overlap rule inside the API server's
/// budget; a pool needing more entries can be split into several pools.
const MAX_RANGES: u32 = 64;

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderIPPool",
    shortname = "sp",
    status = "IPPoolStatus",
    printcolumn = r#"{"name": "VERSION", "type": "integer", "jsonPath": ".spec.ipVersion"}"#,
    printcolumn = r#"{"name": "SUBNET", "type": "string", "jsonPath": ".spec.subnet"}"#,
    printcolumn = r#"{"name": "ALLOCATED-IP-COUNT", "type": "integer", "jsonPath": ".status.allocatedIPCount"}"#,
    printcolumn = r#"{"name": "TOTAL-IP-COUNT", "type": "integer", "jsonPath": ".status.totalIPCount"}"#,
    printcolumn = r#"{"name": "DEFAULT", "type": "boolean", "jsonPath": ".spec.default"}"#,
    printcolumn = r#"{"name": "DISABLE", "type": "boolean", "jsonPath": ".spec.disable", "priority": 10}"#,
    printcolumn = r#"{"name": "READY", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "MESSAGE", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[x_kube(validation = Rule::new(v::SUBNET_IS_CIDR).message("subnet must be a CIDR"))]
#[x_kube(validation = Rule::new(v::IP_VERSION_MATCHES_SUBNET).message("ipVersion does not match the subnet's family"))]
#[x_kube(validation = Rule::new(v::GATEWAY_IN_SUBNET).message("gateway must be an IP inside the subnet"))]
#[x_kube(validation = Rule::new(v::ROUTES_WELL_FORMED).message("routes need a CIDR dst and a gw inside the subnet"))]
#[x_kube(validation = Rule::new(v::entries_in_subnet("ips")).message("every ips entry must be an IP or a range a-b inside the subnet"))]
#[x_kube(validation = Rule::new(v::entries_in_subnet("excludeIPs")).message("every excludeIPs entry must be an IP or a range a-b inside the subnet"))]
#[x_kube(validation = Rule::new(v::v4_ranges_ordered("ips")).message("ranges must be written low-high"))]
#[x_kube(validation = Rule::new(v::v4_no_overlap("ips")).message("ips entries overlap"))]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// 4 or 6; must match the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 6))]
    pub ip_version: Option<i64>,
    #[schemars(length(max = 43))]
    pub subnet: String,
    /// Single IPs or ranges `a-b`, inside the subnet, not overlapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RANGES), inner(length(max = 81)), extend("x-kubernetes-list-type" = "set"))]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RANGES), inner(length(max = 81)), extend("x-kubernetes-list-type" = "set"))]
    #[serde(rename = "excludeIPs")]
    pub exclude_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_affinity: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_name: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_name: Vec<String>,
    /// Multus network names (`namespace/name` or `name`) this pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multus_name: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Route {
    #[schemars(length(max = 43))]
    pub dst: String,
    #[schemars(length(max = 39))]
    pub gw: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// Node → a JSON-encoded object of address → the pod holding it (upstream's `allocatedIPs`
    /// format, split by node so that admission can tell whose entries a write changes); see
    /// [`super::Allocations`].
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        rename = "allocatedIPsByNode"
    )]
    pub allocated_ips_by_node: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "allocatedIPCount")]
    pub allocated_ip_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "totalIPCount")]
    pub total_ip_count: Option<i64>,
    /// `Ready`, written by the controller: `True` while the pool is registered at its current
    /// generation (see [`super::SpiderIPPoolRegistry`]); `False` with the reason (its addresses
    /// overlap another pool's, its spec is invalid) while it hands out nothing new.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PoolCondition>,
}

/// A condition in the shape of `metav1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl IPPoolStatus {
    /// Every holder, node by node.
    pub fn allocations(&self) -> Result<Allocations, String> {
        Allocations::decode(&self.allocated_ips_by_node)
    }

    /// Address → holder (one per address; see [`Allocations::view`]), the addresses nodes set
    /// aside ([`PoolIPAllocation::is_spare`]) included: none of them is free.
    pub fn held(&self) -> Result<BTreeMap<String, PoolIPAllocation>, String> {
        Ok(self.allocations()?.view(None))
    }

    /// Address → the pod that holds it: [`IPPoolStatus::held`] without the spare addresses.
    pub fn held_by_pods(&self) -> Result<BTreeMap<String, PoolIPAllocation>, String> {
        let mut held = self.held()?;
        held.retain(|_, e| !e.is_spare());
        Ok(held)
    }

    /// The merge patch that turns the holders `before` into `after` (only the nodes that
    /// changed) and writes the counts, guarded by the `resource_version` it was decided on: the
    /// API server refuses it (409) when another writer came first. `total`: the pool's capacity,
    /// `None` to leave it as it is.
    pub fn guarded_patch(
        resource_version: Option<&str>,
        before: &Allocations,
        after: &Allocations,
        total: Option<i64>,
    ) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {
                "allocatedIPsByNode": after.patch_from(before),
                "allocatedIPCount": after.count(),
                "totalIPCount": total,
            }
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolIPAllocation {
    /// `namespace/name` of the pod.
    pub pod: String,
    pub pod_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Set for StatefulSet pods: the address follows the pod name, not the UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_stateful_set: Option<String>,
}

/// The `podUID` of an entry that holds an address for its node rather than for a pod (a spare,
/// set aside by agents before SpiderIPClaims; the controller releases those left). No pod has
/// it: pod UIDs are UUIDs.
pub const SPARE_POD_UID: &str = "spare";

impl PoolIPAllocation {
    /// Whether the entry is a node's spare, not a pod's.
    pub fn is_spare(&self) -> bool {
        self.pod_uid == SPARE_POD_UID && self.pod.is_empty()
    }
}

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderSubnet",
    shortname = "ss",
    status = "SubnetStatus",
    printcolumn = r#"{"name": "VERSION", "type": "integer", "jsonPath": ".spec.ipVersion"}"#,
    printcolumn = r#"{"name": "SUBNET", "type": "string", "jsonPath": ".spec.subnet"}"#,
    printcolumn = r#"{"name": "ALLOCATED-IP-COUNT", "type": "integer", "jsonPath": ".status.allocatedIPCount"}"#,
    printcolumn = r#"{"name": "TOTAL-IP-COUNT", "type": "integer", "jsonPath": ".status.totalIPCount"}"#
)]
#[x_kube(validation = Rule::new(v::SUBNET_IS_CIDR).message("subnet must be a CIDR"))]
#[x_kube(validation = Rule::new(v::IP_VERSION_MATCHES_SUBNET).message("ipVersion does not match the subnet's family"))]
#[x_kube(validation = Rule::new(v::GATEWAY_IN_SUBNET).message("gateway must be an IP inside the subnet"))]
#[x_kube(validation = Rule::new(v::ROUTES_WELL_FORMED).message("routes need a CIDR dst and a gw inside the subnet"))]
#[x_kube(validation = Rule::new(v::entries_in_subnet("ips")).message("every ips entry must be an IP or a range a-b inside the subnet"))]
#[x_kube(validation = Rule::new(v::entries_in_subnet("excludeIPs")).message("every excludeIPs entry must be an IP or a range a-b inside the subnet"))]
#[x_kube(validation = Rule::new(v::v4_ranges_ordered("ips")).message("ranges must be written low-high"))]
#[x_kube(validation = Rule::new(v::v4_no_overlap("ips")).message("ips entries overlap"))]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 6))]
    pub ip_version: Option<i64>,
    #[schemars(length(max = 43))]
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RANGES), inner(length(max = 81)), extend("x-kubernetes-list-type" = "set"))]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RANGES), inner(length(max = 81)), extend("x-kubernetes-list-type" = "set"))]
    #[serde(rename = "excludeIPs")]
    pub exclude_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetStatus {
    /// A JSON object, pool name → `{"ips": [...], "application": "..."}`: every pool of this
    /// subnet's CIDR and its addresses inside the subnet (see [`super::auto_pool`]). Written by
    /// the controller.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "controlledIPPools"
    )]
    pub controlled_ip_pools: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "allocatedIPCount")]
    pub allocated_ip_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "totalIPCount")]
    pub total_ip_count: Option<i64>,
}

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderReservedIP",
    shortname = "sr",
    printcolumn = r#"{"name": "VERSION", "type": "integer", "jsonPath": ".spec.ipVersion"}"#
)]
#[x_kube(validation = Rule::new(v::RESERVED_FAMILY).message("every ips entry must be an IP or a range a-b of the ipVersion family"))]
#[serde(rename_all = "camelCase")]
pub struct ReservedIPSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 6))]
    pub ip_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 81)), extend("x-kubernetes-list-type" = "set"))]
    pub ips: Vec<String>,
}

/// A pod's addresses, one object per pod, named like the pod in the pod's namespace. The agent
/// writes it in the same call that creates it (no status subresource). `status.current.node` is a
/// selectable field (`kubectl get se -A --field-selector status.current.node=NODE`): a node's CNI GC
/// reads its own pods' endpoints, not the cluster's.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderEndpoint",
    namespaced,
    shortname = "se",
    status = "EndpointStatus",
    printcolumn = r#"{"name": "INTERFACE", "type": "string", "jsonPath": ".status.current.ips[0].interface"}"#,
    printcolumn = r#"{"name": "IPV4", "type": "string", "jsonPath": ".status.current.ips[0].ipv4"}"#,
    printcolumn = r#"{"name": "IPV6", "type": "string", "jsonPath": ".status.current.ips[0].ipv6"}"#,
    printcolumn = r#"{"name": "NODE", "type": "string", "jsonPath": ".status.current.node"}"#,
    selectable = ".status.current.node"
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderEndpointSpec {}

/// The field selector of the endpoints of pods on `node`.
pub fn endpoints_of_node(node: &str) -> String {
    format!("status.current.node={node}")
}

/// The fields of upstream's SpiderEndpoint `status`, kept at the same path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub current: PodIPAllocation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_controller_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_controller_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodIPAllocation {
    pub uid: String,
    pub node: String,
    /// The sandbox the addresses were given to (CNI GC compares it with the runtime's list).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "containerID")]
    pub container_id: Option<String>,
    #[serde(default)]
    pub ips: Vec<IPAllocationDetail>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocationDetail {
    pub interface: String,
    /// `a.b.c.d/len`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_gateway: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The CNI network the interface was attached for (Multus: the NetworkAttachmentDefinition),
    /// so a CNI GC of one network leaves the other networks' interfaces alone. Absent in endpoints
    /// written before it was recorded: GC then leaves the interface to the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}
