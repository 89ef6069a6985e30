//! One module per `spiderpool-agent` subcommand: its clap arguments and an `exec`.

pub mod apply;
pub mod device_plugin;
pub mod dra;
pub mod install_cni;
pub mod inventory;
pub mod ipam_service;
pub mod probe;
pub mod rdma_counters;
pub mod run;
