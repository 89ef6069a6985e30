//! DEL, CHECK and GC: releasing what a pod's interface holds, verifying it, and releasing what
//! the runtime no longer knows.

use std::collections::HashSet;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use spiderpool_api::crd::{SpiderEndpoint, endpoints_of_node};
use spiderpool_cni::agent::{IpamRequest, IpamVerb, PodRef};
use spiderpool_cni::{CniError, ErrorCode};

use super::{IpamService, ServiceError, pod_of};

impl IpamService {
    pub(super) async fn del(&self, req: &IpamRequest) -> Result<(), CniError> {
        let pod_ref = pod_of(req)?;
        let _turn = self.turns.take().await?;
        let (api, ep) = self.endpoint_for_del(pod_ref).await?;
        let Some(ep) = ep else {
            // No endpoint: ADD never finished, or this is the second DEL. Pools may still hold
            // an address written before the endpoint; release by UID where one is known.
            if !pod_ref.uid.is_empty() {
                self.release_everywhere(&pod_ref.uid, &req.ifname).await?;
            }
            return Ok(());
        };
        let status = ep.status.clone().unwrap_or_default();
        let other_pod = !pod_ref.uid.is_empty() && status.current.uid != pod_ref.uid;
        if other_pod || status.current.node != self.node {
            // The endpoint belongs to a newer pod of the same name (here or on another node);
            // this pod's own addresses, if any are left, are found by UID. Without a UID there is
            // nothing that is surely this pod's.
            if !pod_ref.uid.is_empty() {
                self.release_everywhere(&pod_ref.uid, &req.ifname).await?;
            }
            return Ok(());
        }
        if let Some(current) = status.current.container_id.as_deref()
            && !req.container_id.is_empty()
            && current != req.container_id
        {
            // A late DEL of an earlier sandbox of this pod: the addresses now serve the current
            // sandbox, which a repeated ADD gave them to.
            tracing::info!(
                pod = %format!("{}/{}", pod_ref.namespace, pod_ref.name),
                stale = %req.container_id,
                current,
                "DEL of an earlier sandbox releases nothing"
            );
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
                match self.claims.release(pool, &uid, Some(&req.ifname)).await {
                    Ok(_) | Err(ServiceError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.forget_interface(&api, &pod_ref.name, &uid, &req.ifname, Some(ep))
            .await?;
        Ok(())
    }

    /// No endpoint says where: the pod's claims on this node say.
    async fn release_everywhere(&self, uid: &str, ifname: &str) -> Result<(), ServiceError> {
        self.claims.release_everywhere(uid, ifname).await?;
        Ok(())
    }

    pub(super) async fn check(&self, req: &IpamRequest) -> Result<(), CniError> {
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
        for (addr, pool) in [
            (&detail.ipv4, &detail.ipv4_pool),
            (&detail.ipv6, &detail.ipv6_pool),
        ] {
            let (Some(addr), Some(pool)) = (addr, pool) else {
                continue;
            };
            let ip = addr.split('/').next().unwrap_or_default();
            let holder = self.claims.holder(pool, ip).await?;
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

    /// CNI GC of one network: release what this node's endpoints hold on that network for
    /// attachments the runtime no longer has.
    pub(super) async fn gc(&self, req: &IpamRequest) -> Result<(), CniError> {
        let valid: HashSet<(String, String)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let api: Api<SpiderEndpoint> = Api::all(self.client.clone());
        // This node's endpoints only: a node's GC costs its own pods, not the cluster's.
        let of_node = ListParams::default().fields(&endpoints_of_node(&self.node));
        let list = match api.list(&of_node).await {
            Ok(list) => list,
            // A SpiderEndpoint CRD from before the selectable field (agents updated before the
            // controller applied the new CRDs) refuses the selector: every endpoint, filtered below.
            Err(kube::Error::Api(s)) if s.code == 400 => api
                .list(&ListParams::default())
                .await
                .map_err(|e| ServiceError::from_kube(e, "SpiderEndpoints"))?,
            Err(e) => return Err(ServiceError::from_kube(e, "SpiderEndpoints of this node").into()),
        };
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
                // Another network's attachment is not this GC's to judge (nor one whose network
                // was not recorded: the controller releases it once its pod is gone).
                if d.network.as_deref() != Some(req.network.as_str())
                    || valid.contains(&(container.clone(), d.interface.clone()))
                {
                    continue;
                }
                let del = IpamRequest {
                    verb: IpamVerb::Del,
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
