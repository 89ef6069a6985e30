//! ADD for a pod whose application asks for SpiderSubnet auto-pools: its top controller found
//! through the owner references (a Deployment through its ReplicaSet, a CronJob through its Job),
//! and the pool the controller made for it, waited for while it is created or grows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use spiderpool_api::crd::auto_pool as keys;
use spiderpool_ipam::cluster::auto_pool::{App, SubnetChoice};
use spiderpool_ipam::cluster::select::Candidates;
use spiderpool_ipam::range::Family;

use super::{IpamService, ServiceError};

/// How long an ADD waits for its auto-pool to appear or grow (Spiderpool waits up to 50 s; the
/// plugin's call to the agent gives up after 60 s).
pub const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

fn controller_of(owners: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    owners?.iter().find(|o| o.controller == Some(true))
}

/// The application of `(owner, namespace)`: the owner itself unless a known higher controller
/// owns it.
fn app_of(owner: &OwnerReference, namespace: &str) -> App {
    App::new(
        &owner.api_version,
        &owner.kind,
        namespace,
        &owner.name,
        &owner.uid,
    )
}

impl IpamService {
    /// The pod's top controller: the affinity auto-pools are matched against.
    pub(super) async fn top_controller(&self, pod: &Pod) -> Result<App, ServiceError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let what = format!(
            "pod {namespace}/{}",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(owner) = controller_of(pod.metadata.owner_references.as_ref()) else {
            return Err(ServiceError::BadRequest(format!(
                "{what} uses SpiderSubnet annotations but no controller owns it (auto-pools are per application)"
            )));
        };
        let parent = match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => {
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
                let rs = api.get(&owner.name).await.map_err(|e| {
                    ServiceError::from_kube(e, &format!("ReplicaSet {namespace}/{}", owner.name))
                })?;
                controller_of(rs.metadata.owner_references.as_ref())
                    .filter(|o| o.kind == "Deployment")
                    .cloned()
            }
            ("batch/v1", "Job") => {
                let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
                let job = api
                    .get(&owner.name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, &format!("Job {namespace}/{}", owner.name)))?;
                controller_of(job.metadata.owner_references.as_ref())
                    .filter(|o| o.kind == "CronJob")
                    .cloned()
            }
            _ => None,
        };
        Ok(app_of(parent.as_ref().unwrap_or(owner), &namespace))
    }

    /// The auto-pool of `app` for `choice`'s interface in `family`, by its labels.
    fn auto_pool_name(&self, app: &App, choice: &SubnetChoice, family: Family) -> Option<String> {
        let subnet = choice.of(family)?;
        let version = format!("IPv{}", family.number());
        self.pools
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .find(|p| {
                let empty = BTreeMap::new();
                let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
                let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
                app.owns(labels)
                    && is(keys::LABEL_APP_UID, &app.uid)
                    && is(keys::LABEL_OWNER_SUBNET, subnet)
                    && is(keys::LABEL_INTERFACE, &choice.interface)
                    && is(keys::LABEL_IP_VERSION, &version)
            })
            .and_then(|p| p.metadata.name.clone())
    }

    /// The candidates for an interface with auto-pools, once the controller has made them (until
    /// `deadline`).
    pub(super) async fn auto_candidates(
        &self,
        app: &App,
        choice: &SubnetChoice,
        clean_gateway: bool,
        deadline: Instant,
    ) -> Result<Candidates, ServiceError> {
        loop {
            let mut missing = Vec::new();
            let mut names = [Vec::new(), Vec::new()];
            for (i, family) in [Family::V4, Family::V6].into_iter().enumerate() {
                let Some(subnet) = choice.of(family) else { continue };
                match self.auto_pool_name(app, choice, family) {
                    Some(name) => names[i].push(name),
                    None => missing.push(format!("IPv{} from SpiderSubnet {subnet}", family.number())),
                }
            }
            if missing.is_empty() {
                let [ipv4, ipv6] = names;
                return Ok(Candidates {
                    ipv4,
                    ipv6,
                    clean_gateway,
                    source: "the application's auto-pools (ipam.spidernet.io/subnet)",
                });
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::NotYet(format!(
                    "no auto-pool yet for {} {}/{} interface {} ({}) after {} s: is spiderpool-controller running, and does the subnet have room?",
                    app.kind,
                    app.namespace,
                    app.name,
                    choice.interface,
                    missing.join(", "),
                    WAIT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Sleeps a poll interval when `deadline` allows another try at an auto-pool that is full (the
/// controller grows it as the application scales); `false` when it is time to give up.
pub(super) async fn wait_for_growth(deadline: Instant) -> bool {
    if Instant::now() + POLL > deadline {
        return false;
    }
    tokio::time::sleep(POLL).await;
    true
}
