//! Builds sysfs trees shaped like real hardware (real relative symlinks: `bus/pci/devices/*`,
//! `class/net/*`, `driver`, `physfn`, `virtfnN`, `net/`, `infiniband/`, char device classes), for
//! the committed fixtures under `tests/fixtures/sysfs/` and for benchmarks that need bigger ones.

use std::io;
use std::path::{Path, PathBuf};

/// A network interface of a PCI function.
#[derive(Debug, Clone)]
pub struct Netdev {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub operstate: &'static str,
    /// Mb/s; `-1` as the kernel writes for an unknown speed.
    pub speed: i64,
    /// ARPHRD: 1 Ethernet, 32 InfiniBand.
    pub arp_type: u32,
    pub dev_port: u32,
    pub phys_port_name: Option<String>,
}

impl Netdev {
    pub fn ether(name: &str, mac: &str, speed: i64) -> Netdev {
        Netdev {
            name: name.into(),
            mac: mac.into(),
            mtu: 1500,
            operstate: if speed > 0 { "up" } else { "down" },
            speed,
            arp_type: 1,
            dev_port: 0,
            phys_port_name: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RdmaPort {
    /// As the kernel writes it, e.g. `4: ACTIVE`.
    pub state: &'static str,
    pub link_layer: &'static str,
    pub rate: &'static str,
    /// RoCE ports name their netdev in the GID table.
    pub gid_netdev: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Rdma {
    pub name: String,
    pub node_guid: String,
    pub ports: Vec<RdmaPort>,
    /// `uverbsN`
    pub uverbs: u32,
    /// `umadN`/`issmN` per port (none for Soft-RoCE).
    pub mad: Vec<u32>,
}

/// A PCI function.
#[derive(Debug, Clone)]
pub struct PciFunction {
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
    pub numa_node: i32,
    pub netdev: Option<Netdev>,
    pub sriov_total: Option<u32>,
    pub rdma: Option<Rdma>,
}

impl PciFunction {
    pub fn nic(
        bdf: &str,
        vendor: u16,
        device: u16,
        driver: &str,
        numa_node: i32,
        netdev: Option<Netdev>,
    ) -> Self {
        PciFunction {
            bdf: bdf.into(),
            vendor,
            device,
            class: 0x020000,
            driver: Some(driver.into()),
            numa_node,
            netdev,
            sriov_total: None,
            rdma: None,
        }
    }
}

pub struct SysfsBuilder {
    root: PathBuf,
}

/// The PCI bridge every fixture device hangs under.
const BRIDGE: &str = "devices/pci0000:00/0000:00:01.0";

impl SysfsBuilder {
    pub fn new(root: &Path) -> io::Result<SysfsBuilder> {
        for dir in ["bus/pci/devices", "class/net", "class/infiniband", BRIDGE] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(SysfsBuilder {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write(&self, rel: &str, content: &str) -> io::Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, format!("{content}\n"))
    }

    /// A symlink at `at` pointing to `target`, both relative to the root; written relative, as
    /// sysfs does, so the tree works wherever it is copied.
    fn link(&self, at: &str, target: &str) -> io::Result<()> {
        let path = self.root.join(at);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let depth = Path::new(at).components().count() - 1;
        let relative = format!("{}{target}", "../".repeat(depth));
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(relative, path)
    }

    /// Where a function added earlier lives (relative to the root).
    fn device_dir(&self, bdf: &str) -> io::Result<String> {
        self.real_path(&format!("bus/pci/devices/{bdf}"))
    }

    /// Where the link `rel` leads, relative to the root.
    fn real_path(&self, rel: &str) -> io::Result<String> {
        let real = std::fs::canonicalize(self.root.join(rel))?;
        let root = std::fs::canonicalize(&self.root)?;
        Ok(real
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_string_lossy()
            .into_owned())
    }

    /// Adds a PCI function with its netdev and RDMA device under the fixtures' usual bridge;
    /// returns its device directory.
    pub fn pci_function(&mut self, f: &PciFunction) -> io::Result<String> {
        self.pci_function_under(BRIDGE, f)
    }

    /// PCI bridges (class 0604) along `path`, e.g. `devices/pci0000:17/0000:17:01.0/0000:18:00.0`
    /// (a root port and a switch's upstream port); returns `path`, for functions below it.
    pub fn bridges(&mut self, path: &str) -> io::Result<String> {
        let mut dir = String::new();
        for (i, part) in path.split('/').enumerate() {
            dir = if dir.is_empty() {
                part.to_string()
            } else {
                format!("{dir}/{part}")
            };
            if i >= 2 {
                self.write(&format!("{dir}/class"), "0x060400")?;
                self.write(&format!("{dir}/vendor"), "0x8086")?;
                self.write(&format!("{dir}/device"), "0x0000")?;
                self.link(&format!("bus/pci/devices/{part}"), &dir)?;
            }
        }
        Ok(dir)
    }

    /// Like [`SysfsBuilder::pci_function`], under the bridge directory `parent`.
    pub fn pci_function_under(&mut self, parent: &str, f: &PciFunction) -> io::Result<String> {
        let dev = format!("{parent}/{}", f.bdf);
        self.write(&format!("{dev}/vendor"), &format!("0x{:04x}", f.vendor))?;
        self.write(&format!("{dev}/device"), &format!("0x{:04x}", f.device))?;
        self.write(&format!("{dev}/class"), &format!("0x{:06x}", f.class))?;
        self.write(&format!("{dev}/numa_node"), &f.numa_node.to_string())?;
        self.link(&format!("bus/pci/devices/{}", f.bdf), &dev)?;
        if let Some(driver) = &f.driver {
            self.write(
                &format!("bus/pci/drivers/{driver}/uevent"),
                &format!("DRIVER={driver}"),
            )?;
            self.link(&format!("{dev}/driver"), &format!("bus/pci/drivers/{driver}"))?;
        }
        if let Some(total) = f.sriov_total {
            self.write(&format!("{dev}/sriov_totalvfs"), &total.to_string())?;
            self.write(&format!("{dev}/sriov_numvfs"), "0")?;
        }
        if let Some(nd) = &f.netdev {
            let net = format!("{dev}/net/{}", nd.name);
            self.write(&format!("{net}/address"), &nd.mac)?;
            self.write(&format!("{net}/mtu"), &nd.mtu.to_string())?;
            self.write(&format!("{net}/operstate"), nd.operstate)?;
            self.write(&format!("{net}/speed"), &nd.speed.to_string())?;
            self.write(&format!("{net}/type"), &nd.arp_type.to_string())?;
            self.write(&format!("{net}/dev_port"), &nd.dev_port.to_string())?;
            self.write(&format!("{net}/uevent"), &format!("INTERFACE={}", nd.name))?;
            if let Some(port) = &nd.phys_port_name {
                self.write(&format!("{net}/phys_port_name"), port)?;
            }
            self.link(&format!("{net}/device"), &dev)?;
            self.link(&format!("class/net/{}", nd.name), &net)?;
        }
        if let Some(rdma) = &f.rdma {
            self.rdma(rdma, Some(&dev))?;
        }
        Ok(dev)
    }

    /// An RDMA device under `parent` (a PCI device directory), or a software one (Soft-RoCE).
    pub fn rdma(&mut self, rdma: &Rdma, parent: Option<&str>) -> io::Result<()> {
        let base = parent.map_or_else(|| "devices/virtual".to_string(), str::to_string);
        let dir = format!("{base}/infiniband/{}", rdma.name);
        self.write(&format!("{dir}/node_guid"), &rdma.node_guid)?;
        self.write(&format!("{dir}/node_type"), "1: CA")?;
        if let Some(parent) = parent {
            self.link(&format!("{dir}/device"), parent)?;
        }
        for (i, port) in rdma.ports.iter().enumerate() {
            let p = format!("{dir}/ports/{}", i + 1);
            self.write(&format!("{p}/state"), port.state)?;
            let phys = if port.state.ends_with("ACTIVE") {
                "5: LinkUp"
            } else {
                "3: Disabled"
            };
            self.write(&format!("{p}/phys_state"), phys)?;
            self.write(&format!("{p}/link_layer"), port.link_layer)?;
            self.write(&format!("{p}/rate"), port.rate)?;
            if let Some(nd) = &port.gid_netdev {
                self.write(&format!("{p}/gid_attrs/ndevs/0"), nd)?;
                self.write(&format!("{p}/gid_attrs/types/0"), "IB/RoCE v1")?;
            }
        }
        self.link(&format!("class/infiniband/{}", rdma.name), &dir)?;
        let uverbs = format!("uverbs{}", rdma.uverbs);
        self.char_device(
            &base,
            "infiniband_verbs",
            &uverbs,
            &rdma.name,
            &format!("231:{}", 192 + rdma.uverbs),
        )?;
        for m in &rdma.mad {
            self.char_device(
                &base,
                "infiniband_mad",
                &format!("umad{m}"),
                &rdma.name,
                &format!("231:{m}"),
            )?;
            self.char_device(
                &base,
                "infiniband_mad",
                &format!("issm{m}"),
                &rdma.name,
                &format!("231:{}", 64 + m),
            )?;
        }
        Ok(())
    }

    fn char_device(&self, base: &str, class: &str, node: &str, ibdev: &str, devno: &str) -> io::Result<()> {
        let dir = format!("{base}/{class}/{node}");
        self.write(&format!("{dir}/ibdev"), ibdev)?;
        self.write(&format!("{dir}/dev"), devno)?;
        self.link(&format!("class/{class}/{node}"), &dir)
    }

    /// The global `/dev/infiniband/rdma_cm` (module rdma_ucm).
    pub fn rdma_cm(&mut self) -> io::Result<()> {
        self.write("devices/virtual/misc/rdma_cm/dev", "10:58")?;
        self.link("class/misc/rdma_cm", "devices/virtual/misc/rdma_cm")
    }

    /// Creates VFs of `pf_bdf` (sibling functions, `virtfnN` and `physfn` links, `sriov_numvfs`).
    pub fn vfs(&mut self, pf_bdf: &str, vfs: &[PciFunction]) -> io::Result<()> {
        let pf = self.device_dir(pf_bdf)?;
        let parent = pf
            .rsplit_once('/')
            .map_or(BRIDGE.to_string(), |(p, _)| p.to_string());
        for (i, vf) in vfs.iter().enumerate() {
            let dev = self.pci_function_under(&parent, vf)?;
            self.link(&format!("{pf}/virtfn{i}"), &dev)?;
            self.link(&format!("{dev}/physfn"), &pf)?;
        }
        self.write(&format!("{pf}/sriov_numvfs"), &vfs.len().to_string())
    }

    /// A bond of existing netdevs, with VLAN sub-interfaces.
    pub fn bond(&mut self, name: &str, mode: &str, slaves: &[&str], vlans: &[(&str, u16)]) -> io::Result<()> {
        let dir = format!("devices/virtual/net/{name}");
        self.write(&format!("{dir}/bonding/mode"), mode)?;
        self.write(&format!("{dir}/bonding/slaves"), &slaves.join(" "))?;
        self.write(
            &format!("{dir}/uevent"),
            &format!("DEVTYPE=bond\nINTERFACE={name}"),
        )?;
        self.write(&format!("{dir}/type"), "1")?;
        self.link(&format!("class/net/{name}"), &dir)?;
        for slave in slaves {
            let slave_dir = self.resolve_class_net(slave)?;
            self.link(&format!("{slave_dir}/master"), &dir)?;
            self.link(&format!("{slave_dir}/upper_{name}"), &dir)?;
            self.link(&format!("{dir}/lower_{slave}"), &slave_dir)?;
        }
        for (vlan, id) in vlans {
            let vdir = format!("devices/virtual/net/{vlan}");
            self.write(
                &format!("{vdir}/uevent"),
                &format!("DEVTYPE=vlan\nINTERFACE={vlan}\nVLAN_ID={id}"),
            )?;
            self.write(&format!("{vdir}/type"), "1")?;
            self.link(&format!("class/net/{vlan}"), &vdir)?;
            self.link(&format!("{vdir}/lower_{name}"), &dir)?;
            self.link(&format!("{dir}/upper_{vlan}"), &vdir)?;
        }
        Ok(())
    }

    /// A virtual netdev (veth, bridge, ...): present in `class/net`, never a NIC.
    pub fn virtual_netdev(&mut self, name: &str, devtype: Option<&str>) -> io::Result<()> {
        let dir = format!("devices/virtual/net/{name}");
        let uevent = devtype.map_or(format!("INTERFACE={name}"), |t| {
            format!("DEVTYPE={t}\nINTERFACE={name}")
        });
        self.write(&format!("{dir}/uevent"), &uevent)?;
        self.write(&format!("{dir}/type"), "1")?;
        self.link(&format!("class/net/{name}"), &dir)
    }

    fn resolve_class_net(&self, name: &str) -> io::Result<String> {
        self.real_path(&format!("class/net/{name}"))
    }

    /// CPUs, NUMA nodes with their memory (KiB), and the RDMA netns mode module parameter.
    pub fn node(
        &mut self,
        cpus: &str,
        numa_mem_kib: &[u64],
        rdma_netns_shared: Option<bool>,
    ) -> io::Result<()> {
        self.write("devices/system/cpu/online", cpus)?;
        for (i, kib) in numa_mem_kib.iter().enumerate() {
            self.write(
                &format!("devices/system/node/node{i}/meminfo"),
                &format!(
                    "Node {i} MemTotal:       {kib} kB\nNode {i} MemFree:        {} kB",
                    kib / 2
                ),
            )?;
        }
        if let Some(shared) = rdma_netns_shared {
            self.write(
                "module/ib_core/parameters/netns_mode",
                if shared { "Y" } else { "N" },
            )?;
        }
        Ok(())
    }

    /// Any other sysfs file, e.g. to make one malformed.
    pub fn file(&mut self, rel: &str, content: &str) -> io::Result<()> {
        self.write(rel, content)
    }
}

/// The committed fixture trees, by name (see `tests/fixtures/sysfs/`).
pub const FIXTURES: [&str; 5] = ["cx6dx", "e810", "cx7-ib", "bond", "gpu-nic"];

fn mac(prefix: &str, i: usize) -> String {
    format!("{prefix}:{:02x}", i)
}

/// A ConnectX-6 Dx dual port 100GbE with RoCE on both ports and VFs (RoCE on VFs too).
fn cx6dx(b: &mut SysfsBuilder) -> io::Result<()> {
    b.node("0-63", &[263_921_612, 264_201_004], Some(true))?;
    b.rdma_cm()?;
    for port in 0..2u32 {
        let bdf = format!("0000:3b:00.{port}");
        let name = format!("ens1f{port}np{port}");
        let mut nd = Netdev::ether(&name, &mac("b8:ce:f6:4a:1c", 0x20 + port as usize), 100_000);
        nd.mtu = 9000;
        nd.dev_port = 0;
        nd.phys_port_name = Some(format!("p{port}"));
        let mut f = PciFunction::nic(&bdf, 0x15b3, 0x101d, "mlx5_core", 0, Some(nd));
        f.sriov_total = Some(8);
        f.rdma = Some(Rdma {
            node_guid: format!("b8ce:f603:004a:1c2{port}"),
            ..roce(&format!("mlx5_{port}"), &name, port)
        });
        b.pci_function(&f)?;
    }
    for port in 0..2u32 {
        let vfs: Vec<PciFunction> = (0..4u32)
            .map(|i| {
                let bdf = format!("0000:3b:{port:02x}.{}", 2 + i);
                // ens1f1's last VF is bound to vfio-pci for a DPDK workload: no netdev, no RDMA.
                if port == 1 && i == 3 {
                    return PciFunction {
                        driver: Some("vfio-pci".into()),
                        ..PciFunction::nic(&bdf, 0x15b3, 0x101e, "", 0, None)
                    };
                }
                let name = format!("ens1f{port}v{i}");
                let nd = Netdev::ether(&name, &mac(&format!("02:00:00:00:0{port}"), i as usize), 100_000);
                let mut vf = PciFunction::nic(&bdf, 0x15b3, 0x101e, "mlx5_core", 0, Some(nd));
                let index = 2 + port * 4 + i;
                vf.rdma = Some(Rdma {
                    node_guid: format!("0000:0000:0000:{:04x}", 0x100 + port * 4 + i),
                    ..roce(&format!("mlx5_{index}"), &name, index)
                });
                vf
            })
            .collect();
        b.vfs(&format!("0000:3b:00.{port}"), &vfs)?;
    }
    Ok(())
}

/// An Intel E810-XXVDA2 (ice) with VFs on port 0 and port 1 down; no RDMA.
fn e810(b: &mut SysfsBuilder) -> io::Result<()> {
    b.node("0-31", &[131_915_404, 132_036_220], None)?;
    let p0 = Netdev::ether("ens2f0", "40:a6:b7:3c:00:10", 25_000);
    let p1 = Netdev {
        dev_port: 0,
        ..Netdev::ether("ens2f1", "40:a6:b7:3c:00:11", -1)
    };
    for (i, nd) in [p0, p1].into_iter().enumerate() {
        let mut f = PciFunction::nic(&format!("0000:5e:00.{i}"), 0x8086, 0x159b, "ice", 1, Some(nd));
        f.sriov_total = Some(128);
        b.pci_function(&f)?;
    }
    let vfs: Vec<PciFunction> = (0..2)
        .map(|i| {
            let nd = Netdev::ether(&format!("ens2f0v{i}"), &mac("52:54:00:e8:10", i), 25_000);
            PciFunction::nic(&format!("0000:5e:01.{i}"), 0x8086, 0x1889, "iavf", 1, Some(nd))
        })
        .collect();
    b.vfs("0000:5e:00.0", &vfs)
}

/// A ConnectX-7 in InfiniBand mode: IPoIB netdev, NDR port, SR-IOV capable with no VFs yet.
fn cx7_ib(b: &mut SysfsBuilder) -> io::Result<()> {
    b.node("0-127", &[527_843_224, 528_402_008], Some(false))?;
    b.rdma_cm()?;
    let nd = Netdev {
        name: "ibp59s0".into(),
        mac: "00:00:10:49:fe:80:00:00:00:00:00:00:94:6d:ae:03:00:a1:b2:c3".into(),
        mtu: 4092,
        operstate: "up",
        speed: 400_000,
        arp_type: 32,
        dev_port: 0,
        phys_port_name: None,
    };
    let mut f = PciFunction::nic("0000:3b:00.0", 0x15b3, 0x1021, "mlx5_core", 0, Some(nd));
    f.class = 0x020700;
    f.sriov_total = Some(16);
    f.rdma = Some(Rdma {
        name: "mlx5_0".into(),
        node_guid: "946d:ae03:00a1:b2c3".into(),
        ports: vec![RdmaPort {
            state: "4: ACTIVE",
            link_layer: "InfiniBand",
            rate: "400 Gb/sec (4X NDR)",
            gid_netdev: None,
        }],
        uverbs: 0,
        mad: vec![0],
    });
    b.pci_function(&f)?;
    Ok(())
}

/// Two ConnectX-5 ports in an LACP bond with two VLANs, next to things that are not NICs: a
/// bridge, a veth, a host bridge PCI function, and a NIC function with no driver bound.
fn bond(b: &mut SysfsBuilder) -> io::Result<()> {
    b.node("0-15", &[65_843_224], None)?;
    for i in 0..2u32 {
        let nd = Netdev {
            mtu: 9000,
            ..Netdev::ether(&format!("enp94s0f{i}"), &mac("0c:42:a1:7e:5d", 0x50), 25_000)
        };
        b.pci_function(&PciFunction::nic(
            &format!("0000:5e:00.{i}"),
            0x15b3,
            0x1017,
            "mlx5_core",
            0,
            Some(nd),
        ))?;
    }
    b.bond(
        "bond0",
        "802.3ad 4",
        &["enp94s0f0", "enp94s0f1"],
        &[("bond0.100", 100), ("bond0.200", 200)],
    )?;
    b.virtual_netdev("br0", Some("bridge"))?;
    b.virtual_netdev("veth1a2b3c", None)?;
    let host_bridge = PciFunction {
        class: 0x060000,
        ..PciFunction::nic("0000:00:00.0", 0x8086, 0x09a2, "", -1, None)
    };
    b.pci_function(&PciFunction {
        driver: None,
        ..host_bridge
    })?;
    let unbound = PciFunction::nic("0000:af:00.0", 0x8086, 0x1592, "", -1, None);
    b.pci_function(&PciFunction {
        driver: None,
        ..unbound
    })?;
    Ok(())
}

/// An AI training node's slice: GPUs and RoCE NICs on four PCIe root complexes over two NUMA
/// nodes. NUMA 0: an H100 and a ConnectX-7 (2 VFs with RoCE) under one PCIe switch (root
/// pci0000:17), and a second H100 under its own switch (pci0000:38). NUMA 1: a ConnectX-7 (2 VFs
/// with RoCE) under a root port of pci0000:9a with an H100 on another root port there, and an
/// H100 on pci0000:ab. And the BMC's
/// VGA console, which is not a GPU.
fn gpu_nic(b: &mut SysfsBuilder) -> io::Result<()> {
    b.node("0-63", &[263_921_612, 264_201_004], Some(true))?;
    b.rdma_cm()?;
    let h100 = |bdf: &str, numa: i32| PciFunction {
        class: 0x030200,
        driver: None,
        ..PciFunction::nic(bdf, 0x10de, 0x2330, "", numa, None)
    };
    let cx7 = |bdf: &str, numa: i32, name: &str, mac_base: usize, rdma: u32| {
        let mut f = PciFunction::nic(
            bdf,
            0x15b3,
            0x1021,
            "mlx5_core",
            numa,
            Some(Netdev::ether(name, &mac("94:6d:ae:3c:00", mac_base), 400_000)),
        );
        f.sriov_total = Some(16);
        f.rdma = Some(roce(&format!("mlx5_{rdma}"), name, rdma));
        f
    };
    let switch0 = b.bridges("devices/pci0000:17/0000:17:01.0/0000:18:00.0")?;
    let port = b.bridges(&format!("{switch0}/0000:19:00.0"))?;
    b.pci_function_under(&port, &h100("0000:1a:00.0", 0))?;
    let port = b.bridges(&format!("{switch0}/0000:19:01.0"))?;
    b.pci_function_under(&port, &cx7("0000:1b:00.0", 0, "ens1np0", 0x10, 0))?;
    // Two VFs with RoCE: PCI functions .2 and .3 of the PF's bus.
    let vfs = |bus: &str, prefix: &str, numa: i32, rdma: u32| -> Vec<PciFunction> {
        (0..2u32)
            .map(|i| {
                let vf_name = format!("{prefix}{i}");
                let mut vf = PciFunction::nic(
                    &format!("0000:{bus}:00.{}", i + 2),
                    0x15b3,
                    0x101e,
                    "mlx5_core",
                    numa,
                    Some(Netdev::ether(
                        &vf_name,
                        &mac(&format!("02:6d:ae:{bus}:01"), i as usize),
                        400_000,
                    )),
                );
                vf.rdma = Some(roce(&format!("mlx5_{}", rdma + i), &vf_name, rdma + i));
                vf
            })
            .collect()
    };
    b.vfs("0000:1b:00.0", &vfs("1b", "ens1f0v", 0, 2))?;
    let port = b.bridges("devices/pci0000:38/0000:38:01.0/0000:39:00.0/0000:3a:00.0")?;
    b.pci_function_under(&port, &h100("0000:3b:00.0", 0))?;
    let port = b.bridges("devices/pci0000:9a/0000:9a:01.0")?;
    b.pci_function_under(&port, &cx7("0000:9b:00.0", 1, "ens2np0", 0x20, 1))?;
    b.vfs("0000:9b:00.0", &vfs("9b", "ens2f0v", 1, 4))?;
    let port = b.bridges("devices/pci0000:9a/0000:9a:02.0")?;
    b.pci_function_under(&port, &h100("0000:9c:00.0", 1))?;
    let port = b.bridges("devices/pci0000:ab/0000:ab:01.0")?;
    b.pci_function_under(&port, &h100("0000:ac:00.0", 1))?;
    let bmc = PciFunction {
        class: 0x030000,
        driver: Some("ast".into()),
        ..PciFunction::nic("0000:03:00.0", 0x1a03, 0x2000, "", -1, None)
    };
    let port = b.bridges("devices/pci0000:00/0000:00:1c.0/0000:02:00.0")?;
    b.pci_function_under(&port, &bmc)?;
    Ok(())
}

/// Writes fixture `name` under `root` (which must not exist yet).
pub fn build_fixture(name: &str, root: &Path) -> io::Result<()> {
    let mut b = SysfsBuilder::new(root)?;
    match name {
        "cx6dx" => cx6dx(&mut b),
        "e810" => e810(&mut b),
        "cx7-ib" => cx7_ib(&mut b),
        "bond" => bond(&mut b),
        "gpu-nic" => gpu_nic(&mut b),
        other => Err(io::Error::other(format!("no fixture {other}"))),
    }
}

/// `pfs` PFs with `vfs_per_pf` VFs each and RoCE on every PF and VF (for the scan benchmark).
pub fn build_large(root: &Path, pfs: u32, vfs_per_pf: u32) -> io::Result<()> {
    let mut b = SysfsBuilder::new(root)?;
    b.node("0-127", &[527_843_224, 528_402_008], Some(true))?;
    b.rdma_cm()?;
    let mut rdma_index = 0;
    for p in 0..pfs {
        let bdf = format!("0000:{:02x}:00.0", 0x3b + p);
        let name = format!("ens{p}np0");
        let mut f = PciFunction::nic(
            &bdf,
            0x15b3,
            0x101d,
            "mlx5_core",
            (p % 2) as i32,
            Some(Netdev::ether(&name, &mac("b8:ce:f6:00:00", p as usize), 100_000)),
        );
        f.sriov_total = Some(vfs_per_pf);
        f.rdma = Some(roce(&format!("mlx5_{rdma_index}"), &name, rdma_index));
        rdma_index += 1;
        b.pci_function(&f)?;
        let vfs: Vec<PciFunction> = (0..vfs_per_pf)
            .map(|i| {
                let vf_name = format!("ens{p}v{i}");
                let bdf = format!("0000:{:02x}:{:02x}.{}", 0x3b + p, 1 + i / 8, i % 8);
                let mut vf = PciFunction::nic(
                    &bdf,
                    0x15b3,
                    0x101e,
                    "mlx5_core",
                    (p % 2) as i32,
                    Some(Netdev::ether(
                        &vf_name,
                        &mac(&format!("02:00:00:{p:02x}:00"), i as usize),
                        100_000,
                    )),
                );
                vf.rdma = Some(roce(
                    &format!("mlx5_{}", rdma_index + i),
                    &vf_name,
                    rdma_index + i,
                ));
                vf
            })
            .collect();
        rdma_index += vfs_per_pf;
        b.vfs(&bdf, &vfs)?;
    }
    Ok(())
}

fn roce(name: &str, netdev: &str, index: u32) -> Rdma {
    Rdma {
        name: name.into(),
        node_guid: format!("0000:0000:0000:{index:04x}"),
        ports: vec![RdmaPort {
            state: "4: ACTIVE",
            link_layer: "Ethernet",
            rate: "100 Gb/sec (4X EDR)",
            gid_netdev: Some(netdev.into()),
        }],
        uverbs: index,
        mad: vec![index],
    }
}
