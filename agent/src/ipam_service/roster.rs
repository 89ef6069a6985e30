//! The nodes an agent shares a pool with, for where its walk of the pool starts
//! ([`spiderpool_ipam::cluster::claims::Placement::share`]): agents that allocate at once then
//! start in parts of their own instead of all at the lowest address.
//!
//! The Node list is read (metadata only, from the API server's watch cache) once when the agent
//! starts, and again only when the agent keeps missing (a node joined or left since) and the list
//! is older than [`FRESH_FOR`]. It is not watched: every agent watching every Node costs nodes²
//! events and bytes for as long as the cluster runs, and a stale list only makes a start less apt,
//! never an address wrong. An agent whose node is not listed (no Node object, the list refused)
//! walks the pool from its lowest address, as one node alone does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use spiderpool_api::crd::IPPoolSpec;
use spiderpool_ipam::cluster::select::admits_node;

/// How long a Node list is used before misses may have it read again.
pub const FRESH_FOR: Duration = Duration::from_secs(600);

type Labelled = Vec<(String, BTreeMap<String, String>)>;

pub struct NodeRoster {
    api: Api<Node>,
    node: String,
    /// When the nodes were listed, and their names (sorted) and labels.
    listed: tokio::sync::Mutex<Option<(Instant, Arc<Labelled>)>>,
}

impl NodeRoster {
    pub fn new(client: Client, node: &str) -> NodeRoster {
        NodeRoster {
            api: Api::all(client),
            node: node.to_string(),
            listed: tokio::sync::Mutex::new(None),
        }
    }

    /// Lists the nodes, unless listed already: at the agent's start, so that its first ADDs
    /// find them.
    pub async fn prefetch(&self) {
        self.nodes(false).await;
    }

    /// This node's place among the nodes `spec` admits: `(rank, of)`, `(0, 1)` when it is not
    /// among them. `missing`: the agent has been missing addresses, so a list older than
    /// [`FRESH_FOR`] is read again.
    pub async fn share(&self, spec: &IPPoolSpec, missing: bool) -> (usize, usize) {
        let nodes = self.nodes(missing).await;
        let admitted: Vec<&str> = nodes
            .iter()
            .filter(|(name, labels)| admits_node(spec, name, labels).is_ok())
            .map(|(name, _)| name.as_str())
            .collect();
        match admitted.iter().position(|n| *n == self.node) {
            Some(rank) => (rank, admitted.len()),
            None => (0, 1),
        }
    }

    async fn nodes(&self, missing: bool) -> Arc<Labelled> {
        // Held while listing: ADDs that come meanwhile wait for this one list.
        let mut listed = self.listed.lock().await;
        if let Some((at, nodes)) = listed.as_ref()
            && (!missing || at.elapsed() < FRESH_FOR)
        {
            return nodes.clone();
        }
        let nodes = match self.api.list_metadata(&ListParams::default().match_any()).await {
            Ok(list) => {
                let mut nodes: Labelled = list
                    .items
                    .into_iter()
                    .map(|n| (n.name_any(), n.metadata.labels.unwrap_or_default()))
                    .collect();
                nodes.sort_by(|a, b| a.0.cmp(&b.0));
                nodes
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing Nodes failed: pools are walked from their lowest address until the next list");
                Vec::new()
            }
        };
        let nodes = Arc::new(nodes);
        *listed = Some((Instant::now(), nodes.clone()));
        nodes
    }
}
