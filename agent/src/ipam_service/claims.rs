//! Cluster-mode allocation by one SpiderIPClaim per address (`spiderpool_api::crd::claim`): a
//! claim is the address's record and its lock at once, so two agents never get one address
//! whichever pools name it, and nothing shared by the pool's users is written per allocation.
//! Where to look is [`spiderpool_ipam::cluster::claims::Placement`]'s; this is the I/O.
//!
//! This agent's own claims (its node's, listed at start, then kept as it creates and deletes)
//! answer a repeated ADD and a DEL without a read. A claim is deleted only with its UID as a
//! precondition, so a late DEL never deletes a newer pod's claim of the same address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use spiderpool_api::crd::claim::{self, IPClaimSpec, SpiderIPClaim, claim_address, claim_name};
use spiderpool_api::crd::{IPPoolSpec, PoolIPAllocation, SpiderIPPool};
use spiderpool_ipam::cluster::claims::{AfterMiss, Placement};
use spiderpool_ipam::range::IpSet;

use super::ServiceError;
use super::metrics::IpamMetrics;
use super::per_pool::PerPool;
use super::roster::NodeRoster;

/// Creates and lists one claim may take before the ADD is answered "try again later" (the pool
/// changed under every list in between).
const MOST_TRIES: usize = 256;

/// Where a list of a pool's claims is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The API server's watch cache (`resourceVersion=0`): no etcd read and no decoding of every
    /// claim, for a node's first list of a pool, which agents that start at once may all make.
    /// A claim it does not show yet costs a miss; it never makes an address wrong.
    Cache,
    /// etcd: after misses, and before the pool is called full.
    Quorum,
}

/// One of this node's claims.
#[derive(Debug, Clone)]
struct Mine {
    pool: String,
    pod_uid: String,
    interface: Option<String>,
    ip: IpAddr,
    /// The claim object's UID: the precondition of its delete.
    uid: String,
    /// A StatefulSet pod's: kept for the pod's name, released by the controller only.
    stateful: bool,
}

impl Mine {
    fn of(obj: &SpiderIPClaim) -> Option<Mine> {
        Some(Mine {
            pool: obj.spec.pool.clone(),
            pod_uid: obj.spec.pod_uid.clone(),
            interface: obj.spec.interface.clone(),
            ip: claim_address(obj.metadata.name.as_deref()?)?,
            uid: obj.metadata.uid.clone()?,
            stateful: obj.spec.owner_stateful_set.is_some(),
        })
    }

    /// `pod_uid`'s in `pool` on `interface` (on any interface when `None`).
    fn is(&self, pool: &str, pod_uid: &str, interface: Option<&str>) -> bool {
        self.pool == pool
            && self.pod_uid == pod_uid
            && (interface.is_none() || self.interface.as_deref() == interface)
    }

    /// `holder`'s claim in `pool`: its pod and exactly its interface.
    fn holds(&self, pool: &str, holder: &PoolIPAllocation) -> bool {
        self.pool == pool && self.pod_uid == holder.pod_uid && self.interface == holder.interface
    }
}

pub struct ClaimStore {
    api: Api<SpiderIPClaim>,
    pools: Api<SpiderIPPool>,
    node: String,
    placements: Mutex<HashMap<String, Placement>>,
    mine: Mutex<Vec<Mine>>,
    roster: NodeRoster,
    /// Per pool, held by its first list: the claims that come meanwhile wait for it instead of
    /// each listing.
    first_lists: PerPool<()>,
    metrics: Arc<IpamMetrics>,
}

/// What a claim asks of a pool: `usable` is its addresses less the reserved ones.
pub struct Want<'a> {
    pub pool: &'a str,
    /// The pool's spec: the nodes it admits share it.
    pub spec: &'a IPPoolSpec,
    pub usable: &'a IpSet,
    pub holder: &'a PoolIPAllocation,
    /// `false` for a terminating or refused pool: an address already held is still answered.
    pub accept_new: bool,
    /// What agents from before claims hold in the pool's status ([`super::pool_cache::legacy_holders`]).
    pub legacy: &'a [IpAddr],
}

