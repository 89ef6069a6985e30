//! Pod creation to Running, p50/p99, on the same kubelet in one run, alternating:
//! - on the e2e node, pods with the macvlan NIC and an RDMA share beside pods with only the
//!   default network (`hack/bench-pods.sh`);
//! - on the DRA node, pods with a VF from a DRA claim beside pods with a VF from the device
//!   plugin (`hack/bench-dra.sh`).
//!
//! CI does not run them (they measure and only assert that pods ran).

use kube::ResourceExt;
use serde_json::Value;

use super::*;
use crate::dra::{
    DraNode, NodeParts, VF_CLASS, claim_pod, device_plugin_pod, gone, started_agent, template, write_config,
};
use crate::e2e::{RDMA, rdma_pod_template};
use crate::e2e_node::E2eNode;

/// Creation → the API says Running (status polled every 20 ms).
async fn time_to_running(pods: &Api<Pod>, pod: Value) -> Duration {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let started = Instant::now();
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .unwrap();
    loop {
        let phase = pods.get(&name).await.ok().and_then(|p| p.status?.phase);
        if phase.as_deref() == Some("Running") {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120) && phase.as_deref() != Some("Failed"),
            "{name} did not run: {phase:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark (hack/bench-pods.sh): needs root, hack/control-plane.sh up, kubelet, scheduling, helm and multus"]
async fn bench_pod_startup_macvlan_rdma_vs_default_network() {
    let count = bench_count();
    let e = E2eNode::up().await;
    let pods: Api<Pod> = Api::namespaced(e.cluster.client.clone(), &e.ns);
    let (mut plain, mut rdma) = (Vec::new(), Vec::new());
    for i in 0..count {
        let mut p = rdma_pod_template("", json!({}));
        p["metadata"]["name"] = json!(format!("plain-{i}"));
        p["metadata"]["annotations"] = json!({});
        p["spec"]["containers"][0]["resources"] = json!({});
        plain.push(time_to_running(&pods, p).await);
        let mut p = rdma_pod_template("macvlan-e2e", json!({}));
        p["metadata"]["name"] = json!(format!("rdma-{i}"));
        rdma.push(time_to_running(&pods, p).await);
    }
    plain.sort();
    rdma.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99) = (percentile(&rdma, 0.5), percentile(&rdma, 0.99));
    let (b50, b99) = (percentile(&plain, 0.5), percentile(&plain, 0.99));
    println!(
        "pod creation → Running on kubelet {} ({} pods each, alternating, one at a time):\n  \
         default network only:              p50 {:7.0} ms  p99 {:7.0} ms\n  \
         + macvlan net1 (spiderpool IPAM, coordinator) + {RDMA}: p50 {:7.0} ms  p99 {:7.0} ms\n  \
         ratio: p50 {:.2}x  p99 {:.2}x",
        e.kubelet.version,
        count,
        ms(b50),
        ms(b99),
        ms(p50),
        ms(p99),
        ms(p50) / ms(b50),
        ms(p99) / ms(b99),
    );
    for pod in pods.list(&Default::default()).await.unwrap() {
        let _ = pods.delete(&pod.name_any(), &delete_now()).await;
    }
    let pools = e.pools.clone();
    let (v4, v6) = (e.v4.clone(), e.v6.clone());
    let released = eventually(Duration::from_secs(120), || async {
        let held = [
            crate::e2e::pool_holders(&pools, &v4).await,
            crate::e2e::pool_holders(&pools, &v6).await,
        ];
        held.iter().all(Vec::is_empty).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "the benchmark's addresses were not all returned"
    );
    e.down().await;
}

fn bench_count() -> usize {
    std::env::var("SPIDERPOOL_BENCH_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark (hack/bench-dra.sh): needs root, hack/control-plane.sh up, kubelet, scheduling and containerd 1.7"]
async fn bench_pod_startup_dra_vf_vs_device_plugin_vf() {
    let count = bench_count();
    let node = DraNode::up().await;
    let cluster = &node.cluster;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &node.ns);
    // ens1np0's two VFs through the device plugin, ens2np0's two through DRA.
    write_config(&node.dir.join("dp.yaml"), "devicePlugin");
    let agent = started_agent(
        &NodeParts {
            cluster,
            dir: &node.dir,
            kubelet_root: &node.kubelet_root,
            cdi: &node.cdi,
            kubelet: &node.kubelet,
            sharing: "slots",
        },
        "agent.log",
    )
    .await;
    template(
        cluster,
        &node.ns,
        "vf",
        "vf",
        VF_CLASS,
        "device.attributes['spidernet.io'].kind == 'vf'",
    )
    .await;
    let (mut dra, mut plugin) = (Vec::new(), Vec::new());
    for i in 0..count {
        let name = format!("dp-{i}");
        let pod = serde_json::to_value(device_plugin_pod(&name)).unwrap();
        plugin.push(time_to_running(&pods, pod).await);
        gone(&pods, &name).await;
        let name = format!("dra-{i}");
        dra.push(time_to_running(&pods, serde_json::to_value(claim_pod(&name, "vf")).unwrap()).await);
        gone(&pods, &name).await;
    }
    dra.sort();
    plugin.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (d50, d99) = (percentile(&dra, 0.5), percentile(&dra, 0.99));
    let (p50, p99) = (percentile(&plugin, 0.5), percentile(&plugin, 0.99));
    println!(
        "pod creation → Running on kubelet {} ({count} pods each, alternating, one at a time, each deleted before the next):\n  \
         VF from the device plugin:         p50 {:7.0} ms  p99 {:7.0} ms\n  \
         VF from a DRA claim (template):    p50 {:7.0} ms  p99 {:7.0} ms\n  \
         ratio DRA / device plugin: p50 {:.2}x  p99 {:.2}x",
        node.kubelet.version,
        ms(p50),
        ms(p99),
        ms(d50),
        ms(d99),
        ms(d50) / ms(p50),
        ms(d99) / ms(p99),
    );
    if std::env::var("SPIDERPOOL_BENCH_DEBUG").is_ok() {
        for (what, log) in [
            ("scheduler", node.scheduling.scheduler.log_text()),
            ("controllers", node.scheduling.controllers.log_text()),
            ("kubelet", node.kubelet.daemon.log_text()),
        ] {
            for line in log.lines().filter(|l| l.contains("dra-1")) {
                println!("{what}: {}", &line[..line.len().min(400)]);
            }
        }
    }
    drop(agent);
}
