//! The `spiderpool` binary driven through the CNI exec protocol: verbs, bad input, concurrent
//! processes and processes killed mid-way. Needs no root: the store lives in a temp directory.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderpool_cni::exec::{Invocation, Output};
use spiderpool_ipam::allocator::Slot;
use spiderpool_ipam::store::{LOCK_TIMEOUT, Store, StoreError};

/// Calls per lane in the concurrency tests: `full`, or a tenth of it under user-mode emulation
/// (`SPIDERPOOL_TEST_EMULATED=1`, the arm64 tier), where one plugin exec costs ~0.6 s instead of
/// milliseconds; the lanes still race on one store.
fn calls_per_lane(full: usize) -> usize {
    if std::env::var_os("SPIDERPOOL_TEST_EMULATED").is_some_and(|v| v == "1") {
        (full / 10).max(10)
    } else {
        full
    }
}

/// The plugin as it ships under hack/test.sh (static), else cargo's build of it.
fn plugin() -> PathBuf {
    spiderpool_testing::process::shipped_or("spiderpool", env!("CARGO_BIN_EXE_spiderpool"))
}

fn conf(version: &str, data_dir: &Path, ipam_extra: Value) -> Value {
    let mut ipam = json!({
        "type": "spiderpool",
        "pools": [
            {"name": "v4a", "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.3.250"], "excludeIPs": ["10.6.0.20"],
             "gateway": "10.6.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
            {"name": "v6a", "subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::ffff"], "gateway": "fd00:6::1"}
        ],
        "default_ipv4_ippool": ["v4a"], "default_ipv6_ippool": ["v6a"], "dataDir": data_dir,
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut ipam, ipam_extra) {
        base.extend(extra);
    }
    json!({"cniVersion": version, "name": "net1", "type": "macvlan", "ipam": ipam})
}

fn call(cmd: &str, id: &str, netconf: &Value) -> Output {
    Invocation::new(cmd, id, "/var/run/netns/test", "eth0")
        .with_path(vec![PathBuf::from("/usr/lib/cni")])
        .with_trusted_dirs(vec![std::env::temp_dir()])
        .with_args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1")
        .run(&plugin(), netconf.to_string().as_bytes())
        .expect("plugin runs")
}

fn ok(out: Output) -> Value {
    assert!(out.success, "plugin failed: {} {}", out.stdout, out.stderr);
    out.json()
}

fn ips_of(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| ip["address"].as_str().unwrap_or("").to_string())
        .collect()
}

fn open(dir: &Path) -> Store {
    Store::open(dir, LOCK_TIMEOUT).expect("store opens")
}

#[test]
fn add_repeated_add_check_del_twice_in_every_version() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let dir = tempfile::tempdir().unwrap();
        let c = conf(version, dir.path(), json!({}));
        let first = ok(call("ADD", "c1", &c));
        assert_eq!(first["cniVersion"], version);
        assert_eq!(ips_of(&first), ["10.6.0.10/16", "fd00:6::10/64"], "{version}");
        assert_eq!(first["routes"][0]["gw"], "10.6.0.1");
        assert_eq!(first["ips"][0]["gateway"], "10.6.0.1");
        let again = ok(call("ADD", "c1", &c));
        assert_eq!(again, first, "repeated ADD answers the same");
        if version != "0.3.0" && version != "0.3.1" {
            let mut with_prev = c.clone();
            with_prev["prevResult"] = first.clone();
            ok(call("CHECK", "c1", &with_prev));
        }
        ok(call("DEL", "c1", &c));
        ok(call("DEL", "c1", &c));
        // DEL as containerd's second call makes it: no netns, no prevResult.
        let out = Invocation::new("DEL", "c1", "", "eth0")
            .with_path(vec![PathBuf::from("/usr/lib/cni")])
            .with_trusted_dirs(vec![std::env::temp_dir()])
            .run(&plugin(), c.to_string().as_bytes())
            .unwrap();
        assert!(out.success, "{}", out.stdout);
        let store = open(dir.path());
        assert!(store.write(|t| t.all_owners()).unwrap().is_empty());
    }
}

