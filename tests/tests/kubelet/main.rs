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
use spiderpool_e2e::cluster::{Cluster, Daemon, Scheduling, control_plane_tool, eventually};
use spiderpool_e2e::cri::{BUSYBOX_IMAGE, CriNode};

mod bench;
mod daemonset;
mod device_plugin;
mod dra;
mod e2e;
mod e2e_host;
mod e2e_node;
mod policies;
mod support;

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
        .arg(spiderpool_testing::fixtures::fixture_root("e810"))
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
    // Node policies planned and reported, never applied: the sysfs is a fixture.
    cmd.args(["run", "--node-name", NODE, "--health-addr", "127.0.0.1:15752"])
        .arg("--node-policies=report")
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--sysfs-root")
        .arg(spiderpool_testing::fixtures::fixture_root("e810"))
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
    counts_of(nodes, RESOURCE).await
}

/// The node's (capacity, allocatable) of `resource` (absent: 0).
async fn counts_of(nodes: &Api<Node>, resource: &str) -> (i64, i64) {
    let Ok(node) = nodes.get(NODE).await else {
        return (-1, -1);
    };
    let count = |m: Option<
        &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        m.and_then(|m| m.get(resource))
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
    wait_counts_of(nodes, RESOURCE, want, what).await
}

/// [`wait_counts`] for `resource`.
async fn wait_counts_of(nodes: &Api<Node>, resource: &str, want: (i64, i64), what: &str) -> Duration {
    let start = Instant::now();
    let seen = eventually(Duration::from_secs(30), || async {
        (counts_of(nodes, resource).await == want).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{what}: node never reported {resource} (capacity, allocatable) = {want:?}, last {:?}",
        counts_of(nodes, resource).await
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

/// What the node lifecycle controller (not run here) does once the node is Ready: lift the
/// not-ready taint kubelet registers with, so that pods without tolerations are scheduled.
async fn schedulable(nodes: &Api<Node>, kubelet: &Kubelet) {
    let ready = eventually(Duration::from_secs(60), || async {
        let node = nodes.get(NODE).await.ok()?;
        let conditions = node.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "the node never became Ready:\n{}",
        kubelet.daemon.log_text()
    );
    nodes
        .patch(
            NODE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
}

/// This host as node `NODE`: what an earlier run left removed (its checkpoint, sockets, pods
/// bound to the node, the node), then containerd and kubelet started and the node registered.
async fn node_up(cluster: &Cluster, dir: &Path) -> (CriNode, Kubelet) {
    node_up_with(cluster, dir, None, None).await
}

/// [`node_up`] with `network` as the node's pod network (containerd's only conflist), and with
/// `cdi` the containerd to run (its binaries' directory) and its CDI spec directory.
async fn node_up_with(
    cluster: &Cluster,
    dir: &Path,
    network: Option<&serde_json::Value>,
    cdi: Option<(&Path, &Path)>,
) -> (CriNode, Kubelet) {
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
    let cri = CriNode::start_with_cdi(None, network, cdi).await.unwrap();
    let kubelet = Kubelet::start(&cluster.kubeconfig, &cri.socket, dir);
    let registered = eventually(Duration::from_secs(60), || async { nodes.get(NODE).await.ok() }).await;
    assert!(
        registered.is_some(),
        "kubelet did not register its node:\n{}",
        kubelet.daemon.log_text()
    );
    (cri, kubelet)
}
