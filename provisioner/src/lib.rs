//! The node side that is not a CNI plugin: discovery of NICs, VFs, RDMA devices and NUMA
//! (sysfs + netlink → [`spiderpool_api::inventory::Inventory`]) and its rendering; the
//! `spiderpool-agent` binary, and the agent's cluster-mode IPAM service.

pub mod applier;
pub mod daemon;
pub mod discovery;
pub mod ipam_service;
pub mod planner;
pub mod render;
