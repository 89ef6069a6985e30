//! Allocate latency as kubelet sees it: one gRPC round trip over the plugin's unix socket for a
//! VF with RDMA (device nodes, PCIDEVICE env, a device-info file written), and a shared RDMA slot.
//! `cargo bench -p spiderpool-device-plugin --bench allocate`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{fixture, start_kubelet};
use criterion::{Criterion, criterion_group, criterion_main};
use spiderpool_device_plugin::api::device_plugin_client::DevicePluginClient;
use spiderpool_device_plugin::api::{AllocateRequest, ContainerAllocateRequest};
use spiderpool_device_plugin::config::{Config, ResourceSpec, Selectors};
use spiderpool_device_plugin::kubelet::unix_channel;
use spiderpool_device_plugin::pool::assign;
use spiderpool_device_plugin::server::{Served, Snapshot};
use spiderpool_linux::sysfs::Sysfs;

fn allocate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let devinfo = tempfile::tempdir().expect("dir");
    let (inv, root) = fixture("cx6dx");
    let config = Config {
        resources: vec![
            ResourceSpec::vf(
                "cx6_vfs",
                Selectors {
                    pf_names: vec!["ens1f0np0".into()],
                    ..Selectors::default()
                },
            ),
            ResourceSpec::rdma("rdma", Selectors::default()),
        ],
    };
    let resources = assign(&config, &inv).expect("config").0;
    let (vf_client, rdma_client, _served) = rt.block_on(async {
        let _registrations = start_kubelet(dir.path());
        let mut served = Vec::new();
        for resource in resources {
            let snapshot = Snapshot {
                resource,
                inventory: inv.clone(),
                links_down: Default::default(),
            };
            served.push(
                Served::start(
                    dir.path(),
                    snapshot,
                    Sysfs::new(&root),
                    Some(devinfo.path().to_path_buf()),
                    Default::default(),
                )
                .await
                .expect("serve"),
            );
        }
        let vf = DevicePluginClient::new(unix_channel(served[0].socket()).await.expect("connect"));
        let rdma = DevicePluginClient::new(unix_channel(served[1].socket()).await.expect("connect"));
        (vf, rdma, served)
    });
    let request = |id: &str| AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: vec![id.to_string()],
        }],
    };
    c.bench_function("Allocate 1 VF with RDMA (gRPC over unix socket)", |b| {
        b.iter(|| {
            rt.block_on(vf_client.clone().allocate(request("0000:3b:00.2")))
                .expect("allocate")
        })
    });
    c.bench_function("Allocate 1 shared RDMA slot (gRPC over unix socket)", |b| {
        b.iter(|| {
            rt.block_on(rdma_client.clone().allocate(request("rdma-0")))
                .expect("allocate")
        })
    });
}

criterion_group!(benches, allocate);
criterion_main!(benches);
