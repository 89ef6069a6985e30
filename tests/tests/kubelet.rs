//! Kubelet tier: a real kubelet (k8s.io/kubernetes v1.34 and v1.37, `hack/control-plane.sh kubelet`) on
//! this host, registered with the control-plane tier's API server as node `spiderpool-kubelet`,
//! runs host-network pods through a private containerd (no CNI needed); the device plugin
//! process serves it the VFs of a fixture sysfs. Root only; hack/test.sh runs it with the
//! control-plane tier (SPIDERPOOL_TEST_KUBECONFIG, SPIDERPOOL_TEST_KUBELET).
//! kubelet's device plugin directory is fixed (/var/lib/kubelet/device-plugins): the test refuses
//! to run beside another kubelet.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spiderpool_e2e::cluster::{Cluster, Daemon, eventually};
use spiderpool_e2e::cri::{BUSYBOX_IMAGE, CriNode};

const NODE: &str = "spiderpool-kubelet";
const RESOURCE: &str = "spidernet.io/e810_vfs";
const ENV: &str = "PCIDEVICE_SPIDERNET_IO_E810_VFS";
const DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
const KUBELET_ENV: &str = "SPIDERPOOL_TEST_KUBELET";

/// The kubelet process, restartable with the same configuration.
struct Kubelet {
    daemon: Daemon,
    cmd: Vec<String>,
    /// `kubelet --version`: "Kubernetes v1.34.3".
    version: String,
}

/// The minor version of the kubelet under test.
fn kubelet_minor(kubelet: &Kubelet) -> u32 {
    kubelet
        .version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

impl Kubelet {
    fn start(kubeconfig: &Path, cri_socket: &Path, dir: &Path) -> Kubelet {
        let binary = std::env::var(KUBELET_ENV).unwrap_or_else(|_| {
            panic!("{KUBELET_ENV} is not set: build kubelet with `hack/control-plane.sh kubelet` (hack/test.sh does)")
        });
        // What this host allows: cgroup v1 without QoS cgroups, no swap or eviction policing,
        // node status every second (the test watches allocatable change).
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication: {{anonymous: {{enabled: false}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://{socket}
address: 127.0.0.1
port: 10290
readOnlyPort: 0
healthzPort: 0
nodeStatusUpdateFrequency: 1s
nodeStatusReportFrequency: 1s
evictionHard: {{memory.available: "1Mi"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
resolvConf: ""
"#,
            socket = cri_socket.display()
        );
        std::fs::write(dir.join("kubelet.yaml"), config).unwrap();
        let cmd = vec![
            binary,
            format!("--config={}", dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", dir.join("root").display()),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--hostname-override={NODE}"),
            "--v=1".into(),
        ];
        let version = Command::new(&cmd[0]).arg("--version").output().unwrap();
        let mut kubelet = Kubelet {
            daemon: Daemon::new(dir.join("kubelet.log")),
            cmd,
            version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
        };
        kubelet.restart();
        kubelet
    }

    fn restart(&mut self) {
        self.daemon.kill();
        let mut cmd = Command::new(&self.cmd[0]);
        cmd.args(&self.cmd[1..]);
        self.daemon.start(cmd).unwrap();
    }
}

/// The device plugin's config: the e810 fixture's two iavf VFs.
fn plugin_config(dir: &Path) -> PathBuf {
    let config = dir.join("dp.yaml");
    std::fs::write(
        &config,
        "resources:\n- resourceName: e810_vfs\n  selectors: {drivers: [iavf]}\n",
    )
    .unwrap();
    config
}

/// `spiderpool-agent device-plugin` over the e810 fixture.
fn device_plugin(dir: &Path, log: &str) -> Daemon {
    let mut cmd = Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"));
    cmd.arg("device-plugin")
        .arg("--sysfs-root")
        .arg(spiderpool_e2e::sysfs_fixture::fixtures_dir().join("e810"))
        .arg("--config")
        .arg(plugin_config(dir))
        .arg("--devinfo-dir")
        .arg(dir.join("devinfo"))
        .args(["--resync-ms", "200"])
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::new(dir.join(log));
    daemon.start(cmd).unwrap();
    daemon
}

/// The whole agent (`spiderpool-agent run`: IPAM service, inventory, device plugin) over the
/// same fixture and config, as the chart runs it: ready once its ready file exists.
fn agent(dir: &Path, kubeconfig: &Path, log: &str, ready: &Path) -> Daemon {
    let mut cmd = Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"));
    cmd.args(["run", "--node-name", NODE, "--health-addr", "127.0.0.1:15752"])
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--sysfs-root")
        .arg(spiderpool_e2e::sysfs_fixture::fixtures_dir().join("e810"))
        .arg("--device-plugin-config")
        .arg(plugin_config(dir))
        .arg("--ready-file")
        .arg(ready)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::new(dir.join(log));
    daemon.start(cmd).unwrap();
    daemon
}

/// The node's (capacity, allocatable) of the VF resource, as numbers (absent: 0).
async fn vf_counts(nodes: &Api<Node>) -> (i64, i64) {
    let Ok(node) = nodes.get(NODE).await else {
        return (-1, -1);
    };
    let count = |m: Option<
        &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        m.and_then(|m| m.get(RESOURCE))
            .and_then(|q| q.0.parse().ok())
            .unwrap_or(0)
    };
    let status = node.status.unwrap_or_default();
    (
        count(status.capacity.as_ref()),
        count(status.allocatable.as_ref()),
    )
}

/// Waits until the node reports `want` (capacity, allocatable); how long that took.
async fn wait_counts(nodes: &Api<Node>, want: (i64, i64), what: &str) -> Duration {
    let start = Instant::now();
    let seen = eventually(Duration::from_secs(30), || async {
        (vf_counts(nodes).await == want).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{what}: node never reported (capacity, allocatable) = {want:?}, last {:?}",
        vf_counts(nodes).await
    );
    start.elapsed()
}

fn vf_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": NODE, "hostNetwork": true, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {RESOURCE: "1"}}}]
        }
    }))
    .unwrap()
}

