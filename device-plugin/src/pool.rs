//! From an inventory and a config to resources: which device (or RDMA HCA) each resource
//! advertises. Pure logic; the first resource that selects a device gets it.

use std::collections::{BTreeSet, HashSet};

use spiderpool_api::inventory::Inventory;
use spiderpool_linux::sysfs::Sysfs;

use crate::config::{
    Allocation, Config, ConfigError, DEFAULT_RDMA_HCA_MAX, Kind, ResourceName, Selectors, VfRanges,
    parse_with_ranges,
};

/// A PCI function that may be handed out: a VF, or a PF.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub pci_address: String,
    pub vendor: Option<String>,
    pub device: Option<String>,
    pub driver: Option<String>,
    /// The PF's netdev and PCI address (a PF's own, for a PF).
    pub pf_name: Option<String>,
    pub pf_pci: String,
    /// `Some` for a VF.
    pub vf_index: Option<u32>,
    pub link_type: Option<String>,
    pub numa_node: Option<u32>,
    pub netdev: Option<String>,
    pub rdma_devices: Vec<String>,
    /// A PF with VFs configured is not handed out as a device itself.
    pub has_vfs: bool,
}

/// Every NIC and VF of the inventory.
pub fn candidates(inv: &Inventory) -> Vec<Candidate> {
    let mut out = Vec::new();
    for nic in &inv.nics {
        let vfs = nic.sriov.as_ref().map(|s| s.vfs.as_slice()).unwrap_or_default();
        out.push(Candidate {
            pci_address: nic.pci_address.clone(),
            vendor: nic.vendor_id.clone(),
            device: nic.device_id.clone(),
            driver: nic.driver.clone(),
            pf_name: nic.name.clone(),
            pf_pci: nic.pci_address.clone(),
            vf_index: None,
            link_type: nic.link_type.clone(),
            numa_node: nic.numa_node,
            netdev: nic.name.clone(),
            rdma_devices: nic.rdma_devices.clone(),
            has_vfs: !vfs.is_empty(),
        });
        for vf in vfs {
            out.push(Candidate {
                pci_address: vf.pci_address.clone(),
                // The inventory keeps IDs per NIC; a VF's device ID differs from its PF's, so only
                // the vendor is inherited.
                vendor: nic.vendor_id.clone(),
                device: None,
                driver: vf.driver.clone(),
                pf_name: nic.name.clone(),
                pf_pci: nic.pci_address.clone(),
                vf_index: Some(vf.vf_id),
                link_type: nic.link_type.clone(),
                numa_node: nic.numa_node,
                netdev: vf.name.clone(),
                rdma_devices: vf.rdma_device.iter().cloned().collect(),
                has_vfs: false,
            });
        }
    }
    out
}

fn in_ranges(ranges: &VfRanges, index: Option<u32>) -> bool {
    match (ranges, index) {
        (None, _) => true,
        (Some(r), Some(i)) => r.iter().any(|&(a, b)| (a..=b).contains(&i)),
        (Some(_), None) => false, // a range names VFs; a PF is not one of them
    }
}

fn any_eq(list: &[String], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
}

/// Whether every selector that is set accepts the candidate.
pub fn matches(sel: &Selectors, c: &Candidate) -> Result<bool, ConfigError> {
    let mut ok = any_eq(&sel.vendors, c.vendor.as_deref())
        && (sel.devices.is_empty() || any_eq(&sel.devices, c.device.as_deref()))
        && any_eq(&sel.drivers, c.driver.as_deref())
        && any_eq(&sel.pci_addresses, Some(&c.pci_address))
        && any_eq(&sel.link_types, c.link_type.as_deref())
        && sel.is_rdma.is_none_or(|want| want != c.rdma_devices.is_empty())
        && (sel.numa_nodes.is_empty() || c.numa_node.is_some_and(|n| sel.numa_nodes.contains(&n)));
    if ok && !sel.pf_names.is_empty() {
        let mut any = false;
        for s in &sel.pf_names {
            let (name, ranges) = parse_with_ranges(s)?;
            any |= c.pf_name.as_deref() == Some(name.as_str()) && in_ranges(&ranges, c.vf_index);
        }
        ok = any;
    }
    if ok && !sel.root_devices.is_empty() {
        let mut any = false;
        for s in &sel.root_devices {
            let (pci, ranges) = parse_with_ranges(s)?;
            any |= c.pf_pci == pci && c.vf_index.is_some() && in_ranges(&ranges, c.vf_index);
        }
        ok = any;
    }
    Ok(ok)
}

