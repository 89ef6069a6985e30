//! The policy loop's rounds against the cx6dx fixture with a recording kernel.

use std::sync::Mutex;

use spiderpool_api::policy_status::{APPLIED, FAILED, PENDING, REMOVING};
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

/// A kernel source whose kernels record every action into `log` and refuse none.
fn recording(
    log: &Arc<Mutex<Vec<String>>>,
) -> impl Fn(&std::path::Path) -> Result<Box<dyn Kernel>, String> + use<> {
    let log = log.clone();
    move |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> {
        Ok(Box::new(Recording {
            log: log.clone(),
            refuse: None,
        }))
    }
}

/// One round of `selected` and `leftovers` on the fixture, in `mode`, through `kernel_for`.
fn run_round(
    selected: &[Selected],
    leftovers: &[Leftover],
    mode: Mode,
    kernel_for: &KernelFor<'_>,
) -> Outcome {
    round(
        selected,
        leftovers,
        BTreeMap::new(),
        &options(mode),
        &access(kernel_for),
    )
}

/// No other namespace holds anything.
fn nobody(_: &std::collections::HashSet<u32>) -> Result<BTreeMap<u32, Vec<String>>, String> {
    Ok(BTreeMap::new())
}

fn access<'a>(kernel_for: &'a KernelFor<'a>) -> NodeAccess<'a> {
    NodeAccess {
        kernel_for,
        users_for: &nobody,
    }
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
    let kernel = recording(&log);
    let out = run_round(&sel, &[], Mode::Apply, &kernel);
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
    let out = run_round(&sel, &[], Mode::Report, &kernel);
    assert!(log.lock().map(|l| l.is_empty()).unwrap_or(false));
    assert!(out.executed.is_empty());

    // Already as asked: zero actions, Applied, no kernel needed.
    let same = selected(serde_json::json!({"nicSelector": {"pfNames": ["ens1f1np1"]}, "numVfs": 4}));
    let none = |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> { Err("not needed".into()) };
    let out = run_round(&same, &[], Mode::Apply, &none);
    assert_eq!(
        state::states(&same, &out.inventory, &out.status, None)["p"].phase,
        APPLIED
    );
}

/// A policy gone from the node: the VFs it created go to 0 and its entry goes; in report
/// mode the entry stays, saying what would be removed; a remaining policy that wants the
/// VFs keeps them and takes over the record.
#[test]
fn a_policy_gone_from_the_node_has_what_it_created_removed() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let kernel = recording(&log);
    let old = NodePolicyState {
        generation: 3,
        phase: APPLIED.into(),
        created_vfs: vec!["ens1f0np0".into()],
        ..NodePolicyState::default()
    };
    let before = BTreeMap::from([("old".to_string(), old.clone())]);
    let left = removal::leftovers(&before, &[]);
    let out = run_round(&[], &left, Mode::Apply, &kernel);
    assert_eq!(
        log.lock().map(|l| l.clone()).unwrap_or_default(),
        ["set ens1f0np0 (0000:3b:00.0) sriov_numvfs = 0"]
    );
    let removed = &out.removed[0];
    assert_eq!(removal::state_after(&old, removed, None), None, "{removed:?}");
    let events = removal::events("n1", removed, Some(&old), None);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "Removed");
    assert!(events[0].note.contains("sriov_numvfs = 0"), "{events:?}");

    log.lock().map(|mut l| l.clear()).unwrap_or_default();
    let out = run_round(&[], &left, Mode::Report, &kernel);
    assert!(log.lock().map(|l| l.is_empty()).unwrap_or(false));
    let kept = removal::state_after(&old, &out.removed[0], Some("report only")).expect("kept");
    assert_eq!((kept.phase.as_str(), kept.generation), (REMOVING, 3));
    assert!(
        kept.reason.contains("report only: would set ens1f0np0"),
        "{kept:?}"
    );
    assert_eq!(kept.created_vfs, ["ens1f0np0"]);

    let wants = selected(serde_json::json!({"nicSelector": {"pfNames": ["ens1f0np0"]}, "numVfs": 4}));
    let renamed = BTreeMap::from([("gone".to_string(), old.clone())]);
    let left = removal::leftovers(&renamed, &wants);
    let out = run_round(&wants, &left, Mode::Apply, &kernel);
    assert!(log.lock().map(|l| l.is_empty()).unwrap_or(false), "the VFs stay");
    assert_eq!(
        out.removed[0].handed_over,
        [("ens1f0np0".to_string(), "p".to_string())]
    );
    assert_eq!(removal::state_after(&old, &out.removed[0], None), None);
    let mut states = state::states(&wants, &out.inventory, &out.status, None);
    state::keep_records(&mut states, &renamed, &wants, &[], &out.removed[0].handed_over);
    assert_eq!(states["p"].created_vfs, ["ens1f0np0"]);
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
    let out = run_round(&sel, &[], Mode::Apply, &refusing);
    let states = state::states(&sel, &out.inventory, &out.status, None);
    assert_eq!(states["p"].phase, FAILED);
    assert!(states["p"].reason.contains("EIO"), "{:?}", states["p"]);
    let events = state::events("n1", &BTreeMap::new(), &states, &out.executed);
    assert!(
        events.iter().any(|e| e.reason == "ApplyFailed" && e.warning),
        "{events:?}"
    );

    let broken = |_: &std::path::Path| -> Result<Box<dyn Kernel>, String> { Err("netlink: EPERM".into()) };
    let out = run_round(&sel, &[], Mode::Apply, &broken);
    let states = state::states(&sel, &out.inventory, &out.status, None);
    assert_eq!(states["p"].phase, FAILED);
    assert!(states["p"].reason.contains("netlink: EPERM"), "{:?}", states["p"]);
}
