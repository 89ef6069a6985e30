//! What the chart-based kubelet tests share: the images, kube-scheduler with
//! kube-controller-manager, and a chart release on this node.

use std::os::unix::fs::PermissionsExt;

use kube::ResourceExt;
use kube::api::ListParams;

use super::*;

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

/// Deletes the admission policies `Cluster::connect` applies (as the cluster tier needs it) so that
/// the chart's release can own it.
pub async fn release_owns_admission_policy(cluster: &Cluster) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let dp = DeleteParams::default();
    for (policy, _) in spiderpool_api::crd::admission::policies() {
        let name = policy.metadata.name.unwrap_or_default();
        let _ = Api::<ValidatingAdmissionPolicyBinding>::all(cluster.client.clone())
            .delete(&name, &dp)
            .await;
        let _ = Api::<ValidatingAdmissionPolicy>::all(cluster.client.clone())
            .delete(&name, &dp)
            .await;
    }
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