impl ClaimStore {
    /// The store with this node's claims listed.
    pub async fn start(
        client: Client,
        node: &str,
        metrics: Arc<IpamMetrics>,
    ) -> Result<ClaimStore, ServiceError> {
        let store = ClaimStore::empty(client, node, metrics);
        let listed = store
            .api
            .list(&ListParams::default().fields(&claim::of_node(node)))
            .await
            .map_err(|e| ServiceError::from_kube(e, "SpiderIPClaims of this node"))?;
        let mine: Vec<Mine> = listed.items.iter().filter_map(Mine::of).collect();
        tracing::info!(node, claims = mine.len(), "this node's SpiderIPClaims listed");
        *store.mine() = mine;
        Ok(store)
    }

    /// A store of node `node` that knows no claim of its own yet.
    pub fn empty(client: Client, node: &str, metrics: Arc<IpamMetrics>) -> ClaimStore {
        ClaimStore {
            api: Api::all(client.clone()),
            pools: Api::all(client.clone()),
            node: node.to_string(),
            placements: Mutex::new(HashMap::new()),
            mine: Mutex::new(Vec::new()),
            roster: NodeRoster::new(client, node),
            first_lists: PerPool::default(),
            metrics,
        }
    }

    /// Lists the nodes this node shares pools with (at the agent's start; a failure is logged,
    /// and pools are then walked from their lowest address).
    pub async fn prefetch_nodes(&self) {
        self.roster.prefetch().await;
    }

    fn placement<T>(&self, pool: &str, f: impl FnOnce(&mut Placement) -> T) -> T {
        let mut all = self.placements.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(pool.to_string()).or_default())
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, Vec<Mine>> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An address for `want.holder` in `want.pool`: the one it holds already (a repeated ADD, an
    /// agent restarted before the endpoint was written, a StatefulSet pod recreated under the
    /// same name), else a free one; `None` when the pool has none.
    pub async fn claim(&self, want: &Want<'_>) -> Result<Option<IpAddr>, ServiceError> {
        let held = self
            .mine()
            .iter()
            .find(|m| m.holds(want.pool, want.holder))
            .map(|m| m.ip);
        if held.is_some() {
            return Ok(held);
        }
        if want.holder.owner_stateful_set.is_some()
            && let Some(ip) = self.take_over(want).await?
        {
            return Ok(Some(ip));
        }
        if !want.accept_new {
            return Ok(None);
        }
        if !self.placement(want.pool, |p| p.is_started()) {
            self.start_walk(want).await;
        }
        let mut listed_fresh = false;
        for _ in 0..MOST_TRIES {
            let Some(ip) = self.placement(want.pool, |p| p.next(want.usable)) else {
                if listed_fresh {
                    return Ok(None);
                }
                // Believed full, from the cache's view or from before what others released since:
                // only a list read from etcd may say so.
                self.list(want, true, Read::Quorum).await?;
                listed_fresh = true;
                continue;
            };
            let obj = self.object(ip, want.pool, want.holder);
            match self.api.create(&PostParams::default(), &obj).await {
                Ok(created) => {
                    self.placement(want.pool, |p| p.created(ip));
                    if let Some(m) = Mine::of(&created) {
                        self.mine().push(m);
                    }
                    return Ok(Some(ip));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.metrics
                        .claim_misses
                        .get_or_create(&IpamMetrics::pool(want.pool))
                        .inc();
                    let (after, first) = self.placement(want.pool, |p| {
                        (p.missed(ip, want.usable, &self.node), !p.has_listed())
                    });
                    if after == AfterMiss::ListFirst {
                        if first {
                            self.first_list(want).await?;
                        } else {
                            self.list(want, true, Read::Quorum).await?;
                            listed_fresh = true;
                        }
                    }
                }
                Err(e) => {
                    self.placement(want.pool, |p| p.abandoned(ip));
                    return Err(ServiceError::from_kube(
                        e,
                        &format!("SpiderIPClaim {}", claim_name(ip)),
                    ));
                }
            }
        }
        // Other agents kept taking what the lists showed free: the plugin is told to try again.
        Err(ServiceError::Conflict(format!(
            "SpiderIPClaims of pool {}",
            want.pool
        )))
    }

    /// A StatefulSet pod's address follows its name: its claim in the pool, left by an earlier
    /// pod of the name (on this node or another), is taken over, guarded by its resourceVersion.
    async fn take_over(&self, want: &Want<'_>) -> Result<Option<IpAddr>, ServiceError> {
        for _ in 0..5 {
            let listed = self
                .api
                .list(&ListParams::default().fields(&format!("spec.pod={}", want.holder.pod)))
                .await
                .map_err(|e| ServiceError::from_kube(e, "SpiderIPClaims of the pod"))?;
            let Some(mut found) = listed.items.into_iter().find(|c| {
                c.spec.pool == want.pool
                    && c.spec.interface == want.holder.interface
                    && c.spec.owner_stateful_set.is_some()
                    && c.spec.owner_stateful_set == want.holder.owner_stateful_set
            }) else {
                return Ok(None);
            };
            let Some(ip) = found.metadata.name.as_deref().and_then(claim_address) else {
                return Ok(None);
            };
            found.spec.pod_uid = want.holder.pod_uid.clone();
            found.spec.node = self.node.clone();
            match self
                .api
                .replace(&found.name_any(), &PostParams::default(), &found)
                .await
            {
                Ok(replaced) => {
                    tracing::info!(pod = %want.holder.pod, %ip, pool = want.pool, "StatefulSet pod takes its address over");
                    let mut mine = self.mine();
                    mine.retain(|m| m.ip != ip);
                    mine.extend(Mine::of(&replaced));
                    return Ok(Some(ip));
                }
                // Changed meanwhile (another takeover, a GC): look again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                Err(e) => {
                    return Err(ServiceError::from_kube(
                        e,
                        &format!("SpiderIPClaim {}", claim_name(ip)),
                    ));
                }
            }
        }
        Err(ServiceError::Conflict(format!(
            "SpiderIPClaims of {}",
            want.holder.pod
        )))
    }

