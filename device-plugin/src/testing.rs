//! Test support: inventories of the committed sysfs fixtures, from their pinned JSON.

use std::path::PathBuf;

use spiderpool_api::inventory::Inventory;

pub fn fixture_root(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/sysfs")
        .join(name)
}

pub fn fixture_inventory(name: &str) -> Inventory {
    let path = fixture_root(name).with_extension("json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
