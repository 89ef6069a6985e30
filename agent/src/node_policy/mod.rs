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
use spiderpool_linux::sysfs::Sysfs;
use spiderpool_provisioner::applier::{Kernel, LiveKernel, apply, target};
use spiderpool_provisioner::planner::Status;
use tokio::sync::Notify;

pub mod state;

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
    // What the inventory says now (`None` until written once: the first pass always writes).
    let mut reported: Option<BTreeMap<String, NodePolicyState>> = None;
    loop {
        if policies.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
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
        let outcome = if selected.is_empty() {
            Outcome::default()
        } else {
            let (opts, sel) = (options.clone(), selected.clone());
            let live = move |root: &std::path::Path| -> Result<Box<dyn Kernel>, String> {
                LiveKernel::new(Sysfs::new(root))
                    .map(|k| Box::new(k) as Box<dyn Kernel>)
                    .map_err(|e| format!("netlink: {e}"))
            };
            match tokio::task::spawn_blocking(move || round(&sel, labels, &opts, &live)).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!("node policy round: {e}");
                    Outcome::default()
                }
            }
        };
        let caveat = (options.mode == Mode::Report)
            .then_some("not applied (the agent runs with --node-policies=report)");
        let states = state::states(&selected, &outcome.inventory, &outcome.status, caveat);
        let none = BTreeMap::new();
        for ev in state::events(
            &node,
            reported.as_ref().unwrap_or(&none),
            &states,
            &outcome.executed,
        ) {
            let target = all
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(ev.policy.as_str()));
            if let Some(policy) = target {
                publish(&recorder, &policy.object_ref(&()), &ev).await;
            }
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
}

/// What carries out a round's actions on the node under a sysfs root (the live kernel; a
/// recording one in tests).
type KernelFor<'a> = dyn Fn(&std::path::Path) -> Result<Box<dyn Kernel>, String> + 'a;