    /// Starts the pool's walk in this node's share, past what this node claimed of it and what
    /// agents from before claims hold, without a list (claims that come meanwhile wait for it).
    async fn start_walk(&self, want: &Want<'_>) {
        let first = self.first_lists.of(want.pool);
        let _one = first.lock().await;
        if self.placement(want.pool, |p| p.is_started()) {
            return;
        }
        let (rank, of) = self.roster.share(want.spec, false).await;
        let mut known = self.own_in(want.pool);
        known.extend_from_slice(want.legacy);
        self.placement(want.pool, |p| {
            p.share(rank, of);
            p.start(known)
        });
    }

    /// The addresses this agent holds claims of in `pool`.
    fn own_in(&self, pool: &str) -> Vec<IpAddr> {
        self.mine()
            .iter()
            .filter(|m| m.pool == pool)
            .map(|m| m.ip)
            .collect()
    }

    /// The pool's first list, at the walk's first miss; claims missing meanwhile wait for it
    /// instead of each listing.
    async fn first_list(&self, want: &Want<'_>) -> Result<(), ServiceError> {
        let first = self.first_lists.of(want.pool);
        let _one = first.lock().await;
        if self.placement(want.pool, |p| p.has_listed()) {
            return Ok(());
        }
        self.list(want, true, Read::Cache).await
    }

    fn object(&self, ip: IpAddr, pool: &str, holder: &PoolIPAllocation) -> SpiderIPClaim {
        SpiderIPClaim::new(&claim_name(ip), IPClaimSpec::of(pool, holder, &self.node))
    }

    /// Reads which addresses of the pool are claimed (names only), from where `read` says, and
    /// this node's share of the pool (`missing`: after misses, which a node that joined or left
    /// may cause). What agents from before claims hold comes with `want`, from the pool cache, and
    /// what this agent claimed from its own record.
    async fn list(&self, want: &Want<'_>, missing: bool, read: Read) -> Result<(), ServiceError> {
        let (rank, of) = self.roster.share(want.spec, missing).await;
        let pool = want.pool;
        let mut fields = ListParams::default().fields(&claim::of_pool(pool));
        if read == Read::Cache {
            fields = fields.match_any();
        }
        let listed = self
            .api
            .list_metadata(&fields)
            .await
            .map_err(|e| ServiceError::from_kube(e, &format!("SpiderIPClaims of pool {pool}")))?;
        // This agent's own claims too: a list from the cache may not show the newest yet.
        let own = self.own_in(pool);
        let taken = listed
            .items
            .iter()
            .filter_map(|m| claim_address(m.metadata.name.as_deref()?))
            .chain(want.legacy.iter().copied())
            .chain(own);
        self.placement(pool, |p| {
            p.share(rank, of);
            p.listed(taken)
        });
        Ok(())
    }

