//! Which agent of a node may touch the node's spares (`ipam::cluster::spares`).
//!
//! Spares are lent without a write of the pool, so two agents of one node lending from the same
//! string could give one address to two pods. An update with `maxSurge` runs the new agent beside
//! the old one for a while, so the right to lend is one exclusive `flock` on a file beside the
//! IPAM socket (`<socket>.lock`, on the host directory both agents mount): the kernel lets only
//! one process hold it, and lets go of it when that process dies, even by SIGKILL. An agent
//! without the lock leaves the node's spares alone: it writes every claim and release at once,
//! taking only addresses nobody holds or has set aside.
//!
//! The holder lets go when a newer agent takes the socket over (the path no longer names the
//! socket it bound): it stops lending, writes what it lent and released and gives its spares back
//! (each pool writer's last round), and only then unlocks. The new agent, once it holds the lock,
//! reads its node's endpoints before lending, for spares lent by an agent that died holding it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// What this agent may do with its node's spares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Another agent of the node may hold spares lent without a write: hands off.
    Waiting,
    /// This agent alone lends, takes and gives back the node's spares.
    Held,
    /// A newer agent took the socket over: write what was lent and released, give every spare
    /// back, then let go.
    Closing,
    /// Let go for good: hands off.
    Closed,
}

impl Right {
    /// Whether a writer may lend, take or give back the node's spares under this right.
    pub fn touches_spares(self) -> bool {
        matches!(self, Right::Held | Right::Closing)
    }
}

/// How often the socket and the lock are looked at.
const POLL: Duration = Duration::from_millis(200);

pub struct LendRight {
    socket: PathBuf,
    lock_path: PathBuf,
    /// The socket this agent bound, as [`identity`] tells it.
    bound: OnceLock<Identity>,
    inner: Mutex<Inner>,
    changed: watch::Sender<Right>,
}

struct Inner {
    right: Right,
    /// The locked file while this agent holds the right.
    lock: Option<File>,
    /// Writer rounds under way that may touch spares.
    rounds: usize,
    /// Pools whose writer holds spares, or lent or released what it has not written.
    dirty: HashSet<String>,
}

type Identity = (u64, u64, i64, i64);

/// Device, inode and change time: a socket replaced by one on a reused inode number still differs.
fn identity(meta: &std::fs::Metadata) -> Identity {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

/// A writer's round under a right (see [`LendRight::enter`]); ends when dropped.
pub struct Round<'a> {
    owner: &'a LendRight,
    right: Right,
}

impl Round<'_> {
    pub fn right(&self) -> Right {
        self.right
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        if self.right.touches_spares() {
            let mut inner = self.owner.lock_inner();
            inner.rounds = inner.rounds.saturating_sub(1);
        }
    }
}

impl LendRight {
    /// The right of the agent serving `socket`, not yet held: [`LendRight::bound`] starts it.
    pub fn new(socket: &Path) -> Arc<LendRight> {
        let mut lock_path = socket.as_os_str().to_owned();
        lock_path.push(".lock");
        Arc::new(LendRight {
            socket: socket.to_path_buf(),
            lock_path: lock_path.into(),
            bound: OnceLock::new(),
            inner: Mutex::new(Inner {
                right: Right::Waiting,
                lock: None,
                rounds: 0,
                dirty: HashSet::new(),
            }),
            changed: watch::channel(Right::Waiting).0,
        })
    }

    /// Records the socket just bound as this agent's and takes the lock when it is free; from
    /// then on [`LendRight::poll`] keeps the right current.
    pub fn bound(&self) -> std::io::Result<()> {
        let _ = self.bound.set(identity(&std::fs::metadata(&self.socket)?));
        self.poll();
        Ok(())
    }

