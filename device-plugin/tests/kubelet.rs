//! The device plugin against an in-process fake kubelet: a Registration server on a temp socket
//! that records registrations, and a gRPC client that calls the plugin the way kubelet does.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{fixture, start_kubelet};
use spiderpool_device_plugin::api::device_plugin_client::DevicePluginClient;
use spiderpool_device_plugin::api::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty,
    PreferredAllocationRequest,
};
use spiderpool_device_plugin::config::{Config, ResourceSpec, Selectors};
use spiderpool_device_plugin::kubelet::unix_channel;
use spiderpool_device_plugin::pool::assign;
use spiderpool_device_plugin::server::{Served, Snapshot};
use spiderpool_linux::sysfs::Sysfs;

fn vf_config() -> Config {
    Config {
        resources: vec![ResourceSpec::vf(
            "cx6_vfs",
            Selectors {
                drivers: vec!["mlx5_core".into()],
                ..Selectors::default()
            },
        )],
    }
}

#[tokio::test]
async fn registers_lists_allocates_and_prefers_like_kubelet_expects() {
    let dir = tempfile::tempdir().unwrap();
    let devinfo = tempfile::tempdir().unwrap();
    let mut registrations = start_kubelet(dir.path());
    let (inv, root) = fixture("cx6dx");
    let resource = assign(&vf_config(), &inv).unwrap().0.remove(0);
    let snapshot = Snapshot {
        resource,
        inventory: inv.clone(),
        links_down: Default::default(),
    };
    let served = Served::start(
        dir.path(),
        snapshot.clone(),
        Sysfs::new(&root),
        Some(devinfo.path().to_path_buf()),
        Default::default(),
    )
    .await
    .unwrap();

    let reg = tokio::time::timeout(Duration::from_secs(2), registrations.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reg.version, "v1beta1");
    assert!(
        reg.endpoint.starts_with("spidernet.io_cx6_vfs-") && reg.endpoint.ends_with(".sock"),
        "{}",
        reg.endpoint
    );
    assert_eq!(reg.resource_name, "spidernet.io/cx6_vfs");
    assert!(reg.options.unwrap().get_preferred_allocation_available);
    let mode = std::fs::metadata(served.socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600, "root-only socket");

    let mut client = DevicePluginClient::new(unix_channel(&dir.path().join(&reg.endpoint)).await.unwrap());
    let options = client
        .get_device_plugin_options(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(options.get_preferred_allocation_available && !options.pre_start_required);

    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let ids: Vec<&str> = first.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "0000:3b:00.2",
            "0000:3b:00.3",
            "0000:3b:00.4",
            "0000:3b:00.5",
            "0000:3b:01.2",
            "0000:3b:01.3",
            "0000:3b:01.4"
        ]
    );
    assert!(first.devices.iter().all(|d| d.health == "Healthy"));
    assert!(
        first
            .devices
            .iter()
            .all(|d| d.topology.as_ref().unwrap().nodes[0].id == 0)
    );

    let preferred = client
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: ids.iter().map(|s| s.to_string()).collect(),
                must_include_device_i_ds: vec!["0000:3b:01.3".into()],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        preferred.container_responses[0].device_i_ds,
        ["0000:3b:01.3", "0000:3b:01.2"],
        "same PF as the must-include"
    );

    let alloc = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["0000:3b:00.2".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &alloc.container_responses[0];
    assert_eq!(c.envs["PCIDEVICE_SPIDERNET_IO_CX6_VFS"], "0000:3b:00.2");
    assert!(c.devices.iter().any(|d| d.host_path == "/dev/infiniband/uverbs2"));
    let info_file = devinfo
        .path()
        .join("spidernet.io-cx6_vfs-0000:3b:00.2-device.json");
    assert!(info_file.exists());
    let bad = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["nope".into()],
            }],
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    // PF 0 goes down: its VFs turn Unhealthy in the stream.
    let mut down = inv.clone();
    down.nics[0].oper_state = Some("down".into());
    served.update(Snapshot {
        inventory: down,
        ..snapshot
    });
    let next = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let unhealthy: Vec<&str> = next
        .devices
        .iter()
        .filter(|d| d.health == "Unhealthy")
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(
        unhealthy,
        ["0000:3b:00.2", "0000:3b:00.3", "0000:3b:00.4", "0000:3b:00.5"]
    );

    let socket = served.socket().to_path_buf();
    served.stop();
    assert!(!socket.exists());
    assert!(!info_file.exists(), "device-info files go with the plugin");
}

#[tokio::test]
async fn default_config_advertises_shared_rdma_slots() {
    let dir = tempfile::tempdir().unwrap();
    let mut registrations = start_kubelet(dir.path());
    let (inv, root) = fixture("cx7-ib");
    let resource = assign(&Config::default(), &inv).unwrap().0.remove(0);
    let served = Served::start(
        dir.path(),
        Snapshot {
            resource,
            inventory: inv,
            links_down: Default::default(),
        },
        Sysfs::new(&root),
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let reg = registrations.recv().await.unwrap();
    assert_eq!(reg.resource_name, "spidernet.io/rdma");
    let mut client = DevicePluginClient::new(unix_channel(&dir.path().join(&reg.endpoint)).await.unwrap());
    let list = client
        .list_and_watch(Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(list.devices.len(), 100);
    assert_eq!(list.devices[0].id, "rdma-0");
    let alloc = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["rdma-7".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = alloc.container_responses[0]
        .devices
        .iter()
        .map(|d| d.host_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/dev/infiniband/uverbs0",
            "/dev/infiniband/issm0",
            "/dev/infiniband/umad0",
            "/dev/infiniband/rdma_cm"
        ]
    );
    served.stop();
}
