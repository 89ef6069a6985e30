//! What the chart-based kubelet tests share: the host's side of the e2e network, the images,
//! kube-scheduler with kube-controller-manager, and a chart release on this node.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::Value;
use spiderpool_linux::netns::NetNs;

use super::*;

/// The netns directory with shared propagation, as `ip netns add` makes it (a systemd host's / is
/// shared anyway): the chart mounts it with HostToContainer propagation.
pub fn shared_netns_mount() {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if !mounts.lines().any(|l| l.split(' ').nth(4) == Some("/run/netns")) {
        std::fs::create_dir_all("/run/netns").unwrap();
        spiderpool_e2e::run(Command::new("mount").args(["--bind", "/run/netns", "/run/netns"])).unwrap();
    }
    spiderpool_e2e::run(Command::new("mount").args(["--make-rshared", "/run/netns"])).unwrap();
}

/// The host as the e2e node needs it, all names and addresses per kubelet minor version (`m`):
/// the default network's bridge `spe2e-br<m>` (10.213.m.1/24, made here so it is there before
/// and after the pods), an uplink veth `spe2e-up<m>` whose peer in namespace `spe2e-gw<m>` is the
/// gateway (10.214.m.1/24, fd00:214:m::1/64), and the fixture HCA's device nodes where the host
/// has none (the fixture's HCA has no driver here; its nodes only need to exist for the runtime
/// to hand them over). Undone when dropped.
pub struct Host {
    minor: u32,
    pub uplink: String,
    bridge: String,
    // Held for its lifetime: dropping it deletes the namespace.
    _gateway_ns: NetNs,
    state: tempfile::TempDir,
    made_nodes: Vec<PathBuf>,
    made_dir: bool,
    /// The pod namespaces there before: a failed run leaves its pods' (containerd is stopped
    /// without tearing them down), and with them links, routes and rules on the node.
    netns_before: BTreeSet<String>,
    /// Whether the agent's default IPAM socket was there before: the chart's agent (killed with
    /// containerd) leaves it behind, and a stale socket there makes every `coordinator` on this
    /// host ask an agent that is gone.
    socket_before: bool,
}

/// The chart's default `agent.ipamSocket` (the `spiderpool` plugin's default path).
const AGENT_SOCKET: &str = "/var/run/spidernet/spiderpool.sock";

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A snapshot of what pods can leave on the node: links, routes, rules, neighbours.
pub struct Snapshot {
    links: BTreeSet<String>,
    routes: Vec<String>,
    rules: BTreeSet<String>,
    neighbours: Vec<String>,
}

fn ip_host(args: &[&str]) -> String {
    spiderpool_e2e::run(Command::new("ip").args(args)).unwrap()
}

