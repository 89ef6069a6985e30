//! What a container gets for its devices: device nodes, the SR-IOV device plugin's environment
//! variables, and device-info files (k8snetworkplumbingwg device-info-spec 1.1.0) for CNI plugins.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;
use spiderpool_api::inventory::Inventory;
use spiderpool_linux::sysfs::{Sysfs, is_pci_address};

use crate::api::{ContainerAllocateResponse, DeviceSpec};
use crate::pool::{Candidate, Members, Resource};

/// Where Multus and SR-IOV CNI look for device-info files.
pub const DEVINFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo/dp";
const RDMA_CM: &str = "/dev/infiniband/rdma_cm";

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("device {0} is not part of resource {1}")]
    UnknownDevice(String, String),
    #[error("writing device-info file {0}: {1}")]
    DeviceInfo(PathBuf, std::io::Error),
}

pub struct AllocateContext<'a> {
    pub inventory: &'a Inventory,
    pub sysfs: &'a Sysfs,
    /// `None` to write no device-info files (tests of the response alone).
    pub devinfo_dir: Option<&'a Path>,
}

fn rw(path: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: path.into(),
        host_path: path.into(),
        permissions: "rw".into(),
    }
}

impl AllocateContext<'_> {
    /// `/dev/infiniband/*` of one HCA (uverbs, and umad/issm/ucm where they exist: Soft-RoCE has
    /// none of those, which is fine), without the global rdma_cm.
    fn hca_nodes(&self, hca: &str) -> Vec<String> {
        self.inventory
            .rdma_devices
            .iter()
            .find(|d| d.name == hca)
            .map(|d| {
                d.char_devices
                    .iter()
                    .filter(|c| c.as_str() != RDMA_CM)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn has_rdma_cm(&self) -> bool {
        self.inventory
            .rdma_devices
            .iter()
            .any(|d| d.char_devices.iter().any(|c| c == RDMA_CM))
    }

    fn iommu_group(&self, pci: &str) -> Option<String> {
        self.sysfs.link_name(format!("bus/pci/devices/{pci}/iommu_group"))
    }

    pub fn allocate(
        &self,
        resource: &Resource,
        ids: &[String],
    ) -> Result<ContainerAllocateResponse, AllocateError> {
        let mut response = ContainerAllocateResponse::default();
        match &resource.members {
            Members::SharedRdma { hcas, .. } => {
                for hca in hcas {
                    response.devices.extend(self.hca_nodes(hca).iter().map(|p| rw(p)));
                }
                if self.has_rdma_cm() {
                    response.devices.push(rw(RDMA_CM));
                }
            }
            Members::Devices(members) => {
                let by_pci: HashMap<&str, &Candidate> =
                    members.iter().map(|c| (c.pci_address.as_str(), c)).collect();
                let mut info = BTreeMap::new();
                let mut wants_cm = false;
                for id in ids {
                    let c = by_pci
                        .get(id.as_str())
                        .ok_or_else(|| AllocateError::UnknownDevice(id.clone(), resource.name.full()))?;
                    let mut entry = serde_json::Map::new();
                    entry.insert("generic".into(), json!({"deviceID": c.pci_address}));
                    if let Some(hca) = c.rdma_devices.first() {
                        let nodes = self.hca_nodes(hca);
                        response.devices.extend(nodes.iter().map(|p| rw(p)));
                        wants_cm = true;
                        let uverbs = nodes
                            .iter()
                            .find(|n| n.contains("uverbs"))
                            .cloned()
                            .unwrap_or_default();
                        entry.insert(
                            "rdma".into(),
                            json!({"uverbs": uverbs, "rdma_cm": RDMA_CM, "rdma_dev": hca}),
                        );
                    }
                    if c.driver.as_deref() == Some("vfio-pci") {
                        response.devices.push(rw("/dev/vfio/vfio"));
                        if let Some(group) = self.iommu_group(&c.pci_address) {
                            let dev = format!("/dev/vfio/{group}");
                            response.devices.push(rw(&dev));
                            entry.insert(
                                "vfio".into(),
                                json!({"dev-mount": dev, "mount": "/dev/vfio/vfio"}),
                            );
                        }
                    }
                    info.insert(c.pci_address.clone(), serde_json::Value::Object(entry));
                    if let Some(dir) = self.devinfo_dir {
                        write_device_info(dir, resource, c)?;
                    }
                }
                if wants_cm && self.has_rdma_cm() {
                    response.devices.push(rw(RDMA_CM));
                }
                let env = resource.name.env_name();
                response.envs.insert(env.clone(), ids.join(","));
                response.envs.insert(
                    format!("{env}_INFO"),
                    serde_json::Value::Object(info.into_iter().collect()).to_string(),
                );
            }
        }
        response.devices.dedup_by(|a, b| a.host_path == b.host_path);
        Ok(response)
    }
}

/// `<prefix>-<name>-<bdf>-device.json`, written atomically (temp file, then rename).
pub fn device_info_path(dir: &Path, resource: &Resource, pci: &str) -> PathBuf {
    dir.join(format!(
        "{}-{}-{pci}-device.json",
        resource.name.prefix, resource.name.name
    ))
}

fn write_device_info(dir: &Path, resource: &Resource, c: &Candidate) -> Result<(), AllocateError> {
    let path = device_info_path(dir, resource, &c.pci_address);
    let mut pci = serde_json::Map::new();
    pci.insert("pci-address".into(), json!(c.pci_address));
    if let Some(hca) = c.rdma_devices.first() {
        pci.insert("rdma-device".into(), json!(hca));
    }
    if c.vf_index.is_some() {
        pci.insert("pf-pci-address".into(), json!(c.pf_pci));
    }
    let doc = json!({"type": "pci", "version": "1.1.0", "pci": pci});
    let err = |e| AllocateError::DeviceInfo(path.clone(), e);
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, doc.to_string()).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// Removes the device-info files of `resource` (when the plugin stops): exactly
/// `<prefix>-<name>-<bdf>-device.json`, so resource `rdma`'s do not take `rdma-x`'s along.
pub fn remove_device_infos(dir: &Path, resource: &Resource) {
    let prefix = format!("{}-{}-", resource.name.prefix, resource.name.name);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix("-device.json"))
                .is_some_and(is_pci_address);
            if ours {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Kind, ResourceSpec, Selectors};
    use crate::pool::assign;
    use spiderpool_testing::fixtures::{fixture_inventory, fixture_root};

    fn resources(inv: &Inventory) -> Vec<Resource> {
        let config = Config {
            resources: vec![
                ResourceSpec::vf(
                    "cx6_vfs",
                    Selectors {
                        drivers: vec!["mlx5_core".into()],
                        ..Selectors::default()
                    },
                ),
                ResourceSpec {
                    resource_name: "dpdk".into(),
                    resource_prefix: Some("intel.com".into()),
                    kind: Kind::Vf,
                    rdma_hca_max: None,
                    selectors: Selectors {
                        drivers: vec!["vfio-pci".into()],
                        ..Selectors::default()
                    },
                    allocation: crate::config::Allocation::DevicePlugin,
                },
            ],
        };
        let mut all = assign(&config, inv).unwrap().0;
        all.extend(assign(&Config::default(), inv).unwrap().0);
        all
    }

    #[test]
    fn vf_allocation_pins_env_device_nodes_and_device_info() {
        let inv = fixture_inventory("cx6dx");
        let sysfs = Sysfs::new(fixture_root("cx6dx"));
        let dir = tempfile::tempdir().unwrap();
        let ctx = AllocateContext {
            inventory: &inv,
            sysfs: &sysfs,
            devinfo_dir: Some(dir.path()),
        };
        let res = resources(&inv);
        let ids = vec!["0000:3b:00.2".to_string(), "0000:3b:01.3".to_string()];
        let resp = ctx.allocate(&res[0], &ids).unwrap();
        assert_eq!(
            resp.envs["PCIDEVICE_SPIDERNET_IO_CX6_VFS"],
            "0000:3b:00.2,0000:3b:01.3"
        );
        let info: serde_json::Value =
            serde_json::from_str(&resp.envs["PCIDEVICE_SPIDERNET_IO_CX6_VFS_INFO"]).unwrap();
        assert_eq!(
            info["0000:3b:00.2"],
            json!({"generic": {"deviceID": "0000:3b:00.2"},
                   "rdma": {"uverbs": "/dev/infiniband/uverbs2", "rdma_cm": "/dev/infiniband/rdma_cm", "rdma_dev": "mlx5_2"}})
        );
        let paths: Vec<&str> = resp.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/infiniband/uverbs2",
                "/dev/infiniband/issm2",
                "/dev/infiniband/umad2",
                "/dev/infiniband/uverbs7",
                "/dev/infiniband/issm7",
                "/dev/infiniband/umad7",
                "/dev/infiniband/rdma_cm"
            ]
        );
        assert!(
            resp.devices
                .iter()
                .all(|d| d.permissions == "rw" && d.container_path == d.host_path)
        );
        let file = device_info_path(dir.path(), &res[0], "0000:3b:00.2");
        assert_eq!(
            file.file_name().unwrap(),
            "spidernet.io-cx6_vfs-0000:3b:00.2-device.json"
        );
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            doc,
            json!({"type": "pci", "version": "1.1.0",
                   "pci": {"pci-address": "0000:3b:00.2", "rdma-device": "mlx5_2", "pf-pci-address": "0000:3b:00.0"}})
        );
        // Another resource whose name extends this one's keeps its files.
        let neighbour = dir.path().join("spidernet.io-cx6_vfs-x-0000:3b:00.3-device.json");
        std::fs::write(&neighbour, "{}").unwrap();
        remove_device_infos(dir.path(), &res[0]);
        assert!(!file.exists());
        assert!(neighbour.exists(), "cx6_vfs-x's file is not cx6_vfs's");
        assert!(ctx.allocate(&res[0], &["0000:99:00.0".into()]).is_err());
    }

    #[test]
    fn shared_rdma_gets_every_hca_node_and_rdma_cm() {
        let inv = fixture_inventory("cx7-ib");
        let sysfs = Sysfs::new(fixture_root("cx7-ib"));
        let ctx = AllocateContext {
            inventory: &inv,
            sysfs: &sysfs,
            devinfo_dir: None,
        };
        let res = assign(&Config::default(), &inv).unwrap().0;
        let resp = ctx.allocate(&res[0], &["rdma-3".into()]).unwrap();
        let paths: Vec<&str> = resp.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/infiniband/uverbs0",
                "/dev/infiniband/issm0",
                "/dev/infiniband/umad0",
                "/dev/infiniband/rdma_cm"
            ]
        );
        assert!(resp.envs.is_empty());
    }

    #[test]
    fn vfio_vf_gets_its_group() {
        let inv = fixture_inventory("cx6dx");
        let dir = tempfile::tempdir().unwrap();
        // A copy of the fixture with an IOMMU group for the vfio-pci VF.
        let root = dir.path().join("sys");
        spiderpool_testing::fixtures::copy_fixture("cx6dx", &root);
        std::fs::create_dir_all(root.join("kernel/iommu_groups/87")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../kernel/iommu_groups/87",
            root.join("devices/pci0000:00/0000:00:01.0/0000:3b:01.5/iommu_group"),
        )
        .unwrap();
        let sysfs = Sysfs::new(&root);
        let ctx = AllocateContext {
            inventory: &inv,
            sysfs: &sysfs,
            devinfo_dir: None,
        };
        let res = resources(&inv);
        let resp = ctx.allocate(&res[1], &["0000:3b:01.5".into()]).unwrap();
        let paths: Vec<&str> = resp.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/87"]);
        assert_eq!(resp.envs["PCIDEVICE_INTEL_COM_DPDK"], "0000:3b:01.5");
        let info: serde_json::Value =
            serde_json::from_str(&resp.envs["PCIDEVICE_INTEL_COM_DPDK_INFO"]).unwrap();
        assert_eq!(info["0000:3b:01.5"]["vfio"]["dev-mount"], "/dev/vfio/87");
    }
}