#[test]
fn check_reports_a_missing_or_different_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", dir.path(), json!({}));
    assert_eq!(call("CHECK", "nobody", &c).error_code(), Some(3));
    let result = ok(call("ADD", "c1", &c));
    let mut other = c.clone();
    other["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.6.9.9/16"}]});
    let out = call("CHECK", "c1", &other);
    assert_eq!(out.error_code(), Some(101), "{}", out.stdout);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("missing from prevResult")
    );
    // prevResult in an older version than the netconf is converted, not refused.
    let mut old = c.clone();
    old["prevResult"] = json!({"cniVersion": "0.4.0", "ips": result["ips"].as_array().unwrap().iter()
        .map(|ip| json!({"version": if ip["address"].as_str().unwrap().contains(':') {"6"} else {"4"}, "address": ip["address"]}))
        .collect::<Vec<_>>()});
    ok(call("CHECK", "c1", &old));
}

#[test]
fn just_released_addresses_are_not_reused_while_others_are_free() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", dir.path(), json!({}));
    let a = ips_of(&ok(call("ADD", "a", &c)));
    ok(call("DEL", "a", &c));
    let b = ips_of(&ok(call("ADD", "b", &c)));
    assert_ne!(a, b);
    assert_eq!(b, ["10.6.0.11/16", "fd00:6::11/64"]);
}

#[test]
fn exhaustion_is_all_or_nothing_and_status_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        dir.path(),
        json!({"pools": [
            {"name": "v4a", "subnet": "10.6.0.0/24", "ips": ["10.6.0.10-10.6.0.11"]},
            {"name": "v4b", "subnet": "10.7.0.0/24", "ips": ["10.7.0.10"]},
            {"name": "v6a", "subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::11"]},
        ], "default_ipv4_ippool": ["v4a", "v4b"]}),
    );
    ok(call("STATUS", "", &c));
    ok(call("ADD", "c1", &c));
    let second = ok(call("ADD", "c2", &c));
    assert_eq!(ips_of(&second), ["10.6.0.11/24", "fd00:6::11/64"]);
    // IPv6 is exhausted now; IPv4 still has v4b, which the failing ADD must not keep.
    let out = call("ADD", "c3", &c);
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains("IPv6"),
        "{}",
        out.stdout
    );
    let out = call("STATUS", "", &c);
    assert_eq!(out.error_code(), Some(50), "{}", out.stdout);
    let store = open(dir.path());
    let slots = store.write(|t| t.all_slots()).unwrap();
    assert!(
        !slots.iter().any(|(ip, _)| ip.to_string() == "10.7.0.10"),
        "{slots:?}"
    );
    drop(store);
    // Once the first pool has room again, it is used again.
    ok(call("DEL", "c1", &c));
    let third = ok(call("ADD", "c3", &c));
    assert_eq!(ips_of(&third), ["10.6.0.10/24", "fd00:6::10/64"]);
}

#[test]
fn fallback_pools_are_used_in_the_order_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        dir.path(),
        json!({"pools": [
            {"name": "first", "subnet": "10.6.0.0/24", "ips": ["10.6.0.10"]},
            {"name": "second", "subnet": "10.8.0.0/24", "ips": ["10.8.0.10"]},
            {"name": "third", "subnet": "10.7.0.0/24", "ips": ["10.7.0.10"]},
        ], "default_ipv4_ippool": ["first", "third", "second"], "default_ipv6_ippool": []}),
    );
    let got: Vec<Vec<String>> = ["a", "b", "c"]
        .iter()
        .map(|id| ips_of(&ok(call("ADD", id, &c))))
        .collect();
    assert_eq!(got, [["10.6.0.10/24"], ["10.7.0.10/24"], ["10.8.0.10/24"]]);
    let out = call("ADD", "d", &c);
    assert_eq!(out.error_code(), Some(100));
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("[first, third, second]"),
        "{}",
        out.stdout
    );
}

