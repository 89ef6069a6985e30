//! DRA through a real kubelet: `spiderpool-agent dra` on the gpu-nic fixture registers its
//! kubelet plugin through kubelet's plugin watcher, the real kube-scheduler allocates claims
//! from its slices, kubelet prepares them through the plugin and containerd 1.7 injects the
//! CDI devices (device nodes, environment) into the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::ListParams;

use super::e2e_host::HcaNodes;
use super::*;

const CONTAINERD_ENV: &str = "SPIDERPOOL_TEST_CONTAINERD_CDI";
pub const VF_CLASS: &str = "kubelet-vf.spidernet.io";
pub const RDMA_CLASS: &str = "kubelet-rdma.spidernet.io";

/// The gpu-nic fixture's HCA device nodes (6 mlx5 devices, rdma_cm).
fn fixture_nodes() -> Vec<String> {
    let mut nodes: Vec<String> = (0..6)
        .flat_map(|i| {
            [
                format!("/dev/infiniband/uverbs{i}"),
                format!("/dev/infiniband/issm{i}"),
                format!("/dev/infiniband/umad{i}"),
            ]
        })
        .collect();
    nodes.push("/dev/infiniband/rdma_cm".into());
    nodes
}

/// The device plugin's config: ens1np0's VFs (NUMA node 0) as `spidernet.io/cx7_numa0`, given
/// to the device plugin or (`dra`) to DRA.
pub fn write_config(path: &Path, allocation: &str) {
    std::fs::write(
        path,
        format!(
            "resources:\n- resourceName: cx7_numa0\n  allocation: {allocation}\n  selectors: {{pfNames: [ens1np0]}}\n"
        ),
    )
    .unwrap();
}

/// `spiderpool-agent run` (IPAM, device plugin and DRA) over the gpu-nic fixture, kubelet's
/// root at `kubelet_root`.
pub fn run_agent(parts: &NodeParts<'_>, log: &str) -> Daemon {
    let NodeParts {
        cluster,
        dir,
        kubelet_root,
        cdi,
        sharing,
        ..
    } = parts;
    let mut cmd = Command::new(spiderpool_e2e::bin_dir().join("spiderpool-agent"));
    cmd.args(["run", "--node-name", NODE, "--health-addr", "127.0.0.1:15753"])
        .args([
            "--node-policies=report",
            "--dra-rdma-slots",
            "2",
            "--dra-rdma-sharing",
            sharing,
        ])
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--sysfs-root")
        .arg(spiderpool_testing::fixtures::fixture_root("gpu-nic"))
        .arg("--device-plugin-config")
        .arg(dir.join("dp.yaml"))
        .arg("--kubelet-root-dir")
        .arg(kubelet_root)
        .arg("--cdi-dir")
        .arg(cdi)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::new(dir.join(log));
    daemon.start(cmd).unwrap();
    daemon
}

/// The devices of the node's slices, once they are `want`.
pub async fn wait_registered(agent: &Daemon, kubelet: &Kubelet) {
    let registered = eventually(Duration::from_secs(30), || async {
        agent
            .log_text()
            .contains("kubelet registered driver spidernet.io")
            .then_some(())
    })
    .await;
    assert!(
        registered.is_some(),
        "kubelet never registered the plugin:\n{}\nkubelet:\n{}",
        agent.log_text(),
        kubelet.daemon.log_text()
    );
}

async fn wait_slices(cluster: &Cluster, want: &[&str], agent: &Daemon) {
    let slices: Api<ResourceSlice> = Api::all(cluster.client.clone());
    let names = || async {
        let list = slices
            .list(&ListParams::default().fields(&format!("spec.nodeName={NODE},spec.driver=spidernet.io")))
            .await
            .ok()?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .flat_map(|s| s.spec.devices.unwrap_or_default())
            .map(|d| d.name)
            .collect();
        names.sort();
        Some(names)
    };
    let seen = eventually(Duration::from_secs(30), || async {
        (names().await? == want).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "slices never held {want:?}, last {:?}\n{}",
        names().await,
        agent.log_text()
    );
}

async fn device_class(cluster: &Cluster, name: &str) {
    let class: DeviceClass = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": "device.driver == 'spidernet.io'"}}]}
    }))
    .unwrap();
    match Api::<DeviceClass>::all(cluster.client.clone())
        .create(&PostParams::default(), &class)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("DeviceClass {name}: {e}"),
    }
}

