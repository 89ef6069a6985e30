//! The embedded store: one redb file per data directory, behind a lock file.
//!
//! * Concurrent plugin processes serialise on an exclusive `flock` of `ipam.lock`; redb's own
//!   file lock only fails fast, so it never decides who waits.
//! * Every verb is one redb write transaction: a `kill -9` at any point leaves the last committed
//!   state (redb's commit is a checksummed header switch), never a torn one.
//! * Lookups are B-tree operations keyed by address, owner and queue position: the cost of ADD
//!   and DEL does not grow with the number of live allocations, and nothing walks a directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ipnet::IpNet;
use redb::{Database, Durability, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use spiderpool_cni::Route;

use crate::allocator::{AllocState, Cursor, Slot};

const SLOTS: TableDefinition<u128, &[u8]> = TableDefinition::new("slots");
const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");
const QUEUE: TableDefinition<(&str, u64), u128> = TableDefinition::new("release_queue");
const OWNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("owners");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

pub const DB_FILE: &str = "ipam.redb";
pub const LOCK_FILE: &str = "ipam.lock";
/// How long a plugin waits for another one to finish before answering "try again later".
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("store {path} is busy: its lock was held by another process for {timeout:?}")]
    Busy { path: PathBuf, timeout: Duration },
    #[error("store {path}: {why}")]
    Db { path: PathBuf, why: String },
    #[error("store record {what} is corrupt: {why}")]
    Corrupt { what: String, why: String },
    /// The database file cannot be opened at all. Recovery: move the file aside; the next ADD
    /// starts an empty store (README, "A corrupted store").
    #[error(
        "store {path} is unreadable ({why}); move it aside (mv {path} {path}.corrupt) to start an empty store, and restart the containers of this network so none keeps an address the new store does not know"
    )]
    Unreadable { path: PathBuf, why: String },
}

/// An attachment's allocation as recorded: enough to answer a repeated ADD identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRecord {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    pub ips: Vec<AllocatedIp>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedIp {
    pub pool: String,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// The key of an attachment: network, container ID and interface (none may contain `/`).
pub fn owner_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}/{container_id}/{ifname}")
}

pub struct Store {
    db: Database,
    path: PathBuf,
    // Held for the store's lifetime; declared last so the database closes before it unlocks.
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, waiting for other processes up to `timeout`.
    pub fn open(dir: &Path, timeout: Duration) -> Result<Store, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        // Root-only: the store says which workload holds which address.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = lock_with_timeout(lock, timeout).map_err(|e| match e {
            None => StoreError::Busy {
                path: lock_path.clone(),
                timeout,
            },
            Some(source) => StoreError::Io {
                path: lock_path.clone(),
                source,
            },
        })?;
        let path = dir.join(DB_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let db = Database::builder()
            .set_cache_size(4 << 20)
            .create_with_backend(UnsyncedFile(file))
            .map_err(|e| StoreError::Unreadable {
                path: path.clone(),
                why: e.to_string(),
            })?;
        Ok(Store {
            db,
            path,
            _lock: lock,
        })
    }

    /// Runs `f` in one transaction, committed when `f` succeeds and discarded when it fails.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let db_err = |why: String| StoreError::Db {
            path: self.path.clone(),
            why,
        };
        let mut txn: WriteTransaction = self.db.begin_write().map_err(|e| db_err(e.to_string()))?;
        // Immediate: the commit is complete in the file when it returns (there is no fsync to
        // pay for, see `UnsyncedFile`), so a process killed after it keeps its allocation.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| db_err(e.to_string()))?;
        let outcome = match Tables::open(&txn, &self.path) {
            Ok(mut tables) => f(&mut tables),
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(value) => {
                txn.commit().map_err(|e| db_err(e.to_string()))?;
                Ok(value)
            }
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    /// Runs `f` in a transaction that is always discarded: for questions (CHECK, STATUS) that
    /// may reuse the allocator without changing anything.
    pub fn dry_run<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.db.begin_write().map_err(|e| StoreError::Db {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        let outcome = match Tables::open(&txn, &self.path) {
            Ok(mut tables) => f(&mut tables),
            Err(e) => Err(e.into()),
        };
        let _ = txn.abort();
        outcome
    }

    /// Closes the database, reporting what a close finds (the final durable commit).
    pub fn close(self) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.db.close().map_err(|e| StoreError::Db {
            path,
            why: e.to_string(),
        })
    }
}

