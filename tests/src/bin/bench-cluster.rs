//! Cluster-mode allocation throughput against the real API server: N agents (processes, each its
//! own node) and the `spiderpool` plugin exec'd once per pod, all pods at once, from one pool of
//! exactly as many addresses. Reports the wall time, allocations per second and ADD latency
//! percentiles, then releases everything the same way. Run by hack/bench-cluster.sh.
//!
//! usage: bench-cluster [PODS] [AGENTS] [CONCURRENCY]

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::api::{Api, PostParams};
use serde_json::json;
use spiderpool_api::crd::SpiderIPPool;
use spiderpool_e2e::cluster::{Agent, Cluster, cni, netconf, run_parallel, unique};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let pods = args.first().copied().unwrap_or(1000);
    let agents_n = args.get(1).copied().unwrap_or(10);
    let concurrency = args.get(2).copied().unwrap_or(pods);
    let cluster = Cluster::connect().await?;
    let u = unique();
    let pool = format!("bench-{u}");
    let last = u32::try_from(pods).unwrap_or(u32::MAX);
    let end = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + last);
    let api: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let obj: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": pool},
        "spec": {"subnet": "10.128.0.0/12", "ips": [format!("10.128.0.1-{end}")]}
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    let ns = cluster.namespace("bench", json!({})).await?;
    let uids = cluster
        .pods(&ns, "p", pods, |i| format!("node-{}", i % agents_n), json!({}))
        .await?;
    let dir = tempfile::tempdir()?;
    let agents: Vec<Agent> = (0..agents_n)
        .map(|i| Agent::start(&cluster.kubeconfig, &format!("node-{i}"), dir.path()))
        .collect::<Result<_>>()?;
    let confs: Vec<_> = agents.iter().map(|a| netconf(&a.socket, &[&pool], &[])).collect();
    println!(
        "{pods} pods on {agents_n} nodes (one agent each), one pool of exactly {pods} addresses, {concurrency} plugin processes at a time"
    );

    for (verb, label) in [("ADD", "allocate"), ("DEL", "release")] {
        let started = Instant::now();
        let results = run_parallel(concurrency, pods, |i| {
            let t = Instant::now();
            let out = cni(
                verb,
                &confs[i % agents_n],
                &ns,
                &format!("p-{i}"),
                &uids[i],
                "net1",
            );
            (out.success, t.elapsed(), out.stdout)
        });
        let wall = started.elapsed();
        if let Some((_, _, why)) = results.iter().find(|r| !r.0) {
            bail!("a {verb} failed: {why}");
        }
        let mut lat: Vec<Duration> = results.iter().map(|r| r.1).collect();
        lat.sort();
        println!(
            "{label}: {pods} in {:.2} s = {:.0}/s; {verb} latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            wall.as_secs_f64(),
            pods as f64 / wall.as_secs_f64(),
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        );
    }
    let status = api.get_status(&pool).await?.status.unwrap_or_default();
    if status.allocated_ip_count != Some(0) {
        bail!(
            "pool not empty after the release phase: {:?}",
            status.allocated_ip_count
        );
    }
    api.delete(&pool, &Default::default()).await?;
    Ok(())
}
