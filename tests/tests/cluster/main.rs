//! Control-plane tier: CRDs, the agents' IPAM service and the controller against a real
//! kube-apiserver and etcd (`hack/control-plane.sh up`; its kubeconfig in
//! SPIDERPOOL_TEST_KUBECONFIG). Ignored by default: `hack/test.sh` runs them with the tier.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spiderpool_api::coordinator::SpiderCoordinator;
use spiderpool_api::crd::{
    PoolIPAllocation, SpiderEndpoint, SpiderIPPool, SpiderIPPoolRegistry, SpiderReservedIP,
};
use spiderpool_api::inventory::SpiderNodeInventory;
use spiderpool_e2e::cluster::{
    Agent, Cluster, Controller, cni, eventually, first_ip, http_get, netconf, run_parallel, unique,
};

mod agent;
mod client;
mod controller;
mod crds;
mod dra;
mod ipam;
mod legacy;
mod multus;
mod overlap;
mod policies;
mod power_loss;
mod rbac;
mod subnets;
mod takeover;

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

/// The pods holding addresses of `pool` (its SpiderIPClaims; see `pool_holders`), after
/// [`settle`].
async fn allocations(cluster: &Cluster, pool: &str) -> BTreeMap<String, PoolIPAllocation> {
    settle().await;
    spiderpool_e2e::cluster::pool_holders(&cluster.client, pool)
        .await
        .expect("pool holders read")
}

/// Waits until the agents' watches have seen a change just made (a pool edit, a registration).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

/// `spiderpool-controller --once` (pool registration, GC, coordinator status); its report.
fn controller_once(cluster: &Cluster) -> String {
    let out = std::process::Command::new(spiderpool_e2e::bin_dir().join("spiderpool-controller"))
        .arg("--once")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("spiderpool-controller runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `spiderpool-controller --once` until the SpiderCoordinator `default` has a status that
/// `want` accepts (other tests' controllers reconcile it too, so a round may race a stale read);
/// the last status seen on failure.
async fn coordinator_status(
    cluster: &Cluster,
    want: impl Fn(&spiderpool_api::coordinator::CoordinatorStatus) -> bool,
) -> Result<spiderpool_api::coordinator::CoordinatorStatus, String> {
    let api: Api<SpiderCoordinator> = Api::all(cluster.client.clone());
    let mut last = None;
    for _ in 0..20 {
        controller_once(cluster);
        let status = api
            .get("default")
            .await
            .expect("SpiderCoordinator default")
            .status
            .unwrap_or_default();
        if want(&status) {
            return Ok(status);
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("{last:?}"))
}