#[test]
fn gc_releases_what_is_not_valid_in_this_network_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf("1.1.0", dir.path(), json!({}));
    for id in ["keep", "drop1", "drop2"] {
        ok(call("ADD", id, &c));
    }
    let mut other_net = c.clone();
    other_net["name"] = json!("net2");
    ok(call("ADD", "drop1", &other_net));
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    ok(call("GC", "", &gc));
    let store = open(dir.path());
    let mut owners: Vec<String> = store
        .write(|t| t.all_owners())
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    owners.sort();
    assert_eq!(owners, ["net1/keep/eth0", "net2/drop1/eth0"]);
    drop(store);
    let mut no_list = c.clone();
    no_list["cniVersion"] = json!("1.1.0");
    assert_eq!(call("GC", "", &no_list).error_code(), Some(7));
}

#[test]
fn pool_file_serves_the_same_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pools.yaml");
    std::fs::write(
        &file,
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata: {name: file-v4}\n\
         spec: {subnet: 172.18.0.0/24, ips: [172.18.0.40-172.18.0.50], gateway: 172.18.0.1}\n",
    )
    .unwrap();
    let c = json!({"cniVersion": "1.0.0", "name": "n", "type": "ipvlan",
        "ipam": {"type": "spiderpool", "poolFile": file, "dataDir": dir.path().join("store")}});
    assert_eq!(ips_of(&ok(call("ADD", "c1", &c))), ["172.18.0.40/24"]);
}

