//! Every SpiderMultusConfig has its NetworkAttachmentDefinition: written (server-side apply)
//! with the same namespace and the name `render` gives, owned by it (controller reference), and
//! rewritten when it changes. A NAD it owns goes when it goes, or when it names another NAD: the
//! owner reference lets Kubernetes' garbage collector do it, and this loop does it too, so a
//! cluster without one is no different. A NAD of that name that this SpiderMultusConfig does not
//! own is left alone and reported as a Warning Event on it. Watch-driven, leader only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use spiderpool_api::multus::{
    NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec, SpiderMultusConfig,
};
use spiderpool_daemon::watch::cache_waking;

use crate::leader::Leadership;
use tokio::sync::Notify;

pub mod render;
#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod tests;

use render::{Rendered, render};

const MANAGER: &str = "spiderpool-controller";

/// What a pass does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply this NAD (create or rewrite).
    Write(Box<NetworkAttachmentDefinition>),
    /// Delete the NAD `namespace/name` whose UID is `uid` (owned, and its owner is gone or
    /// names another NAD now).
    Delete {
        namespace: String,
        name: String,
        uid: String,
    },
    /// A Warning Event on SpiderMultusConfig `namespace/name` (`reason`, `note`).
    Warn {
        namespace: String,
        name: String,
        reason: &'static str,
        note: String,
    },
}

