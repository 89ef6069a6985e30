//! The agent's IPAM service (cluster mode): the `spiderpool` plugin's verbs answered from
//! SpiderIPPool objects. Addresses are recorded in the pool's status (see [`pool_writer`]) and in
//! the pod's SpiderEndpoint; the Kubernetes API is the only state, so the agent can be killed and
//! restarted at any point.

pub mod pool_writer;
pub mod select;
pub mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use spiderpool_api::coordinator::SpiderCoordinator;
use spiderpool_api::crd::{
    IPAllocationDetail, PodIPAllocation, PoolIPAllocation, SpiderEndpoint, SpiderEndpointSpec, SpiderIPPool,
    SpiderReservedIP,
};
use spiderpool_cni::agent::{AgentRequest, PodRef, Verb};
use spiderpool_cni::{CniError, CniResult, ErrorCode, IpConfig};
use spiderpool_ipam::range::{Family, RESERVED_CAP, expand_entries};
use tokio::sync::{mpsc, oneshot};

use pool_writer::{Claimed, PoolOp};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid pool: {0}")]
    InvalidPool(String),
    #[error("invalid annotation {0}")]
    BadAnnotation(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn from_kube(e: kube::Error, what: &str) -> ServiceError {
        match e {
            kube::Error::Api(s) if s.code == 404 => ServiceError::NotFound(format!("{what}: not found")),
            other => ServiceError::Api(format!("{what}: {other}")),
        }
    }
}

impl From<ServiceError> for CniError {
    fn from(e: ServiceError) -> CniError {
        let code = match &e {
            ServiceError::Api(_) | ServiceError::NotFound(_) => ErrorCode::TryAgainLater,
            ServiceError::InvalidPool(_) | ServiceError::BadAnnotation(_) | ServiceError::BadRequest(_) => {
                ErrorCode::InvalidNetworkConfig
            }
            ServiceError::Exhausted(_) => ErrorCode::PoolExhausted,
            ServiceError::Mismatch(_) => ErrorCode::AllocationMismatch,
            ServiceError::Internal(_) => ErrorCode::Internal,
        };
        CniError::new(code, e.to_string())
    }
}

/// The StatefulSet that controls a pod, if any.
fn stateful_set_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet" && o.controller == Some(true))
        .map(|o| o.name.clone())
}

pub struct IpamService {
    client: Client,
    node: String,
    pools: reflector::Store<SpiderIPPool>,
    reserved: reflector::Store<SpiderReservedIP>,
    pods: reflector::Store<Pod>,
    namespaces: reflector::Store<Namespace>,
    coordinators: reflector::Store<SpiderCoordinator>,
    writers: Mutex<HashMap<String, mpsc::UnboundedSender<PoolOp>>>,
}

impl IpamService {
    /// Starts the pool and reserved-IP caches and waits until both have listed once.
    pub async fn start(client: Client, node: String) -> anyhow::Result<Arc<IpamService>> {
        let (pools, pools_writer) = reflector::store();
        let pool_api: Api<SpiderIPPool> = Api::all(client.clone());
        tokio::spawn(
            watcher(pool_api, watcher::Config::default())
                .default_backoff()
                .reflect(pools_writer)
                .for_each(|_| async {}),
        );
        let (reserved, reserved_writer) = reflector::store();
        let reserved_api: Api<SpiderReservedIP> = Api::all(client.clone());
        tokio::spawn(
            watcher(reserved_api, watcher::Config::default())
                .default_backoff()
                .reflect(reserved_writer)
                .for_each(|_| async {}),
        );
        // This node's pods and every namespace: what pool choice reads per ADD, kept by watches
        // instead of two reads of the API server per pod. A pod the watch has not delivered yet
        // is read directly.
        let (pods, pods_writer) = reflector::store();
        let pod_api: Api<Pod> = Api::all(client.clone());
        tokio::spawn(
            watcher(
                pod_api,
                watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            )
            .default_backoff()
            .reflect(pods_writer)
            .for_each(|_| async {}),
        );
        let (namespaces, ns_writer) = reflector::store();
        let ns_api: Api<Namespace> = Api::all(client.clone());
        tokio::spawn(
            watcher(ns_api, watcher::Config::default())
                .default_backoff()
                .reflect(ns_writer)
                .for_each(|_| async {}),
        );
        let (coordinators, coordinators_writer) = reflector::store();
        let coordinator_api: Api<SpiderCoordinator> = Api::all(client.clone());
        tokio::spawn(
            watcher(coordinator_api, watcher::Config::default())
                .default_backoff()
                .reflect(coordinators_writer)
                .for_each(|_| async {}),
        );
        pools.wait_until_ready().await?;
        coordinators.wait_until_ready().await?;
        reserved.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        namespaces.wait_until_ready().await?;
        Ok(Arc::new(IpamService {
            client,
            node,
            pools,
            reserved,
            pods,
            namespaces,
            coordinators,
            writers: Mutex::new(HashMap::new()),
        }))
    }