/// Plans (and in apply mode applies) the selected policies; blocking (sysfs, netlink).
fn round(
    selected: &[Selected],
    labels: BTreeMap<String, String>,
    options: &Options,
    kernel_for: &KernelFor<'_>,
) -> Outcome {
    let policies: Vec<_> = selected.iter().map(|s| s.policy.clone()).collect();
    let first = crate::node::observe(&options.sysfs_root, &labels, &options.kubelet_dir);
    let plan = first.plan(&policies);
    if options.mode != Mode::Apply || plan.steps.is_empty() {
        return Outcome {
            inventory: first.inventory,
            status: plan.status,
            executed: Vec::new(),
        };
    }
    // The applier's first round looks at this same observation; later rounds scan again.
    let inventory = first.inventory.clone();
    let mut first = Some(first);
    let mut observe = || {
        first
            .take()
            .unwrap_or_else(|| crate::node::observe(&options.sysfs_root, &labels, &options.kubelet_dir))
    };
    let mut kernel = match kernel_for(&options.sysfs_root) {
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
                executed: Vec::new(),
            };
        }
    };
    let report = apply(&policies, &mut observe, kernel.as_mut());
    let executed = report
        .executed
        .iter()
        .map(|(step, result)| Executed {
            target: target(&step.action).to_string(),
            action: step.action.to_string(),
            error: result.as_ref().err().map(ToString::to_string),
        })
        .collect();
    Outcome {
        inventory,
        status: report.status,
        executed,
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
    let api: Api<SpiderNodeInventory> = Api::all(client.clone());
    let current = match api.get_status(node).await {
        Ok(obj) => obj.status.map(|s| s.policies).unwrap_or_default(),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            // The scan has not created the object yet.
            crate::inventory_report::ensure_object(client, node).await?;
            BTreeMap::new()
        }
        Err(e) => return Err(e),
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
            for field in ["reason", "parts"] {
                obj.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        policies.insert(name.clone(), value);
    }
    let patch = serde_json::json!({"status": {"policies": policies}});
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
mod tests {
    use std::sync::Mutex;

    use spiderpool_api::policy_status::{APPLIED, FAILED, PENDING};
    use spiderpool_provisioner::applier::ApplyError;
    use spiderpool_provisioner::planner::Action;

    use super::*;

    /// Records every action; refuses the ones on `refuse` (a PF name).
    struct Recording {
        log: Arc<Mutex<Vec<String>>>,
        refuse: Option<String>,
    }

    impl Kernel for Recording {
        fn apply(&mut self, action: &Action) -> Result<(), ApplyError> {
            if let Ok(mut log) = self.log.lock() {
                log.push(action.to_string());
            }
            match &self.refuse {
                Some(pf) if target(action) == pf => Err(ApplyError::Refused("EIO".into())),
                _ => Ok(()),
            }
        }
    }

    fn selected(spec: serde_json::Value) -> Vec<Selected> {
        let p: SpiderNetworkNodePolicyResource = serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetworkNodePolicy",
            "metadata": {"name": "p", "generation": 1}, "spec": spec
        }))
        .expect("policy");
        state::selected([&p], &BTreeMap::new())
    }

    fn options(mode: Mode) -> Options {
        Options {
            sysfs_root: spiderpool_testing::fixtures::fixture_root("cx6dx"),
            kubelet_dir: PathBuf::from("/nonexistent"),
            mode,
            resync: Duration::from_secs(30),
            device_plugin: None,
        }
    }

    /// Apply mode on the cx6dx fixture: the actions reach the kernel, each is an Event, and a
    /// node that does not change (the fixture stays as it is) is reported Pending, not Applied.
    #[test]
    fn apply_mode_carries_out_the_plan_and_reports_what_it_did() {
        let sel = selected(serde_json::json!({"nicSelector": {"pfNames": ["ens1f1np1"]}, "numVfs": 8}));
        let log = Arc::new(Mutex::new(Vec::new()));
        let kernel = {
            let log = log.clone();
            move |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> {
                Ok(Box::new(Recording {
                    log: log.clone(),
                    refuse: None,
                }))
            }
        };
        let out = round(&sel, BTreeMap::new(), &options(Mode::Apply), &kernel);
        let done = log.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(!done.is_empty(), "nothing reached the kernel");
        assert_eq!(out.executed.len(), done.len());
        assert!(
            out.executed
                .iter()
                .all(|e| e.target == "ens1f1np1" && e.error.is_none())
        );
        let states = state::states(&sel, &out.inventory, &out.status, None);
        assert_eq!(states["p"].phase, PENDING, "{:?}", states["p"]);
        let events = state::events("n1", &BTreeMap::new(), &states, &out.executed);
        assert!(
            events
                .iter()
                .any(|e| e.reason == "Applied" && e.note.contains("ens1f1np1")),
            "{events:?}"
        );

        // Report mode: the same plan, nothing carried out.
        log.lock().map(|mut l| l.clear()).unwrap_or_default();
        let out = round(&sel, BTreeMap::new(), &options(Mode::Report), &kernel);
        assert!(log.lock().map(|l| l.is_empty()).unwrap_or(false));
        assert!(out.executed.is_empty());

        // Already as asked: zero actions, Applied, no kernel needed.
        let same = selected(serde_json::json!({"nicSelector": {"pfNames": ["ens1f1np1"]}, "numVfs": 4}));
        let none = |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> { Err("not needed".into()) };
        let out = round(&same, BTreeMap::new(), &options(Mode::Apply), &none);
        assert_eq!(
            state::states(&same, &out.inventory, &out.status, None)["p"].phase,
            APPLIED
        );
    }

    #[test]
    fn a_refused_action_or_no_kernel_is_failed_with_the_reason() {
        let sel = selected(serde_json::json!({"nicSelector": {"pfNames": ["ens1f1np1"]}, "numVfs": 8}));
        let refusing = |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> {
            Ok(Box::new(Recording {
                log: Arc::default(),
                refuse: Some("ens1f1np1".into()),
            }))
        };
        let out = round(&sel, BTreeMap::new(), &options(Mode::Apply), &refusing);
        let states = state::states(&sel, &out.inventory, &out.status, None);
        assert_eq!(states["p"].phase, FAILED);
        assert!(states["p"].reason.contains("EIO"), "{:?}", states["p"]);
        let events = state::events("n1", &BTreeMap::new(), &states, &out.executed);
        assert!(
            events.iter().any(|e| e.reason == "ApplyFailed" && e.warning),
            "{events:?}"
        );

        let broken =
            |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> { Err("netlink: EPERM".into()) };
        let out = round(&sel, BTreeMap::new(), &options(Mode::Apply), &broken);
        let states = state::states(&sel, &out.inventory, &out.status, None);
        assert_eq!(states["p"].phase, FAILED);
        assert!(states["p"].reason.contains("netlink: EPERM"), "{:?}", states["p"]);
    }
}
