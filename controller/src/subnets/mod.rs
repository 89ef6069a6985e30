//! SpiderSubnet auto-pools: a pool per application, NIC and family, created from the subnet's
//! free addresses when an application asks for it (`ipam.spidernet.io/subnet(s)` in its pod
//! template), resized as it scales, deleted with it (`ippool-reclaim`, default true; the pool
//! finalizer keeps it until its last address is released), and each SpiderSubnet's
//! `controlledIPPools` and counts. Leader only, woken by the applications and subnets. The
//! decisions are in `spiderpool_ipam::cluster::auto_pool`.
//!
//! Every pass reads pools, subnets and reserved addresses from the API server, not a cache: the
//! addresses a new pool gets must not be another pool's, and a pool written a moment ago may not
//! be in a cache yet. A pool that still collides (a user's pool created in the same instant) is
//! refused by the SpiderIPPoolRegistry, so no address is ever handed out twice.

pub mod apps;
pub mod third_party;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use spiderpool_api::crd::auto_pool::{self as keys, ControlledIPPools};
use spiderpool_api::crd::claim::{self, SpiderIPClaim};
use spiderpool_api::crd::{
    SpiderIPPool, SpiderIPPoolRegistry, SpiderReservedIP, SpiderSubnet, registry_name,
};
use spiderpool_daemon::watch::{Watched, cache_waking};
use spiderpool_ipam::cluster::auto_pool::{
    self, IpNumber, controlled, controlled_count, held_addresses, pool_addresses, subnet_pool,
};
use spiderpool_ipam::cluster::reserved_set;
use spiderpool_ipam::range::{Family, IpSet, set_of_entries};
use tokio::sync::Notify;

use crate::leader::Leadership;
use crate::pools::FINALIZER;
use crate::{ApiError, api_err};
use apps::Wanted;

/// What a pass did, and what it could not do and why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubnetsReport {
    pub created: Vec<String>,
    pub resized: Vec<String>,
    pub deleted: Vec<String>,
    pub problems: Vec<String>,
    pub statuses_written: usize,
}

/// The pool one application needs for one NIC and family.
struct Need<'a> {
    wanted: &'a Wanted,
    interface: String,
    family: Family,
    subnet: &'a SpiderSubnet,
    /// The subnet's addresses, as a pool of its spec would hand them out.
    subnet_set: IpSet,
    size: u128,
    number: IpNumber,
    reclaim: bool,
}

/// The existing pool of `need`: its application's (a pool of an earlier application of that name
/// counts only when it was kept, `ippool-reclaim: false`).
fn existing<'a>(pools: &'a [SpiderIPPool], need: &Need<'_>) -> Option<&'a SpiderIPPool> {
    let version = format!("IPv{}", need.family.number());
    pools.iter().find(|p| {
        let labels = p.labels();
        let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
        p.metadata.deletion_timestamp.is_none()
            && need.wanted.app.owns(labels)
            && is(keys::LABEL_INTERFACE, &need.interface)
            && is(keys::LABEL_IP_VERSION, &version)
            && (is(keys::LABEL_APP_UID, &need.wanted.app.uid) || is(keys::LABEL_RECLAIM, "false"))
    })
}

