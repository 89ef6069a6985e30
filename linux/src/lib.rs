//! Thin typed wrappers over the kernel. Everything that touches the host takes its handle or root
//! path as an argument so tests can point it elsewhere. Netlink goes through one socket type
//! ([`netlink::NetlinkSocket`]) with one error type; the route family is [`rtnl`], the RDMA one
//! [`rdma`].

pub mod link_users;
pub mod links;
pub mod netlink;
pub mod netns;
pub mod probe;
pub mod rdma;
pub mod rtnl;
pub mod sysctl;
pub mod sysfs;
#[cfg(feature = "udev")]
pub mod uevents;
pub mod verbs;
