//! The `ipam` section of a netconf: pools inline or from a file of SpiderIPPool manifests, the
//! default pool lists per family, and where the store lives.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use spiderpool_cni::agent::DEFAULT_AGENT_SOCKET;
use spiderpool_cni::paths::{self, PathKind, ReadError};

use crate::pool::{Pool, PoolError, PoolSpec};
use crate::range::Family;

pub const DEFAULT_DATA_DIR: &str = "/run/spiderpool";

/// The largest pool file read (a thousand pools of 64 ranges each fit in well under this).
pub const POOL_FILE_LIMIT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("netconf has no \"ipam\" section")]
    NoIpam,
    #[error("ipam section: {0}")]
    Decode(String),
    #[error("poolFile {path}: {why}")]
    PoolFile { path: PathBuf, why: String },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("pool {0:?} is defined twice")]
    DuplicatePool(String),
    #[error("pools {a} and {b} overlap at {ip}")]
    PoolsOverlap { a: String, b: String, ip: String },
    #[error("{key} names pool {pool:?}, which is not defined")]
    UnknownPool { key: &'static str, pool: String },
    #[error("{key} names pool {pool:?}, which is an IPv{actual} pool")]
    WrongFamily {
        key: &'static str,
        pool: String,
        actual: u8,
    },
    #[error(
        "no pools: standalone mode needs \"pools\" or \"poolFile\" in the ipam section \
         (cluster mode through the agent at {0} is not available in this build)"
    )]
    NoPools(String),
    #[error("dataDir must be an absolute path, not {0:?}")]
    RelativeDataDir(PathBuf),
    /// A path outside the trusted directories (see [`spiderpool_cni::paths`]).
    #[error("{0}")]
    Untrusted(String),
}

fn confined(field: &str, path: &Path, kind: PathKind) -> Result<PathBuf, ConfigError> {
    paths::confine(field, path, kind).map_err(|e| ConfigError::Untrusted(e.msg))
}

/// Spiderpool writes the default pool lists as JSON arrays; a single string is accepted too.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct IpamWire {
    #[serde(default)]
    pools: Vec<PoolSpec>,
    #[serde(rename = "poolFile", default)]
    pool_file: Option<PathBuf>,
    #[serde(default)]
    default_ipv4_ippool: OneOrMany,
    #[serde(default)]
    default_ipv6_ippool: OneOrMany,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    clean_gateway: bool,
    #[serde(default)]
    ipam_unix_socket_path: Option<String>,
}

/// Cluster mode: the netconf names no pools, so the node agent chooses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub socket: PathBuf,
    pub default_ipv4_pools: Vec<String>,
    pub default_ipv6_pools: Vec<String>,
    pub clean_gateway: bool,
}

impl ClusterConfig {
    /// `Some` when the section has neither `pools` nor `poolFile`.
    pub fn load(netconf: &Value) -> Result<Option<ClusterConfig>, ConfigError> {
        let wire = wire(netconf)?;
        if !wire.pools.is_empty() || wire.pool_file.is_some() {
            return Ok(None);
        }
        let socket = wire
            .ipam_unix_socket_path
            .map_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET), PathBuf::from);
        Ok(Some(ClusterConfig {
            socket: confined("ipam_unix_socket_path", &socket, PathKind::AgentSocket)?,
            default_ipv4_pools: wire.default_ipv4_ippool.into_vec(),
            default_ipv6_pools: wire.default_ipv6_ippool.into_vec(),
            clean_gateway: wire.clean_gateway,
        }))
    }
}

/// The validated `ipam` section.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub data_dir: PathBuf,
    /// Candidate pools per family, in the order to try them; an empty list means the family
    /// is not configured.
    pub ipv4: Vec<Pool>,
    pub ipv6: Vec<Pool>,
    /// Spiderpool's `clean_gateway`: leave the gateway out of the result.
    pub clean_gateway: bool,
}