/// Waits for the pod to run or fail; its phase, reason and message.
async fn settle(pods: &Api<Pod>, name: &str) -> (String, String, String) {
    let settled = eventually(Duration::from_secs(60), || async {
        let pod = pods.get(name).await.ok()?;
        let status = pod.status?;
        let phase = status.phase.clone()?;
        let running = status
            .container_statuses
            .iter()
            .flatten()
            .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
        (running || phase == "Failed").then(|| {
            (
                phase,
                status.reason.unwrap_or_default(),
                status.message.unwrap_or_default(),
            )
        })
    })
    .await;
    settled.unwrap_or_else(|| panic!("pod {name} neither ran nor failed within 60 s"))
}

/// The VF kubelet gave the pod's container, from the container's environment (CRI ExecSync).
async fn vf_of(cri: &mut CriNode, pods: &Api<Pod>, name: &str) -> String {
    let pod = pods.get(name).await.unwrap();
    let id = pod.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let id = id.trim_start_matches("containerd://");
    let (code, out) = cri
        .exec(id, &["/bin/sh", "-c", &format!("echo ${ENV}")])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

/// Deletion without a grace period (the pods here hold VFs the next one needs).
fn delete_now() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    }
}

/// This host as node `NODE`: what an earlier run left removed (its checkpoint, sockets, pods
/// bound to the node, the node), then containerd and kubelet started and the node registered.
async fn node_up(cluster: &Cluster, dir: &Path) -> (CriNode, Kubelet) {
    if std::os::unix::net::UnixStream::connect(Path::new(DEVICE_PLUGINS).join("kubelet.sock")).is_ok() {
        panic!(
            "a kubelet already serves {DEVICE_PLUGINS}: this test runs its own and cannot share the directory"
        );
    }
    let _ = std::fs::remove_dir_all(DEVICE_PLUGINS);
    std::fs::create_dir_all(DEVICE_PLUGINS).unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let _ = nodes.delete(NODE, &DeleteParams::default()).await;
    // Pods an earlier, failed run bound to this node would take the VFs first.
    let all_pods: Api<Pod> = Api::all(cluster.client.clone());
    let leftovers = all_pods
        .list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={NODE}")))
        .await
        .unwrap();
    for pod in leftovers {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let _ = Api::<Pod>::namespaced(cluster.client.clone(), &ns)
            .delete(&name, &delete_now())
            .await;
    }
    let cri = CriNode::start_with(None, None).await.unwrap();
    let kubelet = Kubelet::start(&cluster.kubeconfig, &cri.socket, dir);
    let registered = eventually(Duration::from_secs(60), || async { nodes.get(NODE).await.ok() }).await;
    assert!(
        registered.is_some(),
        "kubelet did not register its node:\n{}",
        kubelet.daemon.log_text()
    );
    (cri, kubelet)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "kubelet tier: needs root, hack/control-plane.sh up and kubelet"]
