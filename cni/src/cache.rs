//! The runtimes' CNI result cache (libcni writes one file per attachment under
//! `/var/lib/cni/results`, kind `cniCacheV1`): read here to learn which pod a network namespace
//! belongs to, for what only sees the namespace (RDMA counters of a VF in a pod).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// libcni's default cache directory for results.
pub const DEFAULT_RESULTS_DIR: &str = "/var/lib/cni/results";

/// Files larger than this are not a cache entry anyone wrote for a pod.
const MAX_ENTRY_BYTES: u64 = 1 << 20;

/// A pod, as the runtime named it in `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

#[derive(Deserialize)]
struct Entry {
    kind: String,
    /// libcni 1.1+.
    #[serde(default)]
    netns: Option<String>,
    #[serde(default, rename = "cniArgs")]
    cni_args: Vec<(String, String)>,
    #[serde(default)]
    result: Option<CachedResult>,
}

#[derive(Deserialize)]
struct CachedResult {
    #[serde(default)]
    interfaces: Vec<CachedInterface>,
}

#[derive(Deserialize)]
struct CachedInterface {
    #[serde(default)]
    sandbox: Option<String>,
}

/// The pod of each network namespace the cache names, keyed by the namespace's file name
/// (`cni-…` under `/var/run/netns`). The namespace comes from the entry's `netns` (libcni 1.1+)
/// or, from older runtimes (containerd 1.6), the result's container-side `sandbox`. Entries
/// without `K8S_POD_NAMESPACE`/`K8S_POD_NAME`, unreadable or malformed files are skipped.
pub fn pods_by_netns(dir: &Path) -> BTreeMap<String, PodName> {
    let mut pods = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return pods;
    };
    for file in entries.flatten() {
        if file
            .metadata()
            .map_or(true, |m| !m.is_file() || m.len() > MAX_ENTRY_BYTES)
        {
            continue;
        }
        let Ok(text) = std::fs::read(file.path()) else {
            continue;
        };
        let Ok(entry) = serde_json::from_slice::<Entry>(&text) else {
            continue;
        };
        if entry.kind != "cniCacheV1" {
            continue;
        }
        let arg = |key: &str| {
            entry
                .cni_args
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let (Some(namespace), Some(name)) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) else {
            continue;
        };
        let sandboxes = entry
            .result
            .iter()
            .flat_map(|r| r.interfaces.iter())
            .filter_map(|i| i.sandbox.clone());
        for netns in entry.netns.clone().into_iter().chain(sandboxes) {
            if let Some(file_name) = Path::new(&netns).file_name() {
                pods.insert(
                    file_name.to_string_lossy().into_owned(),
                    PodName {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    },
                );
            }
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_come_from_either_netns_or_the_results_sandbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        // As containerd 1.6 (libcni 1.0) wrote it for a Multus attachment: no `netns`.
        std::fs::write(
            dir.path().join("multus-cni-network-1e03-eth0"),
            r#"{"kind":"cniCacheV1","containerId":"1e03","config":"e30=","ifName":"eth0","networkName":"multus-cni-network",
                "cniArgs":[["K8S_POD_NAME","trainer-0"],["K8S_POD_INFRA_CONTAINER_ID","1e03"],["IgnoreUnknown","1"],["K8S_POD_NAMESPACE","ai"]],
                "result":{"cniVersion":"0.4.0","interfaces":[{"name":"br0","mac":"0e:d6:9c:1c:a8:70"},
                    {"name":"eth0","mac":"fe:b8:33:8d:5c:8e","sandbox":"/var/run/netns/cni-2e28"}],"ips":[]}}"#,
        )
        .expect("write");
        // libcni 1.1+: `netns` is there.
        std::fs::write(
            dir.path().join("sriov-net-77aa-net1"),
            r#"{"kind":"cniCacheV1","containerId":"77aa","netns":"/var/run/netns/cni-77aa","ifName":"net1",
                "cniArgs":[["K8S_POD_NAMESPACE","storage"],["K8S_POD_NAME","osd-1"]]}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("garbage"), "{not json").expect("write");
        std::fs::write(
            dir.path().join("no-pod"),
            r#"{"kind":"cniCacheV1","netns":"/var/run/netns/x","cniArgs":[]}"#,
        )
        .expect("write");
        let pods = pods_by_netns(dir.path());
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert_eq!(
            pods["cni-2e28"],
            PodName {
                namespace: "ai".into(),
                name: "trainer-0".into()
            }
        );
        assert_eq!(pods["cni-77aa"].name, "osd-1");
        assert!(pods_by_netns(&dir.path().join("missing")).is_empty());
    }
}
