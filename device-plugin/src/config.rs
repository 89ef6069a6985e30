//! Which devices become which kubelet resources: a list of resources, each with a kind and
//! selectors, written like the SR-IOV device plugin's (`resourceList`) and the RDMA shared device
//! plugin's (`rdmaHcaMax`) configs. A device belongs to the first resource that selects it.

use serde::Deserialize;

pub const DEFAULT_PREFIX: &str = "spidernet.io";
/// Slots a shared RDMA resource advertises when the config does not say (like `rdmaHcaMax`).
pub const DEFAULT_RDMA_HCA_MAX: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Exclusive devices: each VF (or PF without VFs) is one device.
    #[default]
    Vf,
    /// Shared RDMA: `rdmaHcaMax` interchangeable slots over the matched HCAs.
    Rdma,
}

/// Who hands a resource's devices to pods: the device plugin (kubelet extended resources), or
/// the DRA driver (ResourceSlices and claims). A device has one owner; the DRA driver publishes
/// exactly the devices no device-plugin resource holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Allocation {
    #[default]
    DevicePlugin,
    Dra,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selectors {
    #[serde(default)]
    pub vendors: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub drivers: Vec<String>,
    /// PF netdev names, optionally with VF index ranges: `ens1f0#0,2-7`.
    #[serde(default)]
    pub pf_names: Vec<String>,
    /// PF PCI addresses, optionally with VF index ranges: `0000:86:00.0#0-1`.
    #[serde(default)]
    pub root_devices: Vec<String>,
    #[serde(default)]
    pub pci_addresses: Vec<String>,
    /// `ether` or `infiniband`.
    #[serde(default)]
    pub link_types: Vec<String>,
    #[serde(default)]
    pub is_rdma: Option<bool>,
    #[serde(default)]
    pub numa_nodes: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSpec {
    /// `name` (prefixed with `resourcePrefix`) or a full `prefix/name`.
    pub resource_name: String,
    #[serde(default)]
    pub resource_prefix: Option<String>,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub rdma_hca_max: Option<u32>,
    #[serde(default)]
    pub selectors: Selectors,
    /// `devicePlugin` (default) or `dra`: the devices this resource selects go to DRA claims
    /// instead, and the resource is not advertised to kubelet.
    #[serde(default)]
    pub allocation: Allocation,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(alias = "resourceList")]
    pub resources: Vec<ResourceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Decode(String),
    #[error("config: resource {0:?} is defined twice")]
    Duplicate(String),
    #[error("config: resource name {0:?} is invalid (want [prefix/]name, letters, digits, '-', '_', '.')")]
    BadName(String),
    #[error("config: selector {0:?} is invalid: {1}")]
    BadSelector(String, String),
    #[error("config: resource {0:?}: rdmaHcaMax must be 1 to {MAX_RDMA_HCA_MAX}, not {1}")]
    BadHcaMax(String, u32),
}

/// The most slots a shared RDMA resource may advertise: each is a device kubelet tracks and
/// every ListAndWatch carries (the RDMA shared device plugin's examples use up to 1000).
pub const MAX_RDMA_HCA_MAX: u32 = 1000;

impl Default for Config {
    /// `spidernet.io/rdma` over every RDMA device found.
    fn default() -> Config {
        Config {
            resources: vec![ResourceSpec::rdma("rdma", Selectors::default())],
        }
    }
}

impl Config {
    /// The resources SpiderNetworkNodePolicies name (`resourceName`): the VFs of the PFs each
    /// selects; vfio-pci VFs when its `deviceType` says so, RDMA-capable ones when `isRdma`.
    pub fn from_policies(policies: &[spiderpool_api::policy::SpiderNetworkNodePolicy]) -> Vec<ResourceSpec> {
        policies
            .iter()
            .filter_map(|p| {
                let name = p.spec.resource_name.clone()?;
                let nic = &p.spec.nic_selector;
                Some(ResourceSpec::vf(
                    &name,
                    Selectors {
                        vendors: nic.vendor.iter().cloned().collect(),
                        pf_names: nic.pf_names.clone(),
                        root_devices: nic.root_devices.clone(),
                        drivers: match p.spec.device_type.as_deref() {
                            Some("vfio-pci") => vec!["vfio-pci".into()],
                            _ => Vec::new(),
                        },
                        is_rdma: p.spec.is_rdma.then_some(true),
                        ..Selectors::default()
                    },
                ))
            })
            .collect()
    }
}

/// A resource name split into the parts kubelet and the env variables use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName {
    pub prefix: String,
    pub name: String,
}

impl ResourceName {
    pub fn full(&self) -> String {
        format!("{}/{}", self.prefix, self.name)
    }

    /// The start of the plugin's socket file names: `<prefix>_<name>`, as the SR-IOV device
    /// plugin names them.
    pub fn socket_stem(&self) -> String {
        format!("{}_{}", self.prefix, self.name)
    }

