//! Garbage collection of SpiderIPClaims (`spiderpool_api::crd::claim`): a claim goes by the same
//! rules as a pool's entry ([`super::World::release_reason`], confirmed on live reads), deleted
//! with its UID and resourceVersion as preconditions, so a claim taken over or recreated since
//! the list is left alone. What stays is counted per pool for the pools' `allocatedIPCount`.

use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Client, ResourceExt};
use spiderpool_api::crd::claim::SpiderIPClaim;

use super::rules::list_all;
use super::{GcError, GcReport, World};
use crate::api_err;

/// Every claim, read before the world snapshot: a pod exists before its claim does, so every
/// claim's pod is in the snapshot read after it.
pub async fn list(client: &Client) -> Result<Vec<SpiderIPClaim>, GcError> {
    list_all(&Api::all(client.clone()), "list SpiderIPClaims").await
}

/// Deletes the claims whose pod no longer wants them; answers how many stay, by pool.
pub async fn collect(
    client: &Client,
    claims: Vec<SpiderIPClaim>,
    world: &World,
    report: &mut GcReport,
) -> Result<BTreeMap<String, i64>, GcError> {
    let api: Api<SpiderIPClaim> = Api::all(client.clone());
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for claim in claims {
        let holder = claim.spec.holder();
        let reason = if world.release_reason(&holder).is_some() {
            world.confirm(client, &holder).await?
        } else {
            None
        };
        let Some(reason) = reason else {
            *held.entry(claim.spec.pool.clone()).or_default() += 1;
            continue;
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        let name = claim.name_any();
        match api.delete(&name, &params).await {
            Ok(_) => {
                let released = format!("{}/{name} ({}: {reason})", claim.spec.pool, claim.spec.pod);
                tracing::info!("released {released}");
                report.released.push(released);
            }
            // Gone, or changed since the list (taken over by its StatefulSet pod): kept.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                *held.entry(claim.spec.pool.clone()).or_default() += 1;
            }
            Err(e) => return Err(api_err(format!("delete SpiderIPClaim {name}"))(e)),
        }
    }
    Ok(held)
}