impl IpamConfig {
    /// Reads and validates the whole section (ADD, CHECK, STATUS).
    pub fn load(netconf: &Value) -> Result<IpamConfig, ConfigError> {
        let wire = wire(netconf)?;
        let data_dir = data_dir(&wire)?;
        let mut pools = Vec::new();
        for spec in &wire.pools {
            pools.push(Pool::from_spec(spec, None)?);
        }
        if let Some(path) = &wire.pool_file {
            pools.extend(load_pool_file(path)?);
        }
        if pools.is_empty() {
            let socket = wire
                .ipam_unix_socket_path
                .clone()
                .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into());
            return Err(ConfigError::NoPools(socket));
        }
        for (i, a) in pools.iter().enumerate() {
            for b in &pools[i + 1..] {
                if a.name == b.name {
                    return Err(ConfigError::DuplicatePool(a.name.clone()));
                }
                if let Some(ip) = a.overlap_with(b) {
                    return Err(ConfigError::PoolsOverlap {
                        a: a.name.clone(),
                        b: b.name.clone(),
                        ip: ip.to_string(),
                    });
                }
            }
        }
        let ipv4 = candidates(
            &pools,
            Family::V4,
            "default_ipv4_ippool",
            wire.default_ipv4_ippool.into_vec(),
        )?;
        let ipv6 = candidates(
            &pools,
            Family::V6,
            "default_ipv6_ippool",
            wire.default_ipv6_ippool.into_vec(),
        )?;
        Ok(IpamConfig {
            data_dir,
            ipv4,
            ipv6,
            clean_gateway: wire.clean_gateway,
        })
    }

    /// Only where the store is: DEL and GC must work even when the pools no longer validate.
    pub fn load_data_dir(netconf: &Value) -> Result<PathBuf, ConfigError> {
        data_dir(&wire(netconf)?)
    }

    /// The configured families with their candidate pools, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = (Family, &[Pool])> {
        [
            (Family::V4, self.ipv4.as_slice()),
            (Family::V6, self.ipv6.as_slice()),
        ]
        .into_iter()
        .filter(|(_, pools)| !pools.is_empty())
    }
}

fn wire(netconf: &Value) -> Result<IpamWire, ConfigError> {
    let ipam = netconf.get("ipam").ok_or(ConfigError::NoIpam)?;
    serde_json::from_value(ipam.clone()).map_err(|e| ConfigError::Decode(e.to_string()))
}

fn data_dir(wire: &IpamWire) -> Result<PathBuf, ConfigError> {
    let dir = wire
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if !dir.is_absolute() {
        return Err(ConfigError::RelativeDataDir(dir));
    }
    confined("dataDir", &dir, PathKind::Data)
}