    /// This process's socket file: `<prefix>_<name>-<instance>.sock`. Each plugin process has its
    /// own, so a successor registers beside its predecessor: kubelets from v1.37 refuse a second
    /// plugin on a socket path that is already connected.
    pub fn socket_file(&self, instance: &str) -> String {
        format!("{}-{instance}.sock", self.socket_stem())
    }

    /// `PCIDEVICE_<PREFIX>_<NAME>`, with `.` and `-` as `_`, upper case.
    pub fn env_name(&self) -> String {
        format!("PCIDEVICE_{}_{}", self.prefix, self.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ResourceSpec {
    /// An exclusive VF resource (prefix `spidernet.io` unless `name` has one).
    pub fn vf(name: &str, selectors: Selectors) -> ResourceSpec {
        ResourceSpec {
            resource_name: name.into(),
            resource_prefix: None,
            kind: Kind::Vf,
            rdma_hca_max: None,
            selectors,
            allocation: Allocation::DevicePlugin,
        }
    }

    /// A shared RDMA resource with the default number of slots.
    pub fn rdma(name: &str, selectors: Selectors) -> ResourceSpec {
        ResourceSpec {
            kind: Kind::Rdma,
            ..ResourceSpec::vf(name, selectors)
        }
    }

    pub fn name(&self) -> Result<ResourceName, ConfigError> {
        let (prefix, name) = match self.resource_name.split_once('/') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (
                self.resource_prefix
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PREFIX.into()),
                self.resource_name.clone(),
            ),
        };
        if !valid_part(&prefix) || !valid_part(&name) {
            return Err(ConfigError::BadName(self.resource_name.clone()));
        }
        Ok(ResourceName { prefix, name })
    }
}

impl Config {
    /// Reads a YAML or JSON document.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Decode(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for r in &self.resources {
            if !seen.insert(r.name()?.full()) {
                return Err(ConfigError::Duplicate(r.name()?.full()));
            }
            for s in r.selectors.pf_names.iter().chain(&r.selectors.root_devices) {
                parse_with_ranges(s)?;
            }
            if let Some(n) = r.rdma_hca_max
                && !(1..=MAX_RDMA_HCA_MAX).contains(&n)
            {
                return Err(ConfigError::BadHcaMax(r.resource_name.clone(), n));
            }
        }
        Ok(())
    }
}

/// Inclusive VF index ranges; `None` means every VF (and the PF itself).
pub type VfRanges = Option<Vec<(u32, u32)>>;

