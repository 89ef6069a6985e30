//! One full discovery scan of a sysfs tree with 2 PFs × 64 VFs and RoCE on every PF and VF
//! (130 RDMA devices), and a no-op reconcile of a node policy on it (scan + plan, zero actions:
//! what the agent's periodic pass costs when nothing drifted).
//! `cargo bench -p spiderpool-provisioner --bench scan`

use criterion::{Criterion, criterion_group, criterion_main};
use spiderpool_linux::links::LinkTable;
use spiderpool_linux::sysfs::Sysfs;
use spiderpool_provisioner::discovery::{NodeIdentity, scan};
use spiderpool_provisioner::planner::{Observed, Status, plan};
use spiderpool_testing::sysfs_fixture::build_large;

fn scan_large(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    build_large(dir.path(), 2, 64).expect("fixture");
    let sysfs = Sysfs::new(dir.path());
    let links = LinkTable::default();
    let identity = NodeIdentity::default();
    let inv = scan(&sysfs, &links, &identity);
    assert_eq!(inv.nics.len(), 2);
    assert_eq!(inv.rdma_devices.len(), 130);
    assert!(
        inv.nics
            .iter()
            .all(|n| n.sriov.as_ref().is_some_and(|s| s.vfs.len() == 64))
    );
    c.bench_function("scan 2 PFs x 64 VFs, RDMA everywhere", |b| {
        b.iter(|| scan(&sysfs, &links, &identity))
    });
}

fn noop_reconcile(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    build_large(dir.path(), 2, 64).expect("fixture");
    let sysfs = Sysfs::new(dir.path());
    let links = LinkTable::default();
    let identity = NodeIdentity::default();
    let policies = spiderpool_api::policy::parse_documents(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderNetworkNodePolicy\nmetadata: {name: p}\n\
         spec: {nicSelector: {pfNames: [ens0np0, ens1np0]}, numVfs: 64, resourceName: vfs}\n",
    )
    .expect("policy");
    let labels = std::collections::BTreeMap::new();
    let allocated = std::collections::BTreeMap::new();
    let round = || {
        let inventory = scan(&sysfs, &links, &identity);
        let observed = Observed {
            inventory: &inventory,
            links: &links,
            node_labels: &labels,
            allocated: &allocated,
        };
        plan(&policies, &observed)
    };
    let first = round();
    assert!(first.steps.is_empty(), "{:?}", first.steps);
    assert!(
        first.status.values().all(|s| *s == Status::Applied),
        "{:?}",
        first.status
    );
    c.bench_function("no-op reconcile: scan + plan, 2 PFs x 64 VFs", |b| b.iter(round));
}

criterion_group!(benches, scan_large, noop_reconcile);
criterion_main!(benches);
