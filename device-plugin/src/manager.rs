//! The running device plugin: every resync it rescans the node, rereads the config, tracks link
//! health and serves, updates, re-registers or stops each resource as needed. One loop covers new
//! or removed VFs, config edits, link changes and kubelet restarts (which delete our sockets).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spiderpool_api::inventory::Inventory;
use spiderpool_api::policy::SpiderNetworkNodePolicy;
use spiderpool_linux::sysfs::Sysfs;

use crate::config::Config;
use crate::pool::{assign_candidates, candidates, with_vf_device_ids};
use crate::server::{Served, Snapshot};

/// Policies shared with the agent's policy loop.
pub type ClusterPolicies = Arc<std::sync::RwLock<Vec<SpiderNetworkNodePolicy>>>;

pub struct ManagerOptions {
    pub kubelet_dir: PathBuf,
    /// `None`: the built-in config (shared `spidernet.io/rdma` over every RDMA device).
    pub config_file: Option<PathBuf>,
    /// SpiderNetworkNodePolicy documents whose `resourceName`s come first.
    pub policy_file: Option<PathBuf>,
    /// The cluster's policies that select this node (the agent's policy loop keeps it current
    /// and wakes `wake`); their `resourceName`s come first too.
    pub cluster_policies: Option<ClusterPolicies>,
    pub sysfs: Sysfs,
    pub devinfo_dir: Option<PathBuf>,
    /// How often to rescan; the bound on how late a change is seen.
    pub resync: Duration,
    /// Woken on link events (netlink), for a rescan right away instead of at the next resync.
    pub wake: Option<Arc<tokio::sync::Notify>>,
    /// Notified once the first pass has served and registered what the node has (the agent's
    /// readiness: a successor is ready once kubelet counts its devices).
    pub first_pass: Option<Arc<tokio::sync::Notify>>,
}

/// Link health from transitions: a netdev seen up and then down is unhealthy until it is up
/// again. A VF that was never up (the usual state of a VF waiting in the host for a pod) is not.
#[derive(Debug, Default)]
pub struct LinkWatch {
    last: HashMap<String, bool>,
    down: BTreeSet<String>,
}

impl LinkWatch {
    /// Records the current states (`true` = up) and returns the netdevs now considered down.
    pub fn observe(&mut self, states: impl IntoIterator<Item = (String, bool)>) -> BTreeSet<String> {
        let mut seen = HashMap::new();
        for (netdev, up) in states {
            match (self.last.get(&netdev), up) {
                (Some(true), false) => {
                    self.down.insert(netdev.clone());
                }
                (_, true) => {
                    self.down.remove(&netdev);
                }
                _ => {}
            }
            seen.insert(netdev, up);
        }
        self.down.retain(|n| seen.contains_key(n));
        self.last = seen;
        self.down.clone()
    }
}

/// A config or policy file that cannot be used: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct ConfigFileError {
    pub file: PathBuf,
    pub reason: String,
}

/// The config in force: the file's (or the built-in one), after the policies' resources.
pub fn read_config(
    path: Option<&PathBuf>,
    policies: Option<&PathBuf>,
    cluster: Option<&ClusterPolicies>,
) -> Result<Config, ConfigFileError> {
    let bad = |p: &PathBuf, reason: String| ConfigFileError {
        file: p.clone(),
        reason,
    };
    let mut config = match path {
        None => Config::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| bad(p, e.to_string()))?;
            Config::parse(&text).map_err(|e| bad(p, e.to_string()))?
        }
    };
    let mut from_policies = Vec::new();
    if let Some(p) = policies {
        let text = std::fs::read_to_string(p).map_err(|e| bad(p, e.to_string()))?;
        let policies = spiderpool_api::policy::parse_documents(&text).map_err(|e| bad(p, e.to_string()))?;
        from_policies = Config::from_policies(&policies);
    }
    if let Some(cell) = cluster {
        let policies = cell.read().map(|p| p.clone()).unwrap_or_default();
        from_policies.append(&mut Config::from_policies(&policies));
    }
    if policies.is_some() || !from_policies.is_empty() {
        from_policies.append(&mut config.resources);
        config = Config {
            resources: from_policies,
        };
        let origin = policies
            .cloned()
            .unwrap_or_else(|| PathBuf::from("SpiderNetworkNodePolicies"));
        config.validate().map_err(|e| bad(&origin, e.to_string()))?;
    }
    Ok(config)
}

