//! CRI tier: Debian's containerd and runc run real pod sandboxes whose network is a conflist of
//! Debian's macvlan + our spiderpool IPAM + our coordinator in containerd's `net.d`. containerd
//! runs inside a node namespace with an uplink to a gateway namespace (see [`Topology`]), so the
//! host's network is never touched. Root only; hack/test.sh runs these with `--ignored`.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderpool_coordinator::host_veth_name;
use spiderpool_e2e::cri::CriNode;
use spiderpool_e2e::{Topology, ip, store_records};

const POOLS_SIZE: usize = 11;

/// Pools of 11 addresses on the uplink `up0`: IPv4, and IPv6 too when `dual`.
fn spiderpool_ipam(data: &Path, dual: bool) -> Value {
    let mut pools = vec![
        json!({"name": "v4", "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.6.0.1",
               "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]}),
    ];
    if dual {
        pools.push(
            json!({"name": "v6", "subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::20"], "gateway": "fd00:6::1",
                   "routes": [{"dst": "::/0", "gw": "fd00:6::1"}]}),
        );
    }
    json!({"type": "spiderpool", "dataDir": data, "pools": pools})
}

/// The same IPv4 pool as host-local's range.
fn host_local_ipam(data: &Path) -> Value {
    json!({"type": "host-local", "dataDir": data, "ranges": [
        [{"subnet": "10.6.0.0/16", "rangeStart": "10.6.0.10", "rangeEnd": "10.6.0.20", "gateway": "10.6.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]})
}

/// macvlan on `up0` with `ipam`, then (unless `None`) the coordinator.
fn conflist(ipam: Value, coordinator: Option<Value>) -> Value {
    let mut plugins = vec![json!({"type": "macvlan", "master": "up0", "mode": "bridge", "ipam": ipam})];
    plugins.extend(coordinator);
    json!({"cniVersion": "1.0.0", "name": "underlay", "plugins": plugins})
}

fn coordinator() -> Value {
    json!({"type": "coordinator", "hijackCIDR": ["10.96.0.0/12"]})
}

/// A node namespace with `up0` to a dual-stack gateway, and the node's own addresses on `up0`
/// (which a macvlan pod cannot reach but through the coordinator's veth).
fn topology(tag: &str) -> Topology {
    let topo = Topology::new(tag, &["10.6.0.1/16", "fd00:6::1/64"]).unwrap();
    ip(&topo.node, &["addr", "add", "10.6.0.254/16", "dev", "up0"]).unwrap();
    ip(
        &topo.node,
        &["addr", "add", "fd00:6::fe/64", "dev", "up0", "nodad"],
    )
    .unwrap();
    topo
}

/// What the node side holds for pods: the host ends of their veths, the routes of table 500 and
/// the rules pointing at it.
fn node_side(topo: &Topology) -> String {
    let mut out = String::new();
    for family in ["-4", "-6"] {
        match ip(&topo.node, &[family, "route", "show", "table", "500"]) {
            Ok(routes) => out += &routes,
            // Never made (no coordinator in the chain) or removed with its last route.
            Err(e) if e.to_string().contains("table does not exist") => {}
            Err(e) => panic!("{e:#}"),
        }
        out += &ip(&topo.node, &[family, "rule", "show"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("lookup 500"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    out += &ip(&topo.node, &["-o", "link", "show", "type", "veth"])
        .unwrap()
        .lines()
        .filter(|l| !l.contains(" up0"))
        .collect::<Vec<_>>()
        .join("\n");
    out
}

async fn exec_ok(cri: &mut CriNode, container: &str, cmd: &[&str]) -> String {
    // IPv6 needs DAD on the gateway side first: retry a few times.
    let mut last = (0, String::new());
    for _ in 0..8 {
        last = cri.exec(container, cmd).await.unwrap();
        if last.0 == 0 {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{cmd:?} in the container: exit {}: {}", last.0, last.1);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "CRI tier: needs root, containerd, runc, busybox-static and Debian containernetworking-plugins"]
async fn cri_sandbox_gets_our_ip_and_routes_and_leaves_nothing_behind() {
    let topo = topology("cri");
    let data = tempfile::tempdir().unwrap();
    let mut cri = CriNode::start(
        &topo.node,
        &conflist(spiderpool_ipam(data.path(), true), Some(coordinator())),
    )
    .await
    .unwrap();

    let sandbox = match cri.run_pod("web").await {
        Ok(id) => id,
        Err(e) => panic!("{e:#}\ncontainerd log:\n{}", cri.log()),
    };
    let ips = cri.pod_ips(&sandbox).await.unwrap();
    assert_eq!(ips.len(), 2, "dual stack: {ips:?}");
    let (v4, v6) = (ips[0].clone(), ips[1].clone());
    assert!(v4.starts_with("10.6.0.") && v6.starts_with("fd00:6::"), "{ips:?}");
    assert_eq!(store_records(data.path()).len(), 1, "one attachment recorded");

    // Inside the pod: our addresses on eth0, the default routes via the pool's gateways, veth0 to
    // the node with the node's addresses and the hijacked CIDR routed through it.
    let netns = cri.pod_netns(&sandbox).await.unwrap();
    let pod_ip = |args: &[&str]| {
        let mut full = vec!["-n", netns.as_str()];
        full.extend_from_slice(args);
        spiderpool_e2e::run(std::process::Command::new("ip").args(&full)).unwrap()
    };
    let addrs = pod_ip(&["addr", "show", "eth0"]);
    assert!(
        addrs.contains(&format!("{v4}/16")) && addrs.contains(&format!("{v6}/64")),
        "{addrs}"
    );
    let routes = pod_ip(&["-4", "route", "show"]);
    assert!(routes.contains("default via 10.6.0.1 dev eth0"), "{routes}");
    assert!(routes.contains("10.6.0.254 dev veth0"), "{routes}");
    assert!(
        routes.contains("10.96.0.0/12") && routes.contains("dev veth0"),
        "{routes}"
    );
    let routes6 = pod_ip(&["-6", "route", "show"]);
    assert!(routes6.contains("default via fd00:6::1 dev eth0"), "{routes6}");
    assert!(routes6.contains("fd00:6::fe dev veth0"), "{routes6}");
    // On the node: the pod's addresses in table 500 through the host end of the veth.
    let host_veth = host_veth_name(&sandbox);
    let table = ip(&topo.node, &["route", "show", "table", "500"]).unwrap();
    assert!(table.contains(&format!("{v4} dev {host_veth}")), "{table}");

    // A container in the pod reaches the gateway (both families) and the node through veth0.
    let container = cri.start_container(&sandbox, "ping").await.unwrap();
    exec_ok(&mut cri, &container, &["ping", "-c", "1", "-W", "2", "10.6.0.1"]).await;
    exec_ok(
        &mut cri,
        &container,
        &["ping6", "-c", "1", "-W", "2", "fd00:6::1"],
    )
    .await;
    exec_ok(
        &mut cri,
        &container,
        &["ping", "-c", "1", "-W", "2", "10.6.0.254"],
    )
    .await;
    let (code, out) = cri
        .exec(&container, &["ip", "-4", "route", "get", "10.6.0.254"])
        .await
        .unwrap();
    assert!(code == 0 && out.contains("dev veth0"), "{out}");

    // StopPodSandbox: DEL with the netns; RemovePodSandbox: DEL again without it. Both succeed,
    // and afterwards neither the pool nor the node holds anything of the pod.
    cri.stop_pod(&sandbox).await.unwrap();
    assert!(
        store_records(data.path()).is_empty(),
        "released on StopPodSandbox"
    );
    cri.remove_pod(&sandbox).await.unwrap();
    assert!(cri.pods().await.unwrap().is_empty());
    assert!(
        store_records(data.path()).is_empty(),
        "nothing allocated after RemovePodSandbox"
    );
    let left = node_side(&topo);
    assert!(left.trim().is_empty(), "node side left behind: {left}");
    let log = cri.log();
    assert!(!log.contains("failed to destroy network"), "a DEL failed:\n{log}");
    // What containerd did: ADD, DEL with the netns, DEL without it (after the netns was gone).
    let calls: Vec<String> = cri
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("coordinator "))
        .map(|c| {
            let (head, netns) = c.split_once(" netns=").unwrap();
            format!("{head} {}", if netns.is_empty() { "no-netns" } else { "netns" })
        })
        .collect();
    assert_eq!(
        calls,
        [
            "coordinator ADD netns",
            "coordinator DEL netns",
            "coordinator DEL no-netns"
        ],
        "{:?}",
        cri.calls()
    );
}

/// Runs `n` sandboxes one after another (RunPodSandbox, StopPodSandbox, RemovePodSandbox each);
/// the time per sandbox, in ms, sorted. IPv4 only: with IPv6, macvlan waits for the address's DAD
/// (about 1.5 s here), which would hide everything else.
async fn sandbox_loop(cri: &mut CriNode, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let id = match cri.run_pod(&format!("loop-{i}")).await {
            Ok(id) => id,
            Err(e) => panic!("sandbox {i}: {e:#}\ncontainerd log:\n{}", cri.log()),
        };
        cri.stop_pod(&id).await.unwrap();
        cri.remove_pod(&id).await.unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

fn summary(times: &[f64]) -> (f64, f64) {
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (mean, times[times.len() / 2])
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "CRI tier: needs root, containerd, runc, busybox-static and Debian containernetworking-plugins"]
async fn cri_twenty_sandboxes_leak_nothing_and_time_against_host_local() {
    const N: usize = 20;
    let topo = topology("crl");
    let mut report = Vec::new();
    for (label, with_spiderpool, with_coordinator) in [
        ("macvlan + host-local", false, false),
        ("macvlan + spiderpool", true, false),
        ("macvlan + host-local + coordinator", false, true),
        ("macvlan + spiderpool + coordinator", true, true),
    ] {
        let data = tempfile::tempdir().unwrap();
        let ipam = if with_spiderpool {
            spiderpool_ipam(data.path(), false)
        } else {
            host_local_ipam(data.path())
        };
        let mut cri = CriNode::start(&topo.node, &conflist(ipam, with_coordinator.then(coordinator)))
            .await
            .unwrap();
        // 20 sandboxes through pools of 11 addresses: any leak exhausts them and fails a RunPodSandbox.
        const { assert!(N > POOLS_SIZE) };
        let times = sandbox_loop(&mut cri, N).await;
        assert!(cri.pods().await.unwrap().is_empty(), "{label}: sandboxes left");
        if with_spiderpool {
            assert!(store_records(data.path()).is_empty(), "{label}: allocations left");
        } else {
            // host-local keeps one file per allocated address (plus its lock and last-reserved files).
            let held: Vec<String> = std::fs::read_dir(data.path().join("underlay"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect();
            assert!(held.is_empty(), "{label}: host-local still holds {held:?}");
        }
        let left = node_side(&topo);
        assert!(left.trim().is_empty(), "{label}: node side left behind: {left}");
        let (mean, median) = summary(&times);
        report.push((label, mean, median));
    }
    eprintln!("CRI sandbox loop ({N} × RunPodSandbox + StopPodSandbox + RemovePodSandbox, one at a time):");
    for (label, mean, median) in &report {
        eprintln!("  {label:36} mean {mean:7.1} ms  median {median:7.1} ms per sandbox");
    }
    eprintln!(
        "  ratio spiderpool / host-local: {:.2} without the coordinator, {:.2} with it",
        report[1].1 / report[0].1,
        report[3].1 / report[2].1
    );
}
