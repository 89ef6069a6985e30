//! SpiderNetworkNodePolicy objects applied live: the agent watches the policies and its own Node,
//! takes the policies whose `nodeSelector` matches the Node's labels, plans and applies them with
//! the same planner and applier as `apply -f` (so several policies merge by priority exactly as in
//! file mode, and a VF a pod holds waits as Pending), and reports each policy's state in its
//! node's SpiderNodeInventory status (`policies`), with Events on the policy for every change it
//! makes and every failure. A change wakes it at once; a slow periodic pass corrects drift.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource};
use spiderpool_api::inventory::{Inventory, SpiderNodeInventory};
use spiderpool_api::policy::SpiderNetworkNodePolicyResource;
use spiderpool_api::policy_status::NodePolicyState;
use spiderpool_daemon::watch::cache_waking;
use spiderpool_linux::sysfs::{DEFAULT_SYSFS_ROOT, Sysfs};
use spiderpool_provisioner::applier::{Kernel, LiveKernel, apply, target};
use spiderpool_provisioner::planner::Status;
use tokio::sync::Notify;

pub mod removal;
pub mod state;

use removal::{Removed, UsersFor};
use spiderpool_provisioner::planner::{Action, Leftover};
use state::{Executed, Selected};

/// What the loop does with the policies that select the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Make the node match them.
    Apply,
    /// Plan and report only: the status says what applying would do; nothing is touched.
    Report,
    /// Do not watch policies.
    Off,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub sysfs_root: PathBuf,
    /// Where kubelet's device checkpoint says which VFs pods hold.
    pub kubelet_dir: PathBuf,
    pub mode: Mode,
    /// The periodic pass that corrects drift.
    pub resync: Duration,
    /// Where the device plugin takes the selected policies' resources from (`None`: no plugin).
    pub device_plugin: Option<PluginFeed>,
}

/// The selected policies, for the device plugin, and the plugin's wake-up.
#[derive(Debug, Clone, Default)]
pub struct PluginFeed {
    pub policies: spiderpool_device_plugin::manager::ClusterPolicies,
    pub wake: Arc<Notify>,
}

impl PluginFeed {
    /// Hands `selected` over when it differs from what the plugin has, and wakes it.
    fn publish(&self, selected: &[Selected]) {
        let want: Vec<_> = selected
            .iter()
            .filter(|s| s.policy.spec.resource_name.is_some())
            .map(|s| s.policy.clone())
            .collect();
        let Ok(mut have) = self.policies.write() else {
            return;
        };
        if *have != want {
            *have = want;
            self.wake.notify_one();
        }
    }
}