/// One pass: every wanted pool created or resized, the pools of applications that are gone
/// deleted, every subnet's status written. `live`: the UIDs of the applications whose pools stay
/// (every watched one; the others seen with pods lately); `reclaim_others`: whether `live` tells
/// about the others yet (see [`third_party::LastSeen`]).
pub async fn reconcile(
    client: &Client,
    wanted: &[Wanted],
    live: &HashSet<String>,
    reclaim_others: bool,
) -> Result<SubnetsReport, ApiError> {
    let pools_api: Api<SpiderIPPool> = Api::all(client.clone());
    let subnets_api: Api<SpiderSubnet> = Api::all(client.clone());
    let mut report = SubnetsReport::default();
    let pools = pools_api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderIPPools"))?
        .items;
    let subnets = subnets_api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderSubnets"))?
        .items;
    let reserved_objs = Api::<SpiderReservedIP>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api_err("list SpiderReservedIPs"))?
        .items;
    let reserved = reserved_set(&reserved_objs);
    // Every address some pool lists or holds, or the registry gives a pool (one deleted while
    // its pods still hold addresses keeps its entry), growing as this pass gives addresses out.
    let mut taken = pools
        .iter()
        .fold(IpSet::default(), |acc, p| acc.union(&pool_addresses(p)));
    let registries: Api<SpiderIPPoolRegistry> = Api::all(client.clone());
    for family in [4u8, 6] {
        let name = registry_name(family);
        let entries = registries
            .get_opt(name)
            .await
            .map_err(api_err(format!("SpiderIPPoolRegistry {name}")))?;
        for entry in entries.iter().flat_map(|r| &r.spec.pools) {
            taken = taken.union(&set_of_entries(entry.ips.iter().map(String::as_str)));
        }
    }
    for w in wanted {
        let needs = match needs_of(w, &subnets) {
            Ok(n) => n,
            Err(why) => {
                report.problems.push(format!("{}: {why}", w.app.application()));
                continue;
            }
        };
        for need in needs {
            let what = format!(
                "{} {} IPv{}",
                w.app.application(),
                need.interface,
                need.family.number()
            );
            match ensure(&pools_api, &pools, &reserved, &mut taken, &need).await {
                Ok(Ensured::Created(name)) => report.created.push(name),
                Ok(Ensured::Resized(name)) => report.resized.push(name),
                Ok(Ensured::AsIs) => {}
                Err(Problem::Api(e)) => return Err(e),
                Err(Problem::Refused(why)) => report.problems.push(format!("{what}: {why}")),
            }
        }
    }
    for pool in &pools {
        let labels = pool.labels();
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
        let watched = auto_pool::WATCHED.contains(&(get(keys::LABEL_APP_GV), get(keys::LABEL_APP_KIND)));
        if !keys::is_auto_pool(labels)
            || (!watched && !reclaim_others)
            || get(keys::LABEL_RECLAIM) != "true"
            || pool.metadata.deletion_timestamp.is_some()
            || live.contains(get(keys::LABEL_APP_UID))
        {
            continue;
        }
        // The finalizer keeps it, handing out nothing, until its pods have released it.
        match pools_api.delete(&pool.name_any(), &DeleteParams::default()).await {
            Ok(_) => report.deleted.push(pool.name_any()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("delete SpiderIPPool {}", pool.name_any()))(e)),
        }
    }
    let changed = !report.created.is_empty() || !report.resized.is_empty() || !report.deleted.is_empty();
    let pools = if changed {
        pools_api
            .list(&ListParams::default())
            .await
            .map_err(api_err("list SpiderIPPools"))?
            .items
    } else {
        pools
    };
    for subnet in &subnets {
        if write_status(&subnets_api, subnet, &pools).await? {
            report.statuses_written += 1;
        }
    }
    Ok(report)
}

/// The pools `w` needs, or why it cannot have them (its annotations, a subnet missing or of the
/// other family).
fn needs_of<'a>(w: &'a Wanted, subnets: &'a [SpiderSubnet]) -> Result<Vec<Need<'a>>, String> {
    let choices = auto_pool::subnets_of(&w.annotations)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let number = IpNumber::parse(&w.annotations).map_err(|e| e.to_string())?;
    let reclaim = auto_pool::reclaim_of(&w.annotations).map_err(|e| e.to_string())?;
    w.app.check_number(number)?;
    let mut out = Vec::new();
    for choice in &choices {
        for family in [Family::V4, Family::V6] {
            let Some(name) = choice.of(family) else { continue };
            let subnet = subnets
                .iter()
                .find(|s| s.name_any() == name)
                .ok_or_else(|| format!("SpiderSubnet {name} does not exist"))?;
            let set = subnet_pool(subnet).map_err(|e| format!("SpiderSubnet {name}: {e}"))?;
            if set.family != family {
                return Err(format!(
                    "SpiderSubnet {name} is not an IPv{} subnet",
                    family.number()
                ));
            }
            out.push(Need {
                wanted: w,
                interface: choice.interface.clone(),
                family,
                subnet,
                subnet_set: set.set,
                size: u128::from(number.size(w.replicas)),
                number,
                reclaim,
            });
        }
    }
    Ok(out)
}

enum Ensured {
    Created(String),
    Resized(String),
    AsIs,
}

