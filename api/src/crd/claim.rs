//! SpiderIPClaim: one cluster-scoped object per address in use, named by the address. The API
//! server creates an object of a given name only once, so two pods never hold one address,
//! whichever pools name it, and no object shared by the pool's users is written per allocation.
//! Kubernetes allocates Service IPs the same way since v1.33 (`networking.k8s.io/v1` IPAddress,
//! KEP-1880), in place of a bitmap kept in one object.
//!
//! A claim's `spec.pool` and `spec.pod` never change; `spec.node` and `spec.podUID` change only
//! when a StatefulSet pod recreated on another node takes its address over. `spec.pool`,
//! `spec.node`, `spec.pod` and `spec.podUID` are selectable fields (`kubectl get spideripclaims
//! --field-selector spec.pool=P` lists a pool's holders).

use std::net::IpAddr;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::PoolIPAllocation;

#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderIPClaim",
    shortname = "sic",
    selectable = ".spec.pool",
    selectable = ".spec.node",
    selectable = ".spec.podUID",
    selectable = ".spec.pod",
    printcolumn = r#"{"name": "POOL", "type": "string", "jsonPath": ".spec.pool"}"#,
    printcolumn = r#"{"name": "POD", "type": "string", "jsonPath": ".spec.pod"}"#,
    printcolumn = r#"{"name": "INTERFACE", "type": "string", "jsonPath": ".spec.interface"}"#,
    printcolumn = r#"{"name": "NODE", "type": "string", "jsonPath": ".spec.node"}"#,
    printcolumn = r#"{"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.pool == oldSelf.pool && self.pod == oldSelf.pod").message("a claim's pool and pod never change"))]
#[x_kube(validation = Rule::new("self.node == oldSelf.node || has(oldSelf.ownerStatefulSet)").message("only a StatefulSet pod's claim moves to another node"))]
#[serde(rename_all = "camelCase")]
pub struct IPClaimSpec {
    /// The SpiderIPPool the address was claimed from.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,
    /// `namespace/name` of the pod.
    #[schemars(length(min = 3, max = 317))]
    pub pod: String,
    #[serde(rename = "podUID")]
    #[schemars(length(min = 1, max = 64))]
    pub pod_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub interface: Option<String>,
    /// The node whose agent claimed it: only that node's agent may change or delete it.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// Set for StatefulSet pods: the address follows the pod name, not the UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub owner_stateful_set: Option<String>,
}

impl IPClaimSpec {
    /// The claim of `holder` in `pool` (its node: `node`).
    pub fn of(pool: &str, holder: &PoolIPAllocation, node: &str) -> IPClaimSpec {
        IPClaimSpec {
            pool: pool.to_string(),
            pod: holder.pod.clone(),
            pod_uid: holder.pod_uid.clone(),
            interface: holder.interface.clone(),
            node: node.to_string(),
            owner_stateful_set: holder.owner_stateful_set.clone(),
        }
    }

    /// The holder this claim records, as the pool rules ([`PoolIPAllocation`]) read it.
    pub fn holder(&self) -> PoolIPAllocation {
        PoolIPAllocation {
            pod: self.pod.clone(),
            pod_uid: self.pod_uid.clone(),
            interface: self.interface.clone(),
            node: Some(self.node.clone()),
            owner_stateful_set: self.owner_stateful_set.clone(),
        }
    }
}

/// The name of the claim of `ip`: the address in canonical form with `:` written `-` (object
/// names take no colon; canonical IPv6 has no `-`, so no two addresses share a name).
pub fn claim_name(ip: IpAddr) -> String {
    ip.to_string().replace(':', "-")
}

/// The address a claim's name stands for; `None` for a name no address gives.
pub fn claim_address(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.replace('-', ":").parse().ok()?;
    (claim_name(ip) == name).then_some(ip)
}

/// The field selector of a pool's claims.
pub fn of_pool(pool: &str) -> String {
    format!("spec.pool={pool}")
}

/// The field selector of a node's claims.
pub fn of_node(node: &str) -> String {
    format!("spec.node={node}")
}

/// The field selector of a pod's claims.
pub fn of_pod_uid(uid: &str) -> String {
    format!("spec.podUID={uid}")
}

#[cfg(test)]
mod tests {
    use super::{claim_address, claim_name};

    #[test]
    fn names_are_addresses_both_ways_and_only_canonical_ones() {
        for ip in ["10.0.0.5", "fd00::1", "2001:db8:0:1::a", "::ffff:10.0.0.1"] {
            let ip = ip.parse().unwrap();
            assert_eq!(claim_address(&claim_name(ip)), Some(ip));
        }
        assert_eq!(claim_name("fd00::1".parse().unwrap()), "fd00--1");
        assert_eq!(claim_address("fd00-0-0-0-0-0-0-1"), None, "not canonical");
        assert_eq!(claim_address("010.0.0.5"), None);
        assert_eq!(claim_address("pool-a"), None);
    }
}
