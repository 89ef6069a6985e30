//! The control-plane tier's helpers: a client of the real kube-apiserver that
//! `hack/control-plane.sh up` started (its kubeconfig in `SPIDERPOOL_TEST_KUBECONFIG`), the CRDs
//! installed from `spiderpool-api`, agents run as processes with their own node names, and the
//! `spiderpool` plugin exec'd against them the way a runtime does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use spiderpool_cni::exec::{Invocation, Output};

pub const KUBECONFIG_ENV: &str = "SPIDERPOOL_TEST_KUBECONFIG";

pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
}

/// The kubeconfig of the running control plane; a clear failure when the tier was not started.
pub fn kubeconfig_path() -> PathBuf {
    let path = std::env::var_os(KUBECONFIG_ENV).unwrap_or_else(|| {
        panic!("{KUBECONFIG_ENV} is not set: start the control plane with `hack/control-plane.sh up` (hack/test.sh does)")
    });
    PathBuf::from(path)
}

/// The project's CRDs, and Multus's NetworkAttachmentDefinition (what the chart's Multus
/// installs; the controller writes them).
fn crds() -> Vec<CustomResourceDefinition> {
    let mut all = spiderpool_api::crd::all();
    all.push(spiderpool_api::multus::network_attachment_definition_crd());
    all
}

/// Node objects a test registered ([`Cluster::nodes`]): deleted by [`RegisteredNodes::delete`],
/// or when dropped.
pub struct RegisteredNodes {
    names: Vec<String>,
    client: Client,
}

impl RegisteredNodes {
    /// Deletes the Nodes (gone already is fine).
    pub async fn delete(mut self) -> Result<()> {
        delete_nodes(&self.client, std::mem::take(&mut self.names)).await
    }
}

impl Drop for RegisteredNodes {
    /// A guard dropped in a test that failed (or forgot): its own thread and runtime, since Drop
    /// cannot wait on the test's, and a client of its own (the test's may be bound to that runtime).
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        if names.is_empty() {
            return;
        }
        let deleted = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = Client::try_from(config().await?)?;
                delete_nodes(&client, names).await
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("deleting the test's Nodes: {e:#}"),
            Err(_) => eprintln!("deleting the test's Nodes panicked"),
        }
    }
}

async fn delete_nodes(client: &Client, names: Vec<String>) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for name in names {
        match api.delete(&name, &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            other => {
                other.with_context(|| format!("deleting Node {name}"))?;
            }
        }
    }
    Ok(())
}

/// The client configuration of the running control plane (its kubeconfig).
pub async fn config() -> Result<Config> {
    let kc = Kubeconfig::read_from(kubeconfig_path()).context("read kubeconfig")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    // The bursts below are the point of the tier; the client must not be the bottleneck.
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(config)
}

impl Cluster {
    /// Connects and makes sure the project's CRDs are installed and established.
    pub async fn connect() -> Result<Cluster> {
        let client = Client::try_from(config().await?)?;
        let cluster = Cluster {
            client,
            kubeconfig: kubeconfig_path(),
        };
        cluster.install_crds().await?;
        Ok(cluster)
    }