fn owner_of(smc: &SpiderMultusConfig) -> OwnerReference {
    OwnerReference {
        api_version: SpiderMultusConfig::api_version(&()).into_owned(),
        kind: SpiderMultusConfig::kind(&()).into_owned(),
        name: smc.name_any(),
        uid: smc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The UID of the SpiderMultusConfig that controls `nad`, if one does.
fn controller_uid(nad: &NetworkAttachmentDefinition) -> Option<&str> {
    nad.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == SpiderMultusConfig::kind(&()))
        .map(|o| o.uid.as_str())
}

fn desired(smc: &SpiderMultusConfig, r: &Rendered) -> NetworkAttachmentDefinition {
    let mut nad = NetworkAttachmentDefinition::new(
        &r.name,
        NetworkAttachmentDefinitionSpec {
            config: r.config.clone(),
        },
    );
    nad.metadata.namespace = smc.namespace();
    nad.metadata.annotations = Some(r.annotations.clone());
    nad.metadata.owner_references = Some(vec![owner_of(smc)]);
    nad
}

/// The steps that make the NADs match the SpiderMultusConfigs.
pub fn plan(smcs: &[Arc<SpiderMultusConfig>], nads: &[Arc<NetworkAttachmentDefinition>]) -> Vec<Step> {
    let mut steps = Vec::new();
    let by_key: HashMap<(String, String), &NetworkAttachmentDefinition> = nads
        .iter()
        .map(|n| ((n.namespace().unwrap_or_default(), n.name_any()), &**n))
        .collect();
    // (namespace, NAD name, owner UID) each live SpiderMultusConfig wants; owners whose config
    // cannot be rendered keep whatever they own until it can.
    let mut wanted: HashSet<(String, String, String)> = HashSet::new();
    let mut keep_all: HashSet<String> = HashSet::new();
    let uids: HashSet<String> = smcs.iter().filter_map(|s| s.uid()).collect();
    for smc in smcs {
        let (ns, uid) = (smc.namespace().unwrap_or_default(), smc.uid().unwrap_or_default());
        let warn = |reason, note: String| Step::Warn {
            namespace: ns.clone(),
            name: smc.name_any(),
            reason,
            note,
        };
        if smc.meta().deletion_timestamp.is_some() {
            continue;
        }
        let rendered = match render(smc) {
            Ok(r) => r,
            Err(e) => {
                keep_all.insert(uid);
                steps.push(warn(
                    "InvalidConfig",
                    format!("no NetworkAttachmentDefinition: {e}"),
                ));
                continue;
            }
        };
        wanted.insert((ns.clone(), rendered.name.clone(), uid.clone()));
        let want = desired(smc, &rendered);
        match by_key.get(&(ns.clone(), rendered.name.clone())) {
            Some(have) if controller_uid(have) == Some(uid.as_str()) => {
                let same = have.spec.config == want.spec.config && have.annotations() == want.annotations();
                if !same {
                    steps.push(Step::Write(Box::new(want)));
                }
            }
            Some(have) => {
                let why = match controller_uid(have) {
                    Some(other) if uids.contains(other) => {
                        let owner = have.owner_references().iter().find(|o| o.uid == other);
                        format!(
                            "is managed by SpiderMultusConfig {ns}/{}",
                            owner.map(|o| o.name.as_str()).unwrap_or("?")
                        )
                    }
                    _ => "exists and is not this SpiderMultusConfig's: left alone (delete it, or \
                          name another NAD with the annotation multus.spidernet.io/cr-name)"
                        .to_string(),
                };
                steps.push(warn(
                    "NADConflict",
                    format!("NetworkAttachmentDefinition {ns}/{} {why}", rendered.name),
                ));
            }
            None => steps.push(Step::Write(Box::new(want))),
        }
    }
    for nad in nads {
        let Some(owner) = controller_uid(nad) else {
            continue;
        };
        let ns = nad.namespace().unwrap_or_default();
        let key = (ns.clone(), nad.name_any(), owner.to_string());
        if keep_all.contains(owner) || wanted.contains(&key) {
            continue;
        }
        // Owned by a SpiderMultusConfig that is gone, or that names another NAD now.
        steps.push(Step::Delete {
            namespace: ns,
            name: nad.name_any(),
            uid: nad.uid().unwrap_or_default(),
        });
    }
    steps
}

/// Keeps the NADs matching while `leading`; returns when the process ends.
pub async fn run(client: Client, leadership: Leadership, every: Duration) {
    let mut gained = leadership.watch();
    let wake = Arc::new(Notify::new());
    let smcs = cache_waking(
        Api::<SpiderMultusConfig>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let nads = cache_waking(
        Api::<NetworkAttachmentDefinition>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
    );
    // The last Warning per SpiderMultusConfig, so a standing problem is said once.
    let mut warned: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
            () = tokio::time::sleep(every) => {}
            () = gained.gained() => {}
        }
        if !leadership.leading()
            || smcs.wait_until_ready().await.is_err()
            || nads.wait_until_ready().await.is_err()
        {
            continue;
        }
        let all_smcs = smcs.state();
        let steps = plan(&all_smcs, &nads.state());
        let mut still: BTreeMap<(String, String), String> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Write(nad) => {
                    let (ns, name) = (nad.namespace().unwrap_or_default(), nad.name_any());
                    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns);
                    let params = PatchParams::apply(MANAGER).force();
                    match api.patch(&name, &params, &Patch::Apply(&*nad)).await {
                        Ok(_) => {
                            if let Some(owner) = owner_smc(&all_smcs, &nad) {
                                let note = format!("NetworkAttachmentDefinition {ns}/{name} written");
                                event(&recorder, owner, EventType::Normal, "Written", note).await;
                            }
                        }
                        Err(e) => tracing::warn!("NetworkAttachmentDefinition {ns}/{name}: {e}"),
                    }
                }
                Step::Delete { namespace, name, uid } => {
                    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &namespace);
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(&name, &params).await {
                        Ok(_) => tracing::info!(
                            "NetworkAttachmentDefinition {namespace}/{name} deleted: its SpiderMultusConfig no longer makes it"
                        ),
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => {
                            tracing::warn!("delete NetworkAttachmentDefinition {namespace}/{name}: {e}")
                        }
                    }
                }
                Step::Warn {
                    namespace,
                    name,
                    reason,
                    note,
                } => {
                    let key = (namespace.clone(), name.clone());
                    if warned.get(&key) != Some(&note)
                        && let Some(owner) = all_smcs.iter().find(|s| {
                            s.namespace().as_deref() == Some(namespace.as_str()) && s.name_any() == name
                        })
                    {
                        event(&recorder, owner, EventType::Warning, reason, note.clone()).await;
                    }
                    still.insert(key, note);
                }
            }
        }
        warned = still;
    }
}

fn owner_smc<'a>(
    smcs: &'a [Arc<SpiderMultusConfig>],
    nad: &NetworkAttachmentDefinition,
) -> Option<&'a SpiderMultusConfig> {
    let uid = controller_uid(nad)?;
    smcs.iter()
        .find(|s| s.uid().as_deref() == Some(uid))
        .map(|s| &**s)
}

async fn event(recorder: &Recorder, smc: &SpiderMultusConfig, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Render".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &smc.object_ref(&())).await {
        tracing::warn!("event on SpiderMultusConfig {}: {e}", smc.name_any());
    }
}
