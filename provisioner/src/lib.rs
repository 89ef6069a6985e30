//! The node's hardware, read and changed: discovery of NICs, VFs, RDMA devices, bonds and NUMA
//! (sysfs + netlink → [`spiderpool_api::inventory::Inventory`]) and its rendering as a table, and
//! the SpiderNetworkNodePolicy [`planner`] (pure: policies + what the node has → ordered actions)
//! with the [`applier`] that carries the actions out against the kernel.

pub mod applier;
pub mod discovery;
pub mod planner;
pub mod render;
pub mod topology;
pub mod verbs_health;