pub async fn template(cluster: &Cluster, ns: &str, name: &str, request: &str, class: &str, cel: &str) {
    let template: ResourceClaimTemplate = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"spec": {"devices": {"requests": [{"name": request, "exactly": {
            "deviceClassName": class,
            "selectors": [{"cel": {"expression": cel}}]
        }}]}}}
    }))
    .unwrap();
    Api::<ResourceClaimTemplate>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
}

pub fn claim_pod(name: &str, template: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "hostNetwork": true, "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "resourceClaims": [{"name": "net", "resourceClaimTemplateName": template}],
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"],
                "resources": {"claims": [{"name": "net"}]}}]
        }
    }))
    .unwrap()
}

/// The claim made for `pod` from its template, once allocated: (name, request → device).
async fn pod_claim(cluster: &Cluster, ns: &str, pod: &str) -> (String, BTreeMap<String, String>) {
    let claims: Api<ResourceClaim> = Api::namespaced(cluster.client.clone(), ns);
    let found = eventually(Duration::from_secs(30), || async {
        let list = claims.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|c| {
            let owner = c
                .metadata
                .owner_references
                .as_ref()?
                .iter()
                .any(|o| o.name == pod);
            let results = c
                .status
                .as_ref()?
                .allocation
                .as_ref()?
                .devices
                .as_ref()?
                .results
                .clone()?;
            owner.then(|| {
                (
                    c.metadata.name.clone().unwrap_or_default(),
                    results.into_iter().map(|r| (r.request, r.device)).collect(),
                )
            })
        })
    })
    .await;
    found.unwrap_or_else(|| panic!("no allocated claim for pod {pod}"))
}

async fn container_of(pods: &Api<Pod>, name: &str) -> String {
    let pod = pods.get(name).await.unwrap();
    pod.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string()
}

async fn sh(cri: &mut CriNode, container: &str, script: &str) -> String {
    let (code, out) = cri.exec(container, &["/bin/sh", "-c", script]).await.unwrap();
    assert_eq!(code, 0, "{script}: {out}");
    out.trim().to_string()
}

fn cdi_specs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits for pod `name` to run; on failure everything that says why.
pub async fn running(pods: &Api<Pod>, name: &str, agent: &Daemon, kubelet: &Kubelet) {
    let ran = eventually(Duration::from_secs(60), || async {
        let pod = pods.get(name).await.ok()?;
        pod.status?
            .container_statuses?
            .iter()
            .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .then_some(())
    })
    .await;
    if ran.is_none() {
        let pod = pods
            .get(name)
            .await
            .ok()
            .and_then(|p| serde_json::to_string_pretty(&p.status).ok());
        let kubelet_log: String = kubelet
            .daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("dra") || l.contains("DRA") || l.contains("claim") || l.contains("CDI"))
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "pod {name} did not run: {}\nagent:\n{}\nkubelet (DRA lines):\n{kubelet_log}",
            pod.unwrap_or_default(),
            agent.log_text()
        );
    }
}

pub async fn gone(pods: &Api<Pod>, name: &str) {
    pods.delete(name, &delete_now()).await.unwrap();
    let deleted = eventually(Duration::from_secs(60), || async {
        pods.get(name).await.is_err().then_some(())
    })
    .await;
    assert!(deleted.is_some(), "pod {name} was not deleted");
}

/// This host as a node for DRA: kubelet, containerd 1.7 reading CDI specs from `cdi`, the
/// gpu-nic fixture's device nodes, the scheduler and the resourceclaim controller, the device
/// classes, a namespace.
pub struct DraNode {
    pub cluster: Cluster,
    pub work: tempfile::TempDir,
    pub dir: PathBuf,
    pub cdi: PathBuf,
    pub kubelet_root: PathBuf,
    pub cri: CriNode,
    pub kubelet: Kubelet,
    pub scheduling: Scheduling,
    pub ns: String,
    pub hca_nodes: HcaNodes,
}