/// Runs until the process ends; API failures are logged and retried on the next pass.
pub async fn run(client: Client, node: String, options: Options) {
    if options.mode == Mode::Off {
        return;
    }
    let wake = Arc::new(Notify::new());
    // Drift in links (a bond or VLAN deleted, an MTU changed) wakes a pass at once; the periodic
    // pass covers what raises no link event (a sysfs VF count). Only the live node has events.
    if options.mode == Mode::Apply && options.sysfs_root == std::path::Path::new(DEFAULT_SYSFS_ROOT) {
        let wake = wake.clone();
        if let Err(e) = spiderpool_linux::links::watch_link_events(move || {
            wake.notify_one();
            true
        }) {
            tracing::warn!("link events: {e}; drift is corrected by the periodic pass only");
        }
    }
    let policies = cache_waking(
        Api::<SpiderNetworkNodePolicyResource>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let nodes = cache_waking(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        wake.clone(),
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "spiderpool-agent".into(),
            instance: Some(node.clone()),
        },
    );
    // What the inventory says now: read once at the start (an agent restarted mid-removal
    // carries on from it), then what this loop wrote.
    let mut reported: Option<BTreeMap<String, NodePolicyState>> = None;
    loop {
        if policies.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
        if reported.is_none() {
            match read(&client, &node).await {
                Ok(r) => reported = Some(r.unwrap_or_default()),
                Err(e) => {
                    tracing::warn!("SpiderNodeInventory {node} policies: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            }
        }
        let before = reported.clone().unwrap_or_default();
        let labels = nodes
            .state()
            .first()
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        let all = policies.state();
        let selected = state::selected(all.iter().map(|p| &**p), &labels);
        if let Some(feed) = &options.device_plugin {
            feed.publish(&selected);
        }
        let leftovers = removal::leftovers(&before, &selected);
        let outcome = if selected.is_empty() && leftovers.is_empty() {
            Outcome::default()
        } else {
            let (opts, sel, left) = (options.clone(), selected.clone(), leftovers.clone());
            let live = move |root: &std::path::Path| -> Result<Box<dyn Kernel>, String> {
                LiveKernel::new(Sysfs::new(root))
                    .map(|k| Box::new(k) as Box<dyn Kernel>)
                    .map_err(|e| format!("netlink: {e}"))
            };
            let users = |of: &std::collections::HashSet<u32>| {
                spiderpool_linux::link_users::users_in_other_namespaces(of).map_err(|e| e.to_string())
            };
            let pass = move || {
                let access = NodeAccess {
                    kernel_for: &live,
                    users_for: &users,
                };
                round(&sel, &left, labels, &opts, &access)
            };
            match tokio::task::spawn_blocking(pass).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!("node policy round: {e}");
                    Outcome::default()
                }
            }
        };
        let caveat = (options.mode == Mode::Report)
            .then_some("not applied (the agent runs with --node-policies=report)");
        let mut states = state::states(&selected, &outcome.inventory, &outcome.status, caveat);
        let handed_over: Vec<(String, String)> = outcome
            .removed
            .iter()
            .flat_map(|r| r.handed_over.clone())
            .collect();
        state::keep_records(
            &mut states,
            &before,
            &selected,
            &outcome.created_vfs,
            &handed_over,
        );
        let mut events = state::events(&node, &before, &states, &outcome.executed);
        for removed in &outcome.removed {
            let old = before.get(&removed.policy);
            let after = old.and_then(|o| removal::state_after(o, removed, caveat));
            events.extend(removal::events(&node, removed, old, after.as_ref()));
            if let Some(a) = after {
                states.insert(removed.policy.clone(), a);
            }
        }
        for ev in events {
            let target = all
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(ev.policy.as_str()));
            // A deleted policy is named by kind and name (its Events outlive it).
            let reference = target.map_or_else(|| deleted_ref(&ev.policy), |p| p.object_ref(&()));
            publish(&recorder, &reference, &ev).await;
        }
        if reported.as_ref() != Some(&states) {
            match write(&client, &node, &states).await {
                Ok(()) => reported = Some(states),
                Err(e) => tracing::warn!("SpiderNodeInventory {node} policies: {e}"),
            }
        }
        tokio::select! {
            () = wake.notified() => {
                // A burst of watch events (a kubectl apply of several policies) makes one pass.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = tokio::time::sleep(options.resync) => {}
        }
    }
}

/// One pass's result.
#[derive(Default)]
struct Outcome {
    inventory: Inventory,
    status: BTreeMap<String, Status>,
    executed: Vec<Executed>,
    /// PFs whose VFs this pass created from none.
    created_vfs: Vec<String>,
    removed: Vec<Removed>,
}

/// What carries out a round's actions on the node under a sysfs root (the live kernel; a
/// recording one in tests).
type KernelFor<'a> = dyn Fn(&std::path::Path) -> Result<Box<dyn Kernel>, String> + 'a;

/// How a round reaches the node beyond sysfs: the kernel that carries out its actions, and the
/// walk of other namespaces that tells whether a link is in use.
struct NodeAccess<'a> {
    kernel_for: &'a KernelFor<'a>,
    users_for: &'a UsersFor<'a>,
}

