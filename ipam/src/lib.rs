//! Spiderpool IPAM: address ranges, pools, the allocator, the embedded store and the `spiderpool`
//! CNI IPAM plugin.

pub mod allocator;
pub mod config;
pub mod plugin;
pub mod pool;
pub mod range;
pub mod store;
