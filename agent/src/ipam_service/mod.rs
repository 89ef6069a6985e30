//! The agent's IPAM service (cluster mode): the `spiderpool` plugin's verbs answered from
//! SpiderIPPool objects. Addresses are recorded as one SpiderIPClaim each (see [`claims`]) and
//! in the pod's SpiderEndpoint; the Kubernetes API is the only state, so the agent can be killed
//! and restarted at any point.

mod add;
mod admission;
mod app_pools;
pub mod claims;
#[cfg(test)]
mod claims_tests;
#[cfg(test)]
mod coordinator_tests;
#[cfg(test)]
mod del_tests;
mod endpoint;
mod error;
pub mod metrics;
#[cfg(test)]
pub(crate) mod mock_api;
mod per_pool;
mod pool_cache;
mod release;
mod roster;
pub mod server;
#[cfg(test)]
mod tests;
mod turns;

pub use error::ServiceError;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use spiderpool_api::coordinator::SpiderCoordinator;
use spiderpool_api::crd::{PoolIPAllocation, SpiderIPPool, SpiderIPPoolRegistry, SpiderReservedIP};
use spiderpool_cni::agent::{CoordinatorRequest, IpamRequest, IpamVerb, PodRef};
use spiderpool_cni::{CniError, CniResult};
use spiderpool_ipam::cluster::registry::is_registered;
use spiderpool_ipam::cluster::reserved_set;
use spiderpool_ipam::pool::Pool;

/// An address given, with the pool as it was decided with (its prefix, gateway and routes go to
/// the pod).
pub struct Claimed {
    pub ip: IpAddr,
    pub pool: Arc<Pool>,
}

pub struct IpamService {
    client: Client,
    node: String,
    pools: pool_cache::PoolCache,
    reserved: reflector::Store<SpiderReservedIP>,
    registry: reflector::Store<SpiderIPPoolRegistry>,
    pods: reflector::Store<Pod>,
    namespaces: reflector::Store<Namespace>,
    coordinators: reflector::Store<SpiderCoordinator>,
    metrics: Arc<metrics::IpamMetrics>,
    /// The endpoints this agent last wrote (DEL reads none of them again).
    written: endpoint::Written,
    /// Where holders are recorded: one SpiderIPClaim per address.
    claims: claims::ClaimStore,
    /// Per pool, the generation this agent found registered. Locked across a registration, so that the ADDs that come meanwhile wait for its answer
    /// instead of each registering.
    registered: per_pool::PerPool<admission::Registered>,
    /// ADDs' and DELs' turns at the API server; a turn spans a request's writes, so none waits
    /// twice.
    turns: turns::Turns,
}

