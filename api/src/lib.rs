//! Types shared by the agent's parts and, later, the cluster: the node inventory is what
//! discovery produces, what the device plugin and the provisioner select devices from, and the
//! status of SpiderNodeInventory.

pub mod inventory;
pub mod policy;
