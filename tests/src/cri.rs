//! The CRI tier's node: Debian's containerd (its CRI plugin, runc underneath) started inside a
//! node network namespace with its own root, state, socket, CNI binaries and `net.d`, so the
//! host's network is never touched; a small CRI client over the socket; and a busybox image that
//! serves as both the pause image and the workload image (no registry here).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use spiderpool_linux::netns::NetNs;
use tonic::transport::Channel;

use crate::{DEBIAN_CNI_DIR, bin_dir, run};

/// The CRI messages and clients, from `tests/proto/cri.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use proto::image_service_client::ImageServiceClient;
use proto::runtime_service_client::RuntimeServiceClient;

/// The reference the busybox image is imported under; `localhost/` keeps it fully qualified, so
/// the CRI plugin never tries a registry for it.
pub const BUSYBOX_IMAGE: &str = "localhost/spiderpool-test/busybox:1";
/// containerd's namespace for CRI objects.
const K8S_NAMESPACE: &str = "k8s.io";
/// The plugins containerd may call: ours, and Debian's.
const OUR_PLUGINS: [&str; 2] = ["spiderpool", "coordinator"];
const DEBIAN_PLUGINS: [&str; 4] = ["macvlan", "host-local", "loopback", "bridge"];

/// An OCI archive of busybox-static (sh, sleep, ping, ping6, ip), entrypoint `sleep` for ever;
/// built once per test process with hack/build-image.sh.
pub fn busybox_image() -> Result<PathBuf> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_busybox_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_busybox_image() -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("no /bin/busybox: apt-get install busybox-static (hack/test.sh does)");
    }
    // One fixed place, rebuilt by each test process (containerd instances import it one after
    // another), so runs leave nothing but this behind.
    let dir = std::env::temp_dir().join("spiderpool-cri-image");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in ["sh", "sleep", "ping", "ping6", "ip", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    let out = dir.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/build-image.sh");
    run(Command::new(script)
        .arg("--rootfs")
        .arg(&rootfs)
        .args([
            "--entrypoint",
            r#"["/bin/sleep","2147483647"]"#,
            "--tag",
            BUSYBOX_IMAGE,
            "--out",
        ])
        .arg(&out))?;
    Ok(out)
}

