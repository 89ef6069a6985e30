//! Pod creation to Running on the e2e node, p50/p99: pods with the macvlan NIC and an RDMA share
//! beside pods with only the default network, alternating, on the same kubelet in one run.
//! `hack/bench-pods.sh` runs it; CI does not (it measures and only asserts that pods ran).

use kube::ResourceExt;
use serde_json::Value;

use super::*;
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
    let count: usize = std::env::var("SPIDERPOOL_BENCH_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
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