/// The database file, without `fsync`. Its state describes interfaces that do not survive a
/// reboot, so it needs atomicity across a killed process, not durability across a power loss:
/// writes that returned are in the page cache whatever happens to the process, in the order redb
/// issued them, so a kill leaves the last committed header. Syncing would cost several
/// milliseconds per call on a disk-backed data directory and buy nothing (on tmpfs it is free).
#[derive(Debug)]
struct UnsyncedFile(File);

impl redb::StorageBackend for UnsyncedFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

/// `Ok(file)` once locked; `Err(None)` on timeout. The blocking `flock` runs on a helper thread so
/// a waiter wakes the moment the holder unlocks; if we give up, the thread unlocks on its own.
fn lock_with_timeout(file: File, timeout: Duration) -> Result<File, Option<io::Error>> {
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(Some(e)),
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = file.lock().map(|()| file);
        let _ = tx.send(result); // if nobody waits any more, the file drops here and unlocks
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// The open tables of one transaction.
pub struct Tables<'t> {
    path: &'t Path,
    slots: Table<'t, u128, &'static [u8]>,
    cursors: Table<'t, &'static str, &'static [u8]>,
    queue: Table<'t, (&'static str, u64), u128>,
    owners: Table<'t, &'static str, &'static [u8]>,
    counters: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, path: &'t Path) -> Result<Tables<'t>, StoreError> {
        let err = |e: redb::TableError| StoreError::Db {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        Ok(Tables {
            path,
            slots: txn.open_table(SLOTS).map_err(err)?,
            cursors: txn.open_table(CURSORS).map_err(err)?,
            queue: txn.open_table(QUEUE).map_err(err)?,
            owners: txn.open_table(OWNERS).map_err(err)?,
            counters: txn.open_table(COUNTERS).map_err(err)?,
        })
    }

    pub fn owner(&self, key: &str) -> Result<Option<OwnerRecord>, StoreError> {
        let Some(raw) = self.owners.get(key).map_err(|e| db_err(self.path, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(raw.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: format!("owner {key}"),
                why: e.to_string(),
            })
    }

    pub fn put_owner(&mut self, key: &str, record: &OwnerRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            what: format!("owner {key}"),
            why: e.to_string(),
        })?;
        self.owners
            .insert(key, bytes.as_slice())
            .map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    pub fn remove_owner(&mut self, key: &str) -> Result<(), StoreError> {
        self.owners.remove(key).map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    /// Keys of every attachment of `network`.
    pub fn owner_keys_of_network(&self, network: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{network}/");
        let mut keys = Vec::new();
        for entry in self
            .owners
            .range(prefix.as_str()..)
            .map_err(|e| db_err(self.path, e))?
        {
            let (key, _) = entry.map_err(|e| db_err(self.path, e))?;
            let key = key.value();
            if !key.starts_with(&prefix) {
                break;
            }
            keys.push(key.to_string());
        }
        Ok(keys)
    }

    /// Every address slot, for consistency checks in tests and tools.
    pub fn all_slots(&self) -> Result<Vec<(IpAddr, Slot)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.slots.iter().map_err(|e| db_err(self.path, e))? {
            let (k, v) = entry.map_err(|e| db_err(self.path, e))?;
            out.push((crate::range::key_to_ip(k.value()), decode_slot(v.value())?));
        }
        Ok(out)
    }

    /// Every attachment record.
    pub fn all_owners(&self) -> Result<Vec<(String, OwnerRecord)>, StoreError> {
        let mut keys = Vec::new();
        for entry in self.owners.iter().map_err(|e| db_err(self.path, e))? {
            let (k, _) = entry.map_err(|e| db_err(self.path, e))?;
            keys.push(k.value().to_string());
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(record) = self.owner(&key)? {
                out.push((key, record));
            }
        }
        Ok(out)
    }
}

