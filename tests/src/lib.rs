//! Helpers for the cross-crate tiers: where the project's binaries and Debian's CNI plugins are,
//! and a small network topology of namespaces to run CNI chains in.

pub mod cluster;
pub mod cri;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use spiderpool_cni::exec::{Invocation, Output, run_command};
use spiderpool_linux::netns::NetNs;
pub use spiderpool_testing::process::bin_dir;
pub use spiderpool_testing::sysfs_fixture;

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The attachment records left in the `spiderpool` store under `data_dir`.
pub fn store_records(data_dir: &Path) -> Vec<String> {
    let store = spiderpool_ipam::store::Store::open(data_dir, spiderpool_ipam::store::LOCK_TIMEOUT)
        .expect("store opens");
    store
        .write(|t| t.all_owners())
        .expect("store reads")
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// Runs a command and fails with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> <args>`.
pub fn ip(ns: &NetNs, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(ns.name()).args(args))
}

/// A node with one uplink to a gateway: `node` holds `up0`, whose veth peer `eth0` in `gateway`
/// carries the gateway addresses. Pods are further namespaces; plugins run inside `node`, so the
/// host's own interfaces are never touched.
pub struct Topology {
    pub tag: String,
    pub node: NetNs,
    pub gateway: NetNs,
}

impl Topology {
    /// `tag` keeps names unique per test (namespaces are global to the host).
    pub fn new(tag: &str, gateway_addrs: &[&str]) -> Result<Topology> {
        let tag = format!("{tag}-{}", std::process::id());
        let node = NetNs::create(&format!("spn-{tag}"))?;
        let gateway = NetNs::create(&format!("spg-{tag}"))?;
        add_uplink(Some(&node), "up0", &gateway, gateway_addrs)?;
        Ok(Topology { tag, node, gateway })
    }

    /// Another uplink `link` of the node, to a new gateway namespace holding `gateway_addrs`.
    pub fn uplink(&self, link: &str, gateway_addrs: &[&str]) -> Result<NetNs> {
        let gateway = NetNs::create(&format!("spg-{link}-{}", self.tag))?;
        add_uplink(Some(&self.node), link, &gateway, gateway_addrs)?;
        Ok(gateway)
    }

    pub fn pod(&self, name: &str) -> Result<NetNs> {
        Ok(NetNs::create(&format!("spp-{name}-{}", self.tag))?)
    }

    /// CNI_PATH for chains: our binaries first, then Debian's plugins.
    pub fn cni_path() -> Vec<PathBuf> {
        vec![bin_dir(), PathBuf::from(DEBIAN_CNI_DIR)]
    }

    /// Runs a plugin inside the node namespace: ours (from [`bin_dir`]) when it is there, else
    /// Debian's.
    pub fn exec(&self, plugin: &str, inv: &Invocation, netconf: &Value) -> Result<Output> {
        let mut inv = inv.clone().with_path(Self::cni_path());
        if inv.trusted_dirs.is_empty() {
            // The tests' stores and files live in temporary directories.
            inv = inv.with_trusted_dirs(vec![std::env::temp_dir()]);
        }
        let ours = bin_dir().join(plugin);
        let binary = if ours.exists() {
            ours
        } else {
            Path::new(DEBIAN_CNI_DIR).join(plugin)
        };
        let mut cmd = inv.command(&binary);
        self.node.enter_on_spawn(&mut cmd);
        Ok(run_command(cmd, netconf.to_string().as_bytes())?)
    }
}

/// A veth `link` in `node` (`None`: this process's namespace) whose peer `eth0` in `gateway`
/// carries `gateway_addrs`; both up.
pub fn add_uplink(node: Option<&NetNs>, link: &str, gateway: &NetNs, gateway_addrs: &[&str]) -> Result<()> {
    let in_node = |args: &[&str]| match node {
        Some(ns) => ip(ns, args),
        None => run(Command::new("ip").args(args)),
    };
    in_node(&[
        "link",
        "add",
        link,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        gateway.name(),
    ])?;
    in_node(&["link", "set", link, "up"])?;
    for addr in gateway_addrs {
        let mut args = vec!["addr", "add", addr, "dev", "eth0"];
        if addr.contains(':') {
            args.push("nodad");
        }
        ip(gateway, &args)?;
    }
    ip(gateway, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// Pings `target` from `ns`, retrying for a few seconds (IPv6 addresses need DAD first).
pub fn ping(ns: &NetNs, target: &str) -> Result<()> {
    let mut last = String::new();
    for _ in 0..8 {
        let out = ns.command("ping").args(["-c", "1", "-W", "1", target]).output()?;
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!("{} cannot reach {target}: {last}", ns.name())
}
