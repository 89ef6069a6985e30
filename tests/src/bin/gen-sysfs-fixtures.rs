//! Regenerates the committed sysfs fixture trees under `tests/fixtures/sysfs/`.
//! usage: cargo run -p spiderpool-e2e --bin gen-sysfs-fixtures

use anyhow::Result;
use spiderpool_e2e::sysfs_fixture::{FIXTURES, build_fixture};
use spiderpool_testing::fixtures::fixtures_dir;

fn main() -> Result<()> {
    for name in FIXTURES {
        let root = fixtures_dir().join(name);
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        build_fixture(name, &root)?;
        println!("wrote {}", root.display());
    }
    Ok(())
}
