//! Spiderpool IPAM, both modes: address ranges and pools; standalone mode's allocator and
//! embedded store; cluster mode's pool choice and allocation decision ([`cluster`]); and the
//! `spiderpool` CNI IPAM plugin, which in cluster mode asks the agent.

pub mod allocator;
pub mod cluster;
pub mod config;
pub mod plugin;
pub mod pool;
pub mod range;
pub mod store;