    pub async fn install_crds(&self) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let pp = PatchParams::apply("spiderpool-e2e").force();
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &pp, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("apply CRD {name}"))?;
        }
        // The admission policies the chart installs beside the CRDs.
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(self.client.clone());
        for (policy, binding) in spiderpool_api::crd::admission::policies() {
            let name = policy.metadata.name.clone().unwrap_or_default();
            policies
                .patch(&name, &pp, &Patch::Apply(&policy))
                .await
                .with_context(|| format!("apply policy {name}"))?;
            bindings
                .patch(&name, &pp, &Patch::Apply(&binding))
                .await
                .with_context(|| format!("apply binding {name}"))?;
        }
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let c = api.get(&name).await?;
                let established = c
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("CRD {name} not established after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Registers Node objects `names` with `labels` (already there is fine), as kubelets would.
    /// They are deleted when the returned guard is, even when a test fails before it deletes them:
    /// a DaemonSet installed later on the same API server would get a pod on each, never scheduled.
    pub async fn nodes(&self, names: &[String], labels: Value) -> Result<RegisteredNodes> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut registered = RegisteredNodes {
            names: Vec::new(),
            client: self.client.clone(),
        };
        for name in names {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels}
            }))?;
            match api.create(&PostParams::default(), &node).await {
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                other => {
                    other.with_context(|| format!("creating Node {name}"))?;
                }
            }
            registered.names.push(name.clone());
        }
        Ok(registered)
    }

    /// A fresh namespace named `<prefix>-<unique>`, with `annotations`.
    pub async fn namespace(&self, prefix: &str, annotations: Value) -> Result<String> {
        let name = format!("{prefix}-{}", unique());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations}
        }))?;
        api.create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Creates `count` pods `<prefix>-<i>` in `ns` (`node_of(i)` as their node), `parallel` at a
    /// time, and returns their UIDs in order. `extra` is merged into each pod's metadata.
    pub async fn pods(
        &self,
        ns: &str,
        prefix: &str,
        count: usize,
        node_of: impl Fn(usize) -> String,
        extra_metadata: Value,
    ) -> Result<Vec<String>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pods: Vec<Pod> = (0..count)
            .map(|i| pod_object(&format!("{prefix}-{i}"), &node_of(i), &extra_metadata))
            .collect::<Result<_>>()?;
        let created: Vec<Pod> = stream::iter(pods)
            .map(|p| {
                let api = api.clone();
                async move { api.create(&PostParams::default(), &p).await }
            })
            .buffered(32)
            .try_collect()
            .await?;
        Ok(created
            .into_iter()
            .map(|p| p.metadata.uid.unwrap_or_default())
            .collect())
    }

    pub async fn delete_pod(&self, ns: &str, name: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        // No kubelet runs here: delete at once instead of waiting for one to confirm.
        api.delete(name, &DeleteParams::default().grace_period(0)).await?;
        Ok(())
    }
}

pub fn pod_object(name: &str, node: &str, extra_metadata: &Value) -> Result<Pod> {
    let mut pod = json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "registry.invalid/pause:3.10"}]
        }
    });
    if let (Some(meta), Some(extra)) = (pod["metadata"].as_object_mut(), extra_metadata.as_object()) {
        for (k, v) in extra {
            meta.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(pod)?)
}

/// A name part unique to this process and moment.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{:x}", std::process::id(), nanos)
}

/// A process a test starts: stderr appended to a log file, SIGKILLed when killed or dropped.
pub struct Daemon {
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn new(log: PathBuf) -> Daemon {
        Daemon { log, child: None }
    }

