//! Reads under a sysfs root (`/sys`, or a fixture tree with the same layout). Every read is
//! tolerant: a missing file is `None`, a malformed one is `None` plus a [`Problem`] the caller can
//! report, never a panic or an aborted scan.

use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

/// A file that exists but could not be read or understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path relative to the sysfs root.
    pub path: String,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.why)
    }
}

#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel` (which may itself be absolute inside the root, e.g. from
    /// [`Sysfs::resolve`]).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        if rel.starts_with(&self.root) {
            rel.to_path_buf()
        } else {
            self.root.join(rel)
        }
    }

    fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.path(rel).exists()
    }

    /// The trimmed content of a file; `None` when it does not exist. An unreadable file (some
    /// sysfs attributes fail with EINVAL, e.g. `speed` of a link that is down) is `None` too,
    /// and reported.
    pub fn read(&self, rel: impl AsRef<Path>, problems: &mut Vec<Problem>) -> Option<String> {
        let path = self.path(rel);
        match read_small(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => Some(s.trim().to_string()),
                Err(_) => {
                    problems.push(Problem {
                        path: self.display(&path),
                        why: "not UTF-8".into(),
                    });
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                problems.push(Problem {
                    path: self.display(&path),
                    why: e.to_string(),
                });
                None
            }
        }
    }

    /// A file parsed with `parse`; a parse failure is reported and gives `None`.
    pub fn parse<T>(
        &self,
        rel: impl AsRef<Path>,
        problems: &mut Vec<Problem>,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let path = self.path(rel);
        let text = self.read(&path, problems)?;
        let value = parse(&text);
        if value.is_none() {
            problems.push(Problem {
                path: self.display(&path),
                why: format!("unexpected content {text:?}"),
            });
        }
        value
    }

    /// A decimal integer file.
    pub fn read_i64(&self, rel: impl AsRef<Path>, problems: &mut Vec<Problem>) -> Option<i64> {
        self.parse(rel, problems, |s| s.parse().ok())
    }

    /// A hexadecimal file like `0x15b3`.
    pub fn read_hex(&self, rel: impl AsRef<Path>, problems: &mut Vec<Problem>) -> Option<u32> {
        self.parse(rel, problems, |s| {
            u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
        })
    }

    /// The last component of a symlink's target (`driver` -> `mlx5_core`); `None` when absent.
    pub fn link_name(&self, rel: impl AsRef<Path>) -> Option<String> {
        let target = std::fs::read_link(self.path(rel)).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Follows the symlink at `rel` (sysfs links are one hop to a real directory) and returns
    /// the target, or `rel` itself when it is a directory; `None` when it is missing or dangles.
    /// Lexical, unlike `canonicalize`, whose `realpath` costs a `readlink` per path component:
    /// a scan resolves hundreds of links.
    pub fn resolve(&self, rel: impl AsRef<Path>) -> Option<PathBuf> {
        let path = self.path(rel);
        let resolved = match std::fs::read_link(&path) {
            Ok(target) => normalize(&path.parent()?.join(target)),
            Err(_) => path,
        };
        resolved.is_dir().then_some(resolved)
    }

    /// Writes an attribute (e.g. `sriov_numvfs`, `driver_override`, a bonding option).
    pub fn write(&self, rel: impl AsRef<Path>, value: &str) -> std::io::Result<()> {
        std::fs::write(self.path(rel), value)
    }

    /// Entry names of a directory, sorted; empty when it does not exist.
    pub fn list(&self, rel: impl AsRef<Path>) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path(rel)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        names
    }
}

/// Reads a whole file with as few system calls as possible: sysfs attributes are at most a
/// page and come in one `read`; a short read of a regular file means end of file too.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf[len..])?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    Ok(buf)
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `dddd:bb:dd.f` in hex with a function of 0-7, as sysfs names PCI functions; anything else
/// (`rxe0`, `../x`) is not one, which also keeps such names out of the paths built from them.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && (b'0'..=b'7').contains(&b[11])
}

/// Orders `virtfn2` before `virtfn10` and `eth2` before `eth10`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| {
        let digits = s.len() - s.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (head, tail) = s.split_at(digits);
        (head.to_string(), tail.parse::<u64>().ok())
    };
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_reads() {
        let dir = std::env::temp_dir().join(format!("sysfs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        std::fs::write(dir.join("dev/vendor"), "0x15b3\n").unwrap();
        std::fs::write(dir.join("dev/numa_node"), "-1\n").unwrap();
        std::fs::write(dir.join("dev/mtu"), "lots\n").unwrap();
        std::fs::write(dir.join("dev/bad"), [0xff, 0xfe]).unwrap();
        std::os::unix::fs::symlink("../drivers/mlx5_core", dir.join("dev/driver")).unwrap();
        let sysfs = Sysfs::new(&dir);
        let mut problems = Vec::new();
        assert_eq!(sysfs.read_hex("dev/vendor", &mut problems), Some(0x15b3));
        assert_eq!(sysfs.read_i64("dev/numa_node", &mut problems), Some(-1));
        assert_eq!(sysfs.read_i64("dev/missing", &mut problems), None);
        assert!(problems.is_empty());
        assert_eq!(sysfs.read_i64("dev/mtu", &mut problems), None);
        assert_eq!(sysfs.read("dev/bad", &mut problems), None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, "dev/mtu");
        assert_eq!(sysfs.link_name("dev/driver").as_deref(), Some("mlx5_core"));
        assert_eq!(sysfs.resolve("dev/driver"), None, "dangling");
        std::fs::create_dir_all(dir.join("drivers/mlx5_core")).unwrap();
        assert_eq!(sysfs.resolve("dev/driver"), Some(dir.join("drivers/mlx5_core")));
        assert_eq!(sysfs.resolve("dev"), Some(dir.join("dev")));
        assert_eq!(sysfs.list("dev"), ["bad", "driver", "mtu", "numa_node", "vendor"]);
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert!(sysfs.list("nothing").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["virtfn10", "virtfn2", "virtfn1", "eth0", "virtfn"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["eth0", "virtfn", "virtfn1", "virtfn2", "virtfn10"]);
    }

    #[test]
    fn pci_addresses_are_recognised_by_shape() {
        for good in ["0000:3b:00.1", "0000:af:1f.7", "abcd:ef:01.0"] {
            assert!(is_pci_address(good), "{good}");
        }
        for bad in [
            "rxe0",
            "03:00.2",
            "0000:3b:00:1",
            "0000:03:00.8",
            "0000:03:00.2 ",
            "../../etc/x",
        ] {
            assert!(!is_pci_address(bad), "{bad}");
        }
    }
}