    pub async fn handle(self: &Arc<Self>, req: AgentRequest) -> Result<CniResult, CniError> {
        match req.verb {
            Verb::Add => self.add(&req).await,
            Verb::Del => self.del(&req).await.map(|()| CniResult::default()),
            Verb::Check => self.check(&req).await.map(|()| CniResult::default()),
            Verb::Gc => self.gc(&req).await.map(|()| CniResult::default()),
            Verb::Coordinator => {
                Err(ServiceError::BadRequest("COORDINATOR is not an IPAM verb".into()).into())
            }
        }
    }

    /// The coordinator plugin's cluster settings: `{"spec", "status"}` of the SpiderCoordinator
    /// named `default` (or of the only one), null when there is none.
    pub fn coordinator_settings(&self) -> serde_json::Value {
        let all = self.coordinators.state();
        let chosen = all
            .iter()
            .find(|c| c.name_any() == "default")
            .or_else(|| (all.len() == 1).then(|| &all[0]));
        match chosen {
            Some(c) => serde_json::json!({"name": c.name_any(), "spec": c.spec, "status": c.status}),
            None => serde_json::Value::Null,
        }
    }

    fn writer(&self, pool: &str) -> mpsc::UnboundedSender<PoolOp> {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writers.get(pool).filter(|w| !w.is_closed()) {
            return w.clone();
        }
        let store = self.reserved.clone();
        let pools = self.pools.clone();
        let key = reflector::ObjectRef::new(pool);
        let sources = pool_writer::Sources {
            api: Api::all(self.client.clone()),
            reserved: Arc::new(move || reserved_keys(&store.state())),
            latest: Arc::new(move || pools.get(&key)),
        };
        let w = pool_writer::spawn(sources, pool.to_string());
        writers.insert(pool.to_string(), w.clone());
        w
    }