    /// Starts `cmd` (stdin and stdout closed, stderr into the log).
    pub fn start(&mut self, mut cmd: Command) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// The exit status, once the process has ended on its own.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// SIGKILL, as a node losing the process mid-operation.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `spiderpool-agent ipam-service` process.
pub struct Agent {
    pub node: String,
    pub socket: PathBuf,
    kubeconfig: PathBuf,
    daemon: Daemon,
    /// Its log filter (`SPIDERPOOL_TEST_AGENT_LOG`, else `warn`).
    log: String,
    /// Flags after the socket's.
    extra: Vec<String>,
}

impl Agent {
    pub fn start(kubeconfig: &Path, node: &str, dir: &Path) -> Result<Agent> {
        let log = std::env::var("SPIDERPOOL_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into());
        Agent::start_logging(kubeconfig, node, dir, &log)
    }

    /// As [`Agent::start`], with the log filter `log`.
    pub fn start_logging(kubeconfig: &Path, node: &str, dir: &Path, log: &str) -> Result<Agent> {
        Agent::start_with(kubeconfig, node, dir, log, &[])
    }

    /// As [`Agent::start_logging`], with `extra` flags.
    pub fn start_with(kubeconfig: &Path, node: &str, dir: &Path, log: &str, extra: &[&str]) -> Result<Agent> {
        let mut agent = Agent {
            node: node.into(),
            socket: dir.join(format!("{node}.sock")),
            kubeconfig: kubeconfig.into(),
            daemon: Daemon::new(dir.join(format!("{node}.log"))),
            log: log.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        agent.restart()?;
        Ok(agent)
    }

    /// A second agent of `self`'s node on the same socket, as an update with maxSurge starts it
    /// (its log filter `log`, its log `<node>.<suffix>.log`): returns once it has taken the
    /// socket over.
    pub fn beside(&self, suffix: &str, log: &str) -> Result<Agent> {
        let dir = self.socket.parent().unwrap_or(Path::new("."));
        let mut agent = Agent {
            node: self.node.clone(),
            socket: self.socket.clone(),
            kubeconfig: self.kubeconfig.clone(),
            daemon: Daemon::new(dir.join(format!("{}.{suffix}.log", self.node))),
            log: log.into(),
            extra: self.extra.clone(),
        };
        let before = socket_identity(&self.socket);
        agent.spawn()?;
        let socket = agent.socket.clone();
        agent.wait_listening(|| socket_identity(&socket) != before)?;
        Ok(agent)
    }

    /// (Re)starts the process and waits until its socket answers.
    pub fn restart(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        self.spawn()?;
        self.wait_listening(|| true)
    }

    /// The process with its log filter.
    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(crate::bin_dir().join("spiderpool-agent"));
        // Claims, the default, unless `extra` says otherwise.
        cmd.args(["ipam-service", "--node-name", &self.node, "--socket"])
            .arg(&self.socket)
            .args(&self.extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", &self.log);
        self.daemon.start(cmd)
    }

    /// Waits until the socket answers and `ours()` says it is this process's.
    fn wait_listening(&mut self, ours: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ours() || std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.daemon.exited()? {
                bail!("agent {} exited with {status}: {}", self.node, self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {} did not listen within 30 s: {}",
                    self.node,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, as a node losing the agent mid-operation.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// Inode and change time of `path` (a replaced socket differs), `None` when it is missing.
fn socket_identity(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// A `spiderpool-controller` process (leader election on its own Lease name, fast GC rounds).
pub struct Controller {
    pub identity: String,
    pub metrics_addr: String,
    daemon: Daemon,
}

impl Controller {
    pub fn start(
        kubeconfig: &Path,
        identity: &str,
        lease: &str,
        port: u16,
        dir: &Path,
    ) -> Result<Controller> {
        let metrics_addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(crate::bin_dir().join("spiderpool-controller"));
        cmd.args([
            "--gc-interval",
            "1",
            "--lease-duration",
            "3",
            "--lease-namespace",
            "default",
        ])
        .args([
            "--lease-name",
            lease,
            "--identity",
            identity,
            "--metrics-addr",
            &metrics_addr,
        ])
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut daemon = Daemon::new(dir.join(format!("{identity}.log")));
        daemon.start(cmd)?;
        Ok(Controller {
            identity: identity.into(),
            metrics_addr,
            daemon,
        })
    }

    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// The body of `GET /metrics`, or an empty string while it does not answer.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics")
    }
}

/// `GET path` on `addr` over plain HTTP/1.1: the whole response (status line, headers, body), or
/// an empty string when nothing answers.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster-mode netconf: no pools, the agent's socket, optional default pools.
pub fn netconf(socket: &Path, v4: &[&str], v6: &[&str]) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "macvlan-underlay",
        "type": "macvlan",
        "ipam": {
            "type": "spiderpool",
            "ipam_unix_socket_path": socket,
            "default_ipv4_ippool": v4,
            "default_ipv6_ippool": v6,
        }
    })
}

/// Runs the `spiderpool` plugin for `verb` on behalf of pod `ns/name` (UID `uid`).
pub fn cni(verb: &str, netconf: &Value, ns: &str, name: &str, uid: &str, ifname: &str) -> Output {
    cni_with(
        &crate::bin_dir().join("spiderpool"),
        verb,
        netconf,
        ns,
        name,
        uid,
        ifname,
    )
}

/// Runs the IPAM plugin `plugin` (ours or a peer's) for `verb` on behalf of pod `ns/name`.
pub fn cni_with(
    plugin: &Path,
    verb: &str,
    netconf: &Value,
    ns: &str,
    name: &str,
    uid: &str,
    ifname: &str,
) -> Output {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}");
    let netns = if verb == "ADD" || verb == "CHECK" {
        "/var/run/netns/none"
    } else {
        ""
    };
    let inv = Invocation::new(verb, &format!("ctr-{uid}"), netns, ifname)
        .with_args(&args)
        .with_path(vec![crate::bin_dir()])
        .with_trusted_dirs(vec![std::env::temp_dir()]);
    let body = serde_json::to_vec(netconf).unwrap_or_default();
    inv.run(plugin, &body).unwrap_or_else(|e| Output {
        success: false,
        stdout: String::new(),
        stderr: format!("spawn {}: {e}", plugin.display()),
    })
}

/// The first address of an ADD result, without its prefix length.
pub fn first_ip(out: &Output) -> Option<String> {
    let v = out.json();
    let addr = v.get("ips")?.get(0)?.get("address")?.as_str()?;
    Some(addr.split('/').next()?.to_string())
}

/// Runs `f(0..n)` on `workers` threads and returns the results in index order.
pub fn run_parallel<T: Send>(workers: usize, n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: std::sync::Mutex<Vec<Option<T>>> = std::sync::Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = f(i);
                    if let Ok(mut g) = out.lock() {
                        g[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.expect("every index ran"))
        .collect()
}

/// A tool `hack/control-plane.sh WHAT` builds (once, cached) and whose path it prints.
pub fn control_plane_tool(what: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/control-plane.sh");
    let out = crate::run(Command::new(script).arg(what)).expect("hack/control-plane.sh builds the tool");
    PathBuf::from(out.trim())
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
        // As the test API server (hack/control-plane.sh up): DRA devices' taints and consumable
        // capacity, alpha in 1.34.
        cmd.args([
            &kubeconfig,
            "--leader-elect=false",
            "--secure-port=0",
            "--feature-gates=DRADeviceTaints=true,DRAConsumableCapacity=true",
        ]);
        scheduler.start(cmd).expect("kube-scheduler starts");
        let mut kcm = Daemon::new(dir.join("kcm.log"));
        let mut cmd = Command::new(bin.join("kube-controller-manager"));
        cmd.args([
            &kubeconfig,
            "--leader-elect=false",
            "--secure-port=0",
            &format!("--controllers={controllers}"),
        ]);
        kcm.start(cmd).expect("kube-controller-manager starts");
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

/// Address → holder of every address `pool` gives: its SpiderIPClaims, and the pods in its status
/// (where agents from before claims recorded them; none here); an address in both is an error.
pub async fn pool_holders(
    client: &Client,
    pool: &str,
) -> Result<std::collections::BTreeMap<String, spiderpool_api::crd::PoolIPAllocation>> {
    use spiderpool_api::crd::SpiderIPPool;
    use spiderpool_api::crd::claim::{self, SpiderIPClaim};
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let status = pools
        .get_status(pool)
        .await
        .with_context(|| format!("pool {pool}"))?
        .status
        .unwrap_or_default();
    let mut held = status
        .held_by_pods()
        .map_err(|e| anyhow::anyhow!("pool {pool}: {e}"))?;
    let claims: Api<SpiderIPClaim> = Api::all(client.clone());
    let listed = claims
        .list(&kube::api::ListParams::default().fields(&claim::of_pool(pool)))
        .await
        .with_context(|| format!("SpiderIPClaims of {pool}"))?;
    for c in listed.items {
        let name = c.metadata.name.clone().unwrap_or_default();
        let ip = claim::claim_address(&name).with_context(|| format!("claim name {name}"))?;
        if let Some(before) = held.insert(ip.to_string(), c.spec.holder()) {
            bail!(
                "{ip} of pool {pool} is held in its status ({}) and by a claim",
                before.pod
            );
        }
    }
    Ok(held)
}
