//! The chart's agent DaemonSet updated while VF pods keep arriving.

use super::*;

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

    e2e_host::shared_netns_mount();

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
    let scheduling = Scheduling::start(&cluster, &dir, "daemonset");
    let kubeconfig = cluster.kubeconfig.display().to_string();

    // The chart: only the agent (no Multus: it does not wrap this node's network), from our image, on the fixture, reaching the API server with
    // the test's kubeconfig (no service-account tokens in this control plane).
    let release_ns = cluster.namespace("rollout", json!({})).await.unwrap();
    // Cluster-scoped objects carry the release name: one per run.
    let release = format!("ro{}", std::process::id());
    let state_dir = cluster.kubeconfig.parent().unwrap().display().to_string();
    let fixture = spiderpool_testing::fixtures::fixture_root("e810");
    let values = json!({
        "image": {"repository": "localhost/spiderpool-rs", "tag": "rollout", "pullPolicy": "Never"},
        "controller": {"replicas": 0},
        "multus": {"enabled": false},
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
    support::release_owns_admission_policy(&cluster).await;
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
        "the agent pod never got ready: {:?}\n{}\nkubelet: {}",
        agents()
            .await
            .iter()
            .map(|p| p.status.as_ref().and_then(|s| s.container_statuses.clone()))
            .collect::<Vec<_>>(),
        scheduling.tails(),
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
    drop(scheduling);
    drop(kubelet);
    let _ = nodes.delete(NODE, &DeleteParams::default()).await;
    drop(cri);
    let _ = std::fs::remove_dir_all(DEVICE_PLUGINS);
}