impl IpamService {
    /// Starts the caches and waits until each has listed once; `in_flight`: ADDs and DELs doing
    /// API work at once (0: no limit).
    pub async fn start(client: Client, node: String, in_flight: usize) -> anyhow::Result<Arc<IpamService>> {
        let all = watcher::Config::default();
        let reserved = cache::<SpiderReservedIP>(Api::all(client.clone()), all.clone());
        let registry = cache::<SpiderIPPoolRegistry>(Api::all(client.clone()), all.clone());
        // This node's pods and every namespace: what pool choice reads per ADD, kept by watches
        // instead of two reads of the API server per pod. A pod the watch has not delivered yet
        // is read directly.
        let pods = cache::<Pod>(
            Api::all(client.clone()),
            all.clone().fields(&format!("spec.nodeName={node}")),
        );
        let namespaces = cache::<Namespace>(Api::all(client.clone()), all.clone());
        let coordinators = cache::<SpiderCoordinator>(Api::all(client.clone()), all);
        let metrics = Arc::new(metrics::IpamMetrics::new());
        // This node's claims and the Node list are read while the caches fill, not after: a
        // restarted agent (a node back from power loss) serves its waiting pods sooner.
        let caches_filled = async {
            let pools = pool_cache::PoolCache::start(client.clone()).await?;
            coordinators.wait_until_ready().await?;
            reserved.wait_until_ready().await?;
            registry.wait_until_ready().await?;
            pods.wait_until_ready().await?;
            namespaces.wait_until_ready().await?;
            anyhow::Ok(pools)
        };
        let claims_read = async {
            // Tried again, as the caches' watches are, while the API server cannot be reached
            // yet (a node back from power loss may come up before its control plane does).
            let mut pause = std::time::Duration::from_millis(200);
            let claims = loop {
                match claims::ClaimStore::start(client.clone(), &node, metrics.clone()).await {
                    Ok(claims) => break claims,
                    Err(e) => {
                        tracing::warn!("{e}; trying again in {} ms", pause.as_millis());
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            };
            claims.prefetch_nodes().await;
            anyhow::Ok(claims)
        };
        let (pools, claims) = tokio::try_join!(caches_filled, claims_read)?;
        let service = Arc::new(IpamService {
            client,
            node,
            pools,
            reserved,
            registry,
            pods,
            namespaces,
            coordinators,
            metrics,
            written: endpoint::Written::default(),
            claims,
            registered: per_pool::PerPool::default(),
            turns: turns::Turns::new(in_flight, turns::TURN_WAIT),
        });
        Ok(service)
    }

    /// The service with its caches filled and its socket bound, ready to serve.
    pub async fn listen(
        client: Client,
        node: &str,
        socket: &Path,
        in_flight: usize,
    ) -> anyhow::Result<(Arc<IpamService>, tokio::net::UnixListener)> {
        let service = IpamService::start(client, node.to_string(), in_flight)
            .await
            .context("pool caches")?;
        let listener = server::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
        tracing::info!("IPAM service of node {node} listening on {}", socket.display());
        Ok((service, listener))
    }

    pub async fn handle(self: &Arc<Self>, req: IpamRequest) -> Result<CniResult, CniError> {
        let started = std::time::Instant::now();
        let (verb, result) = match req.verb {
            IpamVerb::Add => ("ADD", self.add(&req).await),
            IpamVerb::Del => ("DEL", self.del(&req).await.map(|()| CniResult::default())),
            IpamVerb::Check => ("CHECK", self.check(&req).await.map(|()| CniResult::default())),
            IpamVerb::Gc => ("GC", self.gc(&req).await.map(|()| CniResult::default())),
        };
        let code = result.as_ref().map_or_else(|e| e.code, |_| 0);
        self.metrics.observe(verb, code, started.elapsed().as_secs_f64());
        result
    }

    /// The service's Prometheus metrics.
    pub fn metrics(&self) -> Arc<metrics::IpamMetrics> {
        self.metrics.clone()
    }

    /// The coordinator plugin's cluster settings: `{"name", "spec", "status"}` of the
    /// SpiderCoordinator named `default` (or of the only one), with the pod's
    /// `ipam.spidernet.io/default-route-nic` annotation (when the pod is known and has it) in
    /// place of `podDefaultRouteNIC` (a netconf that sets the NIC still wins, as in Spiderpool),
    /// and `podDns`, the pod's `ipam.spidernet.io/dns`. Null when there is neither.
    pub fn coordinator_settings(&self, req: &CoordinatorRequest) -> serde_json::Value {
        let annotations = match (&req.pod_namespace, &req.pod_name) {
            (Some(ns), Some(name)) => self
                .pods
                .get(&reflector::ObjectRef::new(name).within(ns))
                .and_then(|pod| pod.metadata.annotations.clone())
                .unwrap_or_default(),
            _ => Default::default(),
        };
        // A bad annotation was refused by IPAM's ADD already, before any address was taken.
        let pod_dns = spiderpool_ipam::cluster::pod_network::dns(&annotations)
            .ok()
            .flatten();
        let all = self.coordinators.state();
        let chosen = all
            .iter()
            .find(|c| c.name_any() == "default")
            .or_else(|| (all.len() == 1).then(|| &all[0]));
        let mut settings = match chosen {
            Some(c) => {
                let mut spec = c.spec.clone();
                if let Some(nic) =
                    annotations.get(spiderpool_ipam::cluster::pod_network::ANNOTATION_DEFAULT_ROUTE_NIC)
                {
                    spec.pod_default_route_nic = Some(nic.clone());
                }
                serde_json::json!({"name": c.name_any(), "spec": spec, "status": c.status})
            }
            None if pod_dns.is_some() => serde_json::json!({}),
            None => return serde_json::Value::Null,
        };
        if let Some(dns) = pod_dns {
            settings["podDns"] = serde_json::json!(dns);
        }
        settings
    }

    /// Whether the registry watch shows a pool `(uid, generation)` registered.
    fn registered_fn(&self) -> admission::RegisteredFn {
        let registry = self.registry.clone();
        Arc::new(move |uid, generation| {
            registry
                .state()
                .iter()
                .any(|r| is_registered(&r.spec, uid, generation))
        })
    }

    /// An address of pool `name` for `holder` (its SpiderIPClaim): the one it holds already,
    /// else a free one; `None` when the pool has none free, [`ServiceError::InvalidPool`] when it
    /// gives none because it is not registered.
    async fn claim(&self, name: &str, holder: &PoolIPAllocation) -> Result<Option<Claimed>, ServiceError> {
        let obj = self.pool(name).await?;
        let pool = Arc::new(
            spiderpool_ipam::cluster::pool_of(&obj).map_err(|e| ServiceError::InvalidPool(e.to_string()))?,
        );
        let reserved = reserved_set(self.reserved.state().iter().map(|r| &**r));
        let usable = pool.set.subtract(&reserved);
        let terminating = obj.metadata.deletion_timestamp.is_some();
        let refused = if terminating {
            None
        } else {
            let known = self.registered.of(name);
            let mut known = known.lock().await;
            admission::admitted(
                &Api::all(self.client.clone()),
                &self.registered_fn(),
                &mut known,
                &obj,
            )
            .await?
            .err()
        };
        let legacy = pool_cache::legacy_holders(&obj);
        let want = claims::Want {
            pool: name,
            spec: &obj.spec,
            usable: &usable,
            holder,
            accept_new: !terminating && refused.is_none(),
            legacy: &legacy,
        };
        let label = metrics::IpamMetrics::pool(name);
        match self.claims.claim(&want).await? {
            Some(ip) => {
                self.metrics.allocated.get_or_create(&label).inc();
                Ok(Some(Claimed { ip, pool }))
            }
            None => match refused {
                Some(why) => {
                    self.metrics.refused.get_or_create(&label).inc();
                    Err(ServiceError::InvalidPool(format!("not in use: {why}")))
                }
                None => {
                    self.metrics.exhausted.get_or_create(&label).inc();
                    Ok(None)
                }
            },
        }
    }

    /// The pool by name: from the cache, else from the API server (the cache may not have seen a
    /// pool created a moment ago).
    async fn pool(&self, name: &str) -> Result<Arc<SpiderIPPool>, ServiceError> {
        if let Some(p) = self.pools.get(name) {
            return Ok(p);
        }
        let api: Api<SpiderIPPool> = Api::all(self.client.clone());
        api.get(name)
            .await
            .map(Arc::new)
            .map_err(|e| ServiceError::from_kube(e, &format!("SpiderIPPool {name}")))
    }
}

/// A cache of `api`'s objects, kept by a watch (retried with backoff) for the process's life.
fn cache<K: spiderpool_daemon::watch::Watched>(api: Api<K>, config: watcher::Config) -> reflector::Store<K> {
    let (store, writer) = reflector::store();
    tokio::spawn(
        watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store
}

/// The pod a request is for: every verb but GC names one.
fn pod_of(req: &IpamRequest) -> Result<&PodRef, ServiceError> {
    let verb = format!("{:?}", req.verb).to_uppercase();
    req.pod
        .as_ref()
        .ok_or_else(|| ServiceError::BadRequest(format!("{verb} without a pod")))
}