/// Runs until `shutdown` completes, then stops every resource (sockets and device-info files go).
pub async fn run<S, F>(options: ManagerOptions, scan: S, shutdown: F)
where
    S: Fn() -> Inventory + Send + Sync + 'static,
    F: Future<Output = ()>,
{
    let scan = Arc::new(scan);
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut config = Config::default();
    let mut config_error: Option<String> = None;
    let mut links = LinkWatch::default();
    let mut last_notes: Vec<String> = Vec::new();
    let mut ticker = tokio::time::interval(options.resync);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Woken when kubelet drops one of our resources: register it again at once.
    let dropped = Arc::new(tokio::sync::Notify::new());
    tokio::pin!(shutdown);
    loop {
        let wake = options.wake.clone();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
            _ = dropped.notified() => {
                // The fast path: kubelet refuses pods for the resource until we are back, so
                // register again before anything else (no rescan); a failure is left to the
                // full pass below, next tick.
                for (key, s) in &served {
                    if s.dropped() && s.socket_present() && s.register_again().await {
                        tracing::warn!(resource = %key, "kubelet dropped our ListAndWatch stream: registered again");
                    }
                }
                continue;
            }
            _ = async { match &wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {
                // A burst of events (a VF flapping, many VFs appearing) needs one rescan.
                tokio::time::sleep(Duration::from_millis(20)).await;
                ticker.reset();
            }
        }
        // A broken config edit keeps the last good one, and says so once.
        match read_config(
            options.config_file.as_ref(),
            options.policy_file.as_ref(),
            options.cluster_policies.as_ref(),
        ) {
            Ok(c) => {
                config = c;
                config_error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if config_error.as_deref() != Some(e.as_str()) {
                    tracing::error!("device plugin config: {e}; keeping the previous one");
                }
                config_error = Some(e);
            }
        }
        let scanner = scan.clone();
        let Ok(inventory) = tokio::task::spawn_blocking(move || scanner()).await else {
            continue;
        };
        let all = with_vf_device_ids(candidates(&inventory), &options.sysfs);
        let states: Vec<(String, bool)> = all
            .iter()
            .filter_map(|c| c.netdev.clone())
            .filter_map(|n| {
                let state = options
                    .sysfs
                    .read(format!("class/net/{n}/operstate"), &mut Vec::new())?;
                Some((n, state == "up"))
            })
            .collect();
        let links_down = links.observe(states);
        let resources = match assign_candidates(&config, &inventory, all) {
            Ok((resources, notes)) => {
                // Who got which device, each time that changes.
                if notes != last_notes {
                    for note in &notes {
                        tracing::info!("{note}");
                    }
                    last_notes = notes;
                }
                resources
            }
            Err(e) => {
                tracing::error!("device plugin config: {e}");
                continue;
            }
        };
        let mut wanted = BTreeSet::new();
        // Resources given to DRA are not advertised (one served before is stopped below).
        for resource in resources
            .into_iter()
            .filter(|r| r.allocation == crate::config::Allocation::DevicePlugin)
        {
            let key = resource.name.full();
            wanted.insert(key.clone());
            let snapshot = Snapshot {
                resource,
                inventory: inventory.clone(),
                links_down: links_down.clone(),
            };
            match served.remove(&key) {
                Some(s) if s.socket_present() && !s.dropped() => {
                    s.update(snapshot);
                    served.insert(key, s);
                }
                Some(s) if s.socket_present() && s.register_again().await => {
                    tracing::warn!(resource = %key, "kubelet dropped our ListAndWatch stream: registered again");
                    s.update(snapshot);
                    served.insert(key, s);
                }
                previous => {
                    if let Some(s) = previous {
                        tracing::info!(resource = %key, "socket gone (kubelet restarted?): serving and registering again");
                        s.stop();
                    }
                    match Served::start(
                        &options.kubelet_dir,
                        snapshot,
                        options.sysfs.clone(),
                        options.devinfo_dir.clone(),
                        dropped.clone(),
                    )
                    .await
                    {
                        Ok(s) => {
                            served.insert(key, s);
                        }
                        Err(e) => tracing::warn!(resource = %key, "not served yet: {e}"),
                    }
                }
            }
        }
        for key in served
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect::<Vec<_>>()
        {
            if let Some(s) = served.remove(&key) {
                tracing::info!(resource = %key, "no longer configured: withdrawn");
                s.withdraw();
            }
        }
        // Ready (once) when everything configured is served and registered: a refused
        // registration is tried again next pass.
        if let Some(first) = options.first_pass.as_ref()
            && wanted.iter().all(|k| served.contains_key(k))
        {
            first.notify_one();
        }
    }
    for (_, s) in served {
        s.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_watch_needs_an_up_before_a_down() {
        let mut w = LinkWatch::default();
        let s = |v: &[(&str, bool)]| v.iter().map(|(n, u)| (n.to_string(), *u)).collect::<Vec<_>>();
        assert!(
            w.observe(s(&[("vf0", false), ("vf1", true)])).is_empty(),
            "never up: not a failure"
        );
        assert_eq!(
            w.observe(s(&[("vf0", false), ("vf1", false)])),
            BTreeSet::from(["vf1".to_string()])
        );
        assert_eq!(
            w.observe(s(&[("vf0", false), ("vf1", false)])),
            BTreeSet::from(["vf1".to_string()])
        );
        assert!(w.observe(s(&[("vf0", false), ("vf1", true)])).is_empty());
        assert!(
            w.observe(s(&[("vf0", false)])).is_empty(),
            "a vanished netdev is forgotten"
        );
    }
}
