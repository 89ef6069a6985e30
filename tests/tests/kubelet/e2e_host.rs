//! The host's side of the e2e node: the default network's bridge, the uplink to a gateway
//! namespace, the fixture HCA's device nodes, and snapshots of what pods leave behind.

use std::collections::BTreeSet;

use serde_json::Value;
use spiderpool_linux::netns::NetNs;

use super::*;

/// The netns directory with shared propagation, as `ip netns add` makes it (a systemd host's / is
/// shared anyway): the chart mounts it with HostToContainer propagation.
pub fn shared_netns_mount() {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if !mounts.lines().any(|l| l.split(' ').nth(4) == Some("/run/netns")) {
        std::fs::create_dir_all("/run/netns").unwrap();
        spiderpool_e2e::run(Command::new("mount").args(["--bind", "/run/netns", "/run/netns"])).unwrap();
    }
    spiderpool_e2e::run(Command::new("mount").args(["--make-rshared", "/run/netns"])).unwrap();
}

/// The host as the e2e node needs it, all names and addresses per kubelet minor version (`m`):
/// the default network's bridge `spe2e-br<m>` (10.213.m.1/24, made here so it is there before
/// and after the pods), an uplink veth `spe2e-up<m>` whose peer in namespace `spe2e-gw<m>` is the
/// gateway (10.214.m.1/24, fd00:214:m::1/64), and the fixture HCA's device nodes where the host
/// has none (the fixture's HCA has no driver here; its nodes only need to exist for the runtime
/// to hand them over). Undone when dropped.
pub struct Host {
    minor: u32,
    pub uplink: String,
    bridge: String,
    // Held for its lifetime: dropping it deletes the namespace.
    _gateway_ns: NetNs,
    state: tempfile::TempDir,
    _hca_nodes: HcaNodes,
    /// The pod namespaces there before: a failed run leaves its pods' (containerd is stopped
    /// without tearing them down), and with them links, routes and rules on the node.
    netns_before: BTreeSet<String>,
    /// Whether the agent's default IPAM socket was there before: the chart's agent (killed with
    /// containerd) leaves it behind, and a stale socket there makes every `coordinator` on this
    /// host ask an agent that is gone.
    socket_before: bool,
}

/// `/dev/infiniband` nodes a fixture's HCAs name, made where the host has none (the fixture's
/// HCAs have no driver here; their nodes only need to exist for the runtime to hand them over),
/// removed when dropped.
pub struct HcaNodes {
    made: Vec<PathBuf>,
    made_dir: bool,
}

impl HcaNodes {
    pub fn make(nodes: &[&str]) -> anyhow::Result<HcaNodes> {
        let made_dir = !Path::new("/dev/infiniband").exists();
        let mut made = Vec::new();
        std::fs::create_dir_all("/dev/infiniband")?;
        for node in nodes {
            if Path::new(node).exists() {
                continue;
            }
            // The kernel's numbers for these nodes (ib_uverbs 231:192+n, ib_umad 231:n and
            // 231:64+n, rdma_cm a misc device).
            let (major, minor) = match node.trim_start_matches("/dev/infiniband/") {
                "rdma_cm" => (10, 58),
                n if n.starts_with("uverbs") => (231, 192 + n[6..].parse::<u32>().unwrap_or(0)),
                n if n.starts_with("issm") => (231, 64 + n[4..].parse::<u32>().unwrap_or(0)),
                n => (231, n.trim_start_matches("umad").parse::<u32>().unwrap_or(0)),
            };
            spiderpool_e2e::run(Command::new("mknod").args([
                node,
                "c",
                &major.to_string(),
                &minor.to_string(),
            ]))?;
            made.push(PathBuf::from(node));
        }
        Ok(HcaNodes { made, made_dir })
    }
}

impl Drop for HcaNodes {
    fn drop(&mut self) {
        for node in &self.made {
            let _ = std::fs::remove_file(node);
        }
        if self.made_dir {
            let _ = std::fs::remove_dir("/dev/infiniband");
        }
    }
}

/// The chart's default `agent.ipamSocket` (the `spiderpool` plugin's default path).
const AGENT_SOCKET: &str = "/var/run/spidernet/spiderpool.sock";

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A snapshot of what pods can leave on the node: links, routes, rules, neighbours.
pub struct Snapshot {
    links: BTreeSet<String>,
    routes: Vec<String>,
    rules: BTreeSet<String>,
    neighbours: Vec<String>,
}

fn ip_host(args: &[&str]) -> String {
    spiderpool_e2e::run(Command::new("ip").args(args)).unwrap()
}

