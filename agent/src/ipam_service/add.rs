//! ADD: choose the pools, claim an address per family from their writers, record the pod's
//! SpiderEndpoint, answer the plugin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::Api;
use kube::runtime::reflector;
use spiderpool_api::crd::auto_pool::is_auto_pool;
use spiderpool_api::crd::{IPAllocationDetail, PoolIPAllocation};
use spiderpool_cni::agent::IpamRequest;
use spiderpool_cni::{CniError, CniResult, IpConfig};
use spiderpool_ipam::cluster::{auto_pool, pod_network, select};
use spiderpool_ipam::range::Family;

use super::Claimed;
use super::app_pools;
use super::{IpamService, ServiceError, pod_of};

/// The StatefulSet that controls a pod, if any.
fn stateful_set_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet" && o.controller == Some(true))
        .map(|o| o.name.clone())
}

impl IpamService {
    pub(super) async fn add(self: &Arc<Self>, req: &IpamRequest) -> Result<CniResult, CniError> {
        let pod_ref = pod_of(req)?;
        let what = format!("pod {}/{}", pod_ref.namespace, pod_ref.name);
        let cached = self
            .pods
            .get(&reflector::ObjectRef::new(&pod_ref.name).within(&pod_ref.namespace))
            .filter(|p| pod_ref.uid.is_empty() || p.metadata.uid.as_deref() == Some(pod_ref.uid.as_str()));
        // The cache's own object, not a copy: a pod's spec is hundreds of allocations.
        let pod = match cached {
            Some(p) => p,
            None => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod_ref.namespace);
                Arc::new(
                    pods.get(&pod_ref.name)
                        .await
                        .map_err(|e| ServiceError::from_kube(e, &what))?,
                )
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
        let namespace =
            match self
                .namespaces
                .get(&reflector::ObjectRef::new(&pod_ref.namespace))
            {
                Some(n) => n,
                None => {
                    let namespaces: Api<Namespace> = Api::all(self.client.clone());
                    Arc::new(namespaces.get(&pod_ref.namespace).await.map_err(|e| {
                        ServiceError::from_kube(e, &format!("namespace {}", pod_ref.namespace))
                    })?)
                }
            };
        let empty = BTreeMap::new();
        let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        // Read before anything is claimed: a bad value fails the ADD with nothing to undo.
        let pod_routes = pod_network::routes(pod_annotations).map_err(ServiceError::from)?;
        let pod_dns = pod_network::dns(pod_annotations).map_err(ServiceError::from)?;
        // Arcs of the cached objects: a pool's status carries every allocation, not worth a copy.
        // SpiderSubnet annotations come first, as in Spiderpool; one that does not name this
        // interface leaves it to the usual choice.
        let subnet_choice = auto_pool::subnets_of(pod_annotations)
            .map_err(ServiceError::from)?
            .and_then(|all| all.into_iter().find(|c| c.interface == req.ifname));
        let deadline = Instant::now() + app_pools::WAIT;
        let (chosen, app) = match &subnet_choice {
            Some(choice) => {
                let app = self.top_controller(&pod).await?;
                let number = auto_pool::IpNumber::parse(pod_annotations).map_err(ServiceError::from)?;
                app.check_number(number).map_err(ServiceError::BadRequest)?;
                let chosen = self
                    .auto_candidates(&app, choice, req.clean_gateway, deadline)
                    .await?;
                (chosen, Some(app))
            }
            None => {
                let all_pools = self.pools.state();
                let chosen = select::candidates(&select::Inputs {
                    ifname: &req.ifname,
                    pod_annotations,
                    namespace_annotations: namespace.metadata.annotations.as_ref().unwrap_or(&empty),
                    netconf_v4: &req.default_ipv4_pools,
                    netconf_v6: &req.default_ipv6_pools,
                    netconf_clean_gateway: req.clean_gateway,
                    pools: &all_pools,
                })
                .map_err(ServiceError::from)?;
                // A pod naming an auto-pool itself must belong to its application.
                let app = if self.names_auto_pool(&chosen) {
                    self.top_controller(&pod).await.ok()
                } else {
                    None
                };
                (chosen, app)
            }
        };
        let app_affinity = app.as_ref().map(|a| a.affinity());
        if chosen.ipv4.is_empty() && chosen.ipv6.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "no pool for {what} interface {}: no annotation, no namespace or netconf default pools, and no pool with default: true",
                req.ifname
            ))
            .into());
        }
        // From here on the ADD works at the API server: it waits for its turn.
        let mut turn = self.turns.take().await?;
        let node_labels = self.node_labels_if_needed(&chosen).await?;
        let subject = select::Subject {
            node: &self.node,
            node_labels: node_labels.as_ref(),
            namespace: &pod_ref.namespace,
            namespace_labels: namespace.metadata.labels.as_ref().unwrap_or(&empty),
            pod_labels: pod.metadata.labels.as_ref().unwrap_or(&empty),
            network: &req.network,
            app: app_affinity.as_ref(),
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
            let claimed = loop {
                let got = self
                    .claim_from(family, names, &subject, &entry, chosen.source)
                    .await;
                // The controller grows an auto-pool as its application scales. Waiting for it is
                // not API work: the turn goes to others meanwhile.
                if subnet_choice.is_some() && matches!(got, Err(ServiceError::Exhausted(_))) {
                    drop(turn.take());
                    if app_pools::wait_for_growth(deadline).await {
                        match self.turns.take().await {
                            Ok(again) => {
                                turn = again;
                                continue;
                            }
                            // What the other family got is released below.
                            Err(e) => break Err(e),
                        }
                    }
                }
                break got;
            };
            match claimed {
                Ok(c) => got.push((family, c)),
                Err(e) => {
                    // All or nothing: give back what the other family got.
                    for (_, c) in &got {
                        let _ = self.claims.release(&c.pool.name, &uid, Some(&req.ifname)).await;
                    }
                    return Err(e.into());
                }
            }
        }
        let detail = detail_of(req, &got, chosen.clean_gateway);
        if let Err(e) = self.record_endpoint(&pod, req, detail, sts).await {
            for (_, c) in &got {
                let _ = self.claims.release(&c.pool.name, &uid, Some(&req.ifname)).await;
            }
            return Err(e.into());
        }
        let mut result = result_of(&got, chosen.clean_gateway);
        // The pod's own routes after the pools', on the interface whose subnet holds their gateway.
        let subnets: Vec<_> = got.iter().map(|(_, c)| c.pool.subnet).collect();
        result
            .routes
            .extend(pod_network::routes_via(&pod_routes, &subnets));
        if let Some(dns) = pod_dns {
            result.dns = dns;
        }
        Ok(result)
    }

    fn names_auto_pool(&self, chosen: &select::Candidates) -> bool {
        chosen.ipv4.iter().chain(&chosen.ipv6).any(|name| {
            self.pools
                .get(name)
                .is_some_and(|p| p.metadata.labels.as_ref().is_some_and(is_auto_pool))
        })
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
            match self.claim(name, entry).await {
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
}

fn detail_of(req: &IpamRequest, got: &[(Family, Claimed)], clean_gateway: bool) -> IPAllocationDetail {
    let mut d = IPAllocationDetail {
        interface: req.ifname.clone(),
        network: Some(req.network.clone()),
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
