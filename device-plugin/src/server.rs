//! One resource served to kubelet: the DevicePlugin gRPC service on
//! `<dir>/<prefix>_<name>-<instance>.sock` (one socket per plugin process, see
//! [`crate::config::ResourceName::socket_file`]), registered with kubelet, its device list pushed
//! through ListAndWatch whenever it changes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use spiderpool_api::inventory::Inventory;
use spiderpool_linux::sysfs::Sysfs;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::allocate::{AllocateContext, remove_device_infos};
use crate::api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::api::{
    AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, Device, DevicePluginOptions,
    Empty, ListAndWatchResponse, NumaNode, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, TopologyInfo,
};
use crate::kubelet::register;
use crate::pool::{Members, Resource};
use crate::preferred::preferred;

pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// What the service answers from: replaced as a whole on every rescan.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub resource: Resource,
    pub inventory: Inventory,
    /// Netdevs whose link was seen going down and has not come back (see `manager::LinkWatch`).
    pub links_down: BTreeSet<String>,
}

/// The kubelet device list of a snapshot.
pub fn devices_of(snapshot: &Snapshot) -> Vec<Device> {
    let inv = &snapshot.inventory;
    match &snapshot.resource.members {
        Members::Devices(members) => members
            .iter()
            .map(|c| {
                // A VF follows its PF's link: a PF that is down takes its VFs down with it.
                let pf_down = inv
                    .nics
                    .iter()
                    .find(|n| n.pci_address == c.pf_pci)
                    .is_some_and(|n| n.oper_state.as_deref() == Some("down"));
                let rdma_inactive = c.rdma_devices.iter().any(|h| !hca_active(inv, h));
                let link_down = c.netdev.as_ref().is_some_and(|n| snapshot.links_down.contains(n));
                Device {
                    id: c.pci_address.clone(),
                    health: if pf_down || rdma_inactive || link_down {
                        UNHEALTHY
                    } else {
                        HEALTHY
                    }
                    .into(),
                    topology: c.numa_node.map(|n| TopologyInfo {
                        nodes: vec![NumaNode { id: i64::from(n) }],
                    }),
                }
            })
            .collect(),
        Members::SharedRdma { hcas, slots } => {
            // The slots stand for all the HCAs together: usable while any of them is.
            let health = if hcas.iter().any(|h| hca_active(inv, h)) {
                HEALTHY
            } else {
                UNHEALTHY
            };
            if hcas.is_empty() {
                return Vec::new();
            }
            (0..*slots)
                .map(|i| Device {
                    id: format!("{}-{i}", snapshot.resource.name.name),
                    health: health.into(),
                    topology: None,
                })
                .collect()
        }
    }
}

fn hca_active(inv: &Inventory, hca: &str) -> bool {
    inv.rdma_devices.iter().find(|d| d.name == hca).is_some_and(|d| {
        // An agent built with `verbs` also knows whether a process can use the device.
        d.ports.iter().any(|p| p.state.as_deref() == Some("ACTIVE"))
            && d.verbs.as_ref().is_none_or(|v| v.usable)
    })
}

