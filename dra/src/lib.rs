//! Dynamic Resource Allocation for driver `spidernet.io`: the node's VFs and shared RDMA devices
//! as ResourceSlice devices (`slices`), and the kubelet plugin that prepares claims for them
//! (`plugin`: CDI specs from `cdi`, remembered in `prepared`; served to kubelet by `kubelet`).

pub mod authority;
pub mod cdi;
pub mod kubelet;
pub mod plugin;
pub mod prepared;
pub mod slices;

/// The kubelet APIs, generated from `proto/`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    pub mod dra {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}
