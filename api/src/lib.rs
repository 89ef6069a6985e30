//! Types shared by the agent's parts and the cluster: the node inventory is what discovery
//! produces, what the device plugin and the provisioner select devices from, and the status of
//! SpiderNodeInventory; the CRD kinds of group `spiderpool.spidernet.io/v2beta1` (see [`crd`]).

pub mod coordinator;
pub mod crd;
pub mod inventory;
pub mod multus;
pub mod policy;
pub mod policy_status;
