//! Applications of other controllers (an operator's kind, a ReplicationController): the
//! controller cannot watch every kind, so it learns them from their pods. A pod whose controller
//! is not one of the kinds [`super::apps`] watches and whose annotations ask for a subnet stands
//! for its controller; such an application needs a fixed `ippool-ip-number` (nothing tells how
//! many pods it wants), as in Spiderpool.
//!
//! Its pool is reclaimed once none of its pods has been seen for [`GRACE`]: without a watch of
//! the owner's kind, "no pods for a while" is what says the application is gone (an application
//! scaled to zero for longer loses its pool too; Spiderpool reads the owner with a dynamic client,
//! which needs read access to every kind in the cluster).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use spiderpool_api::crd::auto_pool as keys;
use spiderpool_ipam::cluster::auto_pool::App;

use super::apps::Wanted;

/// How long an application of another controller may have no pods before its pool goes.
pub const GRACE: Duration = Duration::from_secs(60);

/// The applications of other controllers that `pods` ask auto-pools for, one per controller
/// (its first pod's annotations).
pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a PartialObjectMeta<Pod>>) -> Vec<Wanted> {
    let mut out: BTreeMap<String, Wanted> = BTreeMap::new();
    for pod in pods {
        let meta = &pod.metadata;
        let Some(owner) = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        else {
            continue;
        };
        let Some(annotations) = meta.annotations.as_ref() else {
            continue;
        };
        let asks = annotations.contains_key(keys::ANNOTATION_SUBNET)
            || annotations.contains_key(keys::ANNOTATION_SUBNETS);
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let app = App::new(
            &owner.api_version,
            &owner.kind,
            namespace,
            &owner.name,
            &owner.uid,
        );
        // A ReplicaSet's or Job's pods belong to it or to its Deployment or CronJob, all watched.
        if !asks || app.is_watched() || out.contains_key(&owner.uid) {
            continue;
        }
        out.insert(
            owner.uid.clone(),
            Wanted {
                app,
                annotations: annotations.clone(),
                replicas: 0,
            },
        );
    }
    out.into_values().collect()
}

/// When each application of another controller last had pods, as this replica saw it.
#[derive(Debug)]
pub struct LastSeen {
    since: Instant,
    seen: HashMap<String, Instant>,
}

impl LastSeen {
    pub fn new(now: Instant) -> LastSeen {
        LastSeen {
            since: now,
            seen: HashMap::new(),
        }
    }

    /// Records `present` at `now`; the UIDs whose pools must stay: seen within [`GRACE`], or
    /// every one (`None`) while this replica has not watched for that long itself.
    pub fn update(
        &mut self,
        present: impl IntoIterator<Item = String>,
        now: Instant,
    ) -> Option<HashSet<String>> {
        for uid in present {
            self.seen.insert(uid, now);
        }
        self.seen.retain(|_, t| now.duration_since(*t) < GRACE);
        (now.duration_since(self.since) >= GRACE).then(|| self.seen.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        owner_kind: &str,
        api_version: &str,
        uid: &str,
        annotations: serde_json::Value,
    ) -> PartialObjectMeta<Pod> {
        serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations,
                "ownerReferences": [{"apiVersion": api_version, "kind": owner_kind, "name": "o", "uid": uid, "controller": true}]}
        }))
        .unwrap()
    }

    #[test]
    fn pods_of_other_controllers_stand_for_them_once() {
        let asks = json!({(keys::ANNOTATION_SUBNET): r#"{"ipv4":["s"]}"#, (keys::ANNOTATION_IP_NUMBER): "3"});
        let pods = [
            pod("Database", "example.com/v1", "u1", asks.clone()),
            pod("Database", "example.com/v1", "u1", asks.clone()),
            pod("ReplicaSet", "apps/v1", "u2", asks.clone()),
            pod("Database", "example.com/v1", "u3", json!({})),
        ];
        let got = from_pods(&pods);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].app.application(), "example.com_v1_Database_ns_o");
    }

    #[test]
    fn pools_of_applications_without_pods_go_after_the_grace() {
        let t0 = Instant::now();
        let mut seen = LastSeen::new(t0);
        assert_eq!(seen.update(["a".to_string()], t0), None, "too early to judge");
        let later = t0 + GRACE + Duration::from_secs(1);
        let keep = seen.update(["b".to_string()], later).unwrap();
        assert!(keep.contains("b") && !keep.contains("a"));
    }
}