/// A containerd with the CRI plugin, running in `node`'s network namespace (CNI plugins run
/// there too) until dropped.
pub struct CriNode {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The `net.d` containerd reads; holds the one conflist given at start.
    pub net_d: PathBuf,
    child: Child,
    /// Each running sandbox's config: CreateContainer needs it again, as kubelet passes it.
    sandboxes: std::collections::HashMap<String, proto::PodSandboxConfig>,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl CriNode {
    /// Starts containerd with `conflist` as its only network, imports the busybox image and
    /// waits until the CRI plugin answers and sees the image.
    pub async fn start(node: &NetNs, conflist: &Value) -> Result<CriNode> {
        CriNode::start_with(Some(node), Some(conflist)).await
    }

    /// As [`CriNode::start`]; without a namespace containerd runs in the caller's (a kubelet
    /// beside it on the host reaches the API server on loopback), without a conflist it has no
    /// network for pods (host-network pods need none).
    pub async fn start_with(node: Option<&NetNs>, conflist: Option<&Value>) -> Result<CriNode> {
        CriNode::start_with_cdi(node, conflist, None).await
    }

    /// As [`CriNode::start_with`], with `cdi` the containerd to run instead of Debian's (a
    /// directory with `containerd` and its shim, 1.7 or later) and the directory of CDI specs
    /// it reads (DRA claims' devices).
    pub async fn start_with_cdi(
        node: Option<&NetNs>,
        conflist: Option<&Value>,
        cdi: Option<(&Path, &Path)>,
    ) -> Result<CriNode> {
        let image = busybox_image()?;
        let dir = tempfile::Builder::new()
            .prefix("spiderpool-cri")
            .tempdir()?
            .keep();
        let socket = dir.join("containerd.sock");
        let net_d = dir.join("net.d");
        let cni_bin = dir.join("cni-bin");
        std::fs::create_dir_all(&net_d)?;
        std::fs::create_dir_all(&cni_bin)?;
        // containerd takes one CNI binary directory: ours and Debian's side by side. Ours are
        // called through a wrapper that notes each call (verb, netns) in calls.log first.
        for plugin in OUR_PLUGINS {
            let wrapper = cni_bin.join(plugin);
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\necho \"{plugin} $CNI_COMMAND netns=$CNI_NETNS\" >>'{log}'\nexec '{real}' \"$@\"\n",
                    log = dir.join("calls.log").display(),
                    real = bin_dir().join(plugin).display(),
                ),
            )?;
            std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        for plugin in DEBIAN_PLUGINS {
            std::os::unix::fs::symlink(Path::new(DEBIAN_CNI_DIR).join(plugin), cni_bin.join(plugin))?;
        }
        if let Some(conflist) = conflist {
            std::fs::write(
                net_d.join("10-test.conflist"),
                serde_json::to_vec_pretty(conflist)?,
            )?;
        }
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # This sandbox refuses negative oom_score_adj (shared/notes/test-tiers.md).
  restrict_oom_score_adj = true
  sandbox_image = "{BUSYBOX_IMAGE}"
{cdi}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{net_d}"
    max_conf_num = 1
"#,
            cdi = cdi
                .map(|(_, specs)| format!(
                    "  enable_cdi = true\n  cdi_spec_dirs = [\"{}\"]\n",
                    specs.display()
                ))
                .unwrap_or_default(),
            dir = dir.display(),
            socket = socket.display(),
            cni_bin = cni_bin.display(),
            net_d = net_d.display(),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let mut cmd = match cdi {
            Some((bin, _)) => {
                let mut cmd = Command::new(bin.join("containerd"));
                // Its own shim, found on PATH.
                let path = std::env::var("PATH").unwrap_or_default();
                cmd.env("PATH", format!("{}:{path}", bin.display()));
                cmd
            }
            None => Command::new("containerd"),
        };
        // containerd passes its environment to CNI plugins: the tests' stores are in temporary
        // directories.
        cmd.env(spiderpool_cni::paths::TRUSTED_DIRS_ENV, std::env::temp_dir())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(node) = node {
            node.enter_on_spawn(&mut cmd);
        }
        let child = cmd.spawn().context("starting containerd")?;
        let mut started = StartGuard(Some(child), dir.clone());

        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            if socket.exists()
                && let Ok(channel) = spiderpool_device_plugin::kubelet::unix_channel(&socket).await
            {
                break channel;
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not open {} in 30 s: {}",
                    socket.display(),
                    started.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        run(Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args(["-n", K8S_NAMESPACE, "images", "import"])
            .arg(&image))?;
        let mut runtime = RuntimeServiceClient::new(channel.clone());
        let mut images = ImageServiceClient::new(channel);
        // The CRI plugin learns of imported images from events: wait until it sees this one.
        loop {
            let version = runtime.version(proto::VersionRequest::default()).await;
            let seen = images
                .image_status(proto::ImageStatusRequest {
                    image: Some(proto::ImageSpec {
                        image: BUSYBOX_IMAGE.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().image.is_some());
            if version.is_ok() && matches!(seen, Ok(true)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the CRI plugin is not ready (version {version:?}, image {seen:?}): {}",
                    started.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let child = started.0.take().context("containerd child")?;
        Ok(CriNode {
            dir,
            socket,
            net_d,
            child,
            sandboxes: Default::default(),
            runtime,
            images,
        })
    }

    /// Imports an OCI image archive for the CRI plugin (kubelet's pods use it with
    /// `imagePullPolicy: Never`).
    pub fn import(&self, archive: &Path) -> Result<()> {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", K8S_NAMESPACE, "images", "import"])
            .arg(archive))?;
        Ok(())
    }

    /// The calls containerd made to our plugins, in order: `<plugin> <VERB> netns=<CNI_NETNS>`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// RunPodSandbox for pod `name` in namespace `default` with a fresh UID; the sandbox ID.
    pub async fn run_pod(&mut self, name: &str) -> Result<String> {
        let uid = format!("{name}-{}", crate::cluster::unique());
        let config = proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            ..Default::default()
        };
        let response = self
            .runtime
            .run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("RunPodSandbox {name}: {}", s.message()))?;
        let id = response.into_inner().pod_sandbox_id;
        self.sandboxes.insert(id.clone(), config);
        Ok(id)
    }

    /// The sandbox's status with containerd's verbose info (its `info` JSON).
    pub async fn pod_status(&mut self, id: &str) -> Result<(proto::PodSandboxStatus, Value)> {
        let response = self
            .runtime
            .pod_sandbox_status(proto::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info = response
            .info
            .get("info")
            .map(|s| serde_json::from_str(s))
            .transpose()?
            .unwrap_or(Value::Null);
        Ok((response.status.context("no sandbox status")?, info))
    }

    /// The pod's addresses as containerd reports them (first the primary, then the others).
    pub async fn pod_ips(&mut self, id: &str) -> Result<Vec<String>> {
        let (status, _) = self.pod_status(id).await?;
        let network = status.network.context("no network status")?;
        let mut ips = vec![network.ip];
        ips.extend(network.additional_ips.into_iter().map(|p| p.ip));
        Ok(ips.into_iter().filter(|ip| !ip.is_empty()).collect())
    }

    /// The name under /var/run/netns of the sandbox's network namespace (for `ip -n`).
    pub async fn pod_netns(&mut self, id: &str) -> Result<String> {
        let (_, info) = self.pod_status(id).await?;
        let path = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .context("no network namespace path in the sandbox's runtime spec")?;
        Ok(Path::new(path)
            .file_name()
            .context("netns path")?
            .to_string_lossy()
            .into_owned())
    }

    /// Creates and starts a busybox container sleeping in the sandbox; its ID.
    pub async fn start_container(&mut self, sandbox: &str, name: &str) -> Result<String> {
        let image = proto::ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        };
        let created = self
            .runtime
            .create_container(proto::CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(proto::ContainerConfig {
                    metadata: Some(proto::ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(image),
                    command: vec!["/bin/sleep".into(), "3600".into()],
                    ..Default::default()
                }),
                sandbox_config: self.sandboxes.get(sandbox).cloned(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("CreateContainer: {}", s.message()))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(proto::StartContainerRequest {
                container_id: created.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("StartContainer: {}", s.message()))?;
        Ok(created)
    }

    /// ExecSync in a container: (exit code, stdout + stderr).
    pub async fn exec(&mut self, container: &str, cmd: &[&str]) -> Result<(i32, String)> {
        let out = self
            .runtime
            .exec_sync(proto::ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .map_err(|s| anyhow::anyhow!("ExecSync {cmd:?}: {}", s.message()))?
            .into_inner();
        Ok((
            out.exit_code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("StopPodSandbox {id}: {}", s.message()))?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_pod_sandbox(proto::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox {id}: {}", s.message()))?;
        self.sandboxes.remove(id);
        Ok(())
    }

    /// The sandboxes containerd still knows.
    pub async fn pods(&mut self) -> Result<Vec<String>> {
        Ok(self
            .runtime
            .list_pod_sandbox(proto::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items
            .into_iter()
            .map(|p| p.id)
            .collect())
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // Containers a test (or a kubelet) left running would outlive containerd: kill them first.
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .arg("-a")
                .arg(&self.socket)
                .args(["-n", K8S_NAMESPACE])
                .args(args)
                .output()
        };
        // `ctr tasks ls`: TASK PID STATUS; the processes are killed directly (containerd may
        // not be answering any more), their shims after containerd.
        if let Ok(out) = ctr(&["tasks", "ls"]) {
            for pid in String::from_utf8_lossy(&out.stdout)
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1))
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("containerd log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        stop_containerd(&mut self.child, &self.dir);
    }
}

/// Stops containerd if `start` fails half-way.
struct StartGuard(Option<Child>, PathBuf);

impl StartGuard {
    fn log(&self) -> String {
        std::fs::read_to_string(self.1.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            stop_containerd(child, &self.1);
        }
    }
}

/// Kills containerd (the shims of sandboxes still running go with their own processes: the tests
/// remove their sandboxes first), unmounts what is left under `dir` and removes it.
fn stop_containerd(child: &mut Child, dir: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    // The shims of this containerd (`-address <dir>/containerd.sock`) outlive it.
    let _ = Command::new("pkill")
        .args(["-9", "-f"])
        .arg(format!("containerd-shim-runc-v2 .*-address {}/", dir.display()))
        .status();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(prefix.as_str()))
        .collect();
    under.sort_unstable_by(|a, b| b.cmp(a));
    for m in under {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}
