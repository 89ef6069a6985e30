//! The pod's SpiderEndpoint: which addresses of which pools each of its interfaces holds. Written
//! after the pools (an address is never in an endpoint without its pool's record), removed
//! interface by interface.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use spiderpool_api::crd::{IPAllocationDetail, PodIPAllocation, SpiderEndpoint, SpiderEndpointSpec};
use spiderpool_cni::agent::{IpamRequest, PodRef};

use super::{IpamService, ServiceError};

/// The endpoints this agent last wrote, as the API server answered: a DEL finds there which
/// pools to release and deletes guarded by that version, without reading the endpoint first (a
/// stale one makes the guarded delete fail, and the endpoint is read then). Only this node's
/// agent writes its pods' endpoints, so a stale one is rare: a restart empties it.
#[derive(Default)]
pub(super) struct Written(std::sync::Mutex<std::collections::HashMap<(String, String), SpiderEndpoint>>);

/// Endpoints kept at most; past that it starts again empty (pods gone without a DEL would
/// otherwise stay for the agent's life).
const WRITTEN_MOST: usize = 16_384;

impl Written {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), SpiderEndpoint>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, ep: SpiderEndpoint) {
        let mut map = self.map();
        if map.len() >= WRITTEN_MOST {
            map.clear();
        }
        map.insert((ep.namespace().unwrap_or_default(), ep.name_any()), ep);
    }

    fn forget(&self, ns: &str, name: &str) {
        self.map().remove(&(ns.to_string(), name.to_string()));
    }

    fn get(&self, ns: &str, name: &str) -> Option<SpiderEndpoint> {
        self.map().get(&(ns.to_string(), name.to_string())).cloned()
    }
}

impl IpamService {
    /// The pod's SpiderEndpoint (if any), its API and its name for messages.
    pub(super) async fn endpoint_of(
        &self,
        pod_ref: &PodRef,
    ) -> Result<(Api<SpiderEndpoint>, String, Option<SpiderEndpoint>), ServiceError> {
        let api: Api<SpiderEndpoint> = Api::namespaced(self.client.clone(), &pod_ref.namespace);
        let what = format!("SpiderEndpoint {}/{}", pod_ref.namespace, pod_ref.name);
        let ep = api
            .get_opt(&pod_ref.name)
            .await
            .map_err(|e| ServiceError::from_kube(e, &what))?;
        Ok((api, what, ep))
    }

    /// As [`IpamService::endpoint_of`], from what this agent last wrote when it has it.
    pub(super) async fn endpoint_for_del(
        &self,
        pod_ref: &PodRef,
    ) -> Result<(Api<SpiderEndpoint>, Option<SpiderEndpoint>), ServiceError> {
        if let Some(ep) = self.written.get(&pod_ref.namespace, &pod_ref.name) {
            return Ok((Api::namespaced(self.client.clone(), &pod_ref.namespace), Some(ep)));
        }
        let (api, _, ep) = self.endpoint_of(pod_ref).await?;
        Ok((api, ep))
    }

    pub(super) async fn record_endpoint(
        &self,
        pod: &Pod,
        req: &IpamRequest,
        detail: IPAllocationDetail,
        sts: Option<String>,
    ) -> Result<(), ServiceError> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<SpiderEndpoint> = Api::namespaced(self.client.clone(), &ns);
        let what = format!("SpiderEndpoint {ns}/{name}");
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // The common case is a pod's first interface: create without reading first.
        let mut read_first = false;
        for _ in 0..10 {
            let existing = if read_first {
                api.get_opt(&name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, &what))?
            } else {
                None
            };
            read_first = true;
            let mut ep = match existing {
                Some(ep) => ep,
                None => {
                    let mut ep = SpiderEndpoint::new(&name, SpiderEndpointSpec {});
                    ep.metadata.namespace = Some(ns.clone());
                    ep
                }
            };
            let owner = OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: name.clone(),
                uid: uid.clone(),
                controller: None,
                block_owner_deletion: None,
            };
            // A StatefulSet pod's endpoint outlives the pod object (its address follows the name),
            // so it carries no owner reference the garbage collector would follow.
            ep.metadata.owner_references = if sts.is_some() { None } else { Some(vec![owner]) };
            let mut status = ep.status.take().unwrap_or_default();
            if status.current.uid != uid {
                status.current = PodIPAllocation::default();
            }
            status.current.uid = uid.clone();
            status.current.node = self.node.clone();
            status.current.container_id = Some(req.container_id.clone());
            status.current.ips.retain(|d| d.interface != req.ifname);
            status.current.ips.push(detail.clone());
            status.owner_controller_type =
                Some(if sts.is_some() { "StatefulSet" } else { "Pod" }.to_string());
            status.owner_controller_name = Some(sts.clone().unwrap_or_else(|| name.clone()));
            ep.status = Some(status);
            let written = if ep.metadata.resource_version.is_some() {
                api.replace(&name, &PostParams::default(), &ep).await
            } else {
                api.create(&PostParams::default(), &ep).await
            };
            match written {
                Ok(ep) => {
                    self.written.remember(ep);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(ServiceError::from_kube(e, &what)),
            }
        }
        Err(ServiceError::Conflict(what))
    }

    /// Drops `ifname` from the endpoint; deletes the endpoint when no interface is left.
    pub(super) async fn forget_interface(
        &self,
        api: &Api<SpiderEndpoint>,
        name: &str,
        uid: &str,
        ifname: &str,
        mut known: Option<SpiderEndpoint>,
    ) -> Result<(), ServiceError> {
        let what = format!("SpiderEndpoint {name}");
        let ns = api.namespace().unwrap_or_default().to_string();
        for _ in 0..10 {
            let current = match known.take() {
                Some(ep) => Some(ep),
                None => api
                    .get_opt(name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, &what))?,
            };
            let Some(mut ep) = current else {
                return Ok(());
            };
            let mut status = ep.status.take().unwrap_or_default();
            if status.current.uid != uid {
                return Ok(());
            }
            status.current.ips.retain(|d| d.interface != ifname);
            let written = &self.written;
            let result = if status.current.ips.is_empty() {
                let dp = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: ep.metadata.resource_version.clone(),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                api.delete(name, &dp).await.map(|_| written.forget(&ns, name))
            } else {
                ep.status = Some(status);
                api.replace(name, &PostParams::default(), &ep)
                    .await
                    .map(|ep| written.remember(ep))
            };
            match result {
                Ok(()) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    written.forget(&ns, name);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Changed since it was known (read it next): not this agent's latest write.
                    written.forget(&ns, name);
                    continue;
                }
                Err(e) => return Err(ServiceError::from_kube(e, &what)),
            }
        }
        Err(ServiceError::Conflict(what))
    }
}
