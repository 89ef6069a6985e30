//! Where PCI functions sit in the PCIe tree, the node's GPUs, and which GPUs are near each NIC:
//! what a user pairs by hand today before asking for "a VF on my GPU's switch".

use spiderpool_api::inventory::{Gpu, GpuPath, NearGpu, Nic};
use spiderpool_linux::sysfs::{Problem, Sysfs, is_pci_address};

const PCI_CLASS_DISPLAY: u32 = 0x03;

/// Display controllers that are a server's management console (BMC), not an accelerator:
/// ASPEED, Matrox, Huawei iBMC's.
const BMC_DISPLAY: [(u16, Option<u16>); 3] = [(0x1a03, None), (0x102b, None), (0x19e5, Some(0x1711))];

/// A PCI function's place in the tree: its root complex (`pci<domain>:<bus>`, the value of DRA's
/// `resource.kubernetes.io/pcieRoot`) and the functions from the root port down to it, itself
/// last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciePath {
    pub root: String,
    pub chain: Vec<String>,
}

/// Reads where `bdf` hangs from its `bus/pci/devices` link. `None` when the link does not lead
/// into a `pci<domain>:<bus>` directory.
pub fn pcie_path(sysfs: &Sysfs, bdf: &str) -> Option<PciePath> {
    let real = sysfs.resolve(format!("bus/pci/devices/{bdf}"))?;
    let rel = real.strip_prefix(sysfs.path("devices")).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    // Usually the first component; on some platforms (arm64 `virt`) the host bridge sits under
    // a platform device.
    let at = parts.iter().position(|p| is_root_complex(p))?;
    let chain = parts[at + 1..].to_vec();
    (chain.last().map(String::as_str) == Some(bdf) && chain.iter().all(|c| is_pci_address(c))).then(|| {
        PciePath {
            root: parts[at].clone(),
            chain,
        }
    })
}

/// `pci<domain>:<bus>`; VMD domains have five hex digits (`pci10000:00`).
fn is_root_complex(name: &str) -> bool {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    name.strip_prefix("pci")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(domain, bus)| {
            (4..=8).contains(&domain.len()) && bus.len() == 2 && hex(domain) && hex(bus)
        })
}

/// What two functions share: a bridge (a switch, or one root port for both), the root complex,
/// or only the NUMA node.
fn shared(a: &PciePath, b: &PciePath) -> Option<GpuPath> {
    // The functions themselves are the chains' last entries; a common entry before that is a
    // bridge both sit behind.
    let bridges = |p: &PciePath| p.chain.len().saturating_sub(1);
    let common = a
        .chain
        .iter()
        .zip(&b.chain)
        .take(bridges(a).min(bridges(b)))
        .take_while(|(x, y)| x == y)
        .count();
    if a.root == b.root && common > 0 {
        Some(GpuPath::PcieSwitch)
    } else if a.root == b.root {
        Some(GpuPath::PcieRoot)
    } else {
        None
    }
}

/// The node's GPUs: PCI display and 3D controllers (class 03), except BMC consoles.
pub fn gpus(sysfs: &Sysfs, problems: &mut Vec<Problem>) -> Vec<Gpu> {
    let mut out = Vec::new();
    for bdf in sysfs.list("bus/pci/devices") {
        let base = format!("bus/pci/devices/{bdf}");
        let Some(class) = sysfs.read_hex(format!("{base}/class"), problems) else {
            continue;
        };
        if class >> 16 != PCI_CLASS_DISPLAY {
            continue;
        }
        let vendor = sysfs
            .read_hex(format!("{base}/vendor"), problems)
            .and_then(|v| u16::try_from(v).ok());
        let device = sysfs
            .read_hex(format!("{base}/device"), problems)
            .and_then(|d| u16::try_from(d).ok());
        if BMC_DISPLAY
            .iter()
            .any(|(v, d)| Some(*v) == vendor && d.is_none_or(|d| Some(d) == device))
        {
            continue;
        }
        let (vendor_name, device_name) = crate::discovery::pci_names(vendor, device);
        out.push(Gpu {
            pci_address: bdf.clone(),
            vendor_id: vendor.map(|v| format!("{v:04x}")),
            device_id: device.map(|d| format!("{d:04x}")),
            vendor_name,
            device_name,
            driver: sysfs.link_name(format!("{base}/driver")),
            numa_node: sysfs
                .read_i64(format!("{base}/numa_node"), problems)
                .and_then(|n| u32::try_from(n).ok()),
            pcie_root: pcie_path(sysfs, &bdf).map(|p| p.root),
        });
    }
    out
}

