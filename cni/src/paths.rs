//! Paths that a netconf names, confined to the directories the plugin trusts.
//!
//! A netconf is written by whoever may write a NetworkAttachmentDefinition (in Multus, any
//! namespace admin), but the plugin runs as root on the node. So a path in a netconf (`dataDir`,
//! `poolFile`, an agent socket) is only used when it lies, after every symlink is resolved, inside
//! one of the directories trusted for its kind: the defaults below, plus those the runtime's
//! environment lists in `SPIDERPOOL_TRUSTED_DIRS` (colon-separated absolute paths; the
//! environment is the node administrator's, not the netconf author's). Files are read only when
//! they are regular files, and only up to a bound.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::{CniError, ErrorCode};

/// The environment variable that adds trusted directories (to every kind).
pub const TRUSTED_DIRS_ENV: &str = "SPIDERPOOL_TRUSTED_DIRS";

/// What a path is for; each kind has its own default directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Where a store lives (`dataDir`): created on demand.
    Data,
    /// A file of pool manifests (`poolFile`).
    PoolFile,
    /// The node agent's socket (`ipam_unix_socket_path`, `agentSocket`).
    AgentSocket,
}

impl PathKind {
    pub fn default_dirs(self) -> &'static [&'static str] {
        match self {
            PathKind::Data => &[
                "/run/spiderpool",
                "/var/lib/spiderpool",
                "/var/lib/cni/spiderpool",
            ],
            PathKind::PoolFile => &["/etc/spiderpool", "/etc/cni/net.d"],
            PathKind::AgentSocket => &["/run/spidernet", "/var/run/spidernet"],
        }
    }
}

/// The directories trusted for `kind`, given the value of [`TRUSTED_DIRS_ENV`] (relative entries
/// are ignored).
pub fn trusted_dirs(kind: PathKind, extra: Option<&OsStr>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = kind.default_dirs().iter().map(PathBuf::from).collect();
    if let Some(extra) = extra {
        dirs.extend(std::env::split_paths(extra).filter(|p| p.is_absolute()));
    }
    dirs
}

/// `path` (the netconf's `field`) resolved and checked against [`trusted_dirs`] of `kind` from
/// the process environment. Refused with code 7 (invalid network config): a relative path, `..`,
/// a NUL byte, or a path that resolves outside every trusted directory.
pub fn confine(field: &str, path: &Path, kind: PathKind) -> Result<PathBuf, CniError> {
    let extra = std::env::var_os(TRUSTED_DIRS_ENV);
    confine_to(field, path, &trusted_dirs(kind, extra.as_deref()))
}

/// [`confine`] against an explicit list of directories.
pub fn confine_to(field: &str, path: &Path, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    let refuse = |why: &str| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("{field} {}: {why}", path.display()),
        )
    };
    if !path.is_absolute() {
        return Err(refuse("must be an absolute path"));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(refuse("contains a NUL byte"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("must not contain `..`"));
    }
    let resolved = resolve(path);
    let inside = dirs.iter().any(|d| resolved.starts_with(resolve(d)));
    if !inside {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(refuse(&format!(
            "outside the directories trusted for it ({}; {TRUSTED_DIRS_ENV} in the runtime's environment adds more)",
            list.join(", ")
        )));
    }
    Ok(resolved)
}

/// The path with every symlink of its longest existing prefix resolved; the components that do
/// not exist yet follow unchanged (they will be created as directories, not followed).
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<&OsStr> = Vec::new();
    let components: Vec<&OsStr> = path.iter().collect();
    let mut n = components.len();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        if n <= 1 {
            return path.to_path_buf();
        }
        n -= 1;
        rest.push(components[n]);
        existing = components[..n].iter().collect();
    }
}

/// Why a bounded read failed. No variant carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads a regular file of at most `limit` bytes. Devices, FIFOs and directories are refused
/// before they are opened (a FIFO would block, `/dev/zero` would never end).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    if !std::fs::symlink_metadata(path)?.file_type().is_file() {
        return Err(ReadError::NotRegular);
    }
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut out = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(d: &Path) -> Vec<PathBuf> {
        vec![d.join("trusted")]
    }

    #[test]
    fn paths_inside_a_trusted_directory_pass_and_come_back_resolved() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("trusted")).unwrap();
        let ok = confine_to("dataDir", &t.path().join("trusted/a/b"), &dirs(t.path())).unwrap();
        assert_eq!(ok, t.path().canonicalize().unwrap().join("trusted/a/b"));
        assert!(confine_to("dataDir", &t.path().join("trusted"), &dirs(t.path())).is_ok());
    }

    #[test]
    fn traversal_symlinks_and_neighbours_are_refused_with_code_7() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("trusted")).unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(t.path().join("etc"), t.path().join("trusted/link")).unwrap();
        for bad in [
            t.path().join("trusted/../etc"),
            t.path().join("trusted/link/x"),
            t.path().join("trusted-not"),
            t.path().join("etc"),
            PathBuf::from("relative/x"),
            PathBuf::from("/run/x\0y"),
        ] {
            let e = confine_to("dataDir", &bad, &dirs(t.path())).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig as u32, "{bad:?}");
            assert!(e.msg.starts_with("dataDir "), "{}", e.msg);
        }
    }

    #[test]
    fn bounded_reads_refuse_devices_fifos_and_big_files() {
        let t = tempfile::tempdir().unwrap();
        let small = t.path().join("small");
        std::fs::write(&small, b"12345").unwrap();
        assert_eq!(read_bounded(&small, 5).unwrap(), b"12345");
        assert!(matches!(read_bounded(&small, 4), Err(ReadError::TooLarge(4))));
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular)
        ));
        assert!(matches!(read_bounded(t.path(), 10), Err(ReadError::NotRegular)));
        let fifo = t.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert!(matches!(read_bounded(&fifo, 10), Err(ReadError::NotRegular)));
    }

    #[test]
    fn extra_directories_come_from_the_environment_value() {
        let d = trusted_dirs(PathKind::Data, Some(OsStr::new("/srv/a:relative:/srv/b")));
        assert!(d.contains(&PathBuf::from("/srv/a")) && d.contains(&PathBuf::from("/srv/b")));
        assert!(!d.iter().any(|p| p.is_relative()));
    }
}
