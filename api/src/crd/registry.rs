//! SpiderIPPoolRegistry: which pool owns which addresses, one cluster-scoped object per IP family
//! (`ipv4`, `ipv6`). A pool hands out new addresses only while the registry lists it at its
//! current generation, and an entry joins the registry only through a write guarded by the
//! registry's resourceVersion after a check that its addresses belong to no other entry. Every
//! admission, by any agent or controller replica, is therefore checked against every admission
//! before it: two overlapping pools can never both be in use, however they were created or edited.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The object name of a family's registry.
pub fn registry_name(family: u8) -> &'static str {
    if family == 6 { "ipv6" } else { "ipv4" }
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderIPPoolRegistry",
    shortname = "spr"
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolRegistrySpec {
    /// Sorted by name. Written by spiderpool-agent and spiderpool-controller only.
    #[serde(default)]
    pub pools: Vec<RegisteredPool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredPool {
    pub name: String,
    pub uid: String,
    /// The pool's `metadata.generation` this entry admitted.
    pub generation: i64,
    /// Every address the pool may hand out at that generation, plus any it still holds from an
    /// earlier one: IPs and ranges `a-b`.
    #[serde(default)]
    pub ips: Vec<String>,
}
