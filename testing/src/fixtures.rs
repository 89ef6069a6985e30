//! The committed sysfs fixture trees (`tests/fixtures/sysfs/<name>/`) and the inventories pinned
//! beside them (`<name>.json`). Test code: a missing or broken fixture panics with its path.

use std::path::{Path, PathBuf};

use spiderpool_api::inventory::Inventory;

/// Where the fixture trees are: an absolute path without `..` (tests pass it on as a
/// Kubernetes hostPath, which must not contain `..`). The checkout this crate was built from;
/// when that one is gone (a shared target directory last built by another clone, which cargo
/// does not rebuild for a path change), the checkout of the package under test, which cargo
/// names at run time.
pub fn fixtures_dir() -> PathBuf {
    let of = |manifest: &Path| manifest.parent().unwrap_or(manifest).join("tests/fixtures/sysfs");
    let built = of(Path::new(env!("CARGO_MANIFEST_DIR")));
    if built.is_dir() {
        return built;
    }
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(now) => of(Path::new(&now)),
        None => built,
    }
}

/// The sysfs root of fixture `name` (`cx6dx`, `e810`, `cx7-ib`, `bond`).
pub fn fixture_root(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// The pinned inventory of fixture `name`: what discovery reads from its tree.
pub fn fixture_inventory(name: &str) -> Inventory {
    let path = fixture_root(name).with_extension("json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A copy of fixture `name` at `to` (`cp -a`: the tree's relative symlinks stay as they are), for
/// a test that changes it.
pub fn copy_fixture(name: &str, to: &Path) {
    let from = fixture_root(name);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("cp -a {}: {e}", from.display()));
    assert!(
        status.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fixtures_dir_is_a_plain_absolute_path_that_exists() {
        let dir = super::fixtures_dir();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(
            dir.components().all(|c| c != std::path::Component::ParentDir),
            "{} contains ..",
            dir.display()
        );
        assert!(dir.join("cx6dx").is_dir(), "{}", dir.display());
    }
}