    async fn claim(&self, pool: &str, entry: PoolIPAllocation) -> Result<Option<Claimed>, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.writer(pool)
            .send(PoolOp::Claim { entry, reply })
            .map_err(|_| ServiceError::Internal(format!("writer of pool {pool} stopped")))?;
        rx.await
            .map_err(|_| ServiceError::Internal(format!("writer of pool {pool} dropped a claim")))?
    }

    async fn release(
        &self,
        pool: &str,
        pod_uid: &str,
        interface: Option<&str>,
    ) -> Result<Vec<IpAddr>, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.writer(pool)
            .send(PoolOp::Release {
                pod_uid: pod_uid.to_string(),
                interface: interface.map(str::to_string),
                reply,
            })
            .map_err(|_| ServiceError::Internal(format!("writer of pool {pool} stopped")))?;
        rx.await
            .map_err(|_| ServiceError::Internal(format!("writer of pool {pool} dropped a release")))?
    }

    /// The pool by name: from the cache, else from the API server (the cache may not have seen a
    /// pool created a moment ago).
    async fn pool(&self, name: &str) -> Result<Arc<SpiderIPPool>, ServiceError> {
        if let Some(p) = self.pools.get(&reflector::ObjectRef::new(name)) {
            return Ok(p);
        }
        let api: Api<SpiderIPPool> = Api::all(self.client.clone());
        api.get(name)
            .await
            .map(Arc::new)
            .map_err(|e| ServiceError::from_kube(e, &format!("SpiderIPPool {name}")))
    }

    /// The pod's SpiderEndpoint (if any), its API and its name for messages.
    async fn endpoint_of(
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

    async fn add(self: &Arc<Self>, req: &AgentRequest) -> Result<CniResult, CniError> {
        let pod_ref = pod_of(req)?;
        let what = format!("pod {}/{}", pod_ref.namespace, pod_ref.name);
        let cached = self
            .pods
            .get(&reflector::ObjectRef::new(&pod_ref.name).within(&pod_ref.namespace))
            .filter(|p| pod_ref.uid.is_empty() || p.metadata.uid.as_deref() == Some(pod_ref.uid.as_str()));
        let pod = match cached {
            Some(p) => (*p).clone(),
            None => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod_ref.namespace);
                pods.get(&pod_ref.name)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, &what))?
            }
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !pod_ref.uid.is_empty() && pod_ref.uid != uid {
            return Err(ServiceError::BadRequest(format!(
                "{what} has UID {uid}, the runtime asked for UID {}",
                pod_ref.uid
            ))
            .into());
        }
        let sts = stateful_set_of(&pod);
        let namespace = match self
            .namespaces
            .get(&reflector::ObjectRef::new(&pod_ref.namespace))
        {
            Some(n) => (*n).clone(),
            None => {
                let namespaces: Api<Namespace> = Api::all(self.client.clone());
                namespaces
                    .get(&pod_ref.namespace)
                    .await
                    .map_err(|e| ServiceError::from_kube(e, &format!("namespace {}", pod_ref.namespace)))?
            }
        };
        let empty = BTreeMap::new();
        // Arcs of the cached objects: a pool's status carries every allocation, not worth a copy.
        let all_pools = self.pools.state();
        let chosen = select::candidates(&select::Inputs {
            ifname: &req.ifname,
            pod_annotations: pod.metadata.annotations.as_ref().unwrap_or(&empty),
            namespace_annotations: namespace.metadata.annotations.as_ref().unwrap_or(&empty),
            netconf_v4: &req.default_ipv4_pools,
            netconf_v6: &req.default_ipv6_pools,
            netconf_clean_gateway: req.clean_gateway,
            pools: &all_pools,
        })?;
        if chosen.ipv4.is_empty() && chosen.ipv6.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "no pool for {what} interface {}: no annotation, no namespace or netconf default pools, and no pool with default: true",
                req.ifname
            ))
            .into());
        }
        let node_labels = self.node_labels_if_needed(&chosen).await?;
        let subject = select::Subject {
            node: &self.node,
            node_labels: node_labels.as_ref(),
            namespace: &pod_ref.namespace,
            namespace_labels: namespace.metadata.labels.as_ref().unwrap_or(&empty),
            pod_labels: pod.metadata.labels.as_ref().unwrap_or(&empty),
            network: &req.network,
        };
        let entry = PoolIPAllocation {
            pod: format!("{}/{}", pod_ref.namespace, pod_ref.name),
            pod_uid: uid.clone(),
            interface: Some(req.ifname.clone()),
            node: Some(self.node.clone()),
            owner_stateful_set: sts.clone(),
        };
        let mut got: Vec<(Family, Claimed)> = Vec::new();
        for (family, names) in [(Family::V4, &chosen.ipv4), (Family::V6, &chosen.ipv6)] {
            if names.is_empty() {
                continue;
            }
            match self
                .claim_from(family, names, &subject, &entry, chosen.source)
                .await
            {
                Ok(c) => got.push((family, c)),
                Err(e) => {
                    // All or nothing: give back what the other family got.
                    for (_, c) in &got {
                        let _ = self.release(&c.pool.name, &uid, Some(&req.ifname)).await;
                    }
                    return Err(e.into());
                }
            }
        }
        let detail = detail_of(&req.ifname, &got, chosen.clean_gateway);
        if let Err(e) = self.record_endpoint(&pod, req, detail, sts).await {
            for (_, c) in &got {
                let _ = self.release(&c.pool.name, &uid, Some(&req.ifname)).await;
            }
            return Err(e.into());
        }
        Ok(result_of(&got, chosen.clean_gateway))
    }

    async fn node_labels_if_needed(
        &self,
        chosen: &select::Candidates,
    ) -> Result<Option<BTreeMap<String, String>>, ServiceError> {
        let mut needed = false;
        for name in chosen.ipv4.iter().chain(&chosen.ipv6) {
            if let Ok(p) = self.pool(name).await {
                needed |= p.spec.node_affinity.is_some();
            }
        }
        if !needed {
            return Ok(None);
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get_opt(&self.node).await {
            Ok(n) => Ok(Some(n.and_then(|n| n.metadata.labels).unwrap_or_default())),
            Err(e) => Err(ServiceError::from_kube(e, &format!("node {}", self.node))),
        }
    }

    async fn claim_from(
        &self,
        family: Family,
        names: &[String],
        subject: &select::Subject<'_>,
        entry: &PoolIPAllocation,
        source: &str,
    ) -> Result<Claimed, ServiceError> {
        let mut why = Vec::new();
        for name in names {
            let pool = match self.pool(name).await {
                Ok(p) => p,
                Err(e) => {
                    why.push(format!("{name}: {e}"));
                    continue;
                }
            };
            if select::family_of(&pool) != Some(i64::from(family.number())) {
                why.push(format!("{name}: not an IPv{} pool", family.number()));
                continue;
            }
            if let Err(reason) = select::usable(&pool, subject) {
                why.push(format!("{name}: {reason}"));
                continue;
            }
            match self.claim(name, entry.clone()).await {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => why.push(format!("{name}: no free address")),
                Err(ServiceError::InvalidPool(e)) => why.push(format!("{name}: {e}")),
                Err(e) => return Err(e),
            }
        }
        Err(ServiceError::Exhausted(format!(
            "no IPv{} address for {} interface {} from {source} [{}]",
            family.number(),
            entry.pod,
            entry.interface.as_deref().unwrap_or(""),
            why.join("; ")
        )))
    }

    async fn record_endpoint(
        &self,
        pod: &Pod,
        req: &AgentRequest,
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
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(ServiceError::from_kube(e, &what)),
            }
        }
        Err(ServiceError::Api(format!("{what}: kept conflicting")))
    }

    async fn del(&self, req: &AgentRequest) -> Result<(), CniError> {
        let pod_ref = pod_of(req)?;
        let (api, _, ep) = self.endpoint_of(pod_ref).await?;
        let Some(ep) = ep else {
            // No endpoint: ADD never finished, or this is the second DEL. Pools may still hold
            // an address written before the endpoint; release by UID where one is known.
            if !pod_ref.uid.is_empty() {
                self.release_everywhere(&pod_ref.uid, &req.ifname).await?;
            }
            return Ok(());
        };
        let status = ep.status.clone().unwrap_or_default();
        if !pod_ref.uid.is_empty() && status.current.uid != pod_ref.uid {
            // The endpoint belongs to a newer pod of the same name; this pod's own addresses,
            // if any are left, are found by UID.
            self.release_everywhere(&pod_ref.uid, &req.ifname).await?;
            return Ok(());
        }
        if status.owner_controller_type.as_deref() == Some("StatefulSet") {
            // A StatefulSet pod keeps its address for its successor; the controller releases it
            // when the StatefulSet no longer wants that pod.
            return Ok(());
        }
        let uid = status.current.uid.clone();
        for d in status.current.ips.iter().filter(|d| d.interface == req.ifname) {
            for pool in [&d.ipv4_pool, &d.ipv6_pool].into_iter().flatten() {
                match self.release(pool, &uid, Some(&req.ifname)).await {
                    Ok(_) | Err(ServiceError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.forget_interface(&api, &pod_ref.name, &uid, &req.ifname, Some(ep))
            .await?;
        Ok(())
    }

    async fn release_everywhere(&self, uid: &str, ifname: &str) -> Result<(), ServiceError> {
        let holding: Vec<String> = self
            .pools
            .state()
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.allocations()
                        .unwrap_or_default()
                        .values()
                        .any(|a| a.pod_uid == uid && a.interface.as_deref() == Some(ifname))
                })
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        for pool in holding {
            match self.release(&pool, uid, Some(ifname)).await {
                Ok(_) | Err(ServiceError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drops `ifname` from the endpoint; deletes the endpoint when no interface is left.
    async fn forget_interface(
        &self,
        api: &Api<SpiderEndpoint>,
        name: &str,
        uid: &str,
        ifname: &str,
        mut known: Option<SpiderEndpoint>,
    ) -> Result<(), ServiceError> {
        let what = format!("SpiderEndpoint {name}");
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
            let result = if status.current.ips.is_empty() {
                let dp = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: ep.metadata.resource_version.clone(),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                api.delete(name, &dp).await.map(drop)
            } else {
                ep.status = Some(status);
                api.replace(name, &PostParams::default(), &ep).await.map(drop)
            };
            match result {
                Ok(()) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(ServiceError::from_kube(e, &what)),
            }
        }
        Err(ServiceError::Api(format!("{what}: kept conflicting")))
    }

    async fn check(&self, req: &AgentRequest) -> Result<(), CniError> {
        let pod_ref = pod_of(req)?;
        let (_, what, ep) = self.endpoint_of(pod_ref).await?;
        let unknown = || {
            CniError::new(
                ErrorCode::UnknownContainer,
                format!("no allocation for {what} interface {}", req.ifname),
            )
        };
        let status = ep.ok_or_else(unknown)?.status.unwrap_or_default();
        if !pod_ref.uid.is_empty() && status.current.uid != pod_ref.uid {
            return Err(unknown());
        }
        let detail = status
            .current
            .ips
            .iter()
            .find(|d| d.interface == req.ifname)
            .ok_or_else(unknown)?;
        let pools: Api<SpiderIPPool> = Api::all(self.client.clone());
        for (addr, pool) in [
            (&detail.ipv4, &detail.ipv4_pool),
            (&detail.ipv6, &detail.ipv6_pool),
        ] {
            let (Some(addr), Some(pool)) = (addr, pool) else {
                continue;
            };
            let ip = addr.split('/').next().unwrap_or_default();
            let obj = pools
                .get_status(pool)
                .await
                .map_err(|e| ServiceError::from_kube(e, &format!("SpiderIPPool {pool}")))?;
            let holder = obj
                .status
                .and_then(|s| s.allocations().ok())
                .and_then(|m| m.get(ip).cloned());
            if holder.as_ref().map(|h| h.pod_uid.as_str()) != Some(status.current.uid.as_str()) {
                return Err(ServiceError::Mismatch(format!(
                    "{ip} of {what} is not held for it in pool {pool} (holder: {})",
                    holder.map_or_else(|| "none".to_string(), |h| h.pod)
                ))
                .into());
            }
        }
        Ok(())
    }

    /// CNI GC: release what this node's endpoints hold for attachments the runtime no longer has.
    async fn gc(&self, req: &AgentRequest) -> Result<(), CniError> {
        let valid: HashSet<(String, String)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let api: Api<SpiderEndpoint> = Api::all(self.client.clone());
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| ServiceError::from_kube(e, "SpiderEndpoints"))?;
        for ep in list {
            let Some(status) = ep.status.clone() else { continue };
            if status.current.node != self.node
                || status.owner_controller_type.as_deref() == Some("StatefulSet")
            {
                continue;
            }
            let Some(container) = status.current.container_id.clone() else {
                continue;
            };
            for d in &status.current.ips {
                if valid.contains(&(container.clone(), d.interface.clone())) {
                    continue;
                }
                let del = AgentRequest {
                    verb: Verb::Del,
                    network: req.network.clone(),
                    container_id: container.clone(),
                    ifname: d.interface.clone(),
                    pod: Some(PodRef {
                        namespace: ep.namespace().unwrap_or_default(),
                        name: ep.name_any(),
                        uid: status.current.uid.clone(),
                    }),
                    default_ipv4_pools: Vec::new(),
                    default_ipv6_pools: Vec::new(),
                    clean_gateway: false,
                    valid_attachments: Vec::new(),
                };
                self.del(&del).await?;
            }
        }
        Ok(())
    }
}

/// The pod a request is for: every verb but GC names one.
fn pod_of(req: &AgentRequest) -> Result<&PodRef, ServiceError> {
    let verb = format!("{:?}", req.verb).to_uppercase();
    req.pod
        .as_ref()
        .ok_or_else(|| ServiceError::BadRequest(format!("{verb} without a pod")))
}

fn detail_of(ifname: &str, got: &[(Family, Claimed)], clean_gateway: bool) -> IPAllocationDetail {
    let mut d = IPAllocationDetail {
        interface: ifname.to_string(),
        clean_gateway: Some(clean_gateway),
        ..IPAllocationDetail::default()
    };
    for (family, c) in got {
        let addr = c.pool.address(c.ip).to_string();
        let gw = c.pool.gateway.map(|g| g.to_string());
        match family {
            Family::V4 => {
                d.ipv4 = Some(addr);
                d.ipv4_pool = Some(c.pool.name.clone());
                d.ipv4_gateway = gw;
            }
            Family::V6 => {
                d.ipv6 = Some(addr);
                d.ipv6_pool = Some(c.pool.name.clone());
                d.ipv6_gateway = gw;
            }
        }
    }
    d
}

fn result_of(got: &[(Family, Claimed)], clean_gateway: bool) -> CniResult {
    CniResult {
        ips: got
            .iter()
            .map(|(_, c)| IpConfig {
                address: c.pool.address(c.ip),
                gateway: if clean_gateway { None } else { c.pool.gateway },
                interface: None,
            })
            .collect(),
        routes: got
            .iter()
            .flat_map(|(_, c)| c.pool.routes.iter().cloned())
            .collect(),
        ..CniResult::default()
    }
}

/// The addresses of every SpiderReservedIP, as range keys.
fn reserved_keys(objs: &[Arc<SpiderReservedIP>]) -> HashSet<u128> {
    expand_entries(
        objs.iter().flat_map(|r| r.spec.ips.iter().map(String::as_str)),
        RESERVED_CAP,
    )
}
