//! `spiderpool-agent run`: inventory reports and the IPAM service together.

use super::*;

/// `spiderpool-agent run` for `node` (no device plugin), its inventory from `sysfs`, its stderr in
/// `log`. Node policies are planned and reported, never applied: `sysfs` is a fixture, and the
/// links the applier would change are the host's.
pub(super) fn spawn_run(
    cluster: &Cluster,
    node: &str,
    health: &str,
    socket: &std::path::Path,
    sysfs: &std::path::Path,
    ready: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"))
        .args([
            "run",
            "--node-name",
            node,
            "--health-addr",
            health,
            "--device-plugin=false",
            "--node-policies=report",
            "--node-policy-resync=5",
        ])
        .args(["--inventory-interval", "5", "--socket"])
        .arg(socket)
        .arg("--sysfs-root")
        .arg(sysfs)
        .arg("--ready-file")
        .arg(ready)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stderr(std::fs::File::create(log).expect("log file"))
        // Not the test's stdout: a process left by a failed test would hold its pipe open.
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spiderpool-agent runs")
}

/// `spiderpool-agent run`: ready once the IPAM service listens, reports the node's inventory
/// (here a fixture sysfs tree) as its SpiderNodeInventory, and answers the plugin.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agent_run_reports_inventory_and_serves_ipam() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let node = format!("node-run-{u}");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let fixture = spiderpool_testing::fixtures::fixture_root("cx6dx");
    let run_agent = |ready: &str, log: &str| {
        spawn_run(
            &cluster,
            &node,
            "127.0.0.1:15751",
            &socket,
            &fixture,
            &dir.path().join(ready),
            &dir.path().join(log),
        )
    };
    let mut child = run_agent("ready-1", "run.log");
    let ready = eventually(Duration::from_secs(30), || async {
        http_get("127.0.0.1:15751", "/readyz")
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert!(ready.is_some(), "never ready: {}", log());
    assert!(http_get("127.0.0.1:15751", "/healthz").starts_with("HTTP/1.1 200"));

    let inventories: Api<SpiderNodeInventory> = Api::all(cluster.client.clone());
    let inv = eventually(Duration::from_secs(30), || async {
        inventories.get_opt(&node).await.unwrap().and_then(|i| i.status)
    })
    .await
    .unwrap_or_else(|| panic!("no SpiderNodeInventory {node}: {}", log()));
    assert!(!inv.nics.is_empty(), "{inv:?}");
    assert!(
        inv.nics.iter().any(|n| n.pci_address == "0000:3b:00.0"),
        "{:?}",
        inv.nics
    );

    let pool = format!("run-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.207.0.0/24", "ips": ["10.207.0.10"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("run", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", 1, |_| node.clone(), json!({}))
        .await
        .unwrap();
    // Clients that hang up before their answer (a plugin killed by its runtime) must not take
    // the agent down.
    for _ in 0..20 {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let req = json!({"verb": "DEL", "network": "n", "containerId": "c", "ifname": "net1",
                         "pod": {"namespace": ns, "name": "p-0", "uid": uids[0]}});
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = cni(
        "ADD",
        &netconf(&socket, &[&pool], &[]),
        &ns,
        "p-0",
        &uids[0],
        "net1",
    );
    assert_eq!(
        first_ip(&out).as_deref(),
        Some("10.207.0.10"),
        "{} {}",
        out.stdout,
        log()
    );
    assert!(child.try_wait().unwrap().is_none(), "agent died: {}", log());

    // The readiness probe reads this agent's own file.
    let probe = |file: &str| {
        std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"))
            .args(["probe", "--ready-file"])
            .arg(dir.path().join(file))
            .status()
            .unwrap()
            .success()
    };
    assert!(probe("ready-1"));
    assert!(!probe("ready-2"), "no second agent yet");
    // An update's successor starts beside it on the same node (same health port, same socket),
    // becomes ready, takes the IPAM socket over; the old one stops (SIGTERM) and takes its
    // readiness with it; requests keep being answered throughout.
    let mut successor = run_agent("ready-2", "run-2.log");
    let log2 = || std::fs::read_to_string(dir.path().join("run-2.log")).unwrap_or_default();
    let ready2 = eventually(Duration::from_secs(30), || async {
        probe("ready-2").then_some(())
    })
    .await;
    assert!(ready2.is_some(), "the successor never got ready: {}", log2());
    assert!(
        successor.try_wait().unwrap().is_none(),
        "successor died: {}",
        log2()
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let _ = child.wait();
    assert!(!probe("ready-1"), "the old agent's readiness goes with it");
    assert!(
        http_get("127.0.0.1:15751", "/healthz").starts_with("HTTP/1.1 200"),
        "the successor answers health"
    );
    let out = cni(
        "CHECK",
        &netconf(&socket, &[&pool], &[]),
        &ns,
        "p-0",
        &uids[0],
        "net1",
    );
    assert!(
        out.success,
        "CHECK answered by the successor: {} {}",
        out.stdout,
        log2()
    );
    let _ = successor.kill();
    let _ = successor.wait();
}

/// 2,000 idle connections to the agent's health port (any pod on the host network could open
/// them) while 100 ADDs run: every ADD is answered, the agent stays up, and once the idle clients'
/// time is up the port answers probes again.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agent_health_port_flood_leaves_ipam_answering() {
    const PODS: usize = 100;
    spiderpool_daemon::raise_fd_limit();
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let node = format!("node-flood-{u}");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let fixture = spiderpool_testing::fixtures::fixture_root("cx6dx");
    let health = "127.0.0.1:15753";
    let mut agent = spawn_run(
        &cluster,
        &node,
        health,
        &socket,
        &fixture,
        &dir.path().join("ready"),
        &dir.path().join("run.log"),
    );
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    let ready = eventually(Duration::from_secs(30), || async {
        http_get(health, "/readyz")
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    assert!(ready.is_some(), "never ready: {}", log());
    let pool = format!("flood-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.208.0.0/24", "ips": ["10.208.0.1-10.208.0.100"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("flood", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", PODS, |_| node.clone(), json!({}))
        .await
        .unwrap();

    let idle: Vec<std::net::TcpStream> = (0..2000)
        .filter_map(|_| std::net::TcpStream::connect(health).ok())
        .collect();
    assert!(idle.len() >= 1900, "only {} idle connections opened", idle.len());
    let conf = netconf(&socket, &[&pool], &[]);
    let results = run_parallel(50, PODS, |i| {
        cni("ADD", &conf, &ns, &format!("p-{i}"), &uids[i], "net1")
    });
    let ips: HashSet<String> = results.iter().filter_map(first_ip).collect();
    let failed: Vec<&str> = results
        .iter()
        .filter(|o| !o.success)
        .map(|o| o.stdout.as_str())
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", log());
    assert_eq!(ips.len(), PODS);
    assert!(agent.try_wait().unwrap().is_none(), "agent died: {}", log());
    drop(idle);
    // The burst shows in the metrics: every ADD counted and timed, every address by its pool.
    let metrics = eventually(Duration::from_secs(10), || async {
        let m = http_get(health, "/metrics");
        m.contains(r#"spiderpool_agent_ipam_requests_total{verb="ADD",code="0"} 100"#)
            .then_some(m)
    })
    .await
    .unwrap_or_else(|| format!("no ADD count in: {}", http_get(health, "/metrics")));
    for line in [
        format!(r#"spiderpool_agent_ipam_requests_total{{verb="ADD",code="0"}} {PODS}"#),
        format!(r#"spiderpool_agent_ipam_request_duration_seconds_count{{verb="ADD"}} {PODS}"#),
        format!(r#"spiderpool_agent_ipam_allocated_total{{pool="{pool}"}} {PODS}"#),
    ] {
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    let healthy = eventually(Duration::from_secs(10), || async {
        http_get(health, "/healthz")
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    assert!(healthy.is_some(), "health never answered again: {}", log());
    let _ = agent.kill();
    let _ = agent.wait();
}
