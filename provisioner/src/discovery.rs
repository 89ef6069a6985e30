//! Discovery: sysfs (plus what netlink adds) → [`Inventory`]. A missing file leaves its field
//! `None`; a malformed one does the same and adds a warning. Nothing here panics on input.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use pci_ids::FromId;
use spiderpool_linux::links::LinkTable;
use spiderpool_linux::sysfs::{Problem, Sysfs, is_pci_address};

use spiderpool_api::inventory::{Bond, Inventory, Nic, NodeInfo, RdmaDevice, RdmaPort, Sriov, Vf};

/// Facts about the node that do not come from sysfs (the live host's `uname` and
/// `/proc/meminfo`; fixed values in tests).
#[derive(Debug, Clone, Default)]
pub struct NodeIdentity {
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    /// Used when sysfs has no per-NUMA-node meminfo.
    pub memory_bytes: Option<u64>,
    /// The RDMA netns mode from RDMA netlink (`true` shared); sysfs only has the boot value.
    pub rdma_netns_shared: Option<bool>,
    /// RDMA devices the pods' network namespaces hold (`rdma::holdings`): those moved into one
    /// are not in the host's sysfs at all.
    pub rdma_holdings: Vec<spiderpool_linux::rdma::Holding>,
    /// libibverbs' view of the devices (`spiderpool_linux::verbs::probe`, the `verbs` feature);
    /// `None`: not checked.
    pub verbs: Option<Result<Vec<spiderpool_linux::verbs::VerbsDevice>, String>>,
}

const PCI_CLASS_NETWORK: u32 = 0x02;
const ARPHRD_ETHER: i64 = 1;
const ARPHRD_INFINIBAND: i64 = 32;

struct Scan<'a> {
    sysfs: &'a Sysfs,
    links: &'a LinkTable,
    problems: Vec<Problem>,
}

/// `devices` (the host's sysfs view) with the namespace holding each, and the devices moved into
/// a namespace, which the host's sysfs does not show, as that namespace's netlink reports them.
fn with_holdings(
    mut devices: Vec<RdmaDevice>,
    holdings: &[spiderpool_linux::rdma::Holding],
) -> Vec<RdmaDevice> {
    for held in holdings {
        match devices.iter_mut().find(|d| d.name == held.device.name) {
            Some(d) => d.netns = Some(held.netns.clone()),
            None if held.moved => devices.push(RdmaDevice {
                name: held.device.name.clone(),
                ports: held
                    .device
                    .ports
                    .iter()
                    .map(|p| RdmaPort {
                        port: p.index,
                        state: p
                            .state
                            .map(|s| spiderpool_linux::rdma::port_state_name(s).to_string()),
                        netdev: p.netdev.as_ref().map(|(_, name)| name.clone()),
                        ..RdmaPort::default()
                    })
                    .collect(),
                netns: Some(held.netns.clone()),
                ..RdmaDevice::default()
            }),
            None => {}
        }
    }
    devices
}

/// The vendor's and the device's names in the pci-ids database.
pub(crate) fn pci_names(vendor: Option<u16>, device: Option<u16>) -> (Option<String>, Option<String>) {
    let pci_device = vendor
        .zip(device)
        .and_then(|(v, d)| pci_ids::Device::from_vid_pid(v, d));
    let vendor_name = match (pci_device, vendor) {
        (Some(d), _) => Some(d.vendor().name().to_string()),
        (None, Some(v)) => pci_ids::Vendor::from_id(v).map(|v| v.name().to_string()),
        _ => None,
    };
    (vendor_name, pci_device.map(|d| d.name().to_string()))
}

/// Scans the node under `sysfs`.
pub fn scan(sysfs: &Sysfs, links: &LinkTable, identity: &NodeIdentity) -> Inventory {
    let mut scan = Scan {
        sysfs,
        links,
        problems: Vec::new(),
    };
    let mut rdma_devices = with_holdings(scan.rdma_devices(), &identity.rdma_holdings);
    if let Some(probe) = &identity.verbs {
        crate::verbs_health::with_verbs(&mut rdma_devices, probe);
    }
    let mut nics = scan.nics(&rdma_devices);
    let gpus = crate::topology::gpus(sysfs, &mut scan.problems);
    crate::topology::place_nics(sysfs, &mut nics, &gpus);
    let bonds = scan.bonds();
    let node = scan.node(identity);
    let warnings = scan.problems.iter().map(ToString::to_string).collect();
    Inventory {
        node,
        nics,
        rdma_devices,
        bonds,
        gpus,
        warnings,
        policies: Default::default(),
    }
}

