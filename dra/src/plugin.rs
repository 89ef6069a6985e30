//! The DRA kubelet plugin service: NodePrepareResources reads each claim's allocation, writes
//! its CDI specs and device-info files and remembers the claim; NodeUnprepareResources removes
//! them. Both are idempotent, and a restarted agent continues from the checkpoint.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use spiderpool_api::inventory::Inventory;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::api::dra::dra_plugin_server::DraPlugin;
use crate::api::dra::{
    Claim, Device, NodePrepareResourceResponse, NodePrepareResourcesRequest, NodePrepareResourcesResponse,
    NodeUnprepareResourceResponse, NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse,
};
use crate::cdi::{Allocated, Dirs, PreparedDevice, claim_files};
use crate::prepared::{Checkpoint, PreparedClaim, write_atomic};
use crate::slices::DRIVER;

/// Where the plugin reads claims (the API server in the agent, a map in tests).
pub trait ClaimSource: Send + Sync + 'static {
    fn get(&self, namespace: &str, name: &str) -> impl Future<Output = Result<ResourceClaim, String>> + Send;
}

/// The node's devices now (a sysfs scan) and a PCI function's IOMMU group.
pub trait NodeDevices: Send + Sync + 'static {
    fn inventory(&self) -> Inventory;
    fn iommu_group(&self, pci: &str) -> Option<String>;
}

pub struct Config {
    pub node: String,
    pub cdi_dir: PathBuf,
    pub devinfo_dir: PathBuf,
    /// The checkpoint of prepared claims.
    pub state: PathBuf,
}

pub struct Plugin<C, D> {
    config: Config,
    claims: C,
    devices: Arc<D>,
    checkpoint: Mutex<Checkpoint>,
}

impl<C: ClaimSource, D: NodeDevices> Plugin<C, D> {
    /// A plugin continuing from the checkpoint at `config.state`.
    pub fn new(config: Config, claims: C, devices: D) -> Self {
        let checkpoint = Checkpoint::load(&config.state);
        if !checkpoint.claims.is_empty() {
            tracing::info!(
                "DRA: {} prepared claims from {}",
                checkpoint.claims.len(),
                config.state.display()
            );
        }
        Plugin {
            config,
            claims,
            devices: Arc::new(devices),
            checkpoint: Mutex::new(checkpoint),
        }
    }

    /// This driver's devices of the claim's allocation on this node.
    fn allocated(&self, claim: &ResourceClaim) -> Result<Vec<Allocated>, String> {
        let allocation = claim
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .ok_or("it is not allocated")?;
        Ok(allocation
            .devices
            .as_ref()
            .and_then(|d| d.results.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|r| r.driver == DRIVER && r.pool == self.config.node)
            .map(|r| Allocated {
                request: r.request.clone(),
                device: r.device.clone(),
            })
            .collect())
    }