/// The pools to try for one family: the named defaults in the order written; without names, the
/// pools marked `default: true`, or else every pool of the family in the order written.
fn candidates(
    pools: &[Pool],
    family: Family,
    key: &'static str,
    names: Vec<String>,
) -> Result<Vec<Pool>, ConfigError> {
    if names.is_empty() {
        let of_family: Vec<&Pool> = pools.iter().filter(|p| p.family == family).collect();
        let marked: Vec<&Pool> = of_family.iter().copied().filter(|p| p.default).collect();
        let chosen = if marked.is_empty() { of_family } else { marked };
        return Ok(chosen.into_iter().cloned().collect());
    }
    names
        .into_iter()
        .map(|name| {
            let pool = pools
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| ConfigError::UnknownPool {
                    key,
                    pool: name.clone(),
                })?;
            if pool.family != family {
                return Err(ConfigError::WrongFamily {
                    key,
                    pool: name,
                    actual: pool.family.number(),
                });
            }
            Ok(pool.clone())
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Option<PoolSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
}

/// Where in the file a YAML error is, without the error's text: that can quote the file, and a
/// CNI error ends up in pod events.
fn yaml_place(index: usize, e: &serde_yaml_ng::Error) -> String {
    match e.location() {
        Some(at) => format!(
            "document {} is not a SpiderIPPool manifest (line {}, column {})",
            index + 1,
            at.line(),
            at.column()
        ),
        None => format!("document {} is not a SpiderIPPool manifest", index + 1),
    }
}

/// Reads SpiderIPPool manifests (YAML, several documents); other kinds are skipped. The file must
/// be a regular file inside a trusted directory, of at most [`POOL_FILE_LIMIT`] bytes.
pub fn load_pool_file(path: &Path) -> Result<Vec<Pool>, ConfigError> {
    let err = |why: String| ConfigError::PoolFile {
        path: path.to_path_buf(),
        why,
    };
    let resolved = confined("poolFile", path, PathKind::PoolFile)?;
    let bytes = paths::read_bounded(&resolved, POOL_FILE_LIMIT).map_err(|e| match e {
        ReadError::Io(io) => err(io.kind().to_string()),
        other => err(other.to_string()),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    parse_pool_manifests(&text, path)
}

/// The SpiderIPPools of a pool file's text (`path` names it in errors).
pub fn parse_pool_manifests(text: &str, path: &Path) -> Result<Vec<Pool>, ConfigError> {
    let err = |why: String| ConfigError::PoolFile {
        path: path.to_path_buf(),
        why,
    };
    let mut pools = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| err(yaml_place(index, &e)))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let manifest: Manifest = serde_yaml_ng::from_value(value).map_err(|e| err(yaml_place(index, &e)))?;
        match manifest.kind.as_deref() {
            Some("SpiderIPPool") => {}
            Some(_) => continue,
            None => return Err(err(format!("document {} has no kind", index + 1))),
        }
        let spec = manifest
            .spec
            .ok_or_else(|| err(format!("document {} has no spec", index + 1)))?;
        let name = manifest
            .metadata
            .name
            .ok_or_else(|| err(format!("document {} has no metadata.name", index + 1)))?;
        pools.push(Pool::from_spec(&spec, Some(&name))?);
    }
    Ok(pools)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issue_example() -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "ipam": {
            "type": "spiderpool",
            "pools": [
                {"name": "v4a", "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.3.250"],
                 "excludeIPs": ["10.6.0.20"], "gateway": "10.6.0.1",
                 "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
                {"name": "v6a", "subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::ffff"], "gateway": "fd00:6::1"}
            ],
            "default_ipv4_ippool": ["v4a"], "default_ipv6_ippool": ["v6a"], "dataDir": "/run/spiderpool"}})
    }

    #[test]
    fn reads_the_issue_example() {
        let c = IpamConfig::load(&issue_example()).unwrap();
        assert_eq!(c.ipv4.len(), 1);
        assert_eq!(c.ipv6[0].name, "v6a");
        assert_eq!(c.data_dir, PathBuf::from("/run/spiderpool"));
        assert_eq!(c.families().count(), 2);
    }

    #[test]
    fn without_defaults_every_pool_of_a_family_is_a_candidate_in_order() {
        let c = IpamConfig::load(&json!({"ipam": {"pools": [
            {"name": "b", "subnet": "10.1.0.0/24", "ips": ["10.1.0.10"]},
            {"name": "a", "subnet": "10.2.0.0/24", "ips": ["10.2.0.10"]},
        ]}}))
        .unwrap();
        let names: Vec<&str> = c.ipv4.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(c.ipv6.is_empty());
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        // `default: true` narrows the list.
        let c = IpamConfig::load(&json!({"ipam": {"pools": [
            {"name": "b", "subnet": "10.1.0.0/24", "ips": ["10.1.0.10"]},
            {"name": "a", "subnet": "10.2.0.0/24", "ips": ["10.2.0.10"], "default": true},
        ]}}))
        .unwrap();
        assert_eq!(c.ipv4[0].name, "a");
        assert_eq!(c.ipv4.len(), 1);
    }

    #[test]
    fn config_errors() {
        let pool = |name: &str, subnet: &str, ip: &str| json!({"name": name, "subnet": subnet, "ips": [ip]});
        let cases = vec![
            (json!({}), "no \"ipam\""),
            (json!({"ipam": {"pools": "x"}}), "ipam section"),
            (json!({"ipam": {}}), "no pools"),
            (
                json!({"ipam": {"pools": [pool("a", "10.1.0.0/24", "10.1.0.9")], "dataDir": "run"}}),
                "absolute",
            ),
            (
                json!({"ipam": {"pools": [pool("a", "10.1.0.0/24", "10.1.0.9"), pool("a", "10.2.0.0/24", "10.2.0.9")]}}),
                "twice",
            ),
            (
                json!({"ipam": {"pools": [pool("a", "10.1.0.0/24", "10.1.0.9"), pool("b", "10.1.0.0/24", "10.1.0.9")]}}),
                "overlap",
            ),
            (
                json!({"ipam": {"pools": [pool("a", "10.1.0.0/24", "10.1.0.9")], "default_ipv4_ippool": ["x"]}}),
                "not defined",
            ),
            (
                json!({"ipam": {"pools": [pool("a", "10.1.0.0/24", "10.1.0.9")], "default_ipv6_ippool": "a"}}),
                "IPv4 pool",
            ),
            (
                json!({"ipam": {"pools": [pool("a", "10.1.0.0/24", "10.1.0.9")], "poolFile": "/nonexistent/p.yaml"}}),
                "poolFile",
            ),
        ];
        for (conf, want) in cases {
            let err = IpamConfig::load(&conf).unwrap_err().to_string();
            assert!(err.contains(want), "{conf}: {err}");
        }
    }

    #[test]
    fn pool_file_of_manifests() {
        let path = Path::new("/etc/spiderpool/pools.yaml");
        let pools = parse_pool_manifests(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: file-v4\nspec:\n  \
             ipVersion: 4\n  subnet: 10.9.0.0/24\n  ips:\n  - 10.9.0.10-10.9.0.20\n  gateway: 10.9.0.1\n  \
             podAffinity: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n---\n",
            path,
        )
        .unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].name, "file-v4");
        assert_eq!(pools[0].set.len(), 11);

        let err = parse_pool_manifests("kind: SpiderIPPool\nspec:\n  subnet: 10.9.0.0/24\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.name"), "{err}");
        let err = parse_pool_manifests("kind: SpiderIPPool\nmetadata: {name: x}\nspec: [\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("document 1"), "{err}");
    }

    #[test]
    fn a_pool_file_outside_the_trusted_directories_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pools.yaml");
        std::fs::write(
            &path,
            "kind: SpiderIPPool\nmetadata: {name: x}\nspec: {subnet: 10.9.0.0/24, ips: [10.9.0.1]}\n",
        )
        .unwrap();
        let err = IpamConfig::load(&json!({"ipam": {"poolFile": path}})).unwrap_err();
        assert!(matches!(err, ConfigError::Untrusted(_)), "{err}");
    }
}
