//! `rdma`: a chained CNI plugin that gives a pod the RDMA device of its NIC when the node's RDMA
//! subsystem runs in exclusive network-namespace mode, and gives it back to the host on DEL. The
//! netconf is rdma-cni's (`{"type": "rdma", "deviceID"?}`), so Spiderpool's SpiderMultusConfig
//! (`rdmaIsolation`) and Multus (which sets `deviceID` from the network's resourceName) work as
//! they are. The device is the one under the PCI function `deviceID` names (an SR-IOV VF), or,
//! without it, the Soft-RoCE device bound to the pod interface (found by the node GUID its MAC
//! gives). What the plugin moved is recorded per attachment under `stateDir`, so ADD is
//! idempotent and DEL knows what to return; a DEL whose namespace is gone has nothing to move:
//! the kernel returns a dead namespace's RDMA devices to the host itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spiderpool_cni::paths;
use spiderpool_cni::{CniError, CniResult, ErrorCode, Plugin, PluginInfo, Request};
use spiderpool_linux::sysfs::is_pci_address;

pub mod host;

/// Inside `/var/lib/cni/spiderpool`, a directory trusted for data (`cni::paths`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/spiderpool/rdma";

/// The kernel and sysfs, as far as the plugin needs them (a fake in the unit tests).
pub trait Host {
    /// `Ok(true)` when RDMA devices are shared by every namespace.
    fn netns_mode_shared(&self) -> Result<bool, String>;
    /// The RDMA devices of PCI function `bdf` that the host's namespace sees.
    fn devices_of_pci(&self, bdf: &str) -> Vec<String>;
    /// The netdev-bound RDMA devices (Soft-RoCE) made on the netdev with this MAC.
    fn devices_of_mac(&self, mac: &str) -> Vec<String>;
    /// The RDMA devices in the host's namespace, name to index.
    fn host_devices(&self) -> Result<BTreeMap<String, u32>, String>;
    /// The RDMA devices in the namespace at `netns`, name to index.
    fn pod_devices(&self, netns: &Path) -> Result<BTreeMap<String, u32>, String>;
    fn move_into(&self, index: u32, name: &str, netns: &Path) -> Result<(), MoveRefused>;
    fn move_out(&self, netns: &Path, index: u32, name: &str) -> Result<(), String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRefused {
    pub errno: Option<i32>,
    pub message: String,
}

/// The validated netconf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConf {
    /// The PCI function whose RDMA device the pod gets (`0000:03:00.2`).
    pub device_id: Option<String>,
    pub state_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(rename = "deviceID", default)]
    device_id: Option<String>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
}

impl RdmaConf {
    /// `trusted`: the directories a netconf's `stateDir` may lie in (a netconf is a namespace
    /// admin's; the plugin writes there as root).
    pub fn parse(raw: &serde_json::Value, trusted: &[PathBuf]) -> Result<RdmaConf, CniError> {
        let wire: Wire = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decoding(format!("rdma netconf: {e}")))?;
        // Multus puts deviceID at the top; a runtime may pass it in runtimeConfig instead.
        let device_id = wire.device_id.or_else(|| {
            raw.pointer("/runtimeConfig/deviceID")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
        if let Some(id) = &device_id
            && !is_pci_address(id)
        {
            return Err(CniError::invalid_config(format!(
                "rdma: deviceID {id:?} is not a PCI address (0000:03:00.2)"
            )));
        }
        let state_dir = match wire.state_dir {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(dir) => paths::confine_to("rdma: stateDir", &dir, trusted)?,
        };
        Ok(RdmaConf { device_id, state_dir })
    }
}

/// What one attachment holds, kept until its DEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub device: String,
    pub netns: String,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, for the agent's metrics to name the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// Every device the plugin has moved into a pod on this node, as its records under `dir` say
/// (records that do not parse are skipped: the agent reads them, the plugin owns them).
pub fn held_devices(dir: &Path) -> Vec<Held> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_none())
        .filter_map(|e| read_held(&e.path()).ok().flatten())
        .collect()
}

fn state_path(conf: &RdmaConf, req: &Request) -> PathBuf {
    conf.state_dir
        .join(format!("{}-{}", req.container_id, req.ifname))
}

fn read_held(path: &Path) -> Result<Option<Held>, CniError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CniError::io(format!("rdma: {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::io(format!("rdma: {}: {e}", path.display()))),
    }
}

fn write_held(path: &Path, held: &Held) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(held).unwrap_or_default())?;
    std::fs::rename(tmp, path)
}

fn unavailable(msg: String) -> CniError {
    CniError::new(ErrorCode::DeviceUnavailable, msg)
}

pub struct RdmaPlugin<H: Host> {
    pub host: H,
    /// Where `stateDir` may point: `cni::paths`' data directories and `SPIDERPOOL_TRUSTED_DIRS`.
    pub trusted_dirs: Vec<PathBuf>,
}