/// What a resource advertises.
#[derive(Debug, Clone, PartialEq)]
pub enum Members {
    /// One device per PCI function; device ID = PCI address.
    Devices(Vec<Candidate>),
    /// `slots` interchangeable IDs over these HCAs.
    SharedRdma { hcas: Vec<String>, slots: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: ResourceName,
    pub members: Members,
    pub allocation: Allocation,
}

/// The devices the device plugin hands out (resources it serves), which the DRA driver must
/// not publish: PCI functions, and RDMA devices shared as slots (with the VFs that own them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub pci: BTreeSet<String>,
    pub rdma: BTreeSet<String>,
}

/// What the device plugin holds of `resources` (those whose allocation is the device plugin).
pub fn device_plugin_owned(resources: &[Resource], inv: &Inventory) -> Owned {
    let mut owned = Owned::default();
    for r in resources
        .iter()
        .filter(|r| r.allocation == Allocation::DevicePlugin)
    {
        match &r.members {
            Members::Devices(devices) => {
                for c in devices {
                    owned.pci.insert(c.pci_address.clone());
                    owned.rdma.extend(c.rdma_devices.iter().cloned());
                }
            }
            Members::SharedRdma { hcas, .. } => owned.rdma.extend(hcas.iter().cloned()),
        }
    }
    // A VF whose RDMA device is shared as slots is not handed out whole either.
    for nic in &inv.nics {
        for vf in nic.sriov.iter().flat_map(|s| s.vfs.iter()) {
            if vf.rdma_device.as_ref().is_some_and(|d| owned.rdma.contains(d)) {
                owned.pci.insert(vf.pci_address.clone());
            }
        }
    }
    owned
}

/// Assigns devices to resources, first match wins; the second return value says who got what and
/// what else would have matched (for the logs).
pub fn assign(config: &Config, inv: &Inventory) -> Result<(Vec<Resource>, Vec<String>), ConfigError> {
    assign_candidates(config, inv, candidates(inv))
}

/// The inventory keeps device IDs per NIC only; a VF's own (`101e` under a `101d` PF, say) is
/// what `devices` selectors name, so read it from sysfs.
pub fn with_vf_device_ids(mut all: Vec<Candidate>, sysfs: &Sysfs) -> Vec<Candidate> {
    for c in all.iter_mut().filter(|c| c.vf_index.is_some()) {
        c.device = sysfs
            .read_hex(
                format!("bus/pci/devices/{}/device", c.pci_address),
                &mut Vec::new(),
            )
            .map(|d| format!("{d:04x}"));
    }
    all
}