#[test]
fn bad_input_gets_the_right_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let good = conf("1.0.0", dir.path(), json!({}));
    let with_ipam = |extra: Value| conf("1.0.0", dir.path(), extra);
    let mut no_name = good.clone();
    no_name.as_object_mut().unwrap().remove("name");
    let mut no_ipam = good.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    // (what, netconf, env overrides, expected code)
    type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>, u64);
    let cases: Vec<Case> = vec![
        ("not JSON", json!("{"), vec![], 6),
        (
            "unsupported version",
            conf("0.2.0", dir.path(), json!({})),
            vec![],
            1,
        ),
        ("no name", no_name, vec![], 7),
        ("no ipam", no_ipam, vec![], 7),
        (
            "no pools (cluster mode) and no agent listening",
            with_ipam(json!({"pools": [], "ipam_unix_socket_path": "/run/spidernet/nonexistent.sock"})),
            vec![("args", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u")],
            11,
        ),
        (
            "cluster mode without the pod in CNI_ARGS",
            with_ipam(json!({"pools": [], "ipam_unix_socket_path": "/run/spidernet/nonexistent.sock"})),
            vec![],
            4,
        ),
        (
            "gateway outside",
            with_ipam(
                json!({"pools": [{"name": "p", "subnet": "10.1.0.0/24", "ips": ["10.1.0.5"], "gateway": "10.2.0.1"}], "default_ipv4_ippool": ["p"], "default_ipv6_ippool": []}),
            ),
            vec![],
            7,
        ),
        (
            "overlapping ranges",
            with_ipam(
                json!({"pools": [{"name": "p", "subnet": "10.1.0.0/24", "ips": ["10.1.0.5-10.1.0.9", "10.1.0.8"]}], "default_ipv4_ippool": ["p"], "default_ipv6_ippool": []}),
            ),
            vec![],
            7,
        ),
        (
            "malformed range",
            with_ipam(
                json!({"pools": [{"name": "p", "subnet": "10.1.0.0/24", "ips": ["10.1.0.9-10.1.0.5"]}], "default_ipv4_ippool": ["p"], "default_ipv6_ippool": []}),
            ),
            vec![],
            7,
        ),
        (
            "bad subnet",
            with_ipam(
                json!({"pools": [{"name": "p", "subnet": "10.1.0.0/40", "ips": ["10.1.0.5"]}], "default_ipv4_ippool": ["p"], "default_ipv6_ippool": []}),
            ),
            vec![],
            7,
        ),
        (
            "unknown default pool",
            with_ipam(json!({"default_ipv4_ippool": ["nope"]})),
            vec![],
            7,
        ),
        (
            "pools of wrong type",
            with_ipam(json!({"pools": {"a": 1}})),
            vec![],
            6,
        ),
        (
            "relative dataDir",
            with_ipam(json!({"dataDir": "relative"})),
            vec![],
            7,
        ),
        ("missing netns", good.clone(), vec![("netns", "")], 4),
        ("missing container id", good.clone(), vec![("id", "")], 4),
        ("bad container id", good.clone(), vec![("id", "a b")], 4),
        ("unknown CNI_ARGS", good.clone(), vec![("args", "FOO=1")], 4),
    ];
    for (what, netconf, env, want) in cases {
        let mut inv = Invocation::new("ADD", "c1", "/var/run/netns/x", "eth0")
            .with_path(vec![PathBuf::from("/usr/lib/cni")])
            .with_trusted_dirs(vec![std::env::temp_dir()]);
        for (k, v) in env {
            match k {
                "netns" => inv.netns = v.into(),
                "id" => inv.container_id = v.into(),
                "args" => inv.args = v.into(),
                _ => unreachable!(),
            }
        }
        let body = match &netconf {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let out = inv.run(&plugin(), body.as_bytes()).unwrap();
        assert_eq!(
            out.error_code(),
            Some(want),
            "{what}: {} {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.is_empty(),
            "{what}: no backtrace or noise on stderr: {}",
            out.stderr
        );
    }
    // Nothing was allocated by any of them.
    if dir.path().join("ipam.redb").exists() {
        let store = open(dir.path());
        assert!(store.write(|t| t.all_slots()).unwrap().is_empty());
    }
}

/// Consistency of a store after concurrent or interrupted runs: every address held once, by an
/// owner whose record lists it, and every record's addresses held by it.
fn assert_consistent(dir: &Path) -> HashMap<String, Vec<String>> {
    let store = open(dir);
    let (slots, owners) = store
        .write(|t| Ok::<_, StoreError>((t.all_slots()?, t.all_owners()?)))
        .expect("store loads");
    let mut held: HashMap<String, String> = HashMap::new();
    for (ip, slot) in &slots {
        if let Slot::Allocated { owner, .. } = slot {
            assert!(
                held.insert(ip.to_string(), owner.clone()).is_none(),
                "{ip} held twice"
            );
        }
    }
    let mut by_owner = HashMap::new();
    let mut seen = HashSet::new();
    for (key, record) in &owners {
        let mut ips = Vec::new();
        for ip in &record.ips {
            let addr = ip.address.addr().to_string();
            assert!(seen.insert(addr.clone()), "{addr} in two records");
            assert_eq!(held.get(&addr), Some(key), "{addr} of {key} is not held by it");
            ips.push(ip.address.to_string());
        }
        by_owner.insert(record.container_id.clone(), ips);
    }
    assert_eq!(held.len(), seen.len(), "every held address belongs to a record");
    by_owner
}

#[test]
fn two_processes_times_500_adds_give_1000_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", dir.path(), json!({"default_ipv6_ippool": []}));
    let n = calls_per_lane(500);
    let lanes: Vec<_> = (0..2)
        .map(|lane| {
            let c = c.clone();
            std::thread::spawn(move || {
                (0..n)
                    .map(|i| ips_of(&ok(call("ADD", &format!("lane{lane}-{i}"), &c)))[0].clone())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<String> = lanes.into_iter().flat_map(|l| l.join().unwrap()).collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (2 * n, 2 * n));
    assert_eq!(assert_consistent(dir.path()).len(), 2 * n);
    let lanes: Vec<_> = (0..2)
        .map(|lane| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    ok(call("DEL", &format!("lane{lane}-{i}"), &c));
                }
            })
        })
        .collect();
    for l in lanes {
        l.join().unwrap();
    }
    let store = open(dir.path());
    assert!(store.write(|t| t.all_owners()).unwrap().is_empty());
    let slots = store.write(|t| t.all_slots()).unwrap();
    assert!(
        slots.iter().all(|(_, s)| matches!(s, Slot::Released { .. })),
        "store holds no allocation"
    );
}

