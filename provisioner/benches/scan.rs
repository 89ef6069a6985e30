//! One full discovery scan of a sysfs tree with 2 PFs × 64 VFs and RoCE on every PF and VF
//! (130 RDMA devices). `cargo bench -p spiderpool-provisioner --bench scan`

use criterion::{Criterion, criterion_group, criterion_main};
use spiderpool_linux::links::LinkTable;
use spiderpool_linux::sysfs::Sysfs;
use spiderpool_provisioner::discovery::{NodeIdentity, scan};
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

criterion_group!(benches, scan_large);
criterion_main!(benches);