/// [`assign`] over a given candidate list (e.g. from [`with_vf_device_ids`]).
pub fn assign_candidates(
    config: &Config,
    inv: &Inventory,
    all: Vec<Candidate>,
) -> Result<(Vec<Resource>, Vec<String>), ConfigError> {
    let mut taken_pci: HashSet<String> = HashSet::new();
    let mut taken_hca: HashSet<String> = HashSet::new();
    let mut notes = Vec::new();
    let mut out = Vec::new();
    for spec in &config.resources {
        let name = spec.name()?;
        match spec.kind {
            Kind::Vf => {
                let mut devices = Vec::new();
                for c in all.iter().filter(|c| !c.has_vfs) {
                    if !matches(&spec.selectors, c)? {
                        continue;
                    }
                    if !taken_pci.insert(c.pci_address.clone()) {
                        notes.push(format!(
                            "{} also matches {}, but belongs to an earlier resource",
                            c.pci_address,
                            name.full()
                        ));
                        continue;
                    }
                    taken_hca.extend(c.rdma_devices.iter().cloned());
                    notes.push(format!("{} -> {}", c.pci_address, name.full()));
                    devices.push(c.clone());
                }
                out.push(Resource {
                    name,
                    members: Members::Devices(devices),
                    allocation: spec.allocation,
                });
            }
            Kind::Rdma => {
                let mut hcas = BTreeSet::new();
                let mut owners = Vec::new();
                for c in &all {
                    if c.rdma_devices.is_empty()
                        || taken_pci.contains(&c.pci_address)
                        || !matches(&spec.selectors, c)?
                    {
                        continue;
                    }
                    hcas.extend(c.rdma_devices.iter().filter(|h| !taken_hca.contains(*h)).cloned());
                    owners.push(c.pci_address.clone());
                }
                // A VF whose HCA is shared here is not also handed out whole by a later resource.
                taken_pci.extend(owners);
                // Without selectors, RDMA devices no NIC owns (Soft-RoCE on a veth, say) count too.
                if spec.selectors == Selectors::default() {
                    hcas.extend(
                        inv.rdma_devices
                            .iter()
                            .map(|d| d.name.clone())
                            .filter(|h| !taken_hca.contains(h)),
                    );
                }
                for h in &hcas {
                    notes.push(format!("{h} -> {} (shared)", name.full()));
                }
                taken_hca.extend(hcas.iter().cloned());
                let slots = spec.rdma_hca_max.unwrap_or(DEFAULT_RDMA_HCA_MAX);
                out.push(Resource {
                    name,
                    members: Members::SharedRdma {
                        hcas: hcas.into_iter().collect(),
                        slots,
                    },
                    allocation: spec.allocation,
                });
            }
        }
    }
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResourceSpec;
    use spiderpool_testing::fixtures::fixture_inventory;

    fn spec(name: &str, kind: Kind, selectors: Selectors) -> ResourceSpec {
        match kind {
            Kind::Vf => ResourceSpec::vf(name, selectors),
            Kind::Rdma => ResourceSpec::rdma(name, selectors),
        }
    }

    fn pcis(r: &Resource) -> Vec<&str> {
        match &r.members {
            Members::Devices(d) => d.iter().map(|c| c.pci_address.as_str()).collect(),
            Members::SharedRdma { hcas, .. } => hcas.iter().map(String::as_str).collect(),
        }
    }

    #[test]
    fn default_config_shares_every_rdma_device() {
        let inv = fixture_inventory("cx6dx");
        let (res, _) = assign(&Config::default(), &inv).unwrap();
        assert_eq!(res[0].name.full(), "spidernet.io/rdma");
        let Members::SharedRdma { hcas, slots } = &res[0].members else {
            panic!("shared")
        };
        assert_eq!(hcas.len(), 9);
        assert_eq!(*slots, DEFAULT_RDMA_HCA_MAX);
    }

    #[test]
    fn pf_names_with_ranges_and_first_match_wins() {
        let inv = fixture_inventory("cx6dx");
        let config = Config {
            resources: vec![
                spec(
                    "even",
                    Kind::Vf,
                    Selectors {
                        pf_names: vec!["ens1f0np0#0,2".into()],
                        ..Selectors::default()
                    },
                ),
                spec(
                    "all_vfs",
                    Kind::Vf,
                    Selectors {
                        vendors: vec!["15b3".into()],
                        drivers: vec!["mlx5_core".into()],
                        ..Selectors::default()
                    },
                ),
                spec(
                    "dpdk",
                    Kind::Vf,
                    Selectors {
                        drivers: vec!["vfio-pci".into()],
                        ..Selectors::default()
                    },
                ),
                spec("rdma", Kind::Rdma, Selectors::default()),
            ],
        };
        let (res, notes) = assign(&config, &inv).unwrap();
        assert_eq!(pcis(&res[0]), ["0000:3b:00.2", "0000:3b:00.4"]);
        assert_eq!(
            pcis(&res[1]),
            [
                "0000:3b:00.3",
                "0000:3b:00.5",
                "0000:3b:01.2",
                "0000:3b:01.3",
                "0000:3b:01.4"
            ]
        );
        assert_eq!(pcis(&res[2]), ["0000:3b:01.5"]);
        // The VFs' HCAs went with their VFs: only the PFs' are left to share.
        assert_eq!(pcis(&res[3]), ["mlx5_0", "mlx5_1"]);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("0000:3b:00.2 also matches spidernet.io/all_vfs")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_vf_whose_hca_is_shared_is_not_also_exclusive() {
        let inv = fixture_inventory("cx6dx");
        let config = Config {
            resources: vec![
                spec(
                    "rdma",
                    Kind::Rdma,
                    Selectors {
                        pf_names: vec!["ens1f0np0".into()],
                        ..Selectors::default()
                    },
                ),
                spec(
                    "vfs",
                    Kind::Vf,
                    Selectors {
                        drivers: vec!["mlx5_core".into()],
                        ..Selectors::default()
                    },
                ),
            ],
        };
        let (res, _) = assign(&config, &inv).unwrap();
        assert_eq!(pcis(&res[0]), ["mlx5_0", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5"]);
        assert_eq!(pcis(&res[1]), ["0000:3b:01.2", "0000:3b:01.3", "0000:3b:01.4"]);
    }

    #[test]
    fn what_the_device_plugin_owns_leaves_out_resources_given_to_dra() {
        let inv = fixture_inventory("cx6dx");
        let shared = spec(
            "rdma",
            Kind::Rdma,
            Selectors {
                pf_names: vec!["ens1f0np0".into()],
                ..Selectors::default()
            },
        );
        let vfs = ResourceSpec {
            allocation: Allocation::Dra,
            ..spec(
                "vfs",
                Kind::Vf,
                Selectors {
                    drivers: vec!["mlx5_core".into()],
                    ..Selectors::default()
                },
            )
        };
        let config = Config {
            resources: vec![shared, vfs],
        };
        let (res, _) = assign(&config, &inv).unwrap();
        let owned = device_plugin_owned(&res, &inv);
        // The shared HCAs and the VFs they belong to are the device plugin's; the VFs of the
        // `dra` resource are not.
        assert_eq!(
            owned.rdma.iter().map(String::as_str).collect::<Vec<_>>(),
            ["mlx5_0", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5"]
        );
        for pci in pcis(&res[1]) {
            assert!(!owned.pci.contains(pci), "{pci}");
        }
        assert!(!owned.pci.is_empty());
        let config = Config {
            resources: vec![ResourceSpec {
                allocation: Allocation::Dra,
                ..Config::default().resources[0].clone()
            }],
        };
        let (res, _) = assign(&config, &inv).unwrap();
        assert_eq!(device_plugin_owned(&res, &inv), Owned::default());
    }

    #[test]
    fn vf_device_ids_come_from_sysfs() {
        let inv = fixture_inventory("cx6dx");
        let sysfs = Sysfs::new(spiderpool_testing::fixtures::fixture_root("cx6dx"));
        let config = Config {
            resources: vec![spec(
                "cx6_vfs",
                Kind::Vf,
                Selectors {
                    devices: vec!["101e".into()],
                    ..Selectors::default()
                },
            )],
        };
        let (res, _) =
            assign_candidates(&config, &inv, with_vf_device_ids(candidates(&inv), &sysfs)).unwrap();
        assert_eq!(pcis(&res[0]).len(), 8, "every VF, none of the 101d PFs");
        let (res, _) = assign(&config, &inv).unwrap();
        assert!(
            pcis(&res[0]).is_empty(),
            "without sysfs the VF device ID is unknown"
        );
    }

    #[test]
    fn root_devices_numa_link_type_and_is_rdma() {
        let inv = fixture_inventory("cx6dx");
        let sel = |s: Selectors| Config {
            resources: vec![spec("r", Kind::Vf, s)],
        };
        let got = |s: Selectors| {
            pcis(&assign(&sel(s), &inv).unwrap().0[0])
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got(Selectors {
                root_devices: vec!["0000:3b:00.1#1-2".into()],
                ..Selectors::default()
            }),
            ["0000:3b:01.3", "0000:3b:01.4"]
        );
        assert_eq!(
            got(Selectors {
                numa_nodes: vec![1],
                ..Selectors::default()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            got(Selectors {
                link_types: vec!["infiniband".into()],
                ..Selectors::default()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            got(Selectors {
                is_rdma: Some(false),
                ..Selectors::default()
            }),
            ["0000:3b:01.5"]
        );
        // PFs with VFs are never devices themselves; a PF without VFs is.
        let e810 = fixture_inventory("e810");
        let (res, _) = assign(
            &Config {
                resources: vec![spec("ice", Kind::Vf, Selectors::default())],
            },
            &e810,
        )
        .unwrap();
        assert_eq!(pcis(&res[0]), ["0000:5e:01.0", "0000:5e:01.1", "0000:5e:00.1"]);
    }
}
