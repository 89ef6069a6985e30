//! Named network namespaces, compatible with `ip netns`: a namespace is kept alive by a bind mount
//! of its nsfs file under a directory (by default `/run/netns`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub const DEFAULT_NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns {name}: {what}: {source}")]
    Io {
        name: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("netns {name}: {what}: {source}")]
    Sys {
        name: String,
        what: &'static str,
        source: nix::Error,
    },
    #[error("netns {name}: the helper thread panicked")]
    Thread { name: String },
}

/// A named network namespace that is removed (unmounted and unlinked) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
    remove_on_drop: bool,
}

impl NetNs {
    /// Creates `/run/netns/<name>` like `ip netns add <name>`, with its loopback up.
    pub fn create(name: &str) -> Result<NetNs, NetnsError> {
        NetNs::create_in(Path::new(DEFAULT_NETNS_DIR), name)
    }

    pub fn create_in(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
        let io_err = |what| {
            move |source| NetnsError::Io {
                name: name.to_string(),
                what,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io_err("create directory"))?;
        let path = dir.join(name);
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create mount point"))?;
        // unshare() changes only the calling thread; a short-lived thread keeps this one untouched.
        let target = path.clone();
        let outcome = std::thread::spawn(move || -> Result<(), (&'static str, nix::Error)> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind mount", e))
        })
        .join();
        let fail = |err: NetnsError| {
            let _ = std::fs::remove_file(&path);
            Err(err)
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err((what, source))) => {
                return fail(NetnsError::Sys {
                    name: name.into(),
                    what,
                    source,
                });
            }
            Err(_) => return fail(NetnsError::Thread { name: name.into() }),
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(source) => {
                return fail(NetnsError::Io {
                    name: name.into(),
                    what: "open",
                    source,
                });
            }
        };
        let ns = NetNs {
            name: name.into(),
            path,
            file,
            remove_on_drop: true,
        };
        ns.run(set_loopback_up)
            .and_then(|inner| inner)
            .map_err(|source| NetnsError::Io {
                name: name.into(),
                what: "loopback up",
                source,
            })?;
        Ok(ns)
    }

    /// Opens an existing namespace by path (not removed on drop).
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = File::open(path).map_err(|source| NetnsError::Io {
            name: name.clone(),
            what: "open",
            source,
        })?;
        Ok(NetNs {
            name,
            path: path.to_path_buf(),
            file,
            remove_on_drop: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs inside this namespace (the child enters it between fork and exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.enter_on_spawn(&mut cmd);
        cmd
    }

    /// Makes `cmd` enter this namespace when spawned.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let fd: RawFd = self.file.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; setns(2) is a
        // plain system call. The fd stays open in the parent for as long as `self` lives, and the
        // child inherits it.
        unsafe {
            cmd.pre_exec(move || {
                let ns = BorrowedFd::borrow_raw(fd);
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: the fd belongs to `self.file`, which outlives this scoped thread.
                let ns = unsafe { BorrowedFd::borrow_raw(fd) };
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread in netns panicked")))
        })
    }
}

/// The namespace file, for calls that take one (`setns`, moving an RDMA device).
impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Brings `lo` up in the current thread's namespace (a fresh namespace has it down), through
/// the SIOCSIFFLAGS ioctl so no tool is needed.
fn set_loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    #[repr(C)]
    struct IfReqFlags {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    const SIOCGIFFLAGS: u64 = 0x8913;
    const SIOCSIFFLAGS: u64 = 0x8914;
    const IFF_UP: i16 = 0x1;
    nix::ioctl_readwrite_bad!(get_flags, SIOCGIFFLAGS, IfReqFlags);
    nix::ioctl_readwrite_bad!(set_flags, SIOCSIFFLAGS, IfReqFlags);
    // SAFETY: `req` is a properly sized and initialised `struct ifreq` for the flags ioctls.
    unsafe {
        get_flags(sock.as_raw_fd(), &mut req).map_err(io::Error::from)?;
        req.flags |= IFF_UP;
        set_flags(sock.as_raw_fd(), &mut req).map_err(io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    // Root-only; hack/test.sh runs it in the netns tier (`--ignored`).
    #[test]
    #[ignore = "netns tier: needs root"]
    fn create_run_command_and_remove() {
        assert!(is_root(), "the netns tier runs as root");
        let dir = std::env::temp_dir().join(format!("netns-test-{}", std::process::id()));
        let ns = NetNs::create_in(&dir, "unit").unwrap();
        let host_ino = std::fs::metadata("/proc/self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        let inside_ino = ns
            .run(|| {
                std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            })
            .unwrap()
            .unwrap();
        assert_ne!(host_ino, inside_ino);
        let out = ns.command("cat").arg("/proc/self/net/dev").output().unwrap();
        let devs = String::from_utf8_lossy(&out.stdout);
        assert!(devs.contains("lo:") && !devs.contains("eth0"), "{devs}");
        let path = ns.path().to_path_buf();
        drop(ns);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