enum Problem {
    Api(ApiError),
    Refused(String),
}

async fn ensure(
    api: &Api<SpiderIPPool>,
    pools: &[SpiderIPPool],
    reserved: &IpSet,
    taken: &mut IpSet,
    need: &Need<'_>,
) -> Result<Ensured, Problem> {
    let app = &need.wanted.app;
    let subnet_name = need.subnet.name_any();
    let pool = existing(pools, need);
    if let Some(p) = pool
        && !auto_pool::same_cidr(&p.spec.subnet, &need.subnet.spec.subnet)
    {
        return Err(Problem::Refused(format!(
            "its pool {} is in {}, not in SpiderSubnet {subnet_name} ({}): an application's subnet cannot change",
            p.name_any(),
            p.spec.subnet,
            need.subnet.spec.subnet
        )));
    }
    let held = match pool {
        Some(p) => held_addresses(p).union(&claimed(api, &p.name_any()).await.map_err(Problem::Api)?),
        None => IpSet::default(),
    };
    // A pool the registry refused (another pool took its addresses first, e.g. a user's created
    // in the same instant) keeps only what it holds and is planned again from what is free.
    let current = match pool {
        Some(p) if refused_for_overlap(p) => held.clone(),
        Some(p) => set_of_entries(p.spec.ips.iter().map(String::as_str)),
        None => IpSet::default(),
    };
    let free = need.subnet_set.subtract(taken).subtract(reserved);
    let ips = auto_pool::resize(&current, &held, &free, need.size)
        .map_err(|e| Problem::Refused(format!("SpiderSubnet {subnet_name}: {e}")))?;
    *taken = taken.union(&ips);
    let name = pool
        .map(ResourceExt::name_any)
        .unwrap_or_else(|| auto_pool::pool_name(app, need.family, &need.interface));
    let labels = auto_pool::pool_labels(
        app,
        &subnet_name,
        &need.subnet.spec.subnet,
        &need.interface,
        need.family,
        need.reclaim,
    );
    auto_pool::labels_fit(&labels).map_err(Problem::Refused)?;
    let annotations = BTreeMap::from([(keys::ANNOTATION_IP_NUMBER.to_string(), need.number.text())]);
    let Some(pool) = pool else {
        let obj: SpiderIPPool = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": annotations,
                "finalizers": [FINALIZER],
                // Cluster-scoped both: deleting the subnet deletes its auto-pools (each kept by
                // the finalizer until empty).
                "ownerReferences": [{
                    "apiVersion": "spiderpool.spidernet.io/v2beta1",
                    "kind": "SpiderSubnet",
                    "name": subnet_name,
                    "uid": need.subnet.uid().unwrap_or_default(),
                    "controller": true,
                }],
            },
            "spec": {
                "ipVersion": need.family.number(),
                "subnet": need.subnet.spec.subnet,
                "ips": ips.texts(),
                "gateway": need.subnet.spec.gateway,
                "routes": need.subnet.spec.routes,
                "podAffinity": app.pod_affinity(),
            },
        }))
        .map_err(|e| Problem::Refused(format!("pool object: {e}")))?;
        return match api.create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(Ensured::Created(name)),
            // Created by an earlier pass the list did not show yet: the next pass sizes it.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Ensured::AsIs),
            Err(e) => Err(Problem::Api(api_err(format!("create SpiderIPPool {name}"))(e))),
        };
    };
    let same_labels = labels.iter().all(|(k, v)| pool.labels().get(k) == Some(v));
    let same_annotations =
        pool.annotations().get(keys::ANNOTATION_IP_NUMBER) == annotations.get(keys::ANNOTATION_IP_NUMBER);
    if ips == current && same_labels && same_annotations {
        return Ok(Ensured::AsIs);
    }
    let patch = json!({
        "metadata": {"resourceVersion": pool.resource_version(), "labels": labels, "annotations": annotations},
        "spec": {"ips": ips.texts(), "podAffinity": app.pod_affinity()},
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Ensured::Resized(name)),
        // Someone wrote it since the list: the next pass decides again.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Ensured::AsIs),
        Err(e) => Err(Problem::Api(api_err(format!("resize SpiderIPPool {name}"))(e))),
    }
}