    /// Polls for the process's life (call after [`LendRight::bound`]).
    pub async fn keep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POLL).await;
            self.poll();
        }
    }

    pub fn right(&self) -> Right {
        self.lock_inner().right
    }

    /// Tells of every change of the right.
    pub fn subscribe(&self) -> watch::Receiver<Right> {
        self.changed.subscribe()
    }

    /// A writer's round: it runs under the right this returns, which is not let go before the
    /// round ends (the returned guard is dropped).
    pub fn enter(&self) -> Round<'_> {
        let mut inner = self.lock_inner();
        if inner.right.touches_spares() {
            inner.rounds += 1;
        }
        Round {
            owner: self,
            right: inner.right,
        }
    }

    /// After each round: whether `pool`'s writer still keeps something of the node's spares
    /// (spares, or lent or released addresses not written).
    pub fn report(&self, pool: &str, keeps: bool) {
        let mut inner = self.lock_inner();
        if keeps {
            inner.dirty.insert(pool.to_string());
        } else {
            inner.dirty.remove(pool);
        }
    }

    /// Moves the right on: takes the free lock, notices a takeover of the socket, lets go once
    /// nothing is kept.
    pub fn poll(&self) {
        let Some(bound) = self.bound.get() else { return };
        let ours = std::fs::metadata(&self.socket).is_ok_and(|m| identity(&m) == *bound);
        let mut inner = self.lock_inner();
        let before = inner.right;
        match inner.right {
            Right::Waiting if !ours => inner.right = Right::Closed,
            Right::Waiting => match self.try_lock() {
                Ok(Some(file)) => {
                    inner.lock = Some(file);
                    inner.right = Right::Held;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("spares lock {}: {e}", self.lock_path.display()),
            },
            Right::Held if !ours => inner.right = Right::Closing,
            _ => {}
        }
        if inner.right == Right::Closing && inner.rounds == 0 && inner.dirty.is_empty() {
            // Dropping the only descriptor unlocks.
            inner.lock = None;
            inner.right = Right::Closed;
        }
        let now = inner.right;
        drop(inner);
        if now != before {
            match now {
                Right::Held => tracing::info!(
                    "this agent lends the node's spares (lock {})",
                    self.lock_path.display()
                ),
                Right::Closing => tracing::info!(
                    "socket {} taken over by a newer agent: writing what was lent, giving spares back",
                    self.socket.display()
                ),
                Right::Closed => tracing::info!("spares let go: this agent no longer touches them"),
                Right::Waiting => {}
            }
            self.changed.send_replace(now);
        }
    }

    /// The locked file, `None` while another process holds it.
    fn try_lock(&self) -> std::io::Result<Option<File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn lock_inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An agent's socket, taken over by another, for unit tests: plain files stand in for sockets.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// `dir/ipam.sock` and the right of the agent that bound it.
    pub(crate) fn agent(dir: &Path) -> (PathBuf, Arc<LendRight>) {
        let socket = dir.join("ipam.sock");
        std::fs::write(&socket, b"").expect("socket stand-in");
        let right = LendRight::new(&socket);
        right.bound().expect("bound");
        (socket, right)
    }

    /// A newer agent binding `socket` again, and a file standing for the old listener, which
    /// keeps the old inode while open.
    pub(crate) fn take_over(socket: &Path) -> (File, Arc<LendRight>) {
        let old_listener = File::open(socket).expect("open");
        std::fs::remove_file(socket).expect("rm");
        std::fs::write(socket, b"").expect("socket stand-in");
        let right = LendRight::new(socket);
        right.bound().expect("bound");
        (old_listener, right)
    }

    /// A right held, for unit tests of the writers, in a directory kept for the process's life.
    pub(crate) fn held() -> Arc<LendRight> {
        let (_, right) = agent(&tempfile::tempdir().expect("tempdir").keep());
        assert_eq!(right.right(), Right::Held);
        right
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{agent, take_over};
    use super::*;

    #[test]
    fn one_agent_holds_the_right_until_taken_over_and_clean() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, old) = agent(dir.path());
        assert_eq!(old.right(), Right::Held);
        old.report("p", true);

        // The new agent replaces the socket and finds the lock taken.
        let (_listener, new) = take_over(&path);
        assert_eq!(new.right(), Right::Waiting);

        // The old one sees the takeover but keeps the lock while a writer keeps spares or a
        // round is under way.
        let round = old.enter();
        old.poll();
        assert_eq!(old.right(), Right::Closing);
        old.report("p", false);
        old.poll();
        assert_eq!(old.right(), Right::Closing, "a round under way");
        new.poll();
        assert_eq!(new.right(), Right::Waiting);
        drop(round);
        old.poll();
        assert_eq!(old.right(), Right::Closed);
        new.poll();
        assert_eq!(new.right(), Right::Held);
        // Let go for good, even when the lock is free again.
        drop(new);
        old.poll();
        assert_eq!(old.right(), Right::Closed);
    }

    #[test]
    fn a_dead_holder_lets_go_and_an_agent_whose_socket_is_gone_never_lends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, first) = agent(dir.path());
        let second = LendRight::new(&path);
        second.bound().expect("bound");
        assert_eq!(second.right(), Right::Waiting);
        drop(first); // its process ends: the descriptor closes
        second.poll();
        assert_eq!(second.right(), Right::Held);

        let dir2 = tempfile::tempdir().expect("tempdir");
        let blocker = std::fs::File::create(dir2.path().join("ipam.sock.lock")).expect("lock file");
        blocker.lock().expect("held elsewhere");
        let (path2, late) = agent(dir2.path());
        assert_eq!(late.right(), Right::Waiting);
        std::fs::remove_file(&path2).expect("rm");
        drop(blocker);
        late.poll();
        assert_eq!(late.right(), Right::Closed, "socket gone: never lends");
    }
}