    async fn prepare(&self, claim: &Claim) -> Result<Vec<PreparedDevice>, String> {
        let mut checkpoint = self.checkpoint.lock().await;
        if let Some(done) = checkpoint.claims.get(&claim.uid) {
            return Ok(done.devices.clone());
        }
        let object = self.claims.get(&claim.namespace, &claim.name).await?;
        let uid = object.metadata.uid.as_deref().unwrap_or_default();
        if uid != claim.uid {
            return Err(format!(
                "it is now another object (UID {uid}, kubelet asked for {})",
                claim.uid
            ));
        }
        let allocated = self.allocated(&object)?;
        let devices = self.devices.clone();
        let (inventory, groups) = tokio::task::spawn_blocking(move || {
            let inventory = devices.inventory();
            let groups: HashMap<String, String> = inventory
                .nics
                .iter()
                .flat_map(|n| n.sriov.iter().flat_map(|s| s.vfs.iter()))
                .filter(|vf| vf.driver.as_deref() == Some("vfio-pci"))
                .filter_map(|vf| Some((vf.pci_address.clone(), devices.iommu_group(&vf.pci_address)?)))
                .collect();
            (inventory, groups)
        })
        .await
        .map_err(|e| format!("scanning the node: {e}"))?;
        let dirs = Dirs {
            cdi: &self.config.cdi_dir,
            devinfo: &self.config.devinfo_dir,
        };
        let files = claim_files(
            &inventory,
            &|pci| groups.get(pci).cloned(),
            &dirs,
            &self.config.node,
            &claim.uid,
            &claim.name,
            &allocated,
        )
        .map_err(|e| e.to_string())?;
        forget_stale(&mut checkpoint, &files.devices, &claim.uid);
        let mut written = Vec::new();
        for (path, content) in &files.files {
            if let Err(e) = write_atomic(path, content) {
                remove_all(&written);
                return Err(format!("writing {}: {e}", path.display()));
            }
            written.push(path.clone());
        }
        checkpoint.claims.insert(
            claim.uid.clone(),
            PreparedClaim {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                devices: files.devices.clone(),
                files: written.clone(),
            },
        );
        if let Err(e) = checkpoint.save(&self.config.state) {
            checkpoint.claims.remove(&claim.uid);
            remove_all(&written);
            return Err(format!(
                "recording the claim in {}: {e}",
                self.config.state.display()
            ));
        }
        tracing::info!(
            "DRA: prepared claim {}/{} ({}): {}",
            claim.namespace,
            claim.name,
            claim.uid,
            files
                .devices
                .iter()
                .map(|d| d.device_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(files.devices)
    }

    async fn unprepare(&self, claim: &Claim) -> Result<(), String> {
        let mut checkpoint = self.checkpoint.lock().await;
        let Some(done) = checkpoint.claims.remove(&claim.uid) else {
            return Ok(());
        };
        if let Err(e) = checkpoint.save(&self.config.state) {
            checkpoint.claims.insert(claim.uid.clone(), done);
            return Err(format!("recording in {}: {e}", self.config.state.display()));
        }
        remove_all(&done.files);
        tracing::info!(
            "DRA: unprepared claim {}/{} ({})",
            claim.namespace,
            claim.name,
            claim.uid
        );
        Ok(())
    }
}

/// Claims holding a device `devices` names are gone (the scheduler gave it to another claim
/// only after they were deallocated) though kubelet has not unprepared them yet: their files go
/// now, before the new claim's are written. Otherwise two CDI specs would define the same VF
/// (`spidernet.io/vf=<pci>`) and the runtime would refuse it as ambiguous until the old one went.
fn forget_stale(checkpoint: &mut Checkpoint, devices: &[PreparedDevice], uid: &str) {
    let stale: Vec<String> = checkpoint
        .claims
        .iter()
        .filter(|(other, c)| {
            other.as_str() != uid
                && c.devices.iter().any(|d| {
                    // A VF is one claim's; a shared RDMA device is many claims' at once.
                    d.device_name.starts_with("vf-") && devices.iter().any(|n| n.device_name == d.device_name)
                })
        })
        .map(|(other, _)| other.clone())
        .collect();
    for other in stale {
        if let Some(old) = checkpoint.claims.remove(&other) {
            tracing::info!(
                "DRA: claim {}/{} ({other}) gave up its devices before kubelet unprepared it: its files removed",
                old.namespace,
                old.name
            );
            remove_all(&old.files);
        }
    }
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", p.display());
        }
    }
}

#[tonic::async_trait]
impl<C: ClaimSource, D: NodeDevices> DraPlugin for Plugin<C, D> {
    async fn node_prepare_resources(
        &self,
        request: Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        let mut claims = HashMap::new();
        for claim in request.into_inner().claims {
            let answer = match self.prepare(&claim).await {
                Ok(devices) => NodePrepareResourceResponse {
                    devices: devices
                        .into_iter()
                        .map(|d| Device {
                            request_names: d.request_names,
                            pool_name: d.pool_name,
                            device_name: d.device_name,
                            cdi_device_ids: d.cdi_device_ids,
                            share_id: None,
                        })
                        .collect(),
                    error: String::new(),
                },
                Err(e) => {
                    let error = format!("ResourceClaim {}/{}: {e}", claim.namespace, claim.name);
                    tracing::warn!("DRA: {error}");
                    NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    }
                }
            };
            claims.insert(claim.uid, answer);
        }
        Ok(Response::new(NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        let mut claims = HashMap::new();
        for claim in request.into_inner().claims {
            let error = match self.unprepare(&claim).await {
                Ok(()) => String::new(),
                Err(e) => format!("ResourceClaim {}/{}: {e}", claim.namespace, claim.name),
            };
            claims.insert(claim.uid, NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(NodeUnprepareResourcesResponse { claims }))
    }
}

#[cfg(test)]
mod tests;