/// The addresses of `pool`'s SpiderIPClaims: a resize never drops one.
async fn claimed(api: &Api<SpiderIPPool>, pool: &str) -> Result<IpSet, ApiError> {
    let claims: Api<SpiderIPClaim> = Api::all(api.clone().into_client());
    let listed = claims
        .list_metadata(&ListParams::default().fields(&claim::of_pool(pool)))
        .await
        .map_err(api_err(format!("SpiderIPClaims of pool {pool}")))?;
    Ok(IpSet::of_keys(
        listed
            .items
            .iter()
            .filter_map(|m| claim::claim_address(m.metadata.name.as_deref()?))
            .map(spiderpool_ipam::range::ip_to_key),
    ))
}

/// Whether the controller found `pool`'s current spec overlapping a pool in use first.
fn refused_for_overlap(pool: &SpiderIPPool) -> bool {
    pool.status.iter().flat_map(|s| &s.conditions).any(|c| {
        c.type_ == "Ready"
            && c.status == "False"
            && c.reason == "Overlap"
            && c.observed_generation == pool.metadata.generation
    })
}

/// Writes `subnet`'s `controlledIPPools` and counts when they changed; `true` when it wrote.
async fn write_status(
    api: &Api<SpiderSubnet>,
    subnet: &SpiderSubnet,
    pools: &[SpiderIPPool],
) -> Result<bool, ApiError> {
    let Ok(sp) = subnet_pool(subnet) else {
        return Ok(false);
    };
    let ctl = controlled(subnet, &sp.set, pools);
    let text = serde_json::to_string(&ctl).unwrap_or_default();
    let allocated = i64::try_from(controlled_count(&ctl)).unwrap_or(i64::MAX);
    let total = i64::try_from(sp.set.len()).unwrap_or(i64::MAX);
    let current = subnet.status.clone().unwrap_or_default();
    let current_ctl: Option<ControlledIPPools> = current
        .controlled_ip_pools
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    if current_ctl.as_ref() == Some(&ctl)
        && current.allocated_ip_count == Some(allocated)
        && current.total_ip_count == Some(total)
    {
        return Ok(false);
    }
    let patch =
        json!({"status": {"controlledIPPools": text, "allocatedIPCount": allocated, "totalIPCount": total}});
    match api
        .patch_status(&subnet.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(api_err(format!("SpiderSubnet {} status", subnet.name_any()))(e)),
    }
}

/// The caches of the watched applications.
struct Workloads {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    replica_sets: Store<ReplicaSet>,
    daemon_sets: Store<DaemonSet>,
    jobs: Store<Job>,
    cron_jobs: Store<CronJob>,
    /// Every pod's metadata: the applications of other controllers.
    pods: Store<PartialObjectMeta<Pod>>,
}

impl Workloads {
    fn start(client: &Client, wake: &Arc<Notify>) -> Workloads {
        fn cache<K: Watched<Scope = k8s_openapi::NamespaceResourceScope>>(
            client: &Client,
            wake: &Arc<Notify>,
        ) -> Store<K> {
            cache_waking(
                Api::<K>::all(client.clone()),
                watcher::Config::default(),
                wake.clone(),
            )
        }
        Workloads {
            deployments: cache(client, wake),
            stateful_sets: cache(client, wake),
            replica_sets: cache(client, wake),
            daemon_sets: cache(client, wake),
            jobs: cache(client, wake),
            cron_jobs: cache(client, wake),
            // Metadata only: an `Api` of `PartialObjectMeta` asks for no specs.
            pods: cache_waking(
                Api::<PartialObjectMeta<Pod>>::all(client.clone()),
                watcher::Config::default(),
                wake.clone(),
            ),
        }
    }

    async fn ready(&self) -> bool {
        self.deployments.wait_until_ready().await.is_ok()
            && self.stateful_sets.wait_until_ready().await.is_ok()
            && self.replica_sets.wait_until_ready().await.is_ok()
            && self.daemon_sets.wait_until_ready().await.is_ok()
            && self.jobs.wait_until_ready().await.is_ok()
            && self.cron_jobs.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
    }

