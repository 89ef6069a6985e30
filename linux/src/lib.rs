//! Thin typed wrappers over the kernel. Everything that touches the host takes its handle or root
//! path as an argument so tests can point it elsewhere.

pub mod links;
pub mod netns;
pub mod probe;
pub mod rdma;
pub mod rtnl;
pub mod sysfs;
