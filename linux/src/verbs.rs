//! What libibverbs sees of the node's RDMA devices: whether a verbs context opens, and per port
//! its state and the netdevs its GIDs belong to. sysfs can call a port ACTIVE while no process can
//! use it (no `/dev/infiniband/uverbsN`, no provider library, a GID table without the port's
//! netdev); this is the view of a process that tries. The types are always here (the inventory's
//! verdict is plain logic); `probe` needs the `verbs` feature (rdma-sys, libibverbs).

#[cfg(feature = "verbs")]
mod ibverbs;
#[cfg(feature = "verbs")]
pub use ibverbs::probe;

/// One device as libibverbs lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerbsDevice {
    pub name: String,
    /// The ports, or why no verbs context opened (the call and the OS error).
    pub ports: Result<Vec<VerbsPort>, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerbsPort {
    pub port: u32,
    /// `ibv_query_port`'s answer (`ACTIVE`, `DOWN`, ...), or why it failed.
    pub state: Result<String, String>,
    /// The netdev of each GID table entry that is in use (`None`: an entry with no netdev, as on
    /// InfiniBand).
    pub gid_netdevs: Vec<Option<String>>,
}
