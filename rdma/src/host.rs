//! The node as the plugin sees it: sysfs for which RDMA device belongs to a PCI function or a
//! netdev, RDMA netlink for the devices a namespace holds and for moving one.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use spiderpool_linux::netns::NetNs;
use spiderpool_linux::rdma;
use spiderpool_linux::sysfs::Sysfs;

use crate::{Host, MoveRefused};

pub struct LinuxHost {
    sysfs: Sysfs,
}

impl LinuxHost {
    pub fn new(sysfs_root: &str) -> LinuxHost {
        LinuxHost {
            sysfs: Sysfs::new(sysfs_root),
        }
    }
}

fn open(netns: &Path) -> Result<NetNs, String> {
    NetNs::open(netns).map_err(|e| e.to_string())
}

fn by_name(devices: Vec<rdma::RdmaDevice>) -> BTreeMap<String, u32> {
    devices.into_iter().map(|d| (d.name, d.index)).collect()
}

/// The node GUID a netdev-bound RDMA device (Soft-RoCE) derives from its netdev's MAC: EUI-64
/// with the universal/local bit flipped, as `rdma dev` prints it.
pub fn guid_of_mac(mac: &str) -> Option<String> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, e, f] = <[u8; 6]>::try_from(bytes).ok()?;
    let g = [a ^ 2, b, c, 0xff, 0xfe, d, e, f];
    Some(format!(
        "{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}",
        g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]
    ))
}

impl Host for LinuxHost {
    fn netns_mode_shared(&self) -> Result<bool, String> {
        rdma::netns_mode_shared().map_err(|e| e.to_string())
    }

    fn devices_of_pci(&self, bdf: &str) -> Vec<String> {
        let dir = format!("bus/pci/devices/{bdf}");
        let mut found = self.sysfs.list(format!("{dir}/infiniband"));
        // mlx5 and others hang the RDMA device off an auxiliary device (`mlx5_core.rdma.N`).
        for child in self.sysfs.list(&dir) {
            if child.contains(".rdma.") {
                found.extend(self.sysfs.list(format!("{dir}/{child}/infiniband")));
            }
        }
        found
    }

    fn devices_of_mac(&self, mac: &str) -> Vec<String> {
        let Some(guid) = guid_of_mac(mac) else {
            return Vec::new();
        };
        self.sysfs
            .list("class/infiniband")
            .into_iter()
            .filter(|dev| {
                let mut problems = Vec::new();
                self.sysfs
                    .read(format!("class/infiniband/{dev}/node_guid"), &mut problems)
                    .is_some_and(|g| g.trim() == guid)
            })
            .collect()
    }

    fn host_devices(&self) -> Result<BTreeMap<String, u32>, String> {
        rdma::devices().map(by_name).map_err(|e| e.to_string())
    }

    fn pod_devices(&self, netns: &Path) -> Result<BTreeMap<String, u32>, String> {
        open(netns)?
            .run(rdma::devices)
            .map_err(|e| e.to_string())?
            .map(by_name)
            .map_err(|e| e.to_string())
    }

    fn move_into(&self, index: u32, name: &str, netns: &Path) -> Result<(), MoveRefused> {
        let ns = open(netns).map_err(|message| MoveRefused { errno: None, message })?;
        rdma::move_device(index, name, ns.as_fd()).map_err(|e| MoveRefused {
            errno: e.errno(),
            message: e.to_string(),
        })
    }

    fn move_out(&self, netns: &Path, index: u32, name: &str) -> Result<(), String> {
        // The caller's thread is in the host's namespace; in exclusive mode the device is seen
        // (and so moved) only from the pod's.
        let host = File::open("/proc/thread-self/ns/net").map_err(|e| format!("host netns: {e}"))?;
        open(netns)?
            .run(|| rdma::move_device(index, name, host.as_fd()))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_roce_guids_come_from_the_mac() {
        // Seen on a real kernel: rxe0 on 52:54:00:00:00:01 has node_guid 5054:00ff:fe00:0001.
        assert_eq!(
            guid_of_mac("52:54:00:00:00:01").as_deref(),
            Some("5054:00ff:fe00:0001")
        );
        assert_eq!(
            guid_of_mac("7a:35:20:cd:12:20").as_deref(),
            Some("7835:20ff:fecd:1220")
        );
        assert_eq!(guid_of_mac("52:54:00"), None);
        assert_eq!(guid_of_mac("zz:54:00:00:00:01"), None);
    }

    #[test]
    fn devices_of_a_pci_function_include_auxiliary_ones() {
        let root = tempfile::tempdir().unwrap();
        let vf = root.path().join("bus/pci/devices/0000:03:00.2");
        std::fs::create_dir_all(vf.join("mlx5_core.rdma.3/infiniband/mlx5_3")).unwrap();
        std::fs::create_dir_all(vf.join("net/enp3s0f0v0")).unwrap();
        let pf = root.path().join("bus/pci/devices/0000:03:00.0/infiniband/mlx5_0");
        std::fs::create_dir_all(pf).unwrap();
        let host = LinuxHost::new(root.path().to_str().unwrap());
        assert_eq!(host.devices_of_pci("0000:03:00.2"), ["mlx5_3"]);
        assert_eq!(host.devices_of_pci("0000:03:00.0"), ["mlx5_0"]);
        assert!(host.devices_of_pci("0000:09:00.0").is_empty());
    }
}