impl Host {
    pub fn prepare(minor: u32, hca_nodes: &[&str]) -> anyhow::Result<Host> {
        shared_netns_mount();
        let uplink = format!("spe2e-up{minor}");
        let bridge = format!("spe2e-br{minor}");
        for link in [&uplink, &bridge] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        let gateway_ns = NetNs::create(&format!("spe2e-gw{minor}"))?;
        ip_host(&["link", "add", &bridge, "type", "bridge"]);
        ip_host(&["addr", "add", &format!("10.213.{minor}.1/24"), "dev", &bridge]);
        ip_host(&["link", "set", &bridge, "up"]);
        spiderpool_e2e::add_uplink(
            None,
            &uplink,
            &gateway_ns,
            &[
                &format!("10.214.{minor}.1/24"),
                &format!("fd00:214:{minor}::1/64"),
            ],
        )?;
        let hca_nodes = HcaNodes::make(hca_nodes)?;
        Ok(Host {
            minor,
            uplink,
            bridge,
            _gateway_ns: gateway_ns,
            state: tempfile::Builder::new().prefix("spiderpool-e2e-host").tempdir()?,
            _hca_nodes: hca_nodes,
            netns_before: netns_names(),
            socket_before: Path::new(AGENT_SOCKET).exists(),
        })
    }

    /// The node's default pod network: Debian's bridge with host-local, as a plain conflist.
    pub fn default_network(&self) -> Value {
        let m = self.minor;
        json!({
            "cniVersion": "0.4.0", "name": "e2e-default",
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.213.{m}.0/24")}]],
                         "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": self.state.path().join("host-local")}
            }]
        })
    }

    pub fn pool_spec(&self, family: u8) -> Value {
        let m = self.minor;
        if family == 4 {
            json!({"ipVersion": 4, "subnet": format!("10.214.{m}.0/24"),
                   "ips": [format!("10.214.{m}.10-10.214.{m}.100")], "gateway": self.gateway(4)})
        } else {
            json!({"ipVersion": 6, "subnet": format!("fd00:214:{m}::/64"),
                   "ips": [format!("fd00:214:{m}::10-fd00:214:{m}::100")], "gateway": self.gateway(6)})
        }
    }

    /// The start every pool address of `family` has.
    pub fn prefix(&self, family: u8) -> String {
        if family == 4 {
            format!("10.214.{}.", self.minor)
        } else {
            format!("fd00:214:{}::", self.minor)
        }
    }

    pub fn gateway(&self, family: u8) -> String {
        format!("{}1", self.prefix(family))
    }

    /// A destination the route annotation sends through the gateway.
    pub fn extra_route(&self) -> String {
        format!("10.215.{}.0/24", self.minor)
    }

    /// An address of the node's own (the bridge's).
    pub fn node_ip(&self) -> String {
        format!("10.213.{}.1", self.minor)
    }

    pub fn snapshot(&self) -> Snapshot {
        let lines = |args: &[&str]| -> Vec<String> { ip_host(args).lines().map(str::to_string).collect() };
        Snapshot {
            links: lines(&["-o", "link", "show"])
                .iter()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
                .collect(),
            routes: [
                lines(&["route", "show", "table", "all"]),
                lines(&["-6", "route", "show", "table", "all"]),
            ]
            .concat(),
            rules: [lines(&["rule"]), lines(&["-6", "rule"])]
                .concat()
                .into_iter()
                .collect(),
            neighbours: [lines(&["neigh", "show"]), lines(&["-6", "neigh", "show"])].concat(),
        }
    }
}

impl Snapshot {
    /// What appeared since `before`: new links and rules, and routes or neighbours naming one of
    /// `pod_addrs` (routes: only those not there before).
    pub fn left_since(&self, before: &Snapshot, pod_addrs: &[String]) -> Vec<String> {
        let names_pod = |line: &str| {
            line.split_whitespace().any(|w| {
                let bare = w.split('/').next().unwrap_or(w);
                pod_addrs.iter().any(|a| a == bare)
            })
        };
        let mut left: Vec<String> = self
            .links
            .difference(&before.links)
            .map(|l| format!("link {l}"))
            .collect();
        left.extend(self.rules.difference(&before.rules).map(|r| format!("rule {r}")));
        left.extend(
            self.routes
                .iter()
                .filter(|r| names_pod(r) && !before.routes.contains(r))
                .map(|r| format!("route {r}")),
        );
        left.extend(
            self.neighbours
                .iter()
                .filter(|n| names_pod(n))
                .map(|n| format!("neighbour {n}")),
        );
        left
    }

    pub fn assert_nothing_left_since(&self, before: &Snapshot, pod_addrs: &[String]) {
        let left = self.left_since(before, pod_addrs);
        assert!(
            left.is_empty(),
            "left on the node after every pod went: {left:#?}"
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if !self.socket_before {
            let _ = std::fs::remove_file(AGENT_SOCKET);
        }
        // After a failure: the pods' namespaces (their links go with them) and the coordinator's
        // rules to their addresses.
        for ns in netns_names().difference(&self.netns_before) {
            if ns.starts_with("cni-") {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
        for (family, prefix) in [("-4", self.prefix(4)), ("-6", self.prefix(6))] {
            let rules = Command::new("ip")
                .args([family, "rule"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            for line in String::from_utf8_lossy(&rules).lines() {
                if let Some(to) = line.split_whitespace().skip_while(|w| *w != "to").nth(1)
                    && to.starts_with(&prefix)
                {
                    let _ = Command::new("ip")
                        .args([family, "rule", "del", "to", to])
                        .output();
                }
            }
        }
        for link in [&self.uplink, &self.bridge] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
    }
}
