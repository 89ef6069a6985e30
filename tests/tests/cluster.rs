//! Control-plane tier: CRDs, the agents' IPAM service and the controller against a real
//! kube-apiserver and etcd (`hack/control-plane.sh up`; its kubeconfig in
//! SPIDERPOOL_TEST_KUBECONFIG). Ignored by default: `hack/test.sh` runs them with the tier.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spiderpool_api::crd::{SpiderEndpoint, SpiderIPPool};
use spiderpool_e2e::cluster::{Agent, Cluster, cni, first_ip, netconf, run_parallel, unique};

async fn create_pool(cluster: &Cluster, name: &str, spec: Value) -> kube::Result<SpiderIPPool> {
    let api: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let pool: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("pool object");
    api.create(&PostParams::default(), &pool).await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_invalid_pools_are_rejected_by_the_api_server() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let cases = [
        (
            "gateway outside the subnet",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.9.0.1"}),
            "gateway",
        ),
        (
            "overlapping ranges",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20", "10.6.0.15-10.6.0.30"]}),
            "overlap",
        ),
        (
            "a single IP inside a range",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20", "10.6.0.20"]}),
            "overlap",
        ),
        (
            "range written high-low",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.20-10.6.0.10"]}),
            "low-high",
        ),
        (
            "IP outside the subnet",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.8.0.1"]}),
            "inside the subnet",
        ),
        (
            "ipVersion against the subnet",
            json!({"ipVersion": 6, "subnet": "10.6.0.0/16"}),
            "ipVersion",
        ),
        (
            "subnet not a CIDR",
            json!({"subnet": "10.6.0.0", "ips": ["10.6.0.1"]}),
            "CIDR",
        ),
        (
            "IPv6 gateway outside",
            json!({"ipVersion": 6, "subnet": "fd00::/64", "ips": ["fd00::10"], "gateway": "fd01::1"}),
            "gateway",
        ),
        (
            "route gw outside",
            json!({"subnet": "10.6.0.0/16", "routes": [{"dst": "10.7.0.0/16", "gw": "10.9.0.1"}]}),
            "routes",
        ),
        (
            "duplicate entries",
            json!({"subnet": "10.6.0.0/16", "ips": ["10.6.0.1", "10.6.0.1"]}),
            "Duplicate",
        ),
    ];
    for (i, (what, spec, expect)) in cases.into_iter().enumerate() {
        match create_pool(&cluster, &format!("bad-{i}-{u}"), spec).await {
            Ok(_) => panic!("{what}: the API server accepted it"),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{what}: {s:?}");
                assert!(
                    s.message.contains(expect),
                    "{what}: message {:?} lacks {expect:?}",
                    s.message
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    for (i, spec) in [
        json!({"ipVersion": 4, "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20", "10.6.1.1"], "gateway": "10.6.0.1", "default": true}),
        json!({"ipVersion": 6, "subnet": "fd00::/64", "ips": ["fd00::10-fd00::20"], "gateway": "fd00::1"}),
    ]
    .into_iter()
    .enumerate()
    {
        create_pool(&cluster, &format!("good-{i}-{u}"), spec).await.expect("valid pool accepted");
    }
}

/// 10 agents, each its own node, allocate 1000 addresses at once from one pool of exactly 1000.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_ten_agents_allocate_a_pool_of_1000_exactly() {
    const AGENTS: usize = 10;
    const PODS: usize = 1000;
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let pool = format!("burst-{u}");
    // 10.200.0.1 .. 10.200.3.232 is exactly 1000 addresses.
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.200.0.0/22", "ips": ["10.200.0.1-10.200.3.232"]}),
    )
    .await
    .unwrap();
    let ns = cluster.namespace("burst", json!({})).await.unwrap();
    let uids = cluster
        .pods(&ns, "p", PODS + 1, |i| format!("node-{}", i % AGENTS), json!({}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| Agent::start(&cluster.kubeconfig, &format!("node-{i}"), dir.path()).unwrap())
        .collect();
    let confs: Vec<Value> = agents.iter().map(|a| netconf(&a.socket, &[&pool], &[])).collect();

    // Every pod's ADD through its node's agent, 200 plugin processes at a time (pods starting
    // together on 10 nodes: kubelet runs their sandboxes concurrently).
    let started = Instant::now();
    let results = run_parallel(200, PODS, |i| {
        let out = cni(
            "ADD",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        (out.success, first_ip(&out), out.stdout, out.stderr)
    });
    let elapsed = started.elapsed();
    let mut ips = HashSet::new();
    for (i, (ok, ip, stdout, stderr)) in results.iter().enumerate() {
        assert!(
            ok,
            "ADD of p-{i} failed: {stdout} {stderr}\nagent log: {}",
            agents[i % AGENTS].log_text()
        );
        assert!(ips.insert(ip.clone().unwrap()), "{ip:?} handed out twice");
    }
    eprintln!("{PODS} ADDs through {AGENTS} agents in {elapsed:?}");
    assert_eq!(ips.len(), PODS);

    let pools: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let status = pools.get_status(&pool).await.unwrap().status.unwrap();
    let allocated = status.allocations().unwrap();
    assert_eq!(status.allocated_ip_count, Some(PODS as i64));
    assert_eq!(status.total_ip_count, Some(PODS as i64));
    assert_eq!(allocated.len(), PODS);
    let recorded: HashSet<String> = allocated.keys().cloned().collect();
    assert_eq!(recorded, ips);

    // Every address has its pod's SpiderEndpoint, naming the same address and pool.
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), &ns);
    let list = endpoints.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), PODS);
    let mut by_endpoint = BTreeMap::new();
    for ep in &list.items {
        let st = ep.status.as_ref().unwrap();
        let d = &st.current.ips[0];
        assert_eq!(d.ipv4_pool.as_deref(), Some(pool.as_str()));
        let ip = d.ipv4.as_deref().unwrap().split('/').next().unwrap().to_string();
        let holder = &allocated[&ip];
        assert_eq!(holder.pod_uid, st.current.uid);
        by_endpoint.insert(ip, ep.metadata.name.clone().unwrap());
    }
    assert_eq!(by_endpoint.len(), PODS);

    // The 1001st pod: a clear exhausted error (code 100) naming the pool.
    let out = cni("ADD", &confs[0], &ns, &format!("p-{PODS}"), &uids[PODS], "net1");
    assert_eq!(out.error_code(), Some(100), "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&pool) && out.stdout.contains("no free address"),
        "{}",
        out.stdout
    );

    // Everything released: DEL twice each (the second as a runtime does it, without a netns).
    let results = run_parallel(200, PODS, |i| {
        let a = cni(
            "DEL",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        let b = cni(
            "DEL",
            &confs[i % AGENTS],
            &ns,
            &format!("p-{i}"),
            &uids[i],
            "net1",
        );
        (
            a.success && b.success,
            format!("{} {} {}", a.stdout, b.stdout, b.stderr),
        )
    });
    for (i, (ok, why)) in results.iter().enumerate() {
        assert!(ok, "DEL of p-{i}: {why}");
    }
    let status = pools.get_status(&pool).await.unwrap().status.unwrap();
    assert_eq!(status.allocated_ip_count, Some(0));
    assert!(status.allocations().unwrap().is_empty());
    assert!(
        endpoints
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