    /// The holder of `ip` in `pool`: its SpiderIPClaim's, if the claim is `pool`'s, else the one
    /// an agent from before claims recorded for this node in the pool's status (the controller
    /// releases those once their pods are gone).
    pub async fn holder(&self, pool: &str, ip: &str) -> Result<Option<PoolIPAllocation>, ServiceError> {
        if let Ok(addr) = ip.parse::<IpAddr>() {
            let name = claim_name(addr);
            let found = self
                .api
                .get_opt(&name)
                .await
                .map_err(|e| ServiceError::from_kube(e, &format!("SpiderIPClaim {name}")))?;
            if let Some(c) = found.filter(|c| c.spec.pool == pool) {
                return Ok(Some(c.spec.holder()));
            }
        }
        let obj = self
            .pools
            .get_status(pool)
            .await
            .map_err(|e| ServiceError::from_kube(e, &format!("SpiderIPPool {pool}")))?;
        Ok(obj
            .status
            .and_then(|s| s.allocations().ok())
            .and_then(|a| a.view(Some(&self.node)).remove(ip)))
    }

    /// Releases what `pod_uid` holds in `pool` on `interface` (every interface when `None`).
    pub async fn release(
        &self,
        pool: &str,
        pod_uid: &str,
        interface: Option<&str>,
    ) -> Result<Vec<IpAddr>, ServiceError> {
        let doomed = self
            .of_pod_where(pod_uid, |m| m.is(pool, pod_uid, interface))
            .await?;
        self.delete(&doomed).await
    }

    /// Releases what `pod_uid` holds on `interface` in any pool, as far as this node made it.
    pub async fn release_everywhere(
        &self,
        pod_uid: &str,
        interface: &str,
    ) -> Result<Vec<IpAddr>, ServiceError> {
        let doomed = self
            .of_pod_where(pod_uid, |m| m.interface.as_deref() == Some(interface))
            .await?;
        self.delete(&doomed).await
    }

    /// This agent's claims of `pod_uid` that `keep` accepts; when it has none, the node's from
    /// the API server (another agent of the node made them: a rolling update).
    async fn of_pod_where(
        &self,
        pod_uid: &str,
        keep: impl Fn(&Mine) -> bool,
    ) -> Result<Vec<Mine>, ServiceError> {
        let known: Vec<Mine> = self
            .mine()
            .iter()
            .filter(|m| m.pod_uid == pod_uid && keep(m))
            .cloned()
            .collect();
        if !known.is_empty() {
            return Ok(known);
        }
        Ok(self
            .of_pod(pod_uid)
            .await?
            .into_iter()
            .filter(|m| keep(m))
            .collect())
    }

    /// This node's claims of `pod_uid`, from the API server.
    async fn of_pod(&self, pod_uid: &str) -> Result<Vec<Mine>, ServiceError> {
        let listed = self
            .api
            .list(&ListParams::default().fields(&format!(
                "{},{}",
                claim::of_pod_uid(pod_uid),
                claim::of_node(&self.node)
            )))
            .await
            .map_err(|e| ServiceError::from_kube(e, "SpiderIPClaims of the pod"))?;
        Ok(listed.items.iter().filter_map(Mine::of).collect())
    }

    async fn delete(&self, doomed: &[Mine]) -> Result<Vec<IpAddr>, ServiceError> {
        let mut released = Vec::new();
        // A StatefulSet pod's address follows its name: the controller releases it once the
        // StatefulSet no longer wants the pod (the own-node policy refuses an agent's delete).
        for m in doomed.iter().filter(|m| !m.stateful) {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(m.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&claim_name(m.ip), &params).await {
                Ok(_) => {
                    // Counted here, where every release path (DEL by endpoint, by UID, GC) meets.
                    self.metrics
                        .released
                        .get_or_create(&IpamMetrics::pool(&m.pool))
                        .inc();
                    released.push(m.ip);
                }
                // Gone already (a second DEL, the controller's GC), or the address now another
                // pod's claim: either way not this pod's any more.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(ServiceError::from_kube(
                        e,
                        &format!("SpiderIPClaim {}", claim_name(m.ip)),
                    ));
                }
            }
            self.placement(&m.pool, |p| p.released(m.ip));
            self.mine().retain(|x| x.uid != m.uid);
        }
        Ok(released)
    }
}
