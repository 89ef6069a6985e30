//! The registry's one write path, shared by the agent's pool writers and the controller: read the
//! family's SpiderIPPoolRegistry, decide with [`registry::admit`], write guarded by the read's
//! resourceVersion (or create it), and on a conflict read again and decide again.

use kube::api::{Api, ObjectMeta, PostParams};
use spiderpool_api::crd::{IPPoolRegistrySpec, SpiderIPPoolRegistry, registry_name};

use super::registry::{self, Admission, Candidate};

/// Rounds before giving up: each lost round means another pool joined or left meanwhile, so a
/// bound this size is only reached by a registry written without pause.
const ROUNDS: usize = 20;

/// Whether the pool is now registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered,
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("SpiderIPPoolRegistry {name}: {source}")]
    Api {
        name: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("SpiderIPPoolRegistry {0}: still changing after {ROUNDS} rounds; try again")]
    Busy(&'static str),
}

/// Registers `cand` (see [`registry::admit`]).
pub async fn register(api: &Api<SpiderIPPoolRegistry>, cand: &Candidate) -> Result<Outcome, RegisterError> {
    let name = registry_name(cand.family.number());
    let err = |source| RegisterError::Api { name, source };
    for _ in 0..ROUNDS {
        let current = api.get_opt(name).await.map_err(err)?;
        let spec = current.as_ref().map(|r| r.spec.clone()).unwrap_or_default();
        let written = match registry::admit(&spec, cand) {
            Admission::Registered => return Ok(Outcome::Registered),
            Admission::Refused(why) => return Ok(Outcome::Refused(why)),
            Admission::Write(spec) => write(api, name, current, spec).await,
        };
        match written {
            Ok(()) => return Ok(Outcome::Registered),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(RegisterError::Busy(name))
}

/// Writes `spec` over `current` (guarded by its resourceVersion), or creates the object when
/// there was none (the API server refuses a second create with 409).
pub async fn write(
    api: &Api<SpiderIPPoolRegistry>,
    name: &str,
    current: Option<SpiderIPPoolRegistry>,
    spec: IPPoolRegistrySpec,
) -> Result<(), kube::Error> {
    match current {
        Some(mut obj) => {
            obj.spec = spec;
            api.replace(name, &PostParams::default(), &obj).await.map(drop)
        }
        None => {
            let obj = SpiderIPPoolRegistry {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec,
            };
            api.create(&PostParams::default(), &obj).await.map(drop)
        }
    }
}
