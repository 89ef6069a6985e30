//! The running device plugin (rescan loop) against a fake kubelet: live VF changes, link health,
//! config edits, kubelet restarts and shutdown.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, start_kubelet};
use spiderpool_api::inventory::Vf;
use spiderpool_device_plugin::api::device_plugin_client::DevicePluginClient;
use spiderpool_device_plugin::api::{Empty, ListAndWatchResponse};
use spiderpool_device_plugin::kubelet::unix_channel;
use spiderpool_device_plugin::manager::{ManagerOptions, run};
use spiderpool_linux::sysfs::Sysfs;
use spiderpool_testing::kubelet::api::RegisterRequest;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::Streaming;

const VF_CONFIG: &str = "resources:\n- resourceName: cx6_vfs\n  selectors: {drivers: [mlx5_core]}\n";

async fn next_registration(rx: &mut UnboundedReceiver<RegisterRequest>) -> RegisterRequest {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("registered within 2 s")
        .unwrap()
}

/// The next ListAndWatch update that satisfies `want`, within 2 s.
async fn wait_for(
    stream: &mut Streaming<ListAndWatchResponse>,
    want: impl Fn(&ListAndWatchResponse) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let left = Duration::from_secs(2).saturating_sub(start.elapsed());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .expect("update within 2 s")
            .unwrap()
            .unwrap();
        if want(&msg) {
            return start.elapsed();
        }
    }
}