// Slot encoding: tag (1 allocated, 2 released), seq (u64 LE, 0 when allocated), pool name length
// (u8), pool name, then for allocated slots the owner key.
fn encode_slot(slot: &Slot) -> Vec<u8> {
    let (tag, seq, pool, owner) = match slot {
        Slot::Allocated { pool, owner } => (1u8, 0u64, pool, owner.as_str()),
        Slot::Released { pool, seq } => (2u8, *seq, pool, ""),
    };
    let mut out = Vec::with_capacity(10 + pool.len() + owner.len());
    out.push(tag);
    out.extend_from_slice(&seq.to_le_bytes());
    // Pool names are validated to at most 253 bytes.
    out.push(u8::try_from(pool.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(pool.as_bytes());
    out.extend_from_slice(owner.as_bytes());
    out
}

fn decode_slot(raw: &[u8]) -> Result<Slot, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt {
        what: "address slot".into(),
        why: why.into(),
    };
    let (&tag, rest) = raw.split_first().ok_or_else(|| corrupt("empty"))?;
    let (seq, rest) = rest.split_first_chunk::<8>().ok_or_else(|| corrupt("short"))?;
    let (&len, rest) = rest.split_first().ok_or_else(|| corrupt("short"))?;
    let (pool, owner) = rest
        .split_at_checked(usize::from(len))
        .ok_or_else(|| corrupt("short pool name"))?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt("not UTF-8"));
    match tag {
        1 => Ok(Slot::Allocated {
            pool: text(pool)?,
            owner: text(owner)?,
        }),
        2 => Ok(Slot::Released {
            pool: text(pool)?,
            seq: u64::from_le_bytes(*seq),
        }),
        _ => Err(corrupt("unknown tag")),
    }
}

fn encode_cursor(c: Cursor) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[..8].copy_from_slice(&c.fingerprint.to_le_bytes());
    if let Some(last) = c.last {
        out[8] = 1;
        out[9..].copy_from_slice(&last.to_le_bytes());
    }
    out
}

fn decode_cursor(raw: &[u8]) -> Result<Cursor, StoreError> {
    let raw: &[u8; 25] = raw.try_into().map_err(|_| StoreError::Corrupt {
        what: "pool cursor".into(),
        why: format!("{} bytes", raw.len()),
    })?;
    let (fp, rest) = raw.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
    let last = match rest.split_first() {
        Some((1, ip)) => Some(u128::from_le_bytes(ip.try_into().unwrap_or([0; 16]))),
        _ => None,
    };
    Ok(Cursor {
        fingerprint: u64::from_le_bytes(*fp),
        last,
    })
}

impl AllocState for Tables<'_> {
    type Error = StoreError;

    fn slot(&self, ip: u128) -> Result<Option<Slot>, StoreError> {
        match self.slots.get(ip).map_err(|e| db_err(self.path, e))? {
            Some(raw) => decode_slot(raw.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_slot(&mut self, ip: u128, slot: &Slot) -> Result<(), StoreError> {
        let bytes = encode_slot(slot);
        self.slots
            .insert(ip, bytes.as_slice())
            .map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    fn remove_slot(&mut self, ip: u128) -> Result<(), StoreError> {
        self.slots.remove(ip).map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    fn cursor(&self, pool: &str) -> Result<Option<Cursor>, StoreError> {
        match self.cursors.get(pool).map_err(|e| db_err(self.path, e))? {
            Some(raw) => decode_cursor(raw.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_cursor(&mut self, pool: &str, cursor: Cursor) -> Result<(), StoreError> {
        self.cursors
            .insert(pool, encode_cursor(cursor).as_slice())
            .map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    fn next_seq(&mut self) -> Result<u64, StoreError> {
        let next = self
            .counters
            .get("release_seq")
            .map_err(|e| db_err(self.path, e))?
            .map_or(0, |v| v.value())
            + 1;
        self.counters
            .insert("release_seq", next)
            .map_err(|e| db_err(self.path, e))?;
        Ok(next)
    }

    fn push_released(&mut self, pool: &str, seq: u64, ip: u128) -> Result<(), StoreError> {
        self.queue
            .insert((pool, seq), ip)
            .map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    fn pop_oldest_released(&mut self, pool: &str) -> Result<Option<(u64, u128)>, StoreError> {
        let first = {
            let mut range = self
                .queue
                .range((pool, 0u64)..=(pool, u64::MAX))
                .map_err(|e| db_err(self.path, e))?;
            match range.next() {
                Some(entry) => {
                    let (k, v) = entry.map_err(|e| db_err(self.path, e))?;
                    Some((k.value().1, v.value()))
                }
                None => None,
            }
        };
        if let Some((seq, _)) = first {
            self.queue.remove((pool, seq)).map_err(|e| db_err(self.path, e))?;
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests;
