//! Test support shared by every crate's tests, depending only on `api` and `linux` so that
//! testing one crate builds no other feature crate: the sysfs fixtures ([`fixtures`],
//! [`sysfs_fixture`]) and helpers for tests that run the project's binaries ([`process`]).
//! (The fake kubelet lives beside the API it speaks: `spiderpool_device_plugin::testing`.)

pub mod fixtures;
pub mod process;
pub mod sysfs_fixture;
