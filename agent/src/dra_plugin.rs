//! The DRA kubelet plugin as the agent runs it: claims read from the API server, devices from a
//! scan of the node, served to kubelet again whenever its directories are wiped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::{Api, Client};
use spiderpool_api::inventory::Inventory;
use spiderpool_dra::kubelet::{Sockets, serve};
use spiderpool_dra::plugin::{ClaimSource, Config, NodeDevices, Plugin};
use spiderpool_linux::sysfs::Sysfs;
use tokio::sync::Notify;

use crate::node::scan_node;

pub struct ApiClaims(pub Client);

impl ClaimSource for ApiClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, String> {
        Api::<ResourceClaim>::namespaced(self.0.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("reading it: {e}"))
    }
}

pub struct ScannedNode(pub PathBuf);

impl NodeDevices for ScannedNode {
    fn inventory(&self) -> Inventory {
        scan_node(&self.0)
    }

    fn iommu_group(&self, pci: &str) -> Option<String> {
        Sysfs::new(&self.0).link_name(format!("bus/pci/devices/{pci}/iommu_group"))
    }
}

pub struct Options {
    pub kubelet_dir: PathBuf,
    pub sysfs_root: PathBuf,
    pub config: Config,
}

/// Serves the plugin for as long as the agent runs; `registered` is notified whenever kubelet
/// registers it (kubelet wipes the node's slices when it starts: the caller publishes again).
pub async fn run(client: Client, options: Options, registered: Arc<Notify>) {
    let sockets = Sockets::under(&options.kubelet_dir);
    let state = options.config.state.clone();
    let plugin = Arc::new(Plugin::new(
        options.config,
        ApiClaims(client),
        ScannedNode(options.sysfs_root),
    ));
    tracing::info!("DRA: prepared claims kept in {}", state.display());
    loop {
        if let Err(e) = serve(&sockets, plugin.clone(), registered.clone()).await {
            tracing::warn!("DRA kubelet plugin: {e}; serving again");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
