//! Cluster mode's decisions, pure and testable without an API server: which pools a pod's
//! interface may use ([`select`]), where an agent looks for a free address ([`claims`]), a SpiderIPPool
//! object as a [`Pool`], and the SpiderReservedIP addresses as range keys. The agent's IPAM
//! service and the controller do the I/O around them.

pub mod auto_pool;
pub mod claims;
pub mod pod_network;
pub mod register;
pub mod registry;
pub mod select;

use spiderpool_api::crd::{SpiderIPPool, SpiderReservedIP};

use crate::pool::{Pool, PoolError};
use crate::range::{IpSet, set_of_entries};

/// The validated pool of a SpiderIPPool object, or why it cannot be used.
pub fn pool_of(obj: &SpiderIPPool) -> Result<Pool, PoolError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = serde_json::to_value(&obj.spec).map_err(|e| PoolError::BadSpec {
        pool: name.clone(),
        reason: e.to_string(),
    })?;
    Pool::from_spec_json(spec, &name)
}

/// The addresses of every SpiderReservedIP: no pool hands them out.
pub fn reserved_set<'a>(objs: impl IntoIterator<Item = &'a SpiderReservedIP>) -> IpSet {
    set_of_entries(
        objs.into_iter()
            .flat_map(|r| r.spec.ips.iter().map(String::as_str)),
    )
}