/// Switchdev representors (`pf0vf3`, `c1pf0vf3`, `pf0sf1`) sit under their PF's `net/` too; they
/// are not the PF's own netdev.
fn is_representor(port_name: &str) -> bool {
    let rest = port_name
        .strip_prefix('c')
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    let rest = rest.unwrap_or(port_name);
    rest.starts_with("pf") && (rest.contains("vf") || rest.contains("sf"))
}

impl Scan<'_> {
    fn read(&mut self, path: impl AsRef<Path>) -> Option<String> {
        self.sysfs.read(path, &mut self.problems)
    }

    fn read_u32(&mut self, path: impl AsRef<Path>) -> Option<u32> {
        self.sysfs.parse(path, &mut self.problems, |s| s.parse().ok())
    }

    /// Real directory of a PCI function.
    fn pci_dir(&self, bdf: &str) -> PathBuf {
        self.sysfs
            .resolve(format!("bus/pci/devices/{bdf}"))
            .unwrap_or_else(|| self.sysfs.path(format!("bus/pci/devices/{bdf}")))
    }

    /// The netdevs of a PCI function (representors left out). virtio-net puts its netdev one
    /// level down, under the virtio device.
    fn netdevs_of(&mut self, dev: &Path) -> Vec<String> {
        let mut names = self.sysfs.list(dev.join("net"));
        if names.is_empty() {
            for child in self
                .sysfs
                .list(dev)
                .into_iter()
                .filter(|c| c.starts_with("virtio"))
            {
                names.extend(self.sysfs.list(dev.join(child).join("net")));
            }
        }
        names
            .into_iter()
            .filter(|n| {
                let port = self
                    .sysfs
                    .read(format!("class/net/{n}/phys_port_name"), &mut Vec::new());
                !port.is_some_and(|p| is_representor(&p))
            })
            .collect()
    }

    fn rdma_devices(&mut self) -> Vec<RdmaDevice> {
        let char_devices = self.char_devices();
        let global_cm = self.sysfs.exists("class/misc/rdma_cm");
        let mut out = Vec::new();
        for name in self.sysfs.list("class/infiniband") {
            let dir = self
                .sysfs
                .resolve(format!("class/infiniband/{name}"))
                .unwrap_or_else(|| self.sysfs.path(format!("class/infiniband/{name}")));
            let pci_dir = self.sysfs.resolve(dir.join("device"));
            let pci_address = pci_dir
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| is_pci_address(n));
            let pci_netdevs = match (&pci_dir, &pci_address) {
                (Some(p), Some(_)) => self.netdevs_of(p),
                _ => Vec::new(),
            };
            let mut ports = Vec::new();
            for port in self.sysfs.list(dir.join("ports")) {
                let Ok(number) = port.parse::<u32>() else { continue };
                let pdir = dir.join("ports").join(&port);
                let state = self
                    .read(pdir.join("state"))
                    .map(|s| s.split_once(": ").map_or(s.clone(), |(_, st)| st.to_string()));
                let link_layer = self.read(pdir.join("link_layer"));
                let rate_gbps = self.sysfs.parse(pdir.join("rate"), &mut self.problems, |s| {
                    s.split_whitespace().next().and_then(|n| n.parse::<f64>().ok())
                });
                // RoCE: the GID table names the netdev. Reading an empty GID entry fails with
                // EINVAL, which is normal, so those reads stay quiet.
                let netdev = self
                    .sysfs
                    .read(pdir.join("gid_attrs/ndevs/0"), &mut Vec::new())
                    .filter(|n| !n.is_empty())
                    .or_else(|| self.port_netdev(&pci_netdevs, number));
                ports.push(RdmaPort {
                    port: number,
                    state,
                    link_layer,
                    rate_gbps,
                    netdev,
                });
            }
            let mut chars: Vec<String> = char_devices.get(&name).cloned().unwrap_or_default();
            if global_cm {
                chars.push("/dev/infiniband/rdma_cm".into());
            }
            out.push(RdmaDevice {
                node_guid: self.read(dir.join("node_guid")),
                name,
                pci_address,
                ports,
                char_devices: chars,
                netns: None,
                verbs: None,
            });
        }
        out
    }

    /// InfiniBand ports have no GID netdev: use the PCI function's netdev for that port
    /// (`dev_port` counts from 0), or its only netdev.
    fn port_netdev(&mut self, netdevs: &[String], port: u32) -> Option<String> {
        if netdevs.len() == 1 {
            return netdevs.first().cloned();
        }
        netdevs
            .iter()
            .find(|n| {
                let dev_port = self
                    .sysfs
                    .read(format!("class/net/{n}/dev_port"), &mut Vec::new());
                dev_port.as_deref() == Some(&port.saturating_sub(1).to_string())
            })
            .cloned()
    }

    /// `/dev/infiniband/*` nodes per RDMA device, from the `ibdev` file of each char device class.
    fn char_devices(&mut self) -> HashMap<String, Vec<String>> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        // Each class also holds plain files (e.g. `abi_version`): only the device entries count.
        let classes = [
            ("infiniband_verbs", &["uverbs"][..]),
            ("infiniband_mad", &["umad", "issm"]),
            ("infiniband_cm", &["ucm"]),
        ];
        for (class, prefixes) in classes {
            for node in self.sysfs.list(format!("class/{class}")) {
                if !prefixes.iter().any(|p| node.starts_with(p)) {
                    continue;
                }
                if let Some(ibdev) = self.read(format!("class/{class}/{node}/ibdev")) {
                    map.entry(ibdev)
                        .or_default()
                        .push(format!("/dev/infiniband/{node}"));
                }
            }
        }
        map
    }

    fn nics(&mut self, rdma: &[RdmaDevice]) -> Vec<Nic> {
        // RDMA devices by PCI address, and by the netdev of their ports (software devices such as
        // Soft-RoCE have no PCI function: they belong to the NIC or VF whose netdev they use).
        let mut by_pci: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut by_netdev: HashMap<&str, Vec<&str>> = HashMap::new();
        for dev in rdma {
            match &dev.pci_address {
                Some(pci) => by_pci.entry(pci).or_default().push(&dev.name),
                None => {
                    for port in &dev.ports {
                        if let Some(nd) = &port.netdev {
                            by_netdev.entry(nd).or_default().push(&dev.name);
                        }
                    }
                }
            }
        }
        let rdma_of = |pci: &str, netdev: Option<&str>| -> Vec<String> {
            let mut set = BTreeSet::new();
            set.extend(by_pci.get(pci).into_iter().flatten().map(|s| s.to_string()));
            if let Some(nd) = netdev {
                set.extend(by_netdev.get(nd).into_iter().flatten().map(|s| s.to_string()));
            }
            set.into_iter().collect()
        };

        let mut nics = Vec::new();
        for bdf in self.sysfs.list("bus/pci/devices") {
            let base = format!("bus/pci/devices/{bdf}");
            let Some(class) = self.sysfs.read_hex(format!("{base}/class"), &mut self.problems) else {
                continue;
            };
            if class >> 16 != PCI_CLASS_NETWORK || self.sysfs.exists(format!("{base}/physfn")) {
                continue; // not a NIC, or a VF (listed under its PF)
            }
            let dir = self.pci_dir(&bdf);
            let driver = self.sysfs.link_name(dir.join("driver"));
            let netdevs = self.netdevs_of(&dir);
            if netdevs.is_empty() && driver.as_deref() != Some("vfio-pci") {
                continue; // no driver bound, or one that is not a network driver
            }
            let name = netdevs.first().cloned();
            let vendor = self
                .sysfs
                .read_hex(dir.join("vendor"), &mut self.problems)
                .and_then(|v| u16::try_from(v).ok());
            let device = self
                .sysfs
                .read_hex(dir.join("device"), &mut self.problems)
                .and_then(|v| u16::try_from(v).ok());
            let (vendor_name, device_name) = pci_names(vendor, device);
            let numa_node = self
                .sysfs
                .read_i64(dir.join("numa_node"), &mut self.problems)
                .and_then(|n| u32::try_from(n).ok());
            let mut nic = Nic {
                name: name.clone(),
                alt_names: name
                    .as_deref()
                    .map(|n| self.links.alt_names(n))
                    .unwrap_or_default(),
                pci_address: bdf.clone(),
                vendor_id: vendor.map(|v| format!("{v:04x}")),
                device_id: device.map(|d| format!("{d:04x}")),
                vendor_name,
                device_name,
                driver,
                numa_node,
                rdma_devices: rdma_of(&bdf, name.as_deref()),
                ..Nic::default()
            };
            if let Some(ifname) = &name {
                let net = PathBuf::from(format!("class/net/{ifname}"));
                nic.mac = self.read(net.join("address"));
                nic.mtu = self.read_u32(net.join("mtu"));
                nic.oper_state = self.read(net.join("operstate"));
                // `speed` fails with EINVAL while the link is down and reads -1 when unknown.
                nic.link_speed_mbps = self
                    .sysfs
                    .read(net.join("speed"), &mut Vec::new())
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|&s| s > 0 && s != u64::from(u32::MAX));
                nic.link_type = match self.sysfs.read_i64(net.join("type"), &mut self.problems) {
                    Some(ARPHRD_ETHER) => Some("ether".into()),
                    Some(ARPHRD_INFINIBAND) => Some("infiniband".into()),
                    _ => None,
                };
                nic.bond_master = self
                    .sysfs
                    .link_name(net.join("master"))
                    .filter(|m| self.sysfs.exists(format!("class/net/{m}/bonding")));
            }
            if self.sysfs.exists(dir.join("sriov_totalvfs")) {
                nic.sriov = Some(self.sriov(&dir, name.as_deref(), &rdma_of));
            }
            nics.push(nic);
        }
        nics
    }

    fn sriov(
        &mut self,
        pf: &Path,
        pf_name: Option<&str>,
        rdma_of: &dyn Fn(&str, Option<&str>) -> Vec<String>,
    ) -> Sriov {
        let total_vfs = self.read_u32(pf.join("sriov_totalvfs"));
        let num_vfs = self.read_u32(pf.join("sriov_numvfs"));
        let mut vfs = Vec::new();
        for entry in self.sysfs.list(pf) {
            let Some(vf_id) = entry.strip_prefix("virtfn").and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some(vf_dir) = self.sysfs.resolve(pf.join(&entry)) else {
                self.problems.push(Problem {
                    path: format!("{}/{entry}", pf.display()),
                    why: "dangling link".into(),
                });
                continue;
            };
            let pci_address = vf_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = self.netdevs_of(&vf_dir).into_iter().next();
            let config = pf_name.and_then(|pf| self.links.vf(pf, vf_id));
            let mac = config.and_then(|c| c.mac.clone()).or_else(|| {
                name.as_ref()
                    .and_then(|n| self.read(format!("class/net/{n}/address")))
            });
            let rdma_device = rdma_of(&pci_address, name.as_deref()).into_iter().next();
            vfs.push(Vf {
                vf_id,
                driver: self.sysfs.link_name(vf_dir.join("driver")),
                mac,
                vlan: config.and_then(|c| c.vlan),
                trust: config.and_then(|c| c.trust),
                spoof_chk: config.and_then(|c| c.spoof_chk),
                rdma_device,
                pci_address,
                name,
            });
        }
        vfs.sort_by_key(|v| v.vf_id);
        Sriov {
            total_vfs,
            num_vfs,
            vfs,
        }
    }

    fn bonds(&mut self) -> Vec<Bond> {
        let mut bonds = Vec::new();
        for name in self.sysfs.list("class/net") {
            let base = format!("class/net/{name}");
            if !self.sysfs.exists(format!("{base}/bonding")) {
                continue;
            }
            let mode = self
                .read(format!("{base}/bonding/mode"))
                .and_then(|m| m.split_whitespace().next().map(str::to_string));
            let slaves = self
                .read(format!("{base}/bonding/slaves"))
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            let vlans = self
                .sysfs
                .list(&base)
                .into_iter()
                .filter_map(|e| e.strip_prefix("upper_").map(str::to_string))
                .filter(|upper| {
                    self.sysfs
                        .read(format!("class/net/{upper}/uevent"), &mut Vec::new())
                        .is_some_and(|u| u.lines().any(|l| l == "DEVTYPE=vlan"))
                })
                .collect();
            bonds.push(Bond {
                name,
                mode,
                slaves,
                vlans,
            });
        }
        bonds
    }

    fn node(&mut self, identity: &NodeIdentity) -> NodeInfo {
        let cpus = self
            .sysfs
            .parse("devices/system/cpu/online", &mut self.problems, count_cpu_list);
        let nodes: Vec<String> = self
            .sysfs
            .list("devices/system/node")
            .into_iter()
            .filter(|n| {
                n.strip_prefix("node")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        let mut memory: Option<u64> = None;
        for node in &nodes {
            let kib = self.sysfs.parse(
                format!("devices/system/node/{node}/meminfo"),
                &mut self.problems,
                |text| {
                    text.lines()
                        .find(|l| l.contains("MemTotal:"))?
                        .split_whitespace()
                        .rev()
                        .nth(1)?
                        .parse::<u64>()
                        .ok()
                },
            );
            if let Some(kib) = kib {
                memory = Some(memory.unwrap_or(0) + kib * 1024);
            }
        }
        let boot_mode = self
            .read("module/ib_core/parameters/netns_mode")
            .map(|m| matches!(m.as_str(), "Y" | "1"));
        let rdma_netns_mode = identity.rdma_netns_shared.or(boot_mode).map(|shared| {
            if shared {
                "shared".to_string()
            } else {
                "exclusive".to_string()
            }
        });
        NodeInfo {
            hostname: identity.hostname.clone(),
            kernel: identity.kernel.clone(),
            cpus,
            // The kernel's own total wins: per-node meminfo misses hot-plugged memory in some VMs.
            memory_bytes: identity.memory_bytes.or(memory),
            numa_nodes: (!nodes.is_empty()).then(|| u32::try_from(nodes.len()).unwrap_or(u32::MAX)),
            rdma_netns_mode,
        }
    }
}

/// Counts a kernel CPU list like `0-3,8-11,16`.
fn count_cpu_list(s: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        count = count.checked_add(b.checked_sub(a)? + 1)?;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parsers() {
        assert_eq!(count_cpu_list("0-3,8-11,16"), Some(9));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
        assert!(is_pci_address("0000:3b:00.1"));
        assert!(!is_pci_address("rxe0"));
        assert!(!is_pci_address("0000:3b:00:1"));
        for rep in ["pf0vf3", "c1pf0vf12", "pf1sf0"] {
            assert!(is_representor(rep), "{rep}");
        }
        for port in ["p0", "p1", "pf0"] {
            assert!(!is_representor(port), "{port}");
        }
    }

    #[test]
    fn devices_held_by_namespaces_are_marked_and_moved_ones_added() {
        use spiderpool_linux::rdma::{Holding, RdmaDevice as Nl, RdmaPort as NlPort};
        let host = vec![RdmaDevice {
            name: "rxp1".into(),
            ..RdmaDevice::default()
        }];
        let holding = |name: &str, netns: &str, moved: bool| Holding {
            netns: netns.into(),
            device: Nl {
                index: 3,
                name: name.into(),
                ports: vec![NlPort {
                    index: 1,
                    state: Some(4),
                    netdev: Some((2, "net1".into())),
                }],
            },
            moved,
        };
        let out = with_holdings(
            host,
            &[holding("rxp1", "cni-a", false), holding("mlx5_3", "cni-b", true)],
        );
        assert_eq!(out[0].netns.as_deref(), Some("cni-a"));
        assert_eq!(
            (out[1].name.as_str(), out[1].netns.as_deref()),
            ("mlx5_3", Some("cni-b"))
        );
        assert_eq!(out[1].ports[0].state.as_deref(), Some("ACTIVE"));
        assert_eq!(out[1].ports[0].netdev.as_deref(), Some("net1"));
    }
}
