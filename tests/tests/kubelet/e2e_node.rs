//! The e2e node: this host as a Kubernetes node with its default pod network, the chart from the
//! image (agent over the cx6dx fixture, controller, Multus), kube-scheduler and the workload
//! controllers, a dual-stack pair of pools and a macvlan SpiderMultusConfig whose NAD exists.

use serde_json::Value;
use spiderpool_api::crd::ipam::SpiderIPPool;
use spiderpool_api::multus::{NetworkAttachmentDefinition, SpiderMultusConfig};
use tempfile::TempDir;

use super::*;
use crate::e2e::{HCA_NODES, INJECT, RDMA};
use crate::e2e_host::Host;
use crate::support::{Images, Release};
use spiderpool_e2e::cluster::Scheduling;

/// Fields drop in this order after a failure: kubelet and the workload controllers first, then
/// containerd, then the host's links and device nodes.
pub struct E2eNode {
    pub kubelet: Kubelet,
    pub scheduling: Scheduling,
    pub cri: CriNode,
    pub host: Host,
    pub release: Release,
    pub cluster: Cluster,
    pub nodes: Api<Node>,
    pub ns: String,
    pub pools: Api<SpiderIPPool>,
    pub v4: String,
    pub v6: String,
    pub smcs: Api<SpiderMultusConfig>,
    pub work: TempDir,
}

impl E2eNode {
    pub async fn up() -> E2eNode {
        let cluster = Cluster::connect().await.unwrap();
        let work = tempfile::tempdir().unwrap();
        let dir: PathBuf = work.path().to_path_buf();
        // Addresses per kubelet version: both runs share one API server, and the pools' subnets
        // stay registered until the controller has removed the first run's pools.
        let probe_version = Command::new(std::env::var(KUBELET_ENV).unwrap())
            .arg("--version")
            .output()
            .unwrap();
        let minor: u32 = String::from_utf8_lossy(&probe_version.stdout)
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let host = Host::prepare(minor, &HCA_NODES).unwrap();
        let (cri, kubelet) = node_up_with(&cluster, &dir, Some(&host.default_network()), None).await;
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        schedulable(&nodes, &kubelet).await;
        let images = Images::build_and_import(&cri, &dir);
        let scheduling = Scheduling::start(&cluster, &dir, "daemonset,deployment,replicaset");

        let release = Release::install(&cluster, &dir, &images, &cri).await;
        release.wait_ready(&cluster, &kubelet, &scheduling).await;
        wait_counts_of(&nodes, RDMA, (20, 20), "the agent's shared RDMA resource").await;
        let multus_conf = cri.net_d.join("00-multus.conf");
        let Ok(conf) = std::fs::read_to_string(&multus_conf) else {
            panic!(
                "Multus wrote no {}: {}",
                multus_conf.display(),
                release.logs(&cluster, "multus").await
            )
        };
        // The reference plugins, from the plugin image over what the node had (Debian's, linked).
        let installed =
            std::fs::symlink_metadata(cri.dir.join("cni-bin/macvlan")).map(|m| m.file_type().is_file());
        assert!(
            matches!(installed, Ok(true)),
            "the chart did not install macvlan: {installed:?}"
        );
        let agent_logs = release.logs(&cluster, "agent").await;
        for line in [
            "installed macvlan",
            "installed tuning",
            "skipped sriov: not in /usr/src/cni/bin",
        ] {
            assert!(
                agent_logs.contains(line),
                "no {line:?} from install-cni-plugins:\n{agent_logs}"
            );
        }
        let conf: Value = serde_json::from_str(&conf).unwrap();
        assert_eq!(conf["delegates"][0]["name"], "e2e-default", "{conf}");

        // Pools, the network and its NAD (written by the chart's controller).
        let ns = cluster.namespace("e2e", json!({})).await.unwrap();
        let pools: Api<SpiderIPPool> = Api::all(cluster.client.clone());
        let (v4, v6) = (format!("e2e-v4-{minor}"), format!("e2e-v6-{minor}"));
        for (name, spec) in [(&v4, host.pool_spec(4)), (&v6, host.pool_spec(6))] {
            let _ = pools.delete(name, &DeleteParams::default()).await;
            let _ = eventually(Duration::from_secs(30), || async {
                pools.get_opt(name).await.ok()?.is_none().then_some(())
            })
            .await;
            let pool: SpiderIPPool =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
            pools.create(&PostParams::default(), &pool).await.unwrap();
        }
        let smcs: Api<SpiderMultusConfig> = Api::namespaced(cluster.client.clone(), &ns);
        let smc: SpiderMultusConfig = serde_json::from_value(json!({
            "metadata": {"name": "macvlan-e2e", "labels": {INJECT: "e2e-rdma"}},
            "spec": {
                "cniType": "macvlan",
                "macvlan": {"master": [host.uplink], "ippools": {"ipv4": [v4], "ipv6": [v6]},
                            "rdmaResourceName": RDMA},
                "enableCoordinator": true,
                "coordinator": {"mode": "underlay"}
            }
        }))
        .unwrap();
        smcs.create(&PostParams::default(), &smc).await.unwrap();
        let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.client.clone(), &ns);
        let nad = eventually(Duration::from_secs(30), || async {
            nads.get_opt("macvlan-e2e").await.ok()?
        })
        .await;
        assert!(
            nad.is_some(),
            "the chart's controller wrote no NAD: {}",
            release.logs(&cluster, "controller").await
        );

        E2eNode {
            kubelet,
            scheduling,
            cri,
            host,
            release,
            cluster,
            nodes,
            ns,
            pools,
            v4,
            v6,
            smcs,
            work,
        }
    }

    /// Removes what [`E2eNode::up`] made, in the order a node goes.
    pub async fn down(self) {
        let E2eNode {
            kubelet,
            scheduling,
            cri,
            host,
            release,
            cluster,
            nodes,
            pools,
            v4,
            v6,
            smcs,
            work,
            ..
        } = self;
        smcs.delete("macvlan-e2e", &DeleteParams::default())
            .await
            .unwrap();
        for pool in [&v4, &v6] {
            let _ = pools.delete(pool, &DeleteParams::default()).await;
        }
        release.uninstall(&cluster).await;
        drop(scheduling);
        drop(kubelet);
        let _ = nodes.delete(NODE, &DeleteParams::default()).await;
        drop(cri);
        drop(host);
        drop(work);
        let _ = std::fs::remove_dir_all(DEVICE_PLUGINS);
    }
}