fn health_of<'a>(msg: &'a ListAndWatchResponse, id: &str) -> Option<&'a str> {
    msg.devices.iter().find(|d| d.id == id).map(|d| d.health.as_str())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, format!("{text}\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_reloads_tracks_links_and_survives_kubelet_restarts() {
    let kubelet_dir = tempfile::tempdir().unwrap();
    let devinfo = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (inv, fixture_root) = fixture("cx6dx");
    let sysroot = work.path().join("sys");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&fixture_root)
            .arg(&sysroot)
            .status()
            .unwrap()
            .success()
    );
    let config = work.path().join("config.yaml");
    write(&config, VF_CONFIG);

    let mut registrations = start_kubelet(kubelet_dir.path());
    let inventory = Arc::new(Mutex::new(inv));
    let scan = {
        let inventory = inventory.clone();
        move || inventory.lock().unwrap().clone()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ManagerOptions {
        kubelet_dir: kubelet_dir.path().to_path_buf(),
        config_file: Some(config.clone()),
        policy_file: None,
        cluster_policies: None,
        sysfs: Sysfs::new(&sysroot),
        devinfo_dir: Some(devinfo.path().to_path_buf()),
        resync: Duration::from_millis(200),
        wake: None,
        first_pass: None,
    };
    let manager = tokio::spawn(run(options, scan, async {
        let _ = stopped.await;
    }));

    let reg = next_registration(&mut registrations).await;
    assert_eq!(reg.resource_name, "spidernet.io/cx6_vfs");
    let socket = kubelet_dir.path().join(&reg.endpoint);
    let mut client = DevicePluginClient::new(unix_channel(&socket).await.unwrap());
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.devices.len(), 7);

    // A VF created while running appears without a restart.
    inventory.lock().unwrap().nics[0]
        .sriov
        .as_mut()
        .unwrap()
        .vfs
        .push(Vf {
            vf_id: 4,
            pci_address: "0000:3b:00.6".into(),
            name: Some("ens1f0v4".into()),
            driver: Some("mlx5_core".into()),
            ..Vf::default()
        });
    wait_for(&mut stream, |m| m.devices.len() == 8).await;

    // A VF link that goes down turns its device Unhealthy; back up, Healthy again.
    let operstate = sysroot.join("class/net/ens1f0v0/operstate");
    write(&operstate, "down");
    let took = wait_for(&mut stream, |m| health_of(m, "0000:3b:00.2") == Some("Unhealthy")).await;
    eprintln!("link down -> Unhealthy in {took:?}");
    write(&operstate, "up");
    wait_for(&mut stream, |m| health_of(m, "0000:3b:00.2") == Some("Healthy")).await;

    // A config edit is picked up: a second resource registers.
    write(
        &config,
        &format!("{VF_CONFIG}- resourceName: rdma\n  kind: rdma\n  rdmaHcaMax: 5\n"),
    );
    let reg = next_registration(&mut registrations).await;
    assert_eq!(reg.resource_name, "spidernet.io/rdma");
    // A broken edit keeps the last good config (nothing is stopped).
    write(&config, "resources: [");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(socket.exists());

    // kubelet restarts: its directory is wiped and a new kubelet.sock appears.
    for entry in std::fs::read_dir(kubelet_dir.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let mut registrations = start_kubelet(kubelet_dir.path());
    let mut again = vec![
        next_registration(&mut registrations).await.resource_name,
        next_registration(&mut registrations).await.resource_name,
    ];
    again.sort();
    assert_eq!(again, ["spidernet.io/cx6_vfs", "spidernet.io/rdma"]);
    assert!(socket.exists());

    stop.send(()).unwrap();
    manager.await.unwrap();
    assert!(!socket.exists(), "sockets go with the plugin");
    let left: Vec<_> = std::fs::read_dir(devinfo.path()).unwrap().collect();
    assert!(left.is_empty(), "device-info files go with the plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_rescans_at_once_without_waiting_for_the_resync() {
    let kubelet_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (inv, root) = fixture("cx6dx");
    let config = work.path().join("config.yaml");
    write(&config, VF_CONFIG);
    let mut registrations = start_kubelet(kubelet_dir.path());
    let inventory = Arc::new(Mutex::new(inv));
    let scan = {
        let inventory = inventory.clone();
        move || inventory.lock().unwrap().clone()
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let options = ManagerOptions {
        kubelet_dir: kubelet_dir.path().to_path_buf(),
        config_file: Some(config),
        policy_file: None,
        cluster_policies: None,
        sysfs: Sysfs::new(&root),
        devinfo_dir: None,
        resync: Duration::from_secs(3600),
        wake: Some(wake.clone()),
        first_pass: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(run(options, scan, async {
        let _ = stopped.await;
    }));
    let reg = next_registration(&mut registrations).await;
    let socket = kubelet_dir.path().join(&reg.endpoint);
    let mut client = DevicePluginClient::new(unix_channel(&socket).await.unwrap());
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 7);
    inventory.lock().unwrap().nics[0]
        .sriov
        .as_mut()
        .unwrap()
        .vfs
        .truncate(1);
    wake.notify_one();
    let took = wait_for(&mut stream, |m| m.devices.len() == 4).await;
    assert!(
        took < Duration::from_secs(1),
        "{took:?}: the hour-long resync was not waited for"
    );
    stop.send(()).unwrap();
    manager.await.unwrap();
}

/// A kubelet that took a second registration for a resource disconnects the newer plugin when
/// the older one goes (kubernetes#121994); a dropped ListAndWatch stream is registered again at
/// once, without waiting for the (here hour-long) resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_kubelet_drops_is_registered_again_at_once() {
    let kubelet_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (inv, root) = fixture("cx6dx");
    let config = work.path().join("config.yaml");
    write(&config, VF_CONFIG);
    let mut registrations = start_kubelet(kubelet_dir.path());
    let options = ManagerOptions {
        kubelet_dir: kubelet_dir.path().to_path_buf(),
        config_file: Some(config),
        policy_file: None,
        cluster_policies: None,
        sysfs: Sysfs::new(&root),
        devinfo_dir: None,
        resync: Duration::from_secs(3600),
        wake: None,
        first_pass: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(run(options, move || inv.clone(), async {
        let _ = stopped.await;
    }));
    let first = next_registration(&mut registrations).await;
    let socket = kubelet_dir.path().join(&first.endpoint);
    {
        let mut client = DevicePluginClient::new(unix_channel(&socket).await.unwrap());
        let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 7);
        // kubelet closes the connection: stream and channel go.
    }
    let again = next_registration(&mut registrations).await;
    assert_eq!(
        again.endpoint, first.endpoint,
        "the same socket, registered again"
    );
    // And it serves on: a new stream gets the devices.
    let mut client = DevicePluginClient::new(unix_channel(&socket).await.unwrap());
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 7);
    stop.send(()).unwrap();
    manager.await.unwrap();
}