/// Sets each NIC's `pcie_root` and the GPUs near it, nearest first.
pub fn place_nics(sysfs: &Sysfs, nics: &mut [Nic], gpus: &[Gpu]) {
    let gpu_paths: Vec<(&Gpu, Option<PciePath>)> = gpus
        .iter()
        .map(|g| (g, pcie_path(sysfs, &g.pci_address)))
        .collect();
    for nic in nics {
        let path = pcie_path(sysfs, &nic.pci_address);
        nic.pcie_root = path.as_ref().map(|p| p.root.clone());
        let mut near: Vec<NearGpu> = gpu_paths
            .iter()
            .filter_map(|(gpu, gpu_path)| {
                let via = path
                    .as_ref()
                    .zip(gpu_path.as_ref())
                    .and_then(|(a, b)| shared(a, b))
                    .or_else(|| {
                        (nic.numa_node.is_some() && nic.numa_node == gpu.numa_node)
                            .then_some(GpuPath::NumaNode)
                    })?;
                Some(NearGpu {
                    pci_address: gpu.pci_address.clone(),
                    via,
                })
            })
            .collect();
        near.sort_by(|a, b| a.via.cmp(&b.via).then_with(|| a.pci_address.cmp(&b.pci_address)));
        nic.gpus = near;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(root: &str, chain: &[&str]) -> PciePath {
        PciePath {
            root: root.into(),
            chain: chain.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn what_two_functions_share() {
        // Root port 3a:00.0, switch upstream 3b:00.0, downstream ports 3c:00.0 and 3c:01.0.
        let gpu = path(
            "pci0000:3a",
            &["0000:3a:00.0", "0000:3b:00.0", "0000:3c:00.0", "0000:3d:00.0"],
        );
        let nic_same_switch = path(
            "pci0000:3a",
            &["0000:3a:00.0", "0000:3b:00.0", "0000:3c:01.0", "0000:3e:00.0"],
        );
        let nic_other_port = path("pci0000:3a", &["0000:3a:02.0", "0000:40:00.0"]);
        let nic_other_root = path("pci0000:17", &["0000:17:00.0", "0000:18:00.0"]);
        let on_root_bus = path("pci0000:3a", &["0000:3a:05.0"]);
        assert_eq!(shared(&gpu, &nic_same_switch), Some(GpuPath::PcieSwitch));
        assert_eq!(shared(&gpu, &nic_other_port), Some(GpuPath::PcieRoot));
        assert_eq!(shared(&gpu, &nic_other_root), None);
        assert_eq!(
            shared(&gpu, &on_root_bus),
            Some(GpuPath::PcieRoot),
            "a device is not its own bridge"
        );
        // Two functions of one card behind one root port.
        let pf0 = path("pci0000:3a", &["0000:3a:02.0", "0000:40:00.0"]);
        let pf1 = path("pci0000:3a", &["0000:3a:02.0", "0000:40:00.1"]);
        assert_eq!(shared(&pf0, &pf1), Some(GpuPath::PcieSwitch));
    }

    #[test]
    fn root_complex_names() {
        assert!(is_root_complex("pci0000:3a"));
        assert!(is_root_complex("pci10000:00"));
        assert!(!is_root_complex("pci_bus"));
        assert!(!is_root_complex("0000:3a:00.0"));
    }
}