async fn kubelet_admits_vf_pods_and_keeps_counting_them_across_plugin_and_kubelet_restarts() {
    let cluster = Cluster::connect().await.unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().to_path_buf();
    let (mut cri, mut kubelet) = node_up(&cluster, &dir).await;
    let ns = cluster.namespace("kubelet", json!({})).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);

    // Registration: the plugin's two VFs become the node's capacity and allocatable.
    let started = Instant::now();
    let mut plugin = device_plugin(&dir, "dp-1.log");
    wait_counts(&nodes, (2, 2), "first registration").await;
    let first_seen = started.elapsed();

    // Allocation: a pod asking for one VF runs with the VF named in its environment.
    pods.create(&PostParams::default(), &vf_pod("a")).await.unwrap();
    let (phase, reason, message) = settle(&pods, "a").await;
    assert_eq!(
        phase,
        "Running",
        "{reason}: {message}\nplugin:\n{}",
        plugin.log_text()
    );
    let vf_a = vf_of(&mut cri, &pods, "a").await;
    assert!(vf_a == "0000:5e:01.0" || vf_a == "0000:5e:01.1", "{ENV}={vf_a}");

    // The plugin killed: kubelet counts its devices unhealthy (allocatable 0) and refuses what
    // arrives meanwhile, as kubelet v1.34 does (the reason the window must stay short).
    plugin.kill();
    wait_counts(&nodes, (2, 0), "plugin gone").await;
    pods.create(&PostParams::default(), &vf_pod("in-the-window"))
        .await
        .unwrap();
    let (phase, reason, _) = settle(&pods, "in-the-window").await;
    assert_eq!(
        (phase.as_str(), reason.as_str()),
        ("Failed", "UnexpectedAdmissionError")
    );
    pods.delete("in-the-window", &DeleteParams::default())
        .await
        .unwrap();

    // Restarted: both VFs are back, the one inside pod a still counted; a new pod gets the other.
    let restarted = Instant::now();
    let mut plugin = device_plugin(&dir, "dp-2.log");
    wait_counts(&nodes, (2, 2), "plugin restarted").await;
    let restart_seen = restarted.elapsed();
    pods.create(&PostParams::default(), &vf_pod("b")).await.unwrap();
    let (phase, reason, message) = settle(&pods, "b").await;
    assert_eq!(phase, "Running", "{reason}: {message}");
    let vf_b = vf_of(&mut cri, &pods, "b").await;
    assert_ne!(vf_a, vf_b, "b got the VF pod a holds");
    pods.delete("b", &DeleteParams::default()).await.unwrap();

    // Handover, as an update of the chart's agent does it: a successor agent (`run`, the device
    // plugin inside) starts while the first plugin serves and is ready once it registered; then
    // the first goes. kubelet v1.34 then drops the newer one too (kubernetes#121994); it
    // registers again at once.
    let ready = dir.join("successor.ready");
    let successor = agent(&dir, &cluster.kubeconfig, "agent.log", &ready);
    let took_over = eventually(Duration::from_secs(30), || async { ready.exists().then_some(()) }).await;
    assert!(
        took_over.is_some(),
        "the successor agent never got ready: {}",
        successor.log_text()
    );
    assert!(
        successor.log_text().contains("registered with kubelet"),
        "ready before registering: {}",
        successor.log_text()
    );
    // While both serve, kubelet allocates through the successor: a pod arriving now runs.
    pods.create(&PostParams::default(), &vf_pod("during-overlap"))
        .await
        .unwrap();
    let (phase, reason, message) = settle(&pods, "during-overlap").await;
    assert_eq!(phase, "Running", "while two plugins serve: {reason}: {message}");
    pods.delete("during-overlap", &DeleteParams::default())
        .await
        .unwrap();
    let freed = eventually(Duration::from_secs(30), || async {
        pods.get_opt("during-overlap").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(freed.is_some(), "pod during-overlap not gone");
    tokio::time::sleep(Duration::from_millis(500)).await;
    plugin.kill();
    let handover = Instant::now();
    // Polled finely: this is the window in which kubelet would refuse a pod. kubelets with the
    // fix for #121994 (v1.37 here) keep the successor: nothing to register again.
    let fixed = kubelet_minor(&kubelet) >= 37;
    if fixed {
        // No gap to wait out: a pod arriving right as the old plugin dies must run.
        pods.create(&PostParams::default(), &vf_pod("c")).await.unwrap();
    }
    let mut again = false;
    while handover.elapsed() < Duration::from_secs(if fixed { 2 } else { 5 }) {
        if successor.log_text().contains("registered again") {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let handover_took = handover.elapsed();
    if fixed {
        assert!(
            !again,
            "a fixed kubelet dropped the successor:\n{}",
            successor.log_text()
        );
    } else {
        assert!(
            again,
            "the successor did not register again after kubelet dropped it:\n{}",
            successor.log_text()
        );
    }
    wait_counts(&nodes, (2, 2), "after the handover").await;
    if !fixed {
        pods.create(&PostParams::default(), &vf_pod("c")).await.unwrap();
    }
    let (phase, reason, message) = settle(&pods, "c").await;
    assert_eq!(phase, "Running", "after the handover: {reason}: {message}");

    // kubelet restarted: it wipes the plugin sockets; the plugin serves and registers again, and
    // the pods keep their VFs (kubelet's checkpoint).
    let gone_before = successor.log_text().matches("socket gone").count();
    let kubelet_restart = Instant::now();
    kubelet.restart();
    let reregistered = eventually(Duration::from_secs(30), || async {
        (successor.log_text().matches("socket gone").count() > gone_before).then_some(())
    })
    .await;
    assert!(reregistered.is_some(), "{}", successor.log_text());
    let kubelet_seen = kubelet_restart.elapsed();
    wait_counts(&nodes, (2, 2), "kubelet restarted").await;
    for name in ["a", "c"] {
        let (phase, _, _) = settle(&pods, name).await;
        assert_eq!(phase, "Running", "{name} after kubelet's restart");
    }
    assert_eq!(vf_of(&mut cri, &pods, "a").await, vf_a);

    eprintln!("successor plugin's log:\n{}", successor.log_text());
    let handover = if fixed {
        "kubelet kept the successor (no gap)".to_string()
    } else {
        format!("handover kill → registered again within {handover_took:?}")
    };
    eprintln!(
        "kubelet tier ({}): plugin start → node allocatable {first_seen:?}; plugin restart → allocatable {restart_seen:?} \
         (node status every 1 s); {handover}; kubelet restart → \
         plugin registered again within {kubelet_seen:?}",
        kubelet.version
    );

    // Leave nothing: pods, node, plugin, kubelet, containerd and the device plugin directory.
    let _ = pods
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    drop(successor);
    drop(kubelet);
    let _ = nodes.delete(NODE, &DeleteParams::default()).await;
    let _ = cri.pods().await;
    drop(cri);
    let _ = std::fs::remove_dir_all(DEVICE_PLUGINS);
}

/// A `hack/control-plane.sh` build product (cached after the first build).
fn control_plane_tool(what: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/control-plane.sh");
    let out = spiderpool_e2e::run(Command::new(script).arg(what)).unwrap();
    PathBuf::from(out.trim())
}

/// The chart's agent DaemonSet on a real node, updated the way `helm upgrade` or a restart
/// does it (kube-scheduler and the DaemonSet controller of kube-controller-manager roll it with
/// the chart's maxSurge strategy), while VF pods keep arriving: none may be refused. The agent
/// runs from the project's image over the e810 fixture (mounted as its sysfs).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "kubelet tier: needs root, hack/control-plane.sh up, kubelet, scheduling and helm"]
async fn kubelet_agent_daemonset_update_refuses_no_vf_pod() {
    let cluster = Cluster::connect().await.unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().to_path_buf();
    let (cri, kubelet) = node_up(&cluster, &dir).await;
    let fixed = kubelet_minor(&kubelet) >= 37;

    // The chart mounts the netns directory with HostToContainer propagation, which needs a
    // shared mount there, as `ip netns add` makes one (a systemd host's / is shared anyway).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if !mounts.lines().any(|l| l.split(' ').nth(4) == Some("/run/netns")) {
        std::fs::create_dir_all("/run/netns").unwrap();
        spiderpool_e2e::run(Command::new("mount").args(["--bind", "/run/netns", "/run/netns"])).unwrap();
    }
    spiderpool_e2e::run(Command::new("mount").args(["--make-rshared", "/run/netns"])).unwrap();

    // The image, from this workspace's binaries.
    let tag = "localhost/spiderpool-rs:rollout";
    let archive = dir.join("image.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/build-image.sh");
    spiderpool_e2e::run(
        Command::new(script)
            .arg("--bin-dir")
            .arg(spiderpool_e2e::bin_dir())
            .args(["--tag", tag, "--out"])
            .arg(&archive),
    )
    .unwrap();
    cri.import(&archive).unwrap();

    // Scheduling: kube-scheduler and the DaemonSet controller, nothing else.
    let scheduling = control_plane_tool("scheduling");
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let mut scheduler = Daemon::new(dir.join("scheduler.log"));
    let mut cmd = Command::new(scheduling.join("kube-scheduler"));
    cmd.args([
        &format!("--kubeconfig={kubeconfig}"),
        "--leader-elect=false",
        "--secure-port=0",
    ]);
    scheduler.start(cmd).unwrap();
    let mut controllers = Daemon::new(dir.join("kcm.log"));
    let mut cmd = Command::new(scheduling.join("kube-controller-manager"));
    cmd.args([
        &format!("--kubeconfig={kubeconfig}"),
        "--leader-elect=false",
        "--secure-port=0",
        "--controllers=daemonset",
    ]);
    controllers.start(cmd).unwrap();

    // The chart: only the agent, from our image, on the fixture, reaching the API server with
    // the test's kubeconfig (no service-account tokens in this control plane).
    let release_ns = cluster.namespace("rollout", json!({})).await.unwrap();
    // Cluster-scoped objects carry the release name: one per run.
    let release = format!("ro{}", std::process::id());
    let state_dir = cluster.kubeconfig.parent().unwrap().display().to_string();
    let fixture = spiderpool_e2e::sysfs_fixture::fixtures_dir().join("e810");
    let values = json!({
        "image": {"repository": "localhost/spiderpool-rs", "tag": "rollout", "pullPolicy": "Never"},
        "controller": {"replicas": 0},
        "coordinator": {"enabled": false},
        "agent": {
            "healthPort": 15760,
            "ipamSocket": "/var/run/spidernet/rollout-test.sock",
            "hostPaths": {"cniBin": dir.join("cni-bin"), "cniConf": dir.join("net.d"), "netns": "/run/netns"},
            "devicePlugin": {"config": {"resources": [{"resourceName": "e810_vfs", "selectors": {"drivers": ["iavf"]}}]}},
            "extraArgs": ["--sysfs-root=/fixture"],
            "extraEnv": [{"name": "KUBECONFIG", "value": kubeconfig}],
            "extraVolumes": [
                {"name": "fixture", "hostPath": {"path": fixture}},
                {"name": "control-plane", "hostPath": {"path": state_dir}}],
            "extraVolumeMounts": [
                {"name": "fixture", "mountPath": "/fixture", "readOnly": true},
                {"name": "control-plane", "mountPath": state_dir, "readOnly": true}],
        }
    });
    std::fs::write(dir.join("values.json"), values.to_string()).unwrap();
    let helm = control_plane_tool("helm");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/spiderpool");
    let helm_cmd = |verb: &str| {
        let mut cmd = Command::new(&helm);
        cmd.arg(verb).arg(&release).arg(&chart).args(["-n", &release_ns]);
        cmd.arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .arg("-f")
            .arg(dir.join("values.json"));
        cmd
    };
    // The cluster tier applies the chart's admission policy itself; the release must own it.
    {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        let dp = DeleteParams::default();
        let _ = Api::<ValidatingAdmissionPolicyBinding>::all(cluster.client.clone())
            .delete("spiderpool-ipv6-ranges", &dp)
            .await;
        let _ = Api::<ValidatingAdmissionPolicy>::all(cluster.client.clone())
            .delete("spiderpool-ipv6-ranges", &dp)
            .await;
    }
    spiderpool_e2e::run(&mut helm_cmd("install")).unwrap();

    let all_pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &release_ns);
    let agents = || async {
        all_pods
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=agent"))
            .await
            .unwrap()
            .items
    };
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let first = eventually(Duration::from_secs(120), || async {
        let a = agents().await;
        (a.len() == 1 && ready(&a[0])).then(|| a[0].metadata.uid.clone().unwrap_or_default())
    })
    .await;
    assert!(
        first.is_some(),
        "the agent pod never got ready: {:?}\nscheduler: {}\ncontrollers: {}\nkubelet: {}",
        agents()
            .await
            .iter()
            .map(|p| p.status.as_ref().and_then(|s| s.container_statuses.clone()))
            .collect::<Vec<_>>(),
        scheduler
            .log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"),
        controllers
            .log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"),
        kubelet
            .daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("-agent-") && (l.contains("rror") || l.contains("robe")))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let first = first.unwrap_or_default();
    wait_counts(&nodes, (2, 2), "the agent's device plugin").await;

    // One VF held all along; pods for the other one arrive back to back during the update.
    let ns = cluster.namespace("rollout-pods", json!({})).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    pods.create(&PostParams::default(), &vf_pod("holder"))
        .await
        .unwrap();
    assert_eq!(settle(&pods, "holder").await.0, "Running");

    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(cluster.client.clone(), &release_ns);
    let ds_name = format!("{release}-agent");
    ds.patch(
        &ds_name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
            "spiderpool.spidernet.io/restarted-at": format!("{:?}", std::time::SystemTime::now())}}}}})),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut done_at: Option<Instant> = None;
    let mut i = 0;
    // Until the old agent is gone and the new one ready, and 3 s more.
    while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the update did not finish in 180 s"
        );
        let name = format!("u-{i}");
        i += 1;
        pods.create(&PostParams::default(), &vf_pod(&name)).await.unwrap();
        let (phase, reason, message) = settle(&pods, &name).await;
        outcomes.push((name.clone(), phase, reason, message));
        let _ = pods.delete(&name, &delete_now()).await;
        let _ = eventually(Duration::from_secs(30), || async {
            pods.get_opt(&name).await.ok()?.is_none().then_some(())
        })
        .await;
        let a = agents().await;
        if done_at.is_none()
            && a.len() == 1
            && ready(&a[0])
            && a[0].metadata.uid.as_deref() != Some(first.as_str())
        {
            done_at = Some(Instant::now());
        }
    }
    let refused: Vec<_> = outcomes.iter().filter(|o| o.1 != "Running").collect();
    eprintln!(
        "kubelet tier ({}): agent DaemonSet update in {:?}, {} VF pods created meanwhile, {} refused {:?}",
        kubelet.version,
        done_at.map(|t| t.duration_since(started)),
        outcomes.len(),
        refused.len(),
        refused
    );
    if fixed {
        assert!(refused.is_empty(), "pods refused during the update: {refused:?}");
    }
    assert!(outcomes.len() >= 3, "too few pods to say anything: {outcomes:?}");

    let _ = pods
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    let _ = spiderpool_e2e::run(
        Command::new(&helm)
            .args(["uninstall", &release, "-n", &release_ns])
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig),
    );
    // No garbage collector runs here: the DaemonSet's pods are deleted by hand, and kubelet stops
    // them before it goes.
    for pod in agents().await {
        let _ = all_pods
            .delete(&pod.metadata.name.unwrap_or_default(), &delete_now())
            .await;
    }
    let _ = eventually(Duration::from_secs(30), || async {
        agents().await.is_empty().then_some(())
    })
    .await;
    drop(scheduler);
    drop(controllers);
    drop(kubelet);
    let _ = nodes.delete(NODE, &DeleteParams::default()).await;
    drop(cri);
    let _ = std::fs::remove_dir_all(DEVICE_PLUGINS);
}
