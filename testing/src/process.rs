//! Running the project's binaries from tests.

use std::path::{Path, PathBuf};

/// The directory holding this workspace's binaries (`spiderpool`, ...): `SPIDERPOOL_BIN_DIR`, or
/// the target directory the calling test binary was built into (hack/test.sh builds the
/// binaries first). Test code: panics when there are none.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPIDERPOOL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in a target directory", exe.display()))
        .to_path_buf();
    assert!(
        dir.join("spiderpool").exists(),
        "{} has no spiderpool binary: run `cargo build --workspace --bins` first (hack/test.sh does)",
        dir.display()
    );
    dir
}

/// The binary `name` as it ships when `SPIDERPOOL_BIN_DIR` is set (hack/test.sh: the CNI plugins'
/// static builds), else `built`, the one cargo built for the calling test (`CARGO_BIN_EXE_<name>`).
pub fn shipped_or(name: &str, built: &str) -> PathBuf {
    std::env::var_os("SPIDERPOOL_BIN_DIR")
        .map_or_else(|| PathBuf::from(built), |dir| PathBuf::from(dir).join(name))
}
