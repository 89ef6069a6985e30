//! The applications that ask for auto-pools: every Deployment, StatefulSet, ReplicaSet,
//! DaemonSet, Job and CronJob whose pod template carries `ipam.spidernet.io/subnet(s)`, with the
//! number of pods it wants. One that another controller owns (a Deployment's ReplicaSet, a
//! CronJob's Job) is left to its owner, and host-network pods need no address.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spiderpool_api::crd::auto_pool as keys;
use spiderpool_ipam::cluster::auto_pool::App;

/// An application with SpiderSubnet annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub app: App,
    /// The pod template's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Pods it runs at once when scaled as it is.
    pub replicas: u64,
}

fn wanted(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
    template: Option<&PodTemplateSpec>,
    replicas: u64,
) -> Option<Wanted> {
    let owned = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    let template = template?;
    let host_network = template
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let annotations = template.metadata.as_ref()?.annotations.clone()?;
    let asks = annotations.contains_key(keys::ANNOTATION_SUBNET)
        || annotations.contains_key(keys::ANNOTATION_SUBNETS);
    if owned || host_network || !asks || meta.deletion_timestamp.is_some() {
        return None;
    }
    Some(Wanted {
        app: App::new(
            api_version,
            kind,
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            meta.uid.as_deref().unwrap_or_default(),
        ),
        annotations,
        replicas,
    })
}

fn count(n: Option<i32>, default: i32) -> u64 {
    u64::try_from(n.unwrap_or(default)).unwrap_or(0)
}

/// A Job's pods at once: `completions` when set, else `parallelism`; at least one (Spiderpool's
/// rule).
fn job_pods(spec: Option<&JobSpec>) -> u64 {
    let spec = spec.cloned().unwrap_or_default();
    let n = spec.completions.or(spec.parallelism).unwrap_or(1);
    u64::try_from(n).unwrap_or(0).max(1)
}

pub fn deployment(d: &Deployment) -> Option<Wanted> {
    let spec = d.spec.as_ref()?;
    wanted(
        "apps/v1",
        "Deployment",
        &d.metadata,
        Some(&spec.template),
        count(spec.replicas, 1),
    )
}

pub fn stateful_set(s: &StatefulSet) -> Option<Wanted> {
    let spec = s.spec.as_ref()?;
    wanted(
        "apps/v1",
        "StatefulSet",
        &s.metadata,
        Some(&spec.template),
        count(spec.replicas, 1),
    )
}

pub fn replica_set(r: &ReplicaSet) -> Option<Wanted> {
    let spec = r.spec.as_ref()?;
    wanted(
        "apps/v1",
        "ReplicaSet",
        &r.metadata,
        spec.template.as_ref(),
        count(spec.replicas, 1),
    )
}

/// A DaemonSet wants a pod on every node it is scheduled to.
pub fn daemon_set(d: &DaemonSet) -> Option<Wanted> {
    let spec = d.spec.as_ref()?;
    let nodes = d.status.as_ref().map(|s| s.desired_number_scheduled);
    wanted(
        "apps/v1",
        "DaemonSet",
        &d.metadata,
        Some(&spec.template),
        count(nodes, 0),
    )
}

pub fn job(j: &Job) -> Option<Wanted> {
    let spec = j.spec.as_ref()?;
    wanted(
        "batch/v1",
        "Job",
        &j.metadata,
        Some(&spec.template),
        job_pods(Some(spec)),
    )
}

pub fn cron_job(c: &CronJob) -> Option<Wanted> {
    let spec = c.spec.as_ref()?.job_template.spec.as_ref()?;
    wanted(
        "batch/v1",
        "CronJob",
        &c.metadata,
        Some(&spec.template),
        job_pods(Some(spec)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(replicas: Option<i32>, annotations: serde_json::Value, owned: bool) -> Deployment {
        let owners = if owned {
            json!([{"apiVersion": "x/v1", "kind": "Op", "name": "o", "uid": "u", "controller": true}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "1-2-abcdef", "ownerReferences": owners},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"annotations": annotations}, "spec": {"containers": []}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn applications_with_subnet_annotations_and_their_replicas() {
        let a = json!({(keys::ANNOTATION_SUBNET): r#"{"ipv4":["s"]}"#});
        let w = deployment(&deploy(Some(3), a.clone(), false)).unwrap();
        assert_eq!(w.replicas, 3);
        assert_eq!(w.app.application(), "apps_v1_Deployment_ns_web");
        assert_eq!(deployment(&deploy(None, a.clone(), false)).unwrap().replicas, 1);
        assert!(
            deployment(&deploy(Some(3), a, true)).is_none(),
            "owned by an operator"
        );
        assert!(deployment(&deploy(Some(3), json!({"x": "y"}), false)).is_none());
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"parallelism": 4, "template": {"metadata": {"annotations": {(keys::ANNOTATION_SUBNET): "{}"}}, "spec": {"containers": []}}}
        }))
        .unwrap();
        assert_eq!(super::job(&job).unwrap().replicas, 4);
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns", "uid": "u"},
            "spec": {"selector": {}, "template": {"metadata": {"annotations": {(keys::ANNOTATION_SUBNETS): "[]"}}, "spec": {"containers": [], "hostNetwork": false}}},
            "status": {"desiredNumberScheduled": 7, "currentNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0}
        }))
        .unwrap();
        assert_eq!(daemon_set(&ds).unwrap().replicas, 7);
    }
}