struct Service {
    snapshot: RwLock<Snapshot>,
    devices: watch::Sender<Vec<Device>>,
    sysfs: Sysfs,
    devinfo_dir: Option<PathBuf>,
    /// Set when a ListAndWatch stream ends while we still serve: kubelet dropped us (a kubelet
    /// that took a second registration for this resource disconnects the newer plugin when the
    /// older one goes, kubernetes#121994), and only a new registration brings the devices back.
    dropped: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

/// Marks the service dropped when the ListAndWatch stream it rides on goes away.
struct StreamGuard {
    dropped: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.stopping.load(Ordering::SeqCst) {
            self.dropped.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Arc<Service> {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<ListStream>, Status> {
        let guard = StreamGuard {
            dropped: self.dropped.clone(),
            stopping: self.stopping.clone(),
            wake: self.wake.clone(),
        };
        let stream = WatchStream::new(self.devices.subscribe()).map(move |devices| {
            let _alive = &guard;
            Ok(ListAndWatchResponse { devices })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let snapshot = self
            .snapshot
            .read()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        let members = match &snapshot.resource.members {
            Members::Devices(m) => m.as_slice(),
            Members::SharedRdma { .. } => &[],
        };
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|r| {
                let size = usize::try_from(r.allocation_size).unwrap_or(0);
                let device_ids = if members.is_empty() {
                    // Shared slots are interchangeable: any will do.
                    r.must_include_device_i_ds
                        .iter()
                        .chain(&r.available_device_i_ds)
                        .take(size)
                        .cloned()
                        .collect()
                } else {
                    preferred(
                        members,
                        &r.available_device_i_ds,
                        &r.must_include_device_i_ds,
                        size,
                    )
                };
                ContainerPreferredAllocationResponse {
                    device_i_ds: device_ids,
                }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let snapshot = self
            .snapshot
            .read()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        let ctx = AllocateContext {
            inventory: &snapshot.inventory,
            sysfs: &self.sysfs,
            devinfo_dir: self.devinfo_dir.as_deref(),
        };
        let mut container_responses = Vec::new();
        for r in request.into_inner().container_requests {
            let response = ctx
                .allocate(&snapshot.resource, &r.devices_ids)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            container_responses.push(response);
        }
        Ok(Response::new(AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// This process's part of its socket names: PID and start time, in hex.
fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff)
    })
}

/// Removes this resource's sockets in `dir` that nobody listens on any more (a plugin killed
/// before it could clean up); a live predecessor's socket stays.
fn remove_stale_sockets(dir: &Path, stem: &str, ours: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mine = name == format!("{stem}.sock")
            || (name.starts_with(&format!("{stem}-")) && name.ends_with(".sock"));
        if !mine || name == ours {
            continue;
        }
        if let Err(e) = std::os::unix::net::UnixStream::connect(entry.path())
            && e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            tracing::info!(socket = %entry.path().display(), "removing a dead plugin's socket");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("device plugin socket {0}: {1}")]
    Socket(PathBuf, std::io::Error),
    #[error(transparent)]
    Register(#[from] crate::kubelet::RegisterError),
}

/// A served resource. Dropping it stops nothing; call [`Served::stop`].
pub struct Served {
    service: Arc<Service>,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Serves `snapshot`'s resource in `dir` and registers it with kubelet there.
    /// `wake` is notified when kubelet drops the served resource (see [`Served::dropped`]).
    pub async fn start(
        dir: &Path,
        snapshot: Snapshot,
        sysfs: Sysfs,
        devinfo_dir: Option<PathBuf>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Result<Served, ServeError> {
        let name = snapshot.resource.name.clone();
        let file = name.socket_file(instance_id());
        let socket = dir.join(&file);
        remove_stale_sockets(dir, &name.socket_stem(), &file);
        let (devices, _) = watch::channel(devices_of(&snapshot));
        let service = Arc::new(Service {
            snapshot: RwLock::new(snapshot),
            devices,
            sysfs,
            devinfo_dir,
            dropped: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            wake,
        });
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|e| ServeError::Socket(socket.clone(), e))?;
        // Root-only: whoever can talk to the socket can ask for device nodes.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServeError::Socket(socket.clone(), e))?;
        let server =
            tonic::transport::Server::builder().add_service(DevicePluginServer::new(service.clone()));
        let task = tokio::spawn(async move {
            if let Err(e) = server
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
            {
                tracing::error!("device plugin server stopped: {e}");
            }
        });
        if let Err(e) = register(dir, &file, &name.full()).await {
            task.abort();
            let _ = std::fs::remove_file(&socket);
            return Err(e.into());
        }
        tracing::info!(resource = %name.full(), socket = %socket.display(), "registered with kubelet");
        Ok(Served {
            service,
            socket,
            task,
        })
    }

    /// Replaces the snapshot (a rescan); ListAndWatch clients see the new list if it changed.
    pub fn update(&self, snapshot: Snapshot) {
        let devices = devices_of(&snapshot);
        if let Ok(mut s) = self.service.snapshot.write() {
            *s = snapshot;
        }
        self.service.devices.send_if_modified(|current| {
            let changed = *current != devices;
            *current = devices;
            changed
        });
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether our socket is still there: a starting kubelet deletes every socket in its
    /// directory, and then we must serve and register again.
    pub fn socket_present(&self) -> bool {
        self.socket.exists()
    }

    /// Whether kubelet's ListAndWatch stream of this resource ended while we served it: kubelet
    /// no longer counts these devices until we register again.
    pub fn dropped(&self) -> bool {
        self.service.dropped.load(Ordering::SeqCst)
    }

    /// After [`Served::dropped`]: the same socket registered again (a new `Register` call).
    /// False when kubelet did not take it.
    pub async fn register_again(&self) -> bool {
        let Some(dir) = self.socket.parent() else {
            return false;
        };
        let Some(file) = self.socket.file_name().and_then(|f| f.to_str()) else {
            return false;
        };
        let Some(name) = self.service.snapshot.read().ok().map(|s| s.resource.name.full()) else {
            return false;
        };
        // Cleared first: the stream kubelet opens after this registration is the live one.
        self.service.dropped.store(false, Ordering::SeqCst);
        if register(dir, file, &name).await.is_ok() {
            return true;
        }
        self.service.dropped.store(true, Ordering::SeqCst);
        false
    }

    /// Stops serving, removes the socket and the resource's device-info files. When the socket
    /// is already gone (kubelet wiped it on a restart, and we serve again at once) the
    /// device-info files stay: pods kubelet admitted before may still need them.
    /// Takes the resource away: kubelet is told it has no devices (so its capacity and
    /// allocatable go to 0 at once, instead of the devices staying allocatable on a stream that
    /// no longer changes), then [`Served::stop`]. For a resource no longer configured; a plain
    /// stop is for a socket kubelet removed or a process that ends, where kubelet must keep
    /// counting the devices pods hold.
    pub fn withdraw(self) {
        self.service.devices.send_replace(Vec::new());
        self.stop();
    }

    pub fn stop(self) {
        self.service.stopping.store(true, Ordering::SeqCst);
        self.task.abort();
        if !self.socket_present() {
            return;
        }
        let _ = std::fs::remove_file(&self.socket);
        if let (Some(dir), Ok(s)) = (&self.service.devinfo_dir, self.service.snapshot.read()) {
            remove_device_infos(dir, &s.resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use spiderpool_api::inventory::{RdmaDevice, RdmaPort, VerbsHealth};

    use super::*;
    use crate::config::ResourceName;

    fn shared_rdma(verbs: Option<VerbsHealth>) -> Vec<Device> {
        let inventory = Inventory {
            rdma_devices: vec![RdmaDevice {
                name: "rxe0".into(),
                ports: vec![RdmaPort {
                    port: 1,
                    state: Some("ACTIVE".into()),
                    ..RdmaPort::default()
                }],
                verbs,
                ..RdmaDevice::default()
            }],
            ..Inventory::default()
        };
        devices_of(&Snapshot {
            resource: Resource {
                name: ResourceName {
                    prefix: "spidernet.io".into(),
                    name: "rdma".into(),
                },
                members: Members::SharedRdma {
                    hcas: vec!["rxe0".into()],
                    slots: 2,
                },
                allocation: crate::config::Allocation::DevicePlugin,
            },
            inventory,
            links_down: BTreeSet::new(),
        })
    }

    #[test]
    fn an_active_hca_that_verbs_cannot_use_is_unhealthy() {
        let health = |verbs| {
            shared_rdma(verbs)
                .iter()
                .map(|d| d.health.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(health(None), [HEALTHY, HEALTHY], "not checked: sysfs decides");
        let usable = VerbsHealth {
            usable: true,
            reason: None,
        };
        assert_eq!(health(Some(usable)), [HEALTHY, HEALTHY]);
        let unusable = VerbsHealth {
            usable: false,
            reason: Some("ibv_open_device: No such file or directory (os error 2)".into()),
        };
        assert_eq!(health(Some(unusable)), [UNHEALTHY, UNHEALTHY]);
    }
}