impl DraNode {
    pub async fn up() -> DraNode {
        let containerd = std::env::var(CONTAINERD_ENV).unwrap_or_else(|_| {
            panic!("{CONTAINERD_ENV} is not set: `hack/control-plane.sh containerd` fetches containerd 1.7 (hack/test.sh does)")
        });
        let cluster = Cluster::connect().await.unwrap();
        remove_leftovers(&cluster).await;
        let work = tempfile::tempdir().unwrap();
        let dir: PathBuf = work.path().to_path_buf();
        let cdi = dir.join("cdi");
        std::fs::create_dir_all(&cdi).unwrap();
        let nodes = fixture_nodes();
        let hca = HcaNodes::make(&nodes.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        // The pods use the host's network; containerd 1.7 only calls the node Ready once some
        // network config loads.
        let network = json!({"cniVersion": "1.0.0", "name": "host-only", "plugins": [{"type": "loopback"}]});
        let (cri, kubelet) = node_up_with(
            &cluster,
            &dir,
            Some(&network),
            Some((Path::new(&containerd), &cdi)),
        )
        .await;
        schedulable(&Api::all(cluster.client.clone()), &kubelet).await;
        let scheduling = Scheduling::start(&cluster, &dir, "resourceclaim-controller");
        let ns = cluster.namespace("kubelet-dra", json!({})).await.unwrap();
        device_class(&cluster, VF_CLASS).await;
        device_class(&cluster, RDMA_CLASS).await;
        DraNode {
            kubelet_root: dir.join("root"),
            cluster,
            work,
            dir,
            cdi,
            cri,
            kubelet,
            scheduling,
            ns,
            hca_nodes: hca,
        }
    }
}

/// [`run_agent`], once kubelet registered its DRA plugin and counts its device plugin's two VFs.
pub async fn started_agent(node: &NodeParts<'_>, log: &str) -> Daemon {
    let agent = run_agent(node, log);
    wait_registered(&agent, node.kubelet).await;
    let nodes: Api<Node> = Api::all(node.cluster.client.clone());
    wait_counts_of(
        &nodes,
        "spidernet.io/cx7_numa0",
        (2, 2),
        "the device plugin's VFs",
    )
    .await;
    agent
}

/// What [`started_agent`] needs of a [`DraNode`].
pub struct NodeParts<'a> {
    pub cluster: &'a Cluster,
    pub dir: &'a Path,
    pub kubelet_root: &'a Path,
    pub cdi: &'a Path,
    pub kubelet: &'a Kubelet,
    /// `--dra-rdma-sharing`: `slots` or `capacity`.
    pub sharing: &'a str,
}

/// A pod with one of the device plugin's VFs.
pub fn device_plugin_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "hostNetwork": true, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {"spidernet.io/cx7_numa0": "1"}}}]
        }
    }))
    .unwrap()
}

