//! Test support shared by every crate's tests, depending on no workspace crate but `api`, so that
//! testing one crate builds no other feature crate: the sysfs fixtures ([`fixtures`],
//! [`sysfs_fixture`]), helpers for tests that run the project's binaries ([`process`]) and the
//! fake kubelet ([`kubelet`]).

pub mod fixtures;
pub mod kubelet;
pub mod process;
pub mod sysfs_fixture;
