//! The claims this node has prepared, kept in a file beside the plugin's socket so an agent
//! restarted with pods running still answers kubelet's repeated prepare and its unprepare, and
//! knows which files to remove.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use spiderpool_api::inventory::Inventory;

use crate::cdi::PreparedDevice;
use crate::slices::{Excluded, label, rdma_of};

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

impl Checkpoint {
    /// Reads `path` without touching it (another component watching what DRA holds); `None`
    /// when it is missing or unreadable.
    pub fn peek(path: &Path) -> Option<Checkpoint> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// The VFs and RDMA devices its claims hold, named as the inventory names them.
    pub fn held(&self, inv: &Inventory) -> Excluded {
        let names: BTreeSet<&str> = self
            .claims
            .values()
            .flat_map(|c| c.devices.iter().map(|d| d.device_name.as_str()))
            .collect();
        let mut held = Excluded::default();
        for nic in &inv.nics {
            for vf in nic.sriov.iter().flat_map(|s| s.vfs.iter()) {
                if names.contains(format!("vf-{}", label(&vf.pci_address)).as_str()) {
                    held.pci.insert(vf.pci_address.clone());
                }
            }
        }
        for name in &names {
            if name.starts_with("rdma-")
                && let Some(rdma) = rdma_of(inv, name)
            {
                held.rdma.insert(rdma.to_string());
            }
        }
        held
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

    #[test]
    fn what_prepared_claims_hold_is_named_as_the_inventory_names_it() {
        let inv = spiderpool_testing::fixtures::fixture_inventory("gpu-nic");
        let device = |name: &str| PreparedDevice {
            request_names: vec!["r".into()],
            pool_name: "n".into(),
            device_name: name.into(),
            cdi_device_ids: Vec::new(),
        };
        let mut c = Checkpoint::default();
        c.claims.insert(
            "u".into(),
            PreparedClaim {
                namespace: "ns".into(),
                name: "c".into(),
                devices: vec![
                    device("vf-0000-9b-00-3"),
                    device("rdma-mlx5-1-7"),
                    device("rdma-mlx5-1x"),
                ],
                files: Vec::new(),
            },
        );
        let held = c.held(&inv);
        assert_eq!(held.pci, ["0000:9b:00.3".to_string()].into());
        assert_eq!(held.rdma, ["mlx5_1".to_string()].into());
    }
}