/// Pods and claims an earlier, failed run left in its namespaces: once this node is schedulable
/// they would be scheduled and take the devices.
async fn remove_leftovers(cluster: &Cluster) {
    let ours = |ns: &Option<String>| ns.as_deref().is_some_and(|n| n.starts_with("kubelet-dra"));
    let pods: Api<Pod> = Api::all(cluster.client.clone());
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        if ours(&pod.metadata.namespace) {
            let api: Api<Pod> =
                Api::namespaced(cluster.client.clone(), pod.metadata.namespace.as_deref().unwrap());
            let _ = api
                .delete(pod.metadata.name.as_deref().unwrap(), &delete_now())
                .await;
        }
    }
    let claims: Api<ResourceClaim> = Api::all(cluster.client.clone());
    for claim in claims.list(&ListParams::default()).await.unwrap() {
        if ours(&claim.metadata.namespace) {
            let api: Api<ResourceClaim> = Api::namespaced(
                cluster.client.clone(),
                claim.metadata.namespace.as_deref().unwrap(),
            );
            let _ = api
                .delete(claim.metadata.name.as_deref().unwrap(), &DeleteParams::default())
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "kubelet tier: needs root, hack/control-plane.sh up, kubelet and containerd 1.7"]
async fn dra_claims_for_a_vf_and_shared_rdma_run_pods_with_their_devices_through_cdi() {
    let DraNode {
        cluster,
        work: _work,
        dir,
        cdi,
        kubelet_root,
        mut cri,
        kubelet,
        scheduling,
        ns,
        hca_nodes: _hca,
    } = DraNode::up().await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);

    // `run` serves the device plugin and DRA side by side: ens1np0's VFs (and their RDMA
    // devices) are the device plugin's, the rest DRA's. Registration through kubelet's plugin
    // watcher (the `:authority` relay).
    write_config(&dir.join("dp.yaml"), "devicePlugin");
    let at = NodeParts {
        cluster: &cluster,
        dir: &dir,
        kubelet_root: &kubelet_root,
        cdi: &cdi,
        kubelet: &kubelet,
        sharing: "slots",
    };
    let mut agent = started_agent(&at, "agent-1.log").await;
    let dra_only = [
        "rdma-mlx5-0-0",
        "rdma-mlx5-0-1",
        "rdma-mlx5-1-0",
        "rdma-mlx5-1-1",
        "vf-0000-9b-00-2",
        "vf-0000-9b-00-3",
    ];
    wait_slices(&cluster, &dra_only, &agent).await;

    // A VF with RDMA on NUMA node 1, by CEL: one of ens2np0's VFs (0000:9b:00.2/.3, mlx5_4/5).
    template(
        &cluster,
        &ns,
        "vf-numa1",
        "vf",
        VF_CLASS,
        "device.attributes['spidernet.io'].kind == 'vf' && device.attributes['spidernet.io'].rdma && \
         device.attributes['resource.kubernetes.io'].numaNode == 1",
    )
    .await;
    pods.create(&PostParams::default(), &claim_pod("vf", "vf-numa1"))
        .await
        .unwrap();
    running(&pods, "vf", &agent, &kubelet).await;
    let (claim, devices) = pod_claim(&cluster, &ns, "vf").await;
    let device = devices["vf"].clone();
    let (pci, uverbs) = match device.as_str() {
        "vf-0000-9b-00-2" => ("0000:9b:00.2", "uverbs4"),
        "vf-0000-9b-00-3" => ("0000:9b:00.3", "uverbs5"),
        other => panic!("the claim got {other}, not a NUMA 1 VF with RDMA"),
    };
    let c = container_of(&pods, "vf").await;
    assert_eq!(sh(&mut cri, &c, "echo $PCIDEVICE_SPIDERNET_IO_VF").await, pci);
    let info = sh(&mut cri, &c, "echo $PCIDEVICE_SPIDERNET_IO_VF_INFO").await;
    assert!(info.contains(&format!("/dev/infiniband/{uverbs}")), "{info}");
    let dev = sh(&mut cri, &c, "ls /dev/infiniband").await;
    let mut seen: Vec<&str> = dev.split_whitespace().collect();
    seen.sort();
    let n = &uverbs[6..];
    let mut want = vec![
        format!("issm{n}"),
        "rdma_cm".into(),
        format!("umad{n}"),
        uverbs.to_string(),
    ];
    want.sort();
    assert_eq!(seen, want, "only the VF's own HCA nodes and rdma_cm");
    let devinfo = Path::new("/var/run/k8s.cni.cncf.io/devinfo/dp").join(format!("{claim}-{pci}-device.json"));
    assert!(devinfo.exists(), "{}", devinfo.display());

    // Shared RDMA: two slots of mlx5_0 (rdma-slots 2); two pods share it, a third is refused.
    template(
        &cluster,
        &ns,
        "rdma0",
        "rdma",
        RDMA_CLASS,
        "device.attributes['spidernet.io'].kind == 'rdma' && device.attributes['spidernet.io'].rdmaDevice == 'mlx5_0'",
    )
    .await;
    for name in ["r1", "r2"] {
        pods.create(&PostParams::default(), &claim_pod(name, "rdma0"))
            .await
            .unwrap();
    }
    for name in ["r1", "r2"] {
        let (phase, reason, message) = settle(&pods, name).await;
        assert_eq!(phase, "Running", "{name}: {reason}: {message}");
        let c = container_of(&pods, name).await;
        let dev = sh(&mut cri, &c, "ls /dev/infiniband").await;
        assert!(
            dev.contains("uverbs0") && dev.contains("rdma_cm") && !dev.contains("uverbs4"),
            "{name}: {dev}"
        );
    }
    pods.create(&PostParams::default(), &claim_pod("r3", "rdma0"))
        .await
        .unwrap();
    let refused = eventually(Duration::from_secs(30), || async {
        let pod = pods.get("r3").await.ok()?;
        pod.status?.conditions?.into_iter().find(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })
    })
    .await;
    assert!(refused.is_some(), "a third pod got a slot of mlx5_0");
    assert_eq!(cdi_specs(&cdi).len(), 3, "{:?}", cdi_specs(&cdi));

    // The agent killed and restarted with three prepared claims: the pods keep running, and
    // the restarted plugin unprepares them from its checkpoint.
    agent.kill();
    let mut agent = started_agent(&at, "agent-2.log").await;
    assert!(
        agent.log_text().contains("3 prepared claims"),
        "{}",
        agent.log_text()
    );
    for name in ["vf", "r1", "r2"] {
        let (phase, _, _) = settle(&pods, name).await;
        assert_eq!(phase, "Running", "{name} after the agent restart");
    }
    gone(&pods, "vf").await;
    let unprepared = eventually(Duration::from_secs(30), || async {
        (!cdi_specs(&cdi).iter().any(|n| n.starts_with("spidernet.io-vf_"))).then_some(())
    })
    .await;
    assert!(
        unprepared.is_some(),
        "the VF claim's spec stayed: {:?}\n{}",
        cdi_specs(&cdi),
        agent.log_text()
    );
    assert!(!devinfo.exists(), "{}", devinfo.display());
    // A slot freed: the third pod gets it and runs.
    gone(&pods, "r1").await;
    let (phase, reason, message) = settle(&pods, "r3").await;
    assert_eq!(phase, "Running", "r3 once r1 is gone: {reason}: {message}");
    for name in ["r2", "r3"] {
        gone(&pods, name).await;
    }
    let empty = eventually(Duration::from_secs(30), || async {
        cdi_specs(&cdi).is_empty().then_some(())
    })
    .await;
    assert!(empty.is_some(), "specs left: {:?}", cdi_specs(&cdi));

    // A live switch: a pod holds one of the device plugin's VFs when the resource is given to
    // DRA. The other VF appears in the slices at once, the held one only once the pod is gone.
    pods.create(&PostParams::default(), &device_plugin_pod("dp"))
        .await
        .unwrap();
    running(&pods, "dp", &agent, &kubelet).await;
    let c = container_of(&pods, "dp").await;
    let held = sh(&mut cri, &c, "echo $PCIDEVICE_SPIDERNET_IO_CX7_NUMA0").await;
    let (held_device, other) = match held.as_str() {
        "0000:1b:00.2" => ("vf-0000-1b-00-2", "vf-0000-1b-00-3"),
        "0000:1b:00.3" => ("vf-0000-1b-00-3", "vf-0000-1b-00-2"),
        v => panic!("the device plugin gave {v}"),
    };
    write_config(&dir.join("dp.yaml"), "dra");
    let mut now_dra: Vec<&str> = dra_only.to_vec();
    now_dra.push(other);
    now_dra.sort();
    wait_slices(&cluster, &now_dra, &agent).await;
    gone(&pods, "dp").await;
    now_dra.push(held_device);
    now_dra.sort();
    wait_slices(&cluster, &now_dra, &agent).await;

    // And back: ens2np0's VFs given to a device-plugin resource while a claim holds one. The
    // device plugin advertises only the other until the claim is unprepared.
    pods.create(&PostParams::default(), &claim_pod("vf2", "vf-numa1"))
        .await
        .unwrap();
    running(&pods, "vf2", &agent, &kubelet).await;
    std::fs::write(
        dir.join("dp.yaml"),
        "resources:\n- resourceName: cx7_numa0\n  allocation: dra\n  selectors: {pfNames: [ens1np0]}\n\
         - resourceName: cx7_numa1\n  selectors: {pfNames: [ens2np0]}\n",
    )
    .unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    wait_counts_of(&nodes, "spidernet.io/cx7_numa1", (1, 1), "the VF no claim holds").await;
    gone(&pods, "vf2").await;
    wait_counts_of(
        &nodes,
        "spidernet.io/cx7_numa1",
        (2, 2),
        "both once the claim is gone",
    )
    .await;
    agent.kill();
    drop(scheduling);
    drop(kubelet);
    drop(cri);
}