/// A tiny deterministic generator, so a failure can be replayed from the printed seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn processes_killed_at_random_points_leave_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", dir.path(), json!({}));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    // Spread the kills over a whole call: measure how long an uncontended ADD takes.
    let mut timings: Vec<Duration> = (0..5)
        .map(|i| {
            let start = Instant::now();
            ok(call("ADD", &format!("warmup{i}"), &c));
            start.elapsed()
        })
        .collect();
    timings.sort();
    let span_us = (timings[2].as_micros() as u64 * 3).max(1000);
    let succeeded = Arc::new(Mutex::new(HashMap::<String, Vec<String>>::new()));
    for i in 0..5 {
        succeeded.lock().unwrap().insert(format!("warmup{i}"), Vec::new());
    }
    let killed = Arc::new(Mutex::new(HashSet::<String>::new()));
    let n = calls_per_lane(80);
    let lanes: Vec<_> = (0..3u64)
        .map(|lane| {
            let (c, succeeded, killed) = (c.clone(), succeeded.clone(), killed.clone());
            std::thread::spawn(move || {
                let mut rng = XorShift(seed.wrapping_add(lane * 0x9e37_79b9));
                for i in 0..n {
                    let id = format!("k{lane}-{i}");
                    let inv = Invocation::new("ADD", &id, "/var/run/netns/x", "eth0")
                        .with_path(vec![PathBuf::from("/usr/lib/cni")])
                        .with_trusted_dirs(vec![std::env::temp_dir()]);
                    let mut cmd = inv.command(&plugin());
                    cmd.stdin(Stdio::piped());
                    let mut child = cmd.spawn().unwrap();
                    {
                        use std::io::Write;
                        let _ = child.stdin.take().unwrap().write_all(c.to_string().as_bytes());
                    }
                    // Kill about two thirds of the calls somewhere in their first few milliseconds.
                    let kill_after = match rng.next() % 3 {
                        0 => None,
                        _ => Some(Duration::from_micros(rng.next() % span_us)),
                    };
                    if let Some(after) = kill_after {
                        let start = Instant::now();
                        while start.elapsed() < after {
                            if child.try_wait().unwrap().is_some() {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(100));
                        }
                        let _ = child.kill();
                    }
                    let out = child.wait_with_output().unwrap();
                    if out.status.success() {
                        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
                        succeeded.lock().unwrap().insert(id, ips_of(&result));
                    } else if out.status.code().is_none() {
                        killed.lock().unwrap().insert(id);
                    } else {
                        panic!(
                            "{id} failed without being killed: {}",
                            String::from_utf8_lossy(&out.stdout)
                        );
                    }
                }
            })
        })
        .collect();
    for l in lanes {
        l.join().unwrap();
    }
    let recorded = assert_consistent(dir.path());
    let succeeded = succeeded.lock().unwrap();
    let killed = killed.lock().unwrap();
    for (id, ips) in succeeded.iter().filter(|(id, _)| !id.starts_with("warmup")) {
        assert_eq!(recorded.get(id), Some(ips), "{id} reported success with {ips:?}");
    }
    for id in recorded.keys() {
        assert!(
            succeeded.contains_key(id) || killed.contains(id),
            "{id} recorded but never ran"
        );
    }
    let killed_but_recorded = recorded.keys().filter(|id| killed.contains(*id)).count();
    eprintln!(
        "crash test: {} succeeded, {} killed ({} of them after their commit), {} recorded",
        succeeded.len(),
        killed.len(),
        killed_but_recorded,
        recorded.len()
    );
    assert!(
        !killed.is_empty() && !succeeded.is_empty(),
        "the test must both kill and complete calls"
    );
    // The store still works after all that.
    ok(call("ADD", "after-crash", &c));
}
