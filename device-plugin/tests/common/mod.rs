//! What the device plugin's integration tests share: the fake kubelet (started from a test's
//! runtime) and the sysfs fixtures with their pinned inventories.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use spiderpool_api::inventory::Inventory;
use spiderpool_testing::kubelet::api::RegisterRequest;
use tokio::sync::mpsc;

pub fn start_kubelet(dir: &Path) -> mpsc::UnboundedReceiver<RegisterRequest> {
    spiderpool_testing::kubelet::start_kubelet(dir).unwrap()
}

pub fn fixture(name: &str) -> (Inventory, PathBuf) {
    use spiderpool_testing::fixtures::{fixture_inventory, fixture_root};
    (fixture_inventory(name), fixture_root(name))
}
