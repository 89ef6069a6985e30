//! Whether a pool may hand out new addresses: only while the SpiderIPPoolRegistry lists it at its
//! current generation, so that a pool overlapping another is visibly not in use. A pool neither
//! the caller nor the registry watch has seen registered is registered here (the controller does
//! it too; whoever comes first).

use kube::api::Api;
use spiderpool_api::crd::{SpiderIPPool, SpiderIPPoolRegistry};
use spiderpool_ipam::cluster::register::{self, Outcome as Registration};
use spiderpool_ipam::cluster::registry;

use super::ServiceError;

/// Whether the registry watch shows a pool `(uid, generation)` registered.
pub type RegisteredFn = std::sync::Arc<dyn Fn(&str, i64) -> bool + Send + Sync>;

/// The pool `(uid, generation)` the caller registered or found registered, so later claims need
/// no read of the registry before the watch brings it.
#[derive(Default)]
pub struct Registered(Option<(String, i64)>);

/// `Ok(())` when `pool` may hand out new addresses at its generation, else why not.
pub async fn admitted(
    api: &Api<SpiderIPPoolRegistry>,
    registered: &RegisteredFn,
    known: &mut Registered,
    pool: &SpiderIPPool,
) -> Result<Result<(), String>, ServiceError> {
    let uid = pool.metadata.uid.clone().unwrap_or_default();
    let generation = pool.metadata.generation.unwrap_or(0);
    if known
        .0
        .as_ref()
        .is_some_and(|(u, g)| *u == uid && *g == generation)
        || registered(&uid, generation)
    {
        return Ok(Ok(()));
    }
    let cand = match registry::candidate_of(pool) {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    match register::register(api, &cand).await {
        Ok(Registration::Registered) => {
            known.0 = Some((uid, generation));
            Ok(Ok(()))
        }
        Ok(Registration::Refused(why)) => Ok(Err(why)),
        Err(register::RegisterError::Api { name, source }) => Err(ServiceError::from_kube(
            source,
            &format!("SpiderIPPoolRegistry {name}"),
        )),
        Err(register::RegisterError::Busy(name)) => {
            Err(ServiceError::Conflict(format!("SpiderIPPoolRegistry {name}")))
        }
    }
}