/// Removes what `leftovers` made, then plans (and in apply mode applies) the selected
/// policies; blocking (sysfs, netlink).
fn round(
    selected: &[Selected],
    leftovers: &[Leftover],
    labels: BTreeMap<String, String>,
    options: &Options,
    access: &NodeAccess<'_>,
) -> Outcome {
    let policies: Vec<_> = selected.iter().map(|s| s.policy.clone()).collect();
    let observe_now = || crate::node::observe(&options.sysfs_root, &labels, &options.kubelet_dir);
    let mut first = observe_now();
    let mut kernel: Option<Result<Box<dyn Kernel>, String>> = None;
    let mut removed = Vec::new();
    if !leftovers.is_empty() {
        let apply_mode = options.mode == Mode::Apply;
        if apply_mode {
            kernel = Some((access.kernel_for)(&options.sysfs_root));
        }
        let k: Option<&mut dyn Kernel> = match kernel.as_mut() {
            Some(Ok(k)) => Some(&mut **k),
            _ => None,
        };
        removed = removal::remove(leftovers, &policies, &first, access.users_for, k);
        if let Some(Err(e)) = &kernel {
            // No kernel to act with: every leftover waits, saying why.
            for r in &mut removed {
                r.waiting
                    .extend(r.planned.drain(..).map(|p| format!("{p} ({e})")));
            }
        }
        if removed.iter().any(|r| !r.executed.is_empty()) {
            first = observe_now();
        }
    }
    let plan = first.plan(&policies);
    if options.mode != Mode::Apply || plan.steps.is_empty() {
        return Outcome {
            inventory: first.inventory,
            status: plan.status,
            removed,
            ..Outcome::default()
        };
    }
    let had_vfs: BTreeMap<String, bool> = first
        .inventory
        .nics
        .iter()
        .filter_map(|n| {
            let vfs = n.sriov.as_ref().and_then(|s| s.num_vfs).unwrap_or(0) > 0;
            n.name.clone().map(|name| (name, vfs))
        })
        .collect();
    // The applier's first round looks at this same observation; later rounds scan again.
    let inventory = first.inventory.clone();
    let mut first = Some(first);
    let mut observe = || {
        first
            .take()
            .unwrap_or_else(|| crate::node::observe(&options.sysfs_root, &labels, &options.kubelet_dir))
    };
    let mut kernel = match kernel.unwrap_or_else(|| (access.kernel_for)(&options.sysfs_root)) {
        Ok(k) => k,
        Err(e) => {
            let status = plan
                .status
                .into_keys()
                .map(|k| (k, Status::Failed(e.clone())))
                .collect();
            return Outcome {
                inventory,
                status,
                removed,
                ..Outcome::default()
            };
        }
    };
    let mut timed = Timed {
        inner: kernel.as_mut(),
        took: Vec::new(),
    };
    let report = apply(&policies, &mut observe, &mut timed);
    // One kernel call per executed step, in order: each change says how long the kernel took,
    // so the Events separate the driver's time (VF creation, NIC resets) from ours.
    let executed = report
        .executed
        .iter()
        .zip(timed.took.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|((step, result), took)| Executed {
            target: target(&step.action).to_string(),
            bond: match &step.action {
                Action::Enslave { bond, .. } => Some(bond.clone()),
                _ => None,
            },
            action: match took {
                Some(t) => format!("{} ({} ms)", step.action, t.as_millis()),
                None => step.action.to_string(),
            },
            error: result.as_ref().err().map(ToString::to_string),
        })
        .collect();
    let created_vfs = report
        .executed
        .iter()
        .filter_map(|(step, result)| match (&step.action, result) {
            (Action::SetNumVfs { pf, count, .. }, Ok(()))
                if *count > 0 && had_vfs.get(pf) == Some(&false) =>
            {
                Some(pf.clone())
            }
            _ => None,
        })
        .collect();
    Outcome {
        inventory,
        status: report.status,
        executed,
        created_vfs,
        removed,
    }
}

/// A kernel that times each action it carries out.
struct Timed<'a> {
    inner: &'a mut dyn Kernel,
    took: Vec<Duration>,
}

impl Kernel for Timed<'_> {
    fn apply(&mut self, action: &Action) -> Result<(), spiderpool_provisioner::applier::ApplyError> {
        let start = std::time::Instant::now();
        let result = self.inner.apply(action);
        self.took.push(start.elapsed());
        result
    }
}

/// The node's policy states as its SpiderNodeInventory status says them (`None`: the object
/// does not exist yet).
async fn read(client: &Client, node: &str) -> Result<Option<BTreeMap<String, NodePolicyState>>, kube::Error> {
    let api: Api<SpiderNodeInventory> = Api::all(client.clone());
    match api.get_status(node).await {
        Ok(obj) => Ok(Some(obj.status.map(|s| s.policies).unwrap_or_default())),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// A reference to a policy that is gone, for its Events.
fn deleted_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(SpiderNetworkNodePolicyResource::api_version(&()).into_owned()),
        kind: Some(SpiderNetworkNodePolicyResource::kind(&()).into_owned()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

/// Writes `states` as the `policies` of the node's SpiderNodeInventory status: a merge patch
/// that sets each state and removes the policies that no longer select the node (the scan's
/// fields are written separately, by server-side apply, and are not touched).
async fn write(
    client: &Client,
    node: &str,
    states: &BTreeMap<String, NodePolicyState>,
) -> Result<(), kube::Error> {
    let current = match read(client, node).await? {
        Some(current) => current,
        None => {
            // The scan has not created the object yet.
            crate::inventory_report::ensure_object(client, node).await?;
            BTreeMap::new()
        }
    };
    let mut policies = serde_json::Map::new();
    for gone in current.keys().filter(|k| !states.contains_key(*k)) {
        policies.insert(gone.clone(), serde_json::Value::Null);
    }
    for (name, state) in states {
        let mut value = serde_json::to_value(state).unwrap_or_default();
        // A merge patch keeps what it does not name: an emptied reason or parts list is
        // cleared by name.
        if let Some(obj) = value.as_object_mut() {
            for field in ["reason", "parts", "createdVfs"] {
                obj.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        policies.insert(name.clone(), value);
    }
    let patch = serde_json::json!({"status": {"policies": policies}});
    let api: Api<SpiderNodeInventory> = Api::all(client.clone());
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn publish(recorder: &Recorder, reference: &ObjectReference, ev: &state::PolicyEvent) {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.into(),
        note: Some(ev.note.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!("event on SpiderNetworkNodePolicy {}: {e}", ev.policy);
    }
}

#[cfg(test)]
mod tests;