impl<H: Host> RdmaPlugin<H> {
    /// The RDMA devices that may be this attachment's, by the netconf's deviceID or the pod
    /// interface's MAC, and how to name them in an error.
    fn candidates(
        &self,
        conf: &RdmaConf,
        req: &Request,
        prev: &CniResult,
    ) -> Result<(Vec<String>, String), CniError> {
        if let Some(bdf) = &conf.device_id {
            return Ok((self.host.devices_of_pci(bdf), format!("PCI device {bdf}")));
        }
        let pod_if = prev
            .interfaces
            .iter()
            .find(|i| i.name == req.ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()));
        let Some(mac) = pod_if.and_then(|i| i.mac.clone()) else {
            return Err(CniError::invalid_config(format!(
                "rdma: no deviceID (Multus sets it from the network's resourceName) and prevResult has no MAC for the pod's {}",
                req.ifname
            )));
        };
        Ok((
            self.host.devices_of_mac(&mac),
            format!("the pod's {} (MAC {mac})", req.ifname),
        ))
    }
}

impl<H: Host> Plugin for RdmaPlugin<H> {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            about: "rdma: moves the RDMA device of a pod's NIC into the pod (exclusive RDMA netns mode)"
                .into(),
        }
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = RdmaConf::parse(&req.conf.raw, &self.trusted_dirs)?;
        let prev = req.conf.prev_result.clone().ok_or_else(|| {
            CniError::invalid_config(
                "rdma: no prevResult: it chains after the plugin that makes the pod's NIC",
            )
        })?;
        let netns = Path::new(&req.netns);
        let path = state_path(&conf, req);
        if let Some(held) = read_held(&path)? {
            let in_pod = self.host.pod_devices(netns).map_err(CniError::io)?;
            if in_pod.contains_key(&held.device) {
                return Ok(prev);
            }
        }
        if self
            .host
            .netns_mode_shared()
            .map_err(|e| CniError::io(format!("rdma: {e}")))?
        {
            return Err(unavailable(
                "rdma: the node's RDMA subsystem is in shared netns mode, where every pod sees every RDMA device and none can be given to one pod; set `rdma system set netns exclusive` (or ib_core netns_mode=0) for RDMA isolation, or drop rdma from the chain".into(),
            ));
        }
        let (candidates, owner) = self.candidates(&conf, req, &prev)?;
        let in_host = self
            .host
            .host_devices()
            .map_err(|e| CniError::io(format!("rdma: {e}")))?;
        let Some((name, index)) = candidates
            .iter()
            .find_map(|n| in_host.get(n).map(|i| (n.clone(), *i)))
        else {
            return Err(unavailable(if candidates.is_empty() {
                format!(
                    "rdma: no RDMA device of {owner} is in the host's network namespace (it has none, or another pod holds it)"
                )
            } else {
                format!(
                    "rdma: RDMA device {} of {owner} is not in the host's network namespace: another pod holds it",
                    candidates.join(", ")
                )
            }));
        };
        if let Err(refused) = self.host.move_into(index, &name, netns) {
            return Err(unavailable(if refused.errno == Some(libc::EOPNOTSUPP) {
                format!(
                    "rdma: the kernel cannot move RDMA device {name} into another network namespace (its driver cannot drop user contexts; Soft-RoCE on released kernels): {}",
                    refused.message
                )
            } else {
                format!(
                    "rdma: moving RDMA device {name} into the pod: {}",
                    refused.message
                )
            }));
        }
        let held = Held {
            device: name.clone(),
            netns: req.netns.clone(),
            pod_namespace: req.args.k8s_pod_namespace.clone(),
            pod_name: req.args.k8s_pod_name.clone(),
        };
        if let Err(e) = write_held(&path, &held) {
            // Without the record DEL could not return it: give it back now.
            let _ = self.host.move_out(netns, index, &name);
            return Err(CniError::io(format!("rdma: {}: {e}", path.display())));
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let conf = RdmaConf::parse(&req.conf.raw, &self.trusted_dirs)?;
        let path = state_path(&conf, req);
        let Some(held) = read_held(&path)? else {
            return Ok(());
        };
        let netns = Path::new(&req.netns);
        if !req.netns.is_empty() && netns.exists() {
            let in_pod = self.host.pod_devices(netns).map_err(CniError::io)?;
            if let Some(index) = in_pod.get(&held.device) {
                self.host
                    .move_out(netns, *index, &held.device)
                    .map_err(|e| CniError::io(format!("rdma: returning {} to the host: {e}", held.device)))?;
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format!("rdma: {}: {e}", path.display()))),
        }
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let conf = RdmaConf::parse(&req.conf.raw, &self.trusted_dirs)?;
        let held = read_held(&state_path(&conf, req))?
            .ok_or_else(|| CniError::io("rdma: CHECK of an attachment this plugin holds no device for"))?;
        let in_pod = self
            .host
            .pod_devices(Path::new(&req.netns))
            .map_err(CniError::io)?;
        if in_pod.contains_key(&held.device) {
            Ok(())
        } else {
            Err(unavailable(format!(
                "rdma: RDMA device {} is no longer in the pod's network namespace",
                held.device
            )))
        }
    }
}

#[cfg(test)]
mod tests;