impl Host {
    pub fn prepare(minor: u32, hca_nodes: &[&str]) -> anyhow::Result<Host> {
        shared_netns_mount();
        let uplink = format!("spe2e-up{minor}");
        let bridge = format!("spe2e-br{minor}");
        for link in [&uplink, &bridge] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        let gateway_ns = NetNs::create(&format!("spe2e-gw{minor}"))?;
        ip_host(&["link", "add", &bridge, "type", "bridge"]);
        ip_host(&["addr", "add", &format!("10.213.{minor}.1/24"), "dev", &bridge]);
        ip_host(&["link", "set", &bridge, "up"]);
        ip_host(&[
            "link",
            "add",
            &uplink,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            gateway_ns.name(),
        ]);
        ip_host(&["link", "set", &uplink, "up"]);
        spiderpool_e2e::ip(
            &gateway_ns,
            &["addr", "add", &format!("10.214.{minor}.1/24"), "dev", "eth0"],
        )?;
        spiderpool_e2e::ip(
            &gateway_ns,
            &[
                "addr",
                "add",
                &format!("fd00:214:{minor}::1/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        spiderpool_e2e::ip(&gateway_ns, &["link", "set", "eth0", "up"])?;
        let made_dir = !Path::new("/dev/infiniband").exists();
        let mut made_nodes = Vec::new();
        std::fs::create_dir_all("/dev/infiniband")?;
        for node in hca_nodes {
            if Path::new(node).exists() {
                continue;
            }
            // The kernel's numbers for these nodes (ib_uverbs 231:192+n, ib_umad 231:n and
            // 231:64+n, rdma_cm a misc device).
            let (major, minor) = match node.trim_start_matches("/dev/infiniband/") {
                "rdma_cm" => (10, 58),
                n if n.starts_with("uverbs") => (231, 192 + n[6..].parse::<u32>().unwrap_or(0)),
                n if n.starts_with("issm") => (231, 64 + n[4..].parse::<u32>().unwrap_or(0)),
                n => (231, n.trim_start_matches("umad").parse::<u32>().unwrap_or(0)),
            };
            spiderpool_e2e::run(Command::new("mknod").args([
                node,
                "c",
                &major.to_string(),
                &minor.to_string(),
            ]))?;
            made_nodes.push(PathBuf::from(node));
        }
        Ok(Host {
            minor,
            uplink,
            bridge,
            _gateway_ns: gateway_ns,
            state: tempfile::Builder::new().prefix("spiderpool-e2e-host").tempdir()?,
            made_nodes,
            made_dir,
            netns_before: netns_names(),
            socket_before: Path::new(AGENT_SOCKET).exists(),
        })
    }

    /// The node's default pod network: Debian's bridge with host-local, as a plain conflist.
    pub fn default_network(&self) -> Value {
        let m = self.minor;
        json!({
            "cniVersion": "0.4.0", "name": "e2e-default",
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.213.{m}.0/24")}]],
                         "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": self.state.path().join("host-local")}
            }]
        })
    }

    pub fn pool_spec(&self, family: u8) -> Value {
        let m = self.minor;
        if family == 4 {
            json!({"ipVersion": 4, "subnet": format!("10.214.{m}.0/24"),
                   "ips": [format!("10.214.{m}.10-10.214.{m}.100")], "gateway": self.gateway(4)})
        } else {
            json!({"ipVersion": 6, "subnet": format!("fd00:214:{m}::/64"),
                   "ips": [format!("fd00:214:{m}::10-fd00:214:{m}::100")], "gateway": self.gateway(6)})
        }
    }

    /// The start every pool address of `family` has.
    pub fn prefix(&self, family: u8) -> String {
        if family == 4 {
            format!("10.214.{}.", self.minor)
        } else {
            format!("fd00:214:{}::", self.minor)
        }
    }

    pub fn gateway(&self, family: u8) -> String {
        format!("{}1", self.prefix(family))
    }

    /// A destination the route annotation sends through the gateway.
    pub fn extra_route(&self) -> String {
        format!("10.215.{}.0/24", self.minor)
    }

    /// An address of the node's own (the bridge's).
    pub fn node_ip(&self) -> String {
        format!("10.213.{}.1", self.minor)
    }

    pub fn snapshot(&self) -> Snapshot {
        let lines = |args: &[&str]| -> Vec<String> { ip_host(args).lines().map(str::to_string).collect() };
        Snapshot {
            links: lines(&["-o", "link", "show"])
                .iter()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
                .collect(),
            routes: [
                lines(&["route", "show", "table", "all"]),
                lines(&["-6", "route", "show", "table", "all"]),
            ]
            .concat(),
            rules: [lines(&["rule"]), lines(&["-6", "rule"])]
                .concat()
                .into_iter()
                .collect(),
            neighbours: [lines(&["neigh", "show"]), lines(&["-6", "neigh", "show"])].concat(),
        }
    }
}

