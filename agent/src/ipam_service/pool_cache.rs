//! The pools as an agent needs them, without every pool's whole status on every allocation
//! anywhere. A pool's status carries every holder of every node and changes with every batch any
//! agent writes; a full watch sent all of it to every agent each time, so the API server's
//! traffic grew with nodes × pool size. Here the agent watches pool metadata only (a few hundred
//! bytes per write, whatever the pool holds) and reads a pool's spec when it appears or its
//! generation changes. Holders are SpiderIPClaims, not the status; a status is kept only while
//! it still holds addresses that agents from before claims recorded there ([`legacy_holders`]),
//! and such a pool is read again at each change until the controller has released them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::api::{Api, GetParams, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use spiderpool_api::crd::SpiderIPPool;
use spiderpool_daemon::watch::cache_waking;
use tokio::sync::Notify;

type Objects = Arc<RwLock<HashMap<String, Arc<SpiderIPPool>>>>;

/// Every pool's spec, labels and deletion mark (no status but legacy holders), and its newest
/// resourceVersion.
#[derive(Clone)]
pub struct PoolCache {
    meta: Store<PartialObjectMeta<SpiderIPPool>>,
    objects: Objects,
}

impl PoolCache {
    /// Starts the metadata watch, fills the specs with one list, and keeps them current.
    pub async fn start(client: Client) -> anyhow::Result<PoolCache> {
        let wake = Arc::new(Notify::new());
        let meta = cache_waking(
            Api::<PartialObjectMeta<SpiderIPPool>>::all(client.clone()),
            watcher::Config::default(),
            wake.clone(),
        );
        meta.wait_until_ready().await?;
        let api: Api<SpiderIPPool> = Api::all(client);
        let objects: Objects = Arc::default();
        let listed = api.list(&ListParams::default()).await?.items;
        {
            let mut objs = objects.write().unwrap_or_else(|e| e.into_inner());
            for p in listed {
                objs.insert(p.name_any(), Arc::new(with_legacy_status_only(p)));
            }
        }
        let cache = PoolCache { meta, objects };
        let keeper = cache.clone();
        tokio::spawn(async move {
            loop {
                keeper.sync(&api).await;
                wake.notified().await;
            }
        });
        Ok(cache)
    }

    /// A cache that knows no pool (tests).
    #[cfg(test)]
    pub fn empty() -> PoolCache {
        PoolCache {
            meta: kube::runtime::reflector::store().0,
            objects: Arc::default(),
        }
    }

