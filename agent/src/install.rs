//! Installing our CNI plugins into the host's CNI bin directory (the agent's init container).

use std::path::Path;

/// The plugins a runtime execs, installed next to the other CNI plugins.
/// `rdma` takes rdma-cni's netconf, so the NADs SpiderMultusConfig renders (and Spiderpool's) run it.
pub const CNI_PLUGINS: [&str; 4] = ["spiderpool", "coordinator", "ifacer", "rdma"];

/// Copies each of `names` from `from` into `to`: written to a temporary name in `to`, made
/// executable, then renamed over the final name, so a runtime exec'ing the plugin meanwhile
/// sees either the old binary or the new one, never half of one.
pub fn install_cni(from: &Path, to: &Path, names: &[&str]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    for name in names {
        let src = from.join(name);
        let tmp = to.join(format!(".{name}.spiderpool-tmp"));
        std::fs::copy(&src, &tmp)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_cni_replaces_atomically_and_leaves_no_temporary() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        for name in CNI_PLUGINS {
            std::fs::write(from.path().join(name), format!("new {name}")).unwrap();
        }
        std::fs::write(to.path().join("spiderpool"), "old").unwrap();
        install_cni(from.path(), to.path(), &CNI_PLUGINS).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(to.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["coordinator", "ifacer", "rdma", "spiderpool"]);
        assert_eq!(
            std::fs::read_to_string(to.path().join("spiderpool")).unwrap(),
            "new spiderpool"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(to.path().join("ifacer"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let err = install_cni(from.path(), to.path(), &["missing"]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