impl Snapshot {
    /// What appeared since `before`: new links and rules, and routes or neighbours naming one of
    /// `pod_addrs` (routes: only those not there before).
    pub fn left_since(&self, before: &Snapshot, pod_addrs: &[String]) -> Vec<String> {
        let names_pod = |line: &str| {
            line.split_whitespace().any(|w| {
                let bare = w.split('/').next().unwrap_or(w);
                pod_addrs.iter().any(|a| a == bare)
            })
        };
        let mut left: Vec<String> = self
            .links
            .difference(&before.links)
            .map(|l| format!("link {l}"))
            .collect();
        left.extend(self.rules.difference(&before.rules).map(|r| format!("rule {r}")));
        left.extend(
            self.routes
                .iter()
                .filter(|r| names_pod(r) && !before.routes.contains(r))
                .map(|r| format!("route {r}")),
        );
        left.extend(
            self.neighbours
                .iter()
                .filter(|n| names_pod(n))
                .map(|n| format!("neighbour {n}")),
        );
        left
    }

    pub fn assert_nothing_left_since(&self, before: &Snapshot, pod_addrs: &[String]) {
        let left = self.left_since(before, pod_addrs);
        assert!(
            left.is_empty(),
            "left on the node after every pod went: {left:#?}"
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if !self.socket_before {
            let _ = std::fs::remove_file(AGENT_SOCKET);
        }
        // After a failure: the pods' namespaces (their links go with them) and the coordinator's
        // rules to their addresses.
        for ns in netns_names().difference(&self.netns_before) {
            if ns.starts_with("cni-") {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
        for (family, prefix) in [("-4", self.prefix(4)), ("-6", self.prefix(6))] {
            let rules = Command::new("ip")
                .args([family, "rule"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            for line in String::from_utf8_lossy(&rules).lines() {
                if let Some(to) = line.split_whitespace().skip_while(|w| *w != "to").nth(1)
                    && to.starts_with(&prefix)
                {
                    let _ = Command::new("ip")
                        .args([family, "rule", "del", "to", to])
                        .output();
                }
            }
        }
        for link in [&self.uplink, &self.bridge] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        for node in &self.made_nodes {
            let _ = std::fs::remove_file(node);
        }
        if self.made_dir {
            let _ = std::fs::remove_dir("/dev/infiniband");
        }
    }
}

/// The project's image (this workspace's binaries) and Multus's (built from the Go module proxy
/// with the upstream image's layout), imported into the node's containerd.
pub struct Images {
    pub ours: (String, String),
    pub multus: (String, String),
    /// busybox with Debian's reference plugins in `/usr/src/cni/bin`, for `cniPlugins.install`.
    pub plugins: (String, String),
}

/// The reference plugins the e2e release installs from the plugin image (Debian has no sriov:
/// the installer skips it, saying so).
pub const INSTALLED_PLUGINS: [&str; 5] = ["macvlan", "ipvlan", "vlan", "tuning", "sriov"];

pub const MULTUS_REPOSITORY: &str = "ghcr.io/k8snetworkplumbingwg/multus-cni";
pub const MULTUS_TAG: &str = "v4.3.0";

impl Images {
    pub fn build_and_import(cri: &CriNode, dir: &Path) -> Images {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/build-image.sh");
        let ours = ("localhost/spiderpool-rs".to_string(), "e2e".to_string());
        let archive = dir.join("image.tar");
        spiderpool_e2e::run(
            Command::new(&script)
                .env("IMAGE_GZIP_LEVEL", "1")
                .arg("--bin-dir")
                .arg(spiderpool_e2e::bin_dir())
                .args(["--tag", &format!("{}:{}", ours.0, ours.1), "--out"])
                .arg(&archive),
        )
        .unwrap();
        cri.import(&archive).unwrap();
        let multus = (MULTUS_REPOSITORY.to_string(), MULTUS_TAG.to_string());
        let archive = dir.join("multus.tar");
        spiderpool_e2e::run(
            Command::new(&script)
                .env("IMAGE_GZIP_LEVEL", "1")
                .arg("--rootfs")
                .arg(control_plane_tool("multus"))
                .args(["--entrypoint", r#"["/thin_entrypoint"]"#])
                .args(["--tag", &format!("{}:{}", multus.0, multus.1), "--out"])
                .arg(&archive),
        )
        .unwrap();
        cri.import(&archive).unwrap();
        let plugins = (
            "localhost/spiderpool-test/cni-plugins".to_string(),
            "e2e".to_string(),
        );
        let rootfs = dir.join("plugins-rootfs");
        for sub in ["bin", "tmp", "usr/src/cni/bin"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "cp", "mv", "[", "test", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        for plugin in INSTALLED_PLUGINS.iter().filter(|p| **p != "sriov") {
            std::fs::copy(
                Path::new(spiderpool_e2e::DEBIAN_CNI_DIR).join(plugin),
                rootfs.join("usr/src/cni/bin").join(plugin),
            )
            .unwrap();
        }
        let archive = dir.join("plugins.tar");
        spiderpool_e2e::run(
            Command::new(&script)
                .env("IMAGE_GZIP_LEVEL", "1")
                .arg("--rootfs")
                .arg(&rootfs)
                .args(["--entrypoint", r#"["/bin/sh"]"#])
                .args(["--tag", &format!("{}:{}", plugins.0, plugins.1), "--out"])
                .arg(&archive),
        )
        .unwrap();
        cri.import(&archive).unwrap();
        Images {
            ours,
            multus,
            plugins,
        }
    }
}

/// kube-scheduler and kube-controller-manager (only `controllers`), stopped when dropped.
pub struct Scheduling {
    pub scheduler: Daemon,
    pub controllers: Daemon,
}

impl Scheduling {
    pub fn start(cluster: &Cluster, dir: &Path, controllers: &str) -> Scheduling {
        let bin = control_plane_tool("scheduling");
        let kubeconfig = format!("--kubeconfig={}", cluster.kubeconfig.display());
        let mut scheduler = Daemon::new(dir.join("scheduler.log"));
        let mut cmd = Command::new(bin.join("kube-scheduler"));
        cmd.args([&kubeconfig, "--leader-elect=false", "--secure-port=0"]);
        scheduler.start(cmd).unwrap();
        let mut kcm = Daemon::new(dir.join("kcm.log"));
        let mut cmd = Command::new(bin.join("kube-controller-manager"));
        cmd.args([
            &kubeconfig,
            "--leader-elect=false",
            "--secure-port=0",
            &format!("--controllers={controllers}"),
        ]);
        kcm.start(cmd).unwrap();
        Scheduling {
            scheduler,
            controllers: kcm,
        }
    }

    pub fn tails(&self) -> String {
        let tail = |d: &Daemon| d.log_text().lines().rev().take(5).collect::<Vec<_>>().join("\n");
        format!(
            "scheduler:\n{}\ncontrollers:\n{}",
            tail(&self.scheduler),
            tail(&self.controllers)
        )
    }
}

/// The workloads of releases an earlier, failed run left (no namespace controller deletes them):
/// their pods would come back on this node and hold the host ports the new release needs.
async fn remove_leftover_releases(cluster: &Cluster) {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
    // ReplicaSets and pods too: no garbage collector runs here.
    delete_labelled::<Deployment>(cluster, false).await;
    delete_labelled::<DaemonSet>(cluster, false).await;
    delete_labelled::<ReplicaSet>(cluster, false).await;
    delete_labelled::<Pod>(cluster, true).await;
}

/// Deletes every `K` of the chart (label `app.kubernetes.io/name=spiderpool`), in any namespace.
async fn delete_labelled<K>(cluster: &Cluster, now: bool)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + for<'de> k8s_openapi::serde::Deserialize<'de>
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let lp = ListParams::default().labels("app.kubernetes.io/name=spiderpool");
    let dp = if now {
        delete_now()
    } else {
        DeleteParams::default()
    };
    let found = Api::<K>::all(cluster.client.clone())
        .list(&lp)
        .await
        .map(|l| l.items);
    for object in found.unwrap_or_default() {
        let ns = object.namespace().unwrap_or_default();
        let _ = Api::<K>::namespaced(cluster.client.clone(), &ns)
            .delete(&object.name_any(), &dp)
            .await;
    }
}

/// Deletes the admission policy `Cluster::connect` applies (as the cluster tier needs it) so that
/// the chart's release can own it.
pub async fn release_owns_admission_policy(cluster: &Cluster) {
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

/// A release of the chart on this node: agent (over a fixture sysfs), controller and Multus from
/// the images, reaching the API server with the test's credentials (this control plane issues no
/// service-account tokens to pods: the agent and controller get a kubeconfig, Multus's entrypoint
/// the token file and CA it would find in a real cluster, and the API server's address).
pub struct Release {
    pub name: String,
    pub namespace: String,
    credentials: tempfile::TempDir,
    helm: PathBuf,
}

impl Release {
    pub async fn install(cluster: &Cluster, dir: &Path, images: &Images, cri: &CriNode) -> Release {
        remove_leftover_releases(cluster).await;
        let namespace = cluster.namespace("e2e-release", json!({})).await.unwrap();
        let name = format!("e2e{}", std::process::id());
        // Readable by the controller's non-root user.
        let credentials = tempfile::Builder::new()
            .prefix("spiderpool-e2e-cred")
            .tempdir()
            .unwrap();
        let cred = credentials.path();
        std::fs::set_permissions(cred, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kubeconfig_text = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
        std::fs::write(cred.join("kubeconfig"), &kubeconfig_text).unwrap();
        std::fs::set_permissions(cred.join("kubeconfig"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let pki = cluster.kubeconfig.parent().unwrap().join("pki");
        std::fs::create_dir_all(cred.join("sa")).unwrap();
        std::fs::copy(pki.join("admin.token"), cred.join("sa/token")).unwrap();
        std::fs::copy(pki.join("ca.crt"), cred.join("sa/ca.crt")).unwrap();
        let port = kubeconfig_text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .unwrap()
            .to_string();
        let cri_dir = (cri.dir.join("cni-bin"), cri.net_d.clone());
        let fixture = spiderpool_testing::fixtures::fixture_root("cx6dx");
        let kubeconfig_env = json!([{"name": "KUBECONFIG", "value": cred.join("kubeconfig")}]);
        let cred_volume = json!([{"name": "credentials", "hostPath": {"path": cred}}]);
        let cred_mount = json!([{"name": "credentials", "mountPath": cred, "readOnly": true}]);
        let values = json!({
            "image": {"repository": images.ours.0, "tag": images.ours.1, "pullPolicy": "Never"},
            "coordinator": {"enabled": false},
            "cniPlugins": {
                "install": true,
                "image": {"repository": images.plugins.0, "tag": images.plugins.1, "pullPolicy": "Never"},
                "plugins": INSTALLED_PLUGINS,
            },
            "metrics": {"port": 15763, "agent": {"port": 0}},
            "controller": {
                "replicas": 1, "gcInterval": 5,
                "extraEnv": kubeconfig_env, "extraVolumes": cred_volume, "extraVolumeMounts": cred_mount,
            },
            "multus": {
                "image": {"repository": images.multus.0, "tag": images.multus.1, "pullPolicy": "Never"},
                "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                             {"name": "KUBERNETES_SERVICE_PORT", "value": port}],
                "extraVolumes": [{"name": "sa", "hostPath": {"path": cred.join("sa")}}],
                "extraVolumeMounts": [{"name": "sa", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            },
            "agent": {
                "healthPort": 15762,
                "hostPaths": {"cniBin": cri_dir.0, "cniConf": cri_dir.1, "netns": "/run/netns"},
                "devicePlugin": {"config": {"resources": [
                    {"resourceName": "rdma", "kind": "rdma", "rdmaHcaMax": 20,
                     "selectors": {"pciAddresses": [super::e2e::HCA_PCI]}}]}},
                // Node policies planned and reported, never applied: the sysfs is a fixture.
                "extraArgs": ["--sysfs-root=/fixture", "--node-policies=report"],
                "extraEnv": kubeconfig_env,
                "extraVolumes": [{"name": "fixture", "hostPath": {"path": fixture}}, cred_volume[0]],
                "extraVolumeMounts": [{"name": "fixture", "mountPath": "/fixture", "readOnly": true}, cred_mount[0]],
            }
        });
        std::fs::write(dir.join("values.json"), values.to_string()).unwrap();
        let helm = control_plane_tool("helm");
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/spiderpool");
        release_owns_admission_policy(cluster).await;
        spiderpool_e2e::run(
            Command::new(&helm)
                .args(["install", &name])
                .arg(&chart)
                .args(["-n", &namespace, "--kubeconfig"])
                .arg(&cluster.kubeconfig)
                .arg("-f")
                .arg(dir.join("values.json")),
        )
        .unwrap();
        Release {
            name,
            namespace,
            credentials,
            helm,
        }
    }

    fn pods(&self, cluster: &Cluster) -> Api<Pod> {
        Api::namespaced(cluster.client.clone(), &self.namespace)
    }

    async fn component_pods(&self, cluster: &Cluster, component: &str) -> Vec<Pod> {
        self.pods(cluster)
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Waits until the agent, the controller and Multus each have one ready pod.
    pub async fn wait_ready(&self, cluster: &Cluster, kubelet: &Kubelet, scheduling: &Scheduling) {
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        for component in ["agent", "multus", "controller"] {
            let up = eventually(Duration::from_secs(120), || async {
                let pods = self.component_pods(cluster, component).await;
                (pods.len() == 1 && ready(&pods[0])).then_some(())
            })
            .await;
            if up.is_none() {
                let statuses: Vec<_> = self
                    .component_pods(cluster, component)
                    .await
                    .iter()
                    .map(|p| p.status.as_ref().and_then(|s| s.container_statuses.clone()))
                    .collect();
                panic!(
                    "the chart's {component} never got ready: {statuses:?}\n{}\n{}\nkubelet:\n{}",
                    self.logs(cluster, component).await,
                    scheduling.tails(),
                    kubelet
                        .daemon
                        .log_text()
                        .lines()
                        .filter(|l| l.contains(component) && (l.contains("rror") || l.contains("robe")))
                        .take(10)
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
        }
    }

    /// The last lines the component's containers logged (kubelet's log files of the pod).
    pub async fn logs(&self, cluster: &Cluster, component: &str) -> String {
        let mut out = String::new();
        for pod in self.component_pods(cluster, component).await {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let pattern = format!("/var/log/pods/{}_{}_{uid}", self.namespace, pod.name_any());
            for entry in walk(Path::new(&pattern)) {
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(15).collect();
                out += &format!(
                    "--- {}\n{}\n",
                    entry.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }

    /// Uninstalls and deletes the release's pods by hand (no garbage collector runs here);
    /// waits until kubelet has stopped them.
    pub async fn uninstall(self, cluster: &Cluster) {
        let _ = spiderpool_e2e::run(
            Command::new(&self.helm)
                .args(["uninstall", &self.name, "-n", &self.namespace, "--kubeconfig"])
                .arg(&cluster.kubeconfig),
        );
        let pods = self.pods(cluster);
        for component in ["agent", "multus", "controller"] {
            for pod in self.component_pods(cluster, component).await {
                let _ = pods.delete(&pod.name_any(), &delete_now()).await;
            }
        }
        let _ = eventually(Duration::from_secs(60), || async {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await;
        drop(self.credentials);
    }
}

/// Files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
