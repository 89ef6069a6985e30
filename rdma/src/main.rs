//! `rdma`: exec'd by a container runtime (or Multus) after the plugin that made the pod's NIC.

fn main() {
    use spiderpool_cni::paths::{PathKind, TRUSTED_DIRS_ENV, trusted_dirs};
    let extra = std::env::var_os(TRUSTED_DIRS_ENV);
    let plugin = spiderpool_rdma::RdmaPlugin {
        host: spiderpool_rdma::host::LinuxHost::new("/sys"),
        trusted_dirs: trusted_dirs(PathKind::Data, extra.as_deref()),
    };
    spiderpool_cni::skel::main(&plugin)
}