    /// Every pool whose spec is known, with its current metadata.
    pub fn state(&self) -> Vec<Arc<SpiderIPPool>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<SpiderIPPool>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Brings the specs up to the metadata: a pool gone is dropped, one new or of a new
    /// generation read, one with legacy holders read again from the API server's cache (they only
    /// go, so a read behind the metadata errs on the safe side), the others' metadata replaced.
    async fn sync(&self, api: &Api<SpiderIPPool>) {
        let metas = self.meta.state();
        let mut stale = Vec::new();
        {
            let mut objs = self.objects.write().unwrap_or_else(|e| e.into_inner());
            let live: HashSet<String> = metas.iter().map(|m| m.name_any()).collect();
            objs.retain(|name, _| live.contains(name));
            for m in &metas {
                match objs.get_mut(&m.name_any()) {
                    Some(o)
                        if o.metadata.uid == m.metadata.uid
                            && o.metadata.generation == m.metadata.generation =>
                    {
                        if o.metadata.resource_version == m.metadata.resource_version {
                            continue;
                        }
                        // A status with legacy holders changes without a new generation.
                        if o.status.is_some() {
                            stale.push((m.name_any(), GetParams::any()));
                            continue;
                        }
                        let mut fresh = (**o).clone();
                        fresh.metadata = m.metadata.clone();
                        *o = Arc::new(fresh);
                    }
                    _ => stale.push((m.name_any(), GetParams::default())),
                }
            }
        }
        for (name, params) in stale {
            match api.get_with(&name, &params).await {
                Ok(p) => {
                    let mut objs = self.objects.write().unwrap_or_else(|e| e.into_inner());
                    objs.insert(name, Arc::new(with_legacy_status_only(p)));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // The next change, or the next pool read by a request, tries again.
                Err(e) => tracing::debug!(pool = %name, "read pool spec: {e}"),
            }
        }
    }
}

/// `p` with its status only if that holds legacy holders.
fn with_legacy_status_only(mut p: SpiderIPPool) -> SpiderIPPool {
    if legacy_holders(&p).is_empty() {
        p.status = None;
    }
    p
}

/// The addresses agents from before claims recorded as held in `pool`'s status (spares
/// included): never handed out while they stay there.
pub fn legacy_holders(pool: &SpiderIPPool) -> Vec<std::net::IpAddr> {
    pool.status
        .as_ref()
        .and_then(|s| s.held().ok())
        .map(|held| held.keys().filter_map(|ip| ip.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::ipam_service::mock_api::MockApi;

    const POOL: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippools/p";

    fn meta(generation: i64, version: &str) -> PartialObjectMeta<SpiderIPPool> {
        serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "p", "uid": "u", "generation": generation, "resourceVersion": version}
        }))
        .unwrap()
    }

    fn full(generation: i64, version: &str) -> serde_json::Value {
        json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": "p", "uid": "u", "generation": generation, "resourceVersion": version},
            "spec": {"subnet": "10.0.0.0/24", "ips": [format!("10.0.0.{generation}")]},
            "status": {"allocatedIPCount": 1}
        })
    }

    /// An empty cache whose metadata `writer` feeds, and the pools' API.
    fn cache_of(
        api: &MockApi,
    ) -> (
        PoolCache,
        Writer<PartialObjectMeta<SpiderIPPool>>,
        Api<SpiderIPPool>,
    ) {
        let (meta, writer) = kube::runtime::reflector::store();
        let cache = PoolCache {
            meta,
            objects: Arc::default(),
        };
        (cache, writer, Api::all(api.client()))
    }

    /// A status write (a new resourceVersion, same generation) costs no read; a new generation
    /// costs one; the cache keeps no status.
    #[tokio::test]
    async fn specs_are_read_only_when_a_pool_appears_or_its_generation_changes() {
        let api = MockApi::new();
        api.reply("GET", POOL, 200, full(1, "5"))
            .reply("GET", POOL, 200, full(2, "9"));
        let (cache, mut writer, pools) = cache_of(&api);
        writer.apply_watcher_event(&Event::Apply(meta(1, "5")));
        cache.sync(&pools).await;
        let p = cache.get("p").expect("read when it appeared");
        assert!(p.status.is_none(), "no status kept");
        for version in ["6", "7", "8"] {
            writer.apply_watcher_event(&Event::Apply(meta(1, version)));
            cache.sync(&pools).await;
        }
        assert_eq!(api.calls().len(), 1, "status writes cost no read");
        assert_eq!(
            cache.get("p").unwrap().metadata.resource_version.as_deref(),
            Some("8")
        );
        writer.apply_watcher_event(&Event::Apply(meta(2, "9")));
        cache.sync(&pools).await;
        assert_eq!(api.calls().len(), 2, "a new generation is read");
        assert_eq!(cache.get("p").unwrap().spec.ips, vec!["10.0.0.2".to_string()]);
        writer.apply_watcher_event(&Event::Delete(meta(2, "10")));
        cache.sync(&pools).await;
        assert!(cache.state().is_empty(), "a deleted pool is dropped");
    }

    /// A pool whose status holds addresses of agents from before claims keeps them, and is read
    /// again at each change (its status changes without a new generation) until they are gone.
    #[tokio::test]
    async fn legacy_holders_are_kept_and_followed_until_released() {
        let api = MockApi::new();
        let legacy = |version: &str, held: &[(&str, &str)]| {
            let mut p = crate::ipam_service::tests::pool(version, held);
            p["metadata"]["uid"] = json!("u");
            p
        };
        api.reply("GET", POOL, 200, legacy("5", &[("10.0.0.12", "old")]))
            .reply("GET", POOL, 200, legacy("6", &[]));
        let (cache, mut writer, pools) = cache_of(&api);
        writer.apply_watcher_event(&Event::Apply(meta(1, "5")));
        cache.sync(&pools).await;
        let held = legacy_holders(&cache.get("p").unwrap());
        assert_eq!(held, ["10.0.0.12".parse::<std::net::IpAddr>().unwrap()]);
        writer.apply_watcher_event(&Event::Apply(meta(1, "6")));
        cache.sync(&pools).await;
        assert_eq!(api.calls().len(), 2, "a status change of such a pool is read");
        let reread = &api.seen()[1].uri;
        assert!(
            reread.contains("resourceVersion=0"),
            "from the API server's cache: {reread}"
        );
        assert!(legacy_holders(&cache.get("p").unwrap()).is_empty());
        assert!(
            cache.get("p").unwrap().status.is_none(),
            "released: no status kept"
        );
        writer.apply_watcher_event(&Event::Apply(meta(1, "7")));
        cache.sync(&pools).await;
        assert_eq!(api.calls().len(), 2, "and then no more");
        assert_eq!(api.unused(), 0);
    }
}
