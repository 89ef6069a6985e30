//! The slim cluster controller: IP garbage collection and pool status counts ([`gc`]), pool
//! registration, `Ready` conditions and finalizers ([`pools`]), SpiderSubnet auto-pools
//! ([`subnets`]), the
//! SpiderCoordinator status with the cluster's pod and service CIDRs ([`coordinator`]), leader
//! election on a Lease ([`leader`]) and Prometheus metrics ([`metrics`]). Allocation itself is
//! the agents' work; the controller only repairs what they cannot see from one node.

pub mod coordinator;
pub mod crds;
pub mod gc;
pub mod leader;
pub mod metrics;
pub mod multus;
pub mod node_policies;
pub mod pools;
pub mod subnets;

/// A call to the API server that failed, and what it was about: the one error of the controller's
/// passes (GC, pool registration).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ApiError {
    pub what: String,
    #[source]
    pub source: kube::Error,
}

/// `map_err(api_err("list pods"))`.
pub fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError { what, source }
}
