//! A cache of API objects that wakes a loop: the pattern of the agent's and the controller's
//! level-triggered loops (read the caches, act, sleep until something changes or a resync).

use std::sync::Arc;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// An object kube's reflector can cache (every k8s-openapi and `CustomResource` kind).
pub trait Watched:
    Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
    + Clone
    + std::fmt::Debug
    + k8s_openapi::serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A reflector over `api` (kept by a task of its own, with backoff on errors) that notifies
/// `wake` on every change it delivers.
pub fn cache_waking<K: Watched>(api: Api<K>, config: watcher::Config, wake: Arc<Notify>) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => wake.notify_one(),
                Err(e) => tracing::debug!("watch: {e}"),
            }
        }
    });
    store
}
