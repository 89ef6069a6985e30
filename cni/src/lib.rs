//! The CNI protocol as a plugin sees it: spec versions 0.3.0 to 1.1.0, the netconf and result
//! types, conversion between result versions, error codes, `CNI_*` environment parsing and a
//! skeleton that turns a [`Plugin`] implementation into a spec-conforming executable; and the
//! protocol between our plugins and the node agent ([`agent`]).

pub mod agent;
pub mod args;
pub mod cache;
pub mod error;
pub mod exec;
pub mod netconf;
pub mod paths;
pub mod result;
pub mod skel;
pub mod version;

pub use args::CniArgs;
pub use error::{CniError, ErrorCode};
pub use netconf::{Attachment, NetConf};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Command, Environment, Plugin, PluginInfo, Request};
pub use version::CniVersion;
