//! A write of this node's own string of the pool without the resourceVersion guard: a JSON patch
//! that tests the string is still what the copy holds and replaces it. It changes nothing another
//! node may hand out (lent spares become holders, released holders and spares go), so another
//! node's write in between does not matter, and a flush never waits on one. It leaves
//! `allocatedIPCount` alone (it cannot know it without the guard): the next guarded write, or the
//! controller's next round, sets it. Setting it at once measured as a storm at 100 nodes, every
//! node's count write undoing the others'.

use kube::api::{Patch, PatchParams};
use spiderpool_api::crd::{Allocations, SpiderIPPool};

use super::Sources;
use super::round::Copy;
use crate::ipam_service::ServiceError;

/// Writes `stored`'s string of this node over the copy's; the pool as written, or `None` when
/// the string is no longer the copy's (the API server answers 422 to the failed test).
pub(super) async fn write(
    sources: &Sources,
    name: &str,
    current: &Copy,
    stored: &Allocations,
) -> Result<Option<SpiderIPPool>, ServiceError> {
    let node = &sources.node;
    let Some(old) = current
        .pool
        .status
        .as_ref()
        .and_then(|s| s.allocated_ips_by_node.get(node))
    else {
        // Nothing of this node's to test against: the guarded path only.
        return Ok(None);
    };
    let path = format!(
        "/status/allocatedIPsByNode/{}",
        node.replace('~', "~0").replace('/', "~1")
    );
    let new = stored.encoded_node(node);
    let mut ops = vec![serde_json::json!({"op": "test", "path": path, "value": old})];
    ops.push(match new {
        Some(text) => serde_json::json!({"op": "replace", "path": path, "value": text}),
        None => serde_json::json!({"op": "remove", "path": path}),
    });
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| ServiceError::Internal(format!("JSON patch of pool {name}: {e}")))?;
    match sources
        .api
        .patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => Ok(None),
        Err(e) => Err(ServiceError::from_kube(e, name)),
    }
}