/// Shared RDMA by consumable capacity through a real kubelet: mlx5_0 is one device with a
/// capacity of 2 (the test API server and scheduler enable DRAConsumableCapacity); two pods get
/// shares of it and see its device nodes, a third waits until one is gone.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "kubelet tier: needs root, hack/control-plane.sh up, kubelet and containerd 1.7"]
async fn dra_pods_share_an_rdma_device_by_consumable_capacity() {
    let mut node = DraNode::up().await;
    write_config(&node.dir.join("dp.yaml"), "devicePlugin");
    let parts = NodeParts {
        cluster: &node.cluster,
        dir: &node.dir,
        kubelet_root: &node.kubelet_root,
        cdi: &node.cdi,
        kubelet: &node.kubelet,
        sharing: "capacity",
    };
    let mut agent = started_agent(&parts, "agent.log").await;
    let cluster = &node.cluster;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &node.ns);
    template(
        cluster,
        &node.ns,
        "share0",
        "rdma",
        RDMA_CLASS,
        "device.attributes['spidernet.io'].kind == 'rdma' && device.attributes['spidernet.io'].rdmaDevice == 'mlx5_0'",
    )
    .await;
    for name in ["c1", "c2", "c3"] {
        pods.create(&PostParams::default(), &claim_pod(name, "share0"))
            .await
            .unwrap();
    }
    let mut running_pods = Vec::new();
    let settled = eventually(Duration::from_secs(60), || async {
        let mut run = Vec::new();
        let mut waiting = 0;
        for name in ["c1", "c2", "c3"] {
            let pod = pods.get(name).await.ok()?;
            let status = pod.status?;
            if status
                .container_statuses
                .iter()
                .flatten()
                .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            {
                run.push(name);
            } else if status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
            {
                waiting += 1;
            }
        }
        (run.len() == 2 && waiting == 1).then_some(run)
    })
    .await;
    match settled {
        Some(run) => running_pods.extend(run),
        None => panic!(
            "not two running and one waiting:\n{}\nkubelet:\n{}",
            agent.log_text(),
            node.kubelet
                .daemon
                .log_text()
                .lines()
                .filter(|l| l.contains("dra") || l.contains("claim"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
    for name in &running_pods {
        let (_, devices) = pod_claim(cluster, &node.ns, name).await;
        assert_eq!(devices["rdma"], "rdma-mlx5-0");
        let c = container_of(&pods, name).await;
        let dev = sh(&mut node.cri, &c, "ls /dev/infiniband").await;
        assert!(
            dev.contains("uverbs0") && dev.contains("rdma_cm"),
            "{name}: {dev}"
        );
    }
    assert_eq!(cdi_specs(&node.cdi).len(), 2, "{:?}", cdi_specs(&node.cdi));
    gone(&pods, running_pods[0]).await;
    let third = ["c1", "c2", "c3"]
        .into_iter()
        .find(|n| !running_pods.contains(n))
        .unwrap();
    running(&pods, third, &agent, &node.kubelet).await;
    for name in ["c1", "c2", "c3"] {
        let _ = pods.delete(name, &delete_now()).await;
    }
    let empty = eventually(Duration::from_secs(30), || async {
        cdi_specs(&node.cdi).is_empty().then_some(())
    })
    .await;
    assert!(empty.is_some(), "specs left: {:?}", cdi_specs(&node.cdi));
    agent.kill();
}
