//! The slim cluster controller: IP garbage collection and pool status counts ([`gc`]), pool
//! registration, `Ready` conditions and finalizers ([`pools`]), the
//! SpiderCoordinator status with the cluster's pod and service CIDRs ([`coordinator`]), leader
//! election on a Lease ([`leader`]) and Prometheus metrics ([`metrics`]). Allocation itself is
//! the agents' work; the controller only repairs what they cannot see from one node.

pub mod coordinator;
pub mod crds;
pub mod gc;
pub mod leader;
pub mod metrics;
pub mod pools;