    /// The applications that ask for auto-pools, the UID of every watched application, and those
    /// of the other controllers' applications that have pods.
    fn snapshot(&self) -> (Vec<Wanted>, HashSet<String>, Vec<String>) {
        let mut wanted = Vec::new();
        let mut live = HashSet::new();
        macro_rules! take {
            ($store:expr, $f:path) => {
                for o in $store.state() {
                    live.extend(o.metadata.uid.clone());
                    wanted.extend($f(&o));
                }
            };
        }
        take!(self.deployments, apps::deployment);
        take!(self.stateful_sets, apps::stateful_set);
        take!(self.replica_sets, apps::replica_set);
        take!(self.daemon_sets, apps::daemon_set);
        take!(self.jobs, apps::job);
        take!(self.cron_jobs, apps::cron_job);
        let pods = self.pods.state();
        let others = third_party::from_pods(pods.iter().map(|p| &**p));
        let present = others.iter().map(|w| w.app.uid.clone()).collect();
        wanted.extend(others);
        // A stable order, whatever the watch order.
        wanted.sort_by(|a, b| a.app.uid.cmp(&b.app.uid));
        (wanted, live, present)
    }
}

/// What a pass depends on: the applications that ask, every application's UID, each subnet's
/// and pool's generation (and a pool's deletion mark).
type PassInputs = (Vec<Wanted>, HashSet<String>, HashMap<String, String>);

/// Keeps the auto-pools and subnet statuses current while `leading`.
pub async fn run(client: Client, leadership: Leadership, every: Duration) {
    let mut gained = leadership.watch();
    let wake = Arc::new(Notify::new());
    let workloads = Workloads::start(&client, &wake);
    let subnets = cache_waking(
        Api::<SpiderSubnet>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    // Metadata only: the agents' status writes carry every allocation, which a pass reads fresh.
    let pools = cache_waking(
        Api::<PartialObjectMeta<SpiderIPPool>>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    // A pass only when what it depends on changed (applications' status writes wake the loop
    // too), or every `every` for what it waits on (addresses released before a shrink).
    let mut last: Option<PassInputs> = None;
    let mut retry_soon = false;
    let mut others_seen = third_party::LastSeen::new(Instant::now());
    loop {
        let periodic = tokio::select! {
            () = wake.notified() => { tokio::time::sleep(Duration::from_millis(200)).await; false }
            () = tokio::time::sleep(if retry_soon { Duration::from_secs(1) } else { every }) => true,
            () = gained.gained() => true,
        };
        if !leadership.leading()
            || !workloads.ready().await
            || subnets.wait_until_ready().await.is_err()
            || pools.wait_until_ready().await.is_err()
        {
            last = None;
            continue;
        }
        let (wanted, mut live, present) = workloads.snapshot();
        let recent = others_seen.update(present, Instant::now());
        let reclaim_others = recent.is_some();
        live.extend(recent.unwrap_or_default());
        let mut versions: HashMap<String, String> = subnets
            .state()
            .iter()
            .map(|s| {
                (
                    format!("subnet/{}", s.name_any()),
                    s.metadata.generation.unwrap_or(0).to_string(),
                )
            })
            .collect();
        versions.extend(pools.state().iter().map(|p| {
            let mark = if p.metadata.deletion_timestamp.is_some() {
                "-"
            } else {
                ""
            };
            (
                format!("pool/{}", p.name_any()),
                format!("{}{mark}", p.metadata.generation.unwrap_or(0)),
            )
        }));
        let key = (wanted, live, versions);
        if !periodic && !retry_soon && last.as_ref() == Some(&key) {
            continue;
        }
        match reconcile(&client, &key.0, &key.1, reclaim_others).await {
            Ok(r) => {
                for name in &r.created {
                    tracing::info!(pool = %name, "auto-pool created");
                }
                for name in &r.resized {
                    tracing::info!(pool = %name, "auto-pool resized");
                }
                for name in &r.deleted {
                    tracing::info!(pool = %name, "auto-pool of a deleted application deleted");
                }
                for why in &r.problems {
                    tracing::warn!("auto-pool: {why}");
                }
                // What it wrote changes what the next pass sees; problems may pass (a subnet
                // created, addresses released).
                retry_soon = !r.created.is_empty() || !r.resized.is_empty() || !r.problems.is_empty();
                last = Some(key);
            }
            Err(e) => {
                tracing::warn!("auto-pools: {e}");
                retry_soon = true;
            }
        }
    }
}
