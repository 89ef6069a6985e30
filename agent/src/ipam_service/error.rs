//! The IPAM service's errors, and the CNI error code each becomes in the plugin's answer.

use std::sync::Arc;

use spiderpool_cni::{CniError, ErrorCode};
use spiderpool_ipam::cluster::select::BadAnnotation;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// A call to the API server failed; `what` says which object it was about. Shared (`Arc`)
    /// because one failed pool write answers every request of its batch.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: Arc<kube::Error>,
    },
    /// Writes that kept losing to other writers.
    #[error("{0}: kept conflicting")]
    Conflict(String),
    #[error("{0}: not found")]
    NotFound(String),
    /// Something the controller makes (an auto-pool, its growth) is not there yet.
    #[error("{0}")]
    NotYet(String),
    #[error("invalid pool: {0}")]
    InvalidPool(String),
    #[error(transparent)]
    BadAnnotation(#[from] BadAnnotation),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn from_kube(e: kube::Error, what: &str) -> ServiceError {
        match e {
            kube::Error::Api(s) if s.code == 404 => ServiceError::NotFound(what.to_string()),
            other => ServiceError::Api {
                what: what.to_string(),
                source: Arc::new(other),
            },
        }
    }
}

impl From<ServiceError> for CniError {
    fn from(e: ServiceError) -> CniError {
        let code = match &e {
            ServiceError::Api { .. }
            | ServiceError::Conflict(_)
            | ServiceError::NotFound(_)
            | ServiceError::NotYet(_) => ErrorCode::TryAgainLater,
            ServiceError::InvalidPool(_) | ServiceError::BadAnnotation(_) | ServiceError::BadRequest(_) => {
                ErrorCode::InvalidNetworkConfig
            }
            ServiceError::Exhausted(_) => ErrorCode::PoolExhausted,
            ServiceError::Mismatch(_) => ErrorCode::AllocationMismatch,
            ServiceError::Internal(_) => ErrorCode::Internal,
        };
        CniError::new(code, e.to_string())
    }
}
