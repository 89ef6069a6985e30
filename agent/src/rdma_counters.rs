//! RDMA port counters for Prometheus (names are stable; README lists them): every RDMA device
//! the node has, each port's standard InfiniBand counters (sysfs `counters/`) and the driver's
//! hardware counters (`hw_counters/`, or RDMA netlink where sysfs cannot see the device), with
//! the network namespace that holds the device or its port's netdev and the pod: the one the
//! `rdma` CNI plugin recorded for it, else the one the runtime's CNI result cache names for that
//! namespace. A device the host's namespace holds and whose netdev is the host's
//! carries no holder: in shared mode many pods use it and its port counters cannot tell them
//! apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use spiderpool_linux::netns::NetNs;
use spiderpool_linux::rdma;
use spiderpool_linux::sysfs::Sysfs;

/// Where the counters come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub sysfs: Sysfs,
    /// Named network namespaces (`ip netns`, and the runtimes' `cni-*`): `/var/run/netns`.
    pub netns_dir: PathBuf,
    /// The `rdma` CNI plugin's records (`spiderpool_rdma::DEFAULT_STATE_DIR`).
    pub rdma_records: PathBuf,
    /// The runtime's CNI result cache (`spiderpool_cni::cache::DEFAULT_RESULTS_DIR`): the pod of a
    /// namespace no record names (a VF with its RDMA device in a pod, shared mode).
    pub cni_results: PathBuf,
}

/// Who holds a device: a named network namespace, and the pod when a record names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub device: String,
    pub port: u32,
    /// `true`: a driver hardware counter; `false`: a standard port counter.
    pub hw: bool,
    pub counter: String,
    pub value: u64,
    pub holder: Holder,
}

const STANDARD: &str = "spiderpool_agent_rdma_port_counter_total";
const HARDWARE: &str = "spiderpool_agent_rdma_port_hw_counter_total";

fn numbers(sysfs: &Sysfs, dir: &str) -> Vec<(String, u64)> {
    sysfs
        .list(dir)
        .into_iter()
        // rxe's `lifespan` is a setting, not a count.
        .filter(|name| name != "lifespan")
        .filter_map(|name| {
            let mut problems = Vec::new();
            let value = sysfs.read(format!("{dir}/{name}"), &mut problems)?;
            Some((name, value.trim().parse().ok()?))
        })
        .collect()
}

/// The holder of each device: the namespace that holds it (`in_netns`: device, namespace name),
/// with the pod the `rdma` plugin's record names, else the pod the CNI result cache names for
/// that namespace. A record whose namespace disagrees with what the kernel shows is stale.
fn attribute(
    in_netns: Vec<(String, String)>,
    records: Vec<spiderpool_rdma::Held>,
    pods: &BTreeMap<String, spiderpool_cni::cache::PodName>,
) -> BTreeMap<String, Holder> {
    let mut holders: BTreeMap<String, Holder> = in_netns
        .into_iter()
        .map(|(device, netns)| {
            (
                device,
                Holder {
                    netns,
                    ..Holder::default()
                },
            )
        })
        .collect();
    for record in records {
        let netns = Path::new(&record.netns)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let holder = holders.entry(record.device.clone()).or_default();
        if holder.netns.is_empty() || holder.netns == netns {
            holder.netns = netns;
            holder.pod_namespace = record.pod_namespace.unwrap_or_default();
            holder.pod_name = record.pod_name.unwrap_or_default();
        }
    }
    for holder in holders.values_mut().filter(|h| h.pod_name.is_empty()) {
        if let Some(pod) = pods.get(&holder.netns) {
            holder.pod_namespace = pod.namespace.clone();
            holder.pod_name = pod.name.clone();
        }
    }
    holders
}

