//! The kubelet device plugin: SR-IOV VFs as exclusive devices and `spidernet.io/rdma` as shared
//! RDMA slots, selected from the node inventory.

pub mod allocate;
pub mod config;
pub mod kubelet;
pub mod manager;
pub mod pool;
pub mod preferred;
pub mod server;

/// The kubelet device plugin API v1beta1, generated from `proto/deviceplugin.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("v1beta1");
}
