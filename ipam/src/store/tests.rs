//! The store: transactions, reopening, the lock, and the allocator running on it.

use super::*;
use crate::allocator::{allocate, release};
use crate::pool::{Pool, PoolSpec};

fn pool() -> Pool {
    let spec = PoolSpec {
        name: Some("p".into()),
        subnet: "10.0.0.0/24".into(),
        ips: vec!["10.0.0.10-10.0.0.12".into()],
        ..PoolSpec::default()
    };
    Pool::from_spec(&spec, None).unwrap()
}

#[test]
fn slots_and_cursors_round_trip() {
    for slot in [
        Slot::Allocated {
            pool: "p".into(),
            owner: "n/c/eth0".into(),
        },
        Slot::Released {
            pool: "pool-with-long-name".into(),
            seq: 77,
        },
    ] {
        assert_eq!(decode_slot(&encode_slot(&slot)).unwrap(), slot);
    }
    assert!(decode_slot(&[1, 0]).is_err());
    assert!(decode_slot(&[9; 12]).is_err());
    for c in [
        Cursor {
            fingerprint: 5,
            last: None,
        },
        Cursor {
            fingerprint: 6,
            last: Some(u128::MAX - 3),
        },
    ] {
        assert_eq!(decode_cursor(&encode_cursor(c)).unwrap(), c);
    }
    assert!(decode_cursor(&[0; 3]).is_err());
}

#[test]
fn state_survives_reopen_and_failed_transactions_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool();
    {
        let store = Store::open(dir.path(), LOCK_TIMEOUT).unwrap();
        let ip = store.write(|t| allocate(t, &p, "a")).unwrap();
        assert_eq!(ip, Some("10.0.0.10".parse().unwrap()));
        // A failing closure rolls back its allocation.
        let failed: Result<(), StoreError> = store.write(|t| {
            allocate(t, &p, "b")?;
            Err(StoreError::Corrupt {
                what: "test".into(),
                why: "rollback".into(),
            })
        });
        assert!(failed.is_err());
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), LOCK_TIMEOUT).unwrap();
    let ip = store.write(|t| allocate(t, &p, "b")).unwrap();
    assert_eq!(ip, Some("10.0.0.11".parse().unwrap()));
    store
        .write(|t| release(t, "10.0.0.10".parse().unwrap(), "a"))
        .unwrap();
    let slots = store.write(|t| t.all_slots()).unwrap();
    assert_eq!(slots.len(), 2);
    assert!(matches!(slots[0].1, Slot::Released { seq: 1, .. }));
}

#[test]
fn a_second_opener_waits_and_then_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path(), LOCK_TIMEOUT).unwrap();
    let err = Store::open(dir.path(), Duration::from_millis(50)).err().unwrap();
    assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    drop(held);
    Store::open(dir.path(), Duration::from_millis(500)).unwrap();
}

#[test]
fn owners_are_listed_per_network() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), LOCK_TIMEOUT).unwrap();
    let record = |network: &str, id: &str| OwnerRecord {
        network: network.into(),
        container_id: id.into(),
        ifname: "eth0".into(),
        pod_namespace: None,
        pod_name: None,
        pod_uid: None,
        ips: vec![],
        routes: vec![],
        created_unix: 0,
    };
    store
        .write(|t| {
            for (n, c) in [("net", "a"), ("net", "b"), ("net2", "c"), ("ne", "d")] {
                t.put_owner(&owner_key(n, c, "eth0"), &record(n, c))?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let keys = store.write(|t| t.owner_keys_of_network("net")).unwrap();
    assert_eq!(keys, ["net/a/eth0", "net/b/eth0"]);
}