pub fn collect(sources: &Sources) -> Vec<Sample> {
    let sysfs = &sources.sysfs;
    let mut samples = Vec::new();
    let host: Vec<String> = sysfs.list("class/infiniband");
    // A namespace holds a device when it is the only one that sees it (exclusive mode), or when
    // the device's port netdev is there (a shared device made on a pod's NIC, a VF in a pod).
    let mut in_netns = Vec::new();
    let mut moved: Vec<(String, rdma::RdmaDevice)> = Vec::new();
    for held in rdma::holdings(&sources.netns_dir) {
        in_netns.push((held.device.name.clone(), held.netns.clone()));
        if held.moved && !host.contains(&held.device.name) {
            moved.push((held.netns, held.device));
        }
    }
    let holders = attribute(
        in_netns,
        spiderpool_rdma::held_devices(&sources.rdma_records),
        &spiderpool_cni::cache::pods_by_netns(&sources.cni_results),
    );
    for device in &host {
        let holder = holders.get(device).cloned().unwrap_or_default();
        for port in sysfs.list(format!("class/infiniband/{device}/ports")) {
            let Ok(index) = port.parse::<u32>() else {
                continue;
            };
            let base = format!("class/infiniband/{device}/ports/{port}");
            for (hw, dir) in [(false, "counters"), (true, "hw_counters")] {
                for (counter, value) in numbers(sysfs, &format!("{base}/{dir}")) {
                    samples.push(Sample {
                        device: device.clone(),
                        port: index,
                        hw,
                        counter,
                        value,
                        holder: holder.clone(),
                    });
                }
            }
        }
    }
    // Moved into a namespace: the host's sysfs does not show it; netlink there does.
    for (netns, device) in moved {
        let holder = holders.get(&device.name).cloned().unwrap_or_default();
        let Ok(ns) = NetNs::open(&sources.netns_dir.join(&netns)) else {
            continue;
        };
        for port in &device.ports {
            let read = ns.run(|| rdma::hw_counters(device.index, &device.name, port.index));
            for (counter, value) in read.ok().and_then(Result::ok).unwrap_or_default() {
                samples.push(Sample {
                    device: device.name.clone(),
                    port: port.index,
                    hw: true,
                    counter,
                    value,
                    holder: holder.clone(),
                });
            }
        }
    }
    samples
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition format of `samples`.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    for (hw, name, help) in [
        (
            false,
            STANDARD,
            "An RDMA port's standard InfiniBand counter (sysfs counters/)",
        ),
        (
            true,
            HARDWARE,
            "An RDMA port's driver hardware counter (hw_counters/, rdma statistic)",
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}, with the namespace and pod holding the device"
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for s in samples.iter().filter(|s| s.hw == hw) {
            let _ = writeln!(
                out,
                "{name}{{device=\"{}\",port=\"{}\",counter=\"{}\",netns=\"{}\",pod_namespace=\"{}\",pod_name=\"{}\"}} {}",
                escape(&s.device),
                s.port,
                escape(&s.counter),
                escape(&s.holder.netns),
                escape(&s.holder.pod_namespace),
                escape(&s.holder.pod_name),
                s.value
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_counters_render_with_their_holder() {
        let root = tempfile::tempdir().unwrap();
        let port = root.path().join("class/infiniband/mlx5_3/ports/1");
        std::fs::create_dir_all(port.join("counters")).unwrap();
        std::fs::create_dir_all(port.join("hw_counters")).unwrap();
        std::fs::write(port.join("counters/port_xmit_data"), "4096\n").unwrap();
        std::fs::write(port.join("counters/port_rcv_errors"), "N/A\n").unwrap();
        std::fs::write(port.join("hw_counters/out_of_buffer"), "7\n").unwrap();
        std::fs::write(port.join("hw_counters/lifespan"), "12\n").unwrap();
        let records = root.path().join("records");
        std::fs::create_dir_all(&records).unwrap();
        std::fs::write(
            records.join("c1-net1"),
            r#"{"device":"mlx5_3","netns":"/var/run/netns/cni-1","pod_namespace":"ai","pod_name":"trainer-0"}"#,
        )
        .unwrap();
        let samples = collect(&Sources {
            sysfs: Sysfs::new(root.path()),
            netns_dir: root.path().join("no-netns"),
            rdma_records: records,
            cni_results: root.path().join("no-cache"),
        });
        let text = render(&samples);
        assert!(
            text.contains(r#"spiderpool_agent_rdma_port_counter_total{device="mlx5_3",port="1",counter="port_xmit_data",netns="cni-1",pod_namespace="ai",pod_name="trainer-0"} 4096"#),
            "{text}"
        );
        assert!(text.contains(r#"spiderpool_agent_rdma_port_hw_counter_total{device="mlx5_3",port="1",counter="out_of_buffer""#), "{text}");
        assert!(
            !text.contains("lifespan") && !text.contains("port_rcv_errors"),
            "{text}"
        );
        assert!(text.contains("# TYPE spiderpool_agent_rdma_port_hw_counter_total counter"));
    }

    #[test]
    fn a_pod_comes_from_the_rdma_record_else_from_the_cni_cache() {
        let pod = |namespace: &str, name: &str| spiderpool_cni::cache::PodName {
            namespace: namespace.into(),
            name: name.into(),
        };
        let pods = BTreeMap::from([
            ("cni-vf".to_string(), pod("storage", "osd-1")),
            ("cni-moved".to_string(), pod("cache", "ignored")),
        ]);
        let records = vec![spiderpool_rdma::Held {
            device: "mlx5_3".into(),
            netns: "/var/run/netns/cni-moved".into(),
            pod_namespace: Some("ai".into()),
            pod_name: Some("trainer-0".into()),
        }];
        let in_netns = vec![
            ("mlx5_3".to_string(), "cni-moved".to_string()),
            ("mlx5_4".to_string(), "cni-vf".to_string()),
            ("mlx5_5".to_string(), "cni-unknown".to_string()),
        ];
        let holders = attribute(in_netns, records, &pods);
        let who = |d: &str| {
            let h = &holders[d];
            (h.netns.as_str(), h.pod_namespace.as_str(), h.pod_name.as_str())
        };
        assert_eq!(who("mlx5_3"), ("cni-moved", "ai", "trainer-0"), "the record wins");
        assert_eq!(
            who("mlx5_4"),
            ("cni-vf", "storage", "osd-1"),
            "a VF's namespace, from the cache"
        );
        assert_eq!(
            who("mlx5_5"),
            ("cni-unknown", "", ""),
            "no pod known: the namespace alone"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