/// `name#0,2-7` → (`name`, Some([0, 2..=7])); `name` → (`name`, None).
pub fn parse_with_ranges(s: &str) -> Result<(String, VfRanges), ConfigError> {
    let bad = |why: &str| ConfigError::BadSelector(s.to_string(), why.to_string());
    let Some((name, ranges)) = s.split_once('#') else {
        return Ok((s.to_string(), None));
    };
    if name.is_empty() {
        return Err(bad("no name before '#'"));
    }
    let mut out = Vec::new();
    for part in ranges.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| bad("VF index is not a number"))?;
        let b: u32 = b.trim().parse().map_err(|_| bad("VF index is not a number"))?;
        if b < a {
            return Err(bad("range ends before it starts"));
        }
        out.push((a, b));
    }
    Ok((name.to_string(), Some(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's example config (ci/full-values.yaml, `agent.devicePlugin.config`) is what the
    /// agent reads from the ConfigMap: it must parse.
    #[test]
    fn the_charts_example_config_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/spiderpool/ci/full-values.yaml"
        );
        let values: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let config = &values["agent"]["devicePlugin"]["config"];
        let text = serde_yaml_ng::to_string(config).unwrap();
        let parsed = Config::parse(&text).unwrap();
        assert_eq!(parsed.resources.len(), 2);
        assert_eq!(parsed.resources[1].kind, Kind::Rdma);
    }

    #[test]
    fn names_sockets_and_env() {
        let spec = |name: &str, prefix: Option<&str>| ResourceSpec {
            resource_name: name.into(),
            resource_prefix: prefix.map(Into::into),
            kind: Kind::Vf,
            rdma_hca_max: None,
            selectors: Selectors::default(),
            allocation: Allocation::DevicePlugin,
        };
        let n = spec("mlx_vfs", None).name().unwrap();
        assert_eq!(n.full(), "spidernet.io/mlx_vfs");
        assert_eq!(n.socket_file("1a2b"), "spidernet.io_mlx_vfs-1a2b.sock");
        assert_eq!(n.env_name(), "PCIDEVICE_SPIDERNET_IO_MLX_VFS");
        assert_eq!(
            spec("intel.com/e810-vf", None).name().unwrap().env_name(),
            "PCIDEVICE_INTEL_COM_E810_VF"
        );
        assert_eq!(
            spec("x", Some("example.org")).name().unwrap().full(),
            "example.org/x"
        );
        assert!(spec("a/b/c", None).name().is_err());
        assert!(spec("", None).name().is_err());
    }

    #[test]
    fn policies_name_vf_resources() {
        let policies = spiderpool_api::policy::parse_documents(
            "kind: SpiderNetworkNodePolicy\nmetadata: {name: a}\nspec:\n  nicSelector: {vendor: '15b3', pfNames: [ens1f0np0]}\n  \
             numVfs: 4\n  deviceType: vfio-pci\n  resourceName: cx6_dpdk\n---\nkind: SpiderNetworkNodePolicy\nmetadata: {name: b}\n\
             spec:\n  mtu: 9000\n",
        )
        .unwrap();
        let specs = Config::from_policies(&policies);
        assert_eq!(specs.len(), 1, "a policy without resourceName feeds no resource");
        assert_eq!(specs[0].name().unwrap().full(), "spidernet.io/cx6_dpdk");
        assert_eq!(specs[0].selectors.pf_names, ["ens1f0np0"]);
        assert_eq!(specs[0].selectors.vendors, ["15b3"]);
        assert_eq!(specs[0].selectors.drivers, ["vfio-pci"]);
    }

    #[test]
    fn parses_yaml_with_selectors_and_rejects_mistakes() {
        let c = Config::parse(
            "resources:\n- resourceName: cx6_vfs\n  selectors: {vendors: ['15b3'], pfNames: ['ens1f0#0,2-3']}\n\
             - resourceName: rdma\n  kind: rdma\n  rdmaHcaMax: 10\n",
        )
        .unwrap();
        assert_eq!(c.resources.len(), 2);
        assert_eq!(c.resources[1].kind, Kind::Rdma);
        assert_eq!(
            parse_with_ranges("ens1f0#0,2-3").unwrap(),
            ("ens1f0".into(), Some(vec![(0, 0), (2, 3)]))
        );
        for bad in [
            "resources:\n- resourceName: a\n- resourceName: a\n",
            "resources:\n- resourceName: a\n  selectors: {pfNames: ['x#3-1']}\n",
            "resources:\n- resourceName: a\n  selectors: {vendor: ['15b3']}\n",
            "resources: 7\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Config::default().resources[0].name().unwrap().full(),
            "spidernet.io/rdma"
        );
    }

    #[test]
    fn rdma_hca_max_is_bounded() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (MAX_RDMA_HCA_MAX, true),
            (MAX_RDMA_HCA_MAX + 1, false),
            (u32::MAX, false),
        ] {
            let text = format!("resources:\n- resourceName: rdma\n  kind: rdma\n  rdmaHcaMax: {n}\n");
            assert_eq!(Config::parse(&text).is_ok(), ok, "rdmaHcaMax {n}");
        }
    }

    #[test]
    fn hostile_configs_are_refused_with_a_reason_and_never_panic() {
        let long_name = format!("resources:\n- resourceName: {}\n", "a".repeat(300));
        let deep = "[".repeat(20_000);
        let cases = [
            (
                "unknown field",
                "resources:\n- resourceName: a\n  resourceNmae: b\n",
            ),
            ("no resources", "{}\n"),
            ("resources a map", "resources: {a: 1}\n"),
            (
                "name with a slash too many",
                "resources:\n- resourceName: a/b/c\n",
            ),
            ("name with a space", "resources:\n- resourceName: 'a b'\n"),
            ("name of 300 characters", long_name.as_str()),
            ("duplicate", "resources:\n- resourceName: a\n- resourceName: a\n"),
            (
                "reversed VF range",
                "resources:\n- resourceName: a\n  selectors: {pfNames: ['eth0#5-2']}\n",
            ),
            (
                "VF range without a name",
                "resources:\n- resourceName: a\n  selectors: {pfNames: ['#0-3']}\n",
            ),
            (
                "VF range of letters",
                "resources:\n- resourceName: a\n  selectors: {pfNames: ['eth0#a-b']}\n",
            ),
            (
                "rdmaHcaMax of u32::MAX",
                "resources:\n- resourceName: a\n  kind: rdma\n  rdmaHcaMax: 4294967295\n",
            ),
            (
                "rdmaHcaMax negative",
                "resources:\n- resourceName: a\n  kind: rdma\n  rdmaHcaMax: -1\n",
            ),
            ("unknown kind", "resources:\n- resourceName: a\n  kind: gpu\n"),
            ("not YAML", "\u{0}: ["),
            ("deep nesting", deep.as_str()),
        ];
        for (what, text) in cases {
            match Config::parse(text) {
                Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
                Ok(c) => panic!("{what}: accepted {c:?}"),
            }
        }
    }
}
