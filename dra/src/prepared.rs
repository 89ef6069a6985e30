//! The claims this node has prepared, kept in a file beside the plugin's socket so an agent
//! restarted with pods running still answers kubelet's repeated prepare and its unprepare, and
//! knows which files to remove.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cdi::PreparedDevice;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    pub devices: Vec<PreparedDevice>,
    /// CDI specs and device-info files written for it.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// By claim UID.
    pub claims: BTreeMap<String, PreparedClaim>,
}

impl Checkpoint {
    /// Reads `path`; a missing file is an empty checkpoint. A file that does not parse is moved
    /// aside (`.corrupt`) and reported, and the node starts empty: its claims' files stay until
    /// kubelet prepares them again.
    pub fn load(path: &Path) -> Checkpoint {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Checkpoint::default(),
            Err(e) => {
                tracing::error!("prepared claims {}: {e}; starting with none", path.display());
                return Checkpoint::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                let aside = path.with_extension("corrupt");
                let _ = std::fs::rename(path, &aside);
                tracing::error!(
                    "prepared claims {}: {e}; moved to {} and starting with none",
                    path.display(),
                    aside.display()
                );
                Checkpoint::default()
            }
        }
    }

    /// Writes the whole checkpoint atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        write_atomic(path, &serde_json::to_string(self).map_err(io::Error::other)?)
    }
}

/// `content` to `path` through a temporary file in the same directory, so a reader (containerd
/// loading CDI specs, the agent after a crash) never sees half a file.
pub fn write_atomic(path: &Path, content: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot name: containerd's CDI cache skips it, and the plugin watcher ignores it.
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_survives_a_restart_and_a_corrupt_one_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prepared.json");
        assert_eq!(Checkpoint::load(&path), Checkpoint::default());
        let mut c = Checkpoint::default();
        c.claims.insert(
            "uid-1".into(),
            PreparedClaim {
                namespace: "ns".into(),
                name: "claim".into(),
                devices: vec![PreparedDevice {
                    request_names: vec!["vf".into()],
                    pool_name: "node".into(),
                    device_name: "vf-0000-9b-00-2".into(),
                    cdi_device_ids: vec!["spidernet.io/vf=0000:9b:00.2".into()],
                }],
                files: vec![dir.path().join("spec.json")],
            },
        );
        c.save(&path).expect("save");
        assert_eq!(Checkpoint::load(&path), c);
        std::fs::write(&path, "{not json").expect("write");
        assert_eq!(Checkpoint::load(&path), Checkpoint::default());
        assert!(path.with_extension("corrupt").exists());
        assert!(!path.exists());
    }
}
