//! SpiderCoordinator status: the cluster's pod CIDRs (`overlayPodCIDR`) and service CIDRs
//! (`serviceCIDR`), which the coordinator plugin routes to the node through veth0 (underlay) or
//! through eth0 (overlay) so pods reach ClusterIPs and other pods whatever NIC has the default route.
//!
//! Where the pod CIDRs come from is `spec.podCIDRType`:
//! - `cluster`: kube-system's `kubeadm-config` ConfigMap (`networking.podSubnet`), else the
//!   `--cluster-cidr` flag of the kube-controller-manager pod in kube-system;
//! - `calico`: the enabled `ippools.crd.projectcalico.org` (`spec.cidr`);
//! - `cilium`: kube-system's `cilium-config` (`cluster-pool-ipv4-cidr`/`-ipv6-cidr`; with
//!   `ipam: kubernetes`, as `cluster`);
//! - `auto` (the default): calico when it has pools, else cilium when configured, else cluster;
//! - `none`: no pod CIDR.
//!
//! The service CIDRs come from the ServiceCIDR API (networking.k8s.io/v1, the API server keeps
//! one named `kubernetes`), else `kubeadm-config`'s `networking.serviceSubnet`, else the
//! kube-apiserver pod's `--service-cluster-ip-range`. When a source the type needs is missing the
//! phase is `NotReady` with the reason, and the coordinator plugin refuses pods until it is fixed
//! (a pod that cannot reach its services is worse than a pod that waits).

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use spiderpool_api::coordinator::{CoordinatorStatus, SpiderCoordinator};

pub const KUBE_SYSTEM: &str = "kube-system";
pub const PHASE_SYNCED: &str = "Synced";
pub const PHASE_NOT_READY: &str = "NotReady";

/// What discovery found: the resolved type (`auto` says which it chose) and the CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub pod_cidr_type: String,
    pub pod: Vec<IpNet>,
    pub service: Vec<IpNet>,
}

/// Why the cluster's CIDRs could not be found; its text is the SpiderCoordinator's NotReady
/// reason.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A read of the API server failed.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// What the cluster says is missing or not what it must be.
    #[error("{0}")]
    Invalid(String),
}

impl DiscoveryError {
    /// How a failed read of `what` becomes a discovery error (for `map_err`).
    fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> DiscoveryError {
        let what = what.into();
        move |source| DiscoveryError::Api { what, source }
    }

    /// The same error, saying where the bad value was read.
    fn within(self, place: &str) -> DiscoveryError {
        match self {
            DiscoveryError::Invalid(why) => DiscoveryError::Invalid(format!("{place}: {why}")),
            api => api,
        }
    }
}

/// `a,b` or `a b` (kubeadm and Cilium write lists both ways); every entry must be a CIDR.
pub fn cidr_list(text: &str) -> Result<Vec<IpNet>, DiscoveryError> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|e| DiscoveryError::Invalid(format!("{s:?}: {e}")))
        })
        .collect()
}

/// `networking.podSubnet` and `networking.serviceSubnet` of kubeadm's ClusterConfiguration.
pub fn kubeadm_networking(
    cluster_configuration: &str,
) -> Result<(Option<String>, Option<String>), DiscoveryError> {
    let doc: serde_json::Value = serde_yaml_ng::from_str(cluster_configuration)
        .map_err(|e| DiscoveryError::Invalid(format!("kubeadm-config ClusterConfiguration: {e}")))?;
    let get = |key: &str| {
        doc["networking"][key]
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    Ok((get("podSubnet"), get("serviceSubnet")))
}

/// The value of `--flag=value` or `--flag value` in a container's command and args.
pub fn flag_value(words: &[String], flag: &str) -> Option<String> {
    let long = format!("--{flag}");
    let with_eq = format!("{long}=");
    let mut words = words.iter();
    while let Some(w) = words.next() {
        if let Some(v) = w.strip_prefix(&with_eq) {
            return Some(v.to_string());
        }
        if *w == long {
            return words.next().cloned();
        }
    }
    None
}

/// What `cilium-config` says: `Ok(None)` when Cilium delegates IPAM to Kubernetes (the node
/// podCIDRs: use the `cluster` sources).
pub fn cilium_pod_cidrs(data: &BTreeMap<String, String>) -> Result<Option<Vec<IpNet>>, DiscoveryError> {
    match data.get("ipam").map(String::as_str).unwrap_or("cluster-pool") {
        "kubernetes" => Ok(None),
        "cluster-pool" | "cluster-pool-v2beta" => {
            let mut cidrs = Vec::new();
            for key in ["cluster-pool-ipv4-cidr", "cluster-pool-ipv6-cidr"] {
                if let Some(v) = data.get(key) {
                    cidrs.extend(cidr_list(v).map_err(|e| e.within(&format!("cilium-config {key}")))?);
                }
            }
            if cidrs.is_empty() {
                return Err(DiscoveryError::Invalid(
                    "cilium-config has no cluster-pool-ipv4-cidr or cluster-pool-ipv6-cidr".into(),
                ));
            }
            Ok(Some(cidrs))
        }
        other => Err(DiscoveryError::Invalid(format!(
            "cilium-config ipam mode {other:?}: only cluster-pool and kubernetes are read; list the pod CIDRs in hijackCIDR and set podCIDRType none"
        ))),
    }
}

/// `spec.cidr` of every Calico IPPool that is not disabled.
pub fn calico_pod_cidrs(pools: &[serde_json::Value]) -> Result<Vec<IpNet>, DiscoveryError> {
    let mut cidrs = Vec::new();
    for pool in pools {
        if pool["spec"]["disabled"].as_bool() == Some(true) {
            continue;
        }
        if let Some(cidr) = pool["spec"]["cidr"].as_str() {
            cidrs.extend(cidr_list(cidr).map_err(|e| e.within("calico IPPool"))?);
        }
    }
    Ok(cidrs)
}

/// Reads the cluster through one client; each source answers `Ok(None)` when it is not there.
pub struct Sources {
    client: Client,
}

impl Sources {
    pub fn new(client: Client) -> Sources {
        Sources { client }
    }

    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, DiscoveryError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), KUBE_SYSTEM);
        let cm = api
            .get_opt(name)
            .await
            .map_err(DiscoveryError::api(format!("ConfigMap {KUBE_SYSTEM}/{name}")))?;
        Ok(cm.map(|cm| cm.data.unwrap_or_default()))
    }

    async fn kubeadm(&self) -> Result<(Option<String>, Option<String>), DiscoveryError> {
        match self.config_map("kubeadm-config").await? {
            Some(data) => match data.get("ClusterConfiguration") {
                Some(text) => kubeadm_networking(text),
                None => Ok((None, None)),
            },
            None => Ok((None, None)),
        }
    }

    /// A flag of the static pod of `component` (label `component=<name>`, as kubeadm labels them).
    async fn component_flag(&self, component: &str, flag: &str) -> Result<Option<String>, DiscoveryError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), KUBE_SYSTEM);
        let pods = api
            .list(&ListParams::default().labels(&format!("component={component}")))
            .await
            .map_err(DiscoveryError::api(format!(
                "pods of {component} in {KUBE_SYSTEM}"
            )))?;
        for pod in pods {
            for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                let words: Vec<String> = c
                    .command
                    .iter()
                    .flatten()
                    .chain(c.args.iter().flatten())
                    .cloned()
                    .collect();
                if let Some(v) = flag_value(&words, flag) {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }

    pub async fn cluster_pod_cidrs(&self) -> Result<Vec<IpNet>, DiscoveryError> {
        if let (Some(pod), _) = self.kubeadm().await? {
            return cidr_list(&pod).map_err(|e| e.within("kubeadm-config podSubnet"));
        }
        if let Some(v) = self
            .component_flag("kube-controller-manager", "cluster-cidr")
            .await?
        {
            return cidr_list(&v).map_err(|e| e.within("kube-controller-manager --cluster-cidr"));
        }
        Err(DiscoveryError::Invalid(format!(
            "podCIDRType cluster: no kubeadm-config ConfigMap with networking.podSubnet and no kube-controller-manager pod with --cluster-cidr in {KUBE_SYSTEM}"
        )))
    }

    /// `Ok(None)` when Calico's IPPool CRD is not installed.
    pub async fn calico_pod_cidrs(&self) -> Result<Option<Vec<IpNet>>, DiscoveryError> {
        let gvk = GroupVersionKind::gvk("crd.projectcalico.org", "v1", "IPPool");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "ippools");
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let pools: Vec<serde_json::Value> = list.items.into_iter().map(|p| p.data).collect();
                calico_pod_cidrs(&pools).map(Some)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(DiscoveryError::api("calico IPPools")(e)),
        }
    }

    /// `Ok(None)` when there is no cilium-config.
    pub async fn cilium_config(&self) -> Result<Option<BTreeMap<String, String>>, DiscoveryError> {
        self.config_map("cilium-config").await
    }

    pub async fn service_cidrs(&self) -> Result<Vec<IpNet>, DiscoveryError> {
        let api: Api<ServiceCIDR> = Api::all(self.client.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let mut cidrs = Vec::new();
                for s in list
                    .items
                    .iter()
                    .filter(|s| s.metadata.deletion_timestamp.is_none())
                {
                    for c in s.spec.iter().flat_map(|spec| spec.cidrs.iter().flatten()) {
                        cidrs.extend(
                            cidr_list(c).map_err(|e| e.within(&format!("ServiceCIDR {}", s.name_any())))?,
                        );
                    }
                }
                if !cidrs.is_empty() {
                    return Ok(cidrs);
                }
            }
            // Before Kubernetes 1.33 (or with the API off): the older sources.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(DiscoveryError::api("ServiceCIDRs")(e)),
        }
        if let (_, Some(service)) = self.kubeadm().await? {
            return cidr_list(&service).map_err(|e| e.within("kubeadm-config serviceSubnet"));
        }
        if let Some(v) = self
            .component_flag("kube-apiserver", "service-cluster-ip-range")
            .await?
        {
            return cidr_list(&v).map_err(|e| e.within("kube-apiserver --service-cluster-ip-range"));
        }
        Err(DiscoveryError::Invalid("no ServiceCIDR, no kubeadm-config serviceSubnet and no kube-apiserver pod with --service-cluster-ip-range".into()))
    }

    /// The CIDRs for `pod_cidr_type` (absent means `auto`).
    pub async fn discover(&self, pod_cidr_type: Option<&str>) -> Result<Discovered, DiscoveryError> {
        let service = self.service_cidrs().await?;
        let wanted = pod_cidr_type.unwrap_or("auto");
        let (resolved, pod) = match wanted {
            "none" => ("none", Vec::new()),
            "cluster" => ("cluster", self.cluster_pod_cidrs().await?),
            "calico" => match self.calico_pod_cidrs().await? {
                Some(cidrs) if !cidrs.is_empty() => ("calico", cidrs),
                Some(_) => {
                    return Err(DiscoveryError::Invalid(
                        "podCIDRType calico: no enabled Calico IPPool".into(),
                    ));
                }
                None => {
                    return Err(DiscoveryError::Invalid(
                        "podCIDRType calico: the Calico IPPool CRD is not installed".into(),
                    ));
                }
            },
            "cilium" => self.cilium(true).await?,
            "auto" => match self.calico_pod_cidrs().await? {
                Some(cidrs) if !cidrs.is_empty() => ("calico", cidrs),
                _ => match self.cilium(false).await? {
                    (resolved, cidrs) if !cidrs.is_empty() || resolved == "cilium" => (resolved, cidrs),
                    _ => ("cluster", self.cluster_pod_cidrs().await?),
                },
            },
            other => {
                return Err(DiscoveryError::Invalid(format!(
                    "podCIDRType {other:?}: want auto, cluster, calico, cilium or none"
                )));
            }
        };
        Ok(Discovered {
            pod_cidr_type: resolved.to_string(),
            pod,
            service,
        })
    }

    /// Cilium's pod CIDRs; with `required`, a missing cilium-config is an error, else it means
    /// "not Cilium" (an empty answer).
    async fn cilium(&self, required: bool) -> Result<(&'static str, Vec<IpNet>), DiscoveryError> {
        match self.cilium_config().await? {
            Some(data) => match cilium_pod_cidrs(&data)? {
                Some(cidrs) => Ok(("cilium", cidrs)),
                None => Ok(("cluster", self.cluster_pod_cidrs().await?)),
            },
            None if required => Err(DiscoveryError::Invalid(format!(
                "podCIDRType cilium: no cilium-config ConfigMap in {KUBE_SYSTEM}"
            ))),
            None => Ok(("", Vec::new())),
        }
    }
}

/// The status a discovery outcome gives; on failure the CIDRs last found are kept (for whoever
/// reads the object) but the phase says the plugin must not trust them.
pub fn status_for(
    outcome: &Result<Discovered, DiscoveryError>,
    previous: Option<&CoordinatorStatus>,
) -> CoordinatorStatus {
    let strings = |v: &[IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    match outcome {
        Ok(d) => CoordinatorStatus {
            phase: Some(PHASE_SYNCED.into()),
            reason: None,
            overlay_pod_cidr: strings(&d.pod),
            service_cidr: strings(&d.service),
        },
        Err(reason) => CoordinatorStatus {
            phase: Some(PHASE_NOT_READY.into()),
            reason: Some(reason.to_string()),
            ..previous.cloned().unwrap_or_default()
        },
    }
}

/// One pass over every SpiderCoordinator: discovers and writes the status where it changed. The
/// number of objects written.
pub async fn reconcile_all(client: &Client) -> anyhow::Result<usize> {
    let api: Api<SpiderCoordinator> = Api::all(client.clone());
    let sources = Sources::new(client.clone());
    let mut written = 0;
    for coordinator in api.list(&ListParams::default()).await? {
        let outcome = sources.discover(coordinator.spec.pod_cidr_type.as_deref()).await;
        let status = status_for(&outcome, coordinator.status.as_ref());
        if coordinator.status.as_ref() == Some(&status) {
            continue;
        }
        match &outcome {
            Ok(d) => tracing::info!(
                coordinator = %coordinator.name_any(),
                pod_cidr_type = %d.pod_cidr_type,
                pod = ?status.overlay_pod_cidr,
                service = ?status.service_cidr,
                "coordinator synced"
            ),
            Err(reason) => {
                tracing::warn!(coordinator = %coordinator.name_any(), "coordinator not ready: {reason}")
            }
        }
        // `status: null` first would not clear the list fields: a merge patch of the whole status
        // replaces each of them, and the reason is written as null when gone.
        let patch = serde_json::json!({"status": {
            "phase": status.phase,
            "reason": status.reason,
            "overlayPodCIDR": status.overlay_pod_cidr,
            "serviceCIDR": status.service_cidr,
        }});
        api.patch_status(
            &coordinator.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_lists_in_both_spellings() {
        assert_eq!(
            cidr_list("10.244.0.0/16,fd00:10:244::/56").unwrap(),
            nets(&["10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert_eq!(cidr_list(" 10.0.0.0/8  10.1.0.0/16 ").unwrap().len(), 2);
        // Host bits are dropped, as the kernel would.
        assert_eq!(cidr_list("10.244.1.7/16").unwrap(), nets(&["10.244.0.0/16"]));
        assert!(
            cidr_list("10.244.0.0/16,banana")
                .unwrap_err()
                .to_string()
                .contains("banana")
        );
        assert!(cidr_list("").unwrap().is_empty());
    }

    #[test]
    fn kubeadm_cluster_configuration() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16,fd00:244::/56\n  serviceSubnet: 10.96.0.0/12\n";
        let (pod, service) = kubeadm_networking(text).unwrap();
        assert_eq!(pod.as_deref(), Some("10.244.0.0/16,fd00:244::/56"));
        assert_eq!(service.as_deref(), Some("10.96.0.0/12"));
        assert_eq!(
            kubeadm_networking("kind: ClusterConfiguration\n").unwrap(),
            (None, None)
        );
        assert!(kubeadm_networking("networking: [unclosed").is_err());
    }

    #[test]
    fn flags_in_both_forms() {
        let words: Vec<String> = [
            "kube-controller-manager",
            "--allocate-node-cidrs=true",
            "--cluster-cidr=10.244.0.0/16",
            "--service-cluster-ip-range",
            "10.96.0.0/12",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            flag_value(&words, "cluster-cidr").as_deref(),
            Some("10.244.0.0/16")
        );
        assert_eq!(
            flag_value(&words, "service-cluster-ip-range").as_deref(),
            Some("10.96.0.0/12")
        );
        assert_eq!(flag_value(&words, "cluster"), None, "a prefix is not the flag");
        assert_eq!(flag_value(&words[..4], "service-cluster-ip-range"), None);
    }

    #[test]
    fn cilium_modes() {
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            cilium_pod_cidrs(&data(&[
                ("cluster-pool-ipv4-cidr", "10.0.0.0/8 10.128.0.0/9"),
                ("cluster-pool-ipv6-cidr", "fd00::/104")
            ]))
            .unwrap(),
            Some(nets(&["10.0.0.0/8", "10.128.0.0/9", "fd00::/104"]))
        );
        assert_eq!(cilium_pod_cidrs(&data(&[("ipam", "kubernetes")])).unwrap(), None);
        assert!(cilium_pod_cidrs(&data(&[("ipam", "cluster-pool")])).is_err());
        assert!(
            cilium_pod_cidrs(&data(&[("ipam", "multi-pool")]))
                .unwrap_err()
                .to_string()
                .contains("hijackCIDR")
        );
    }

    #[test]
    fn calico_pools_skip_disabled() {
        let pools = vec![
            serde_json::json!({"spec": {"cidr": "192.168.0.0/16"}}),
            serde_json::json!({"spec": {"cidr": "10.10.0.0/16", "disabled": true}}),
            serde_json::json!({"spec": {"cidr": "fd00:192::/48", "disabled": false}}),
        ];
        assert_eq!(
            calico_pod_cidrs(&pools).unwrap(),
            nets(&["192.168.0.0/16", "fd00:192::/48"])
        );
    }

    #[test]
    fn status_keeps_last_cidrs_when_not_ready() {
        let ok = Ok(Discovered {
            pod_cidr_type: "cluster".into(),
            pod: nets(&["10.244.0.0/16"]),
            service: nets(&["10.96.0.0/12"]),
        });
        let synced = status_for(&ok, None);
        assert_eq!(synced.phase.as_deref(), Some(PHASE_SYNCED));
        assert_eq!(synced.overlay_pod_cidr, ["10.244.0.0/16"]);
        let failed = status_for(&Err(DiscoveryError::Invalid("gone".into())), Some(&synced));
        assert_eq!(failed.phase.as_deref(), Some(PHASE_NOT_READY));
        assert_eq!(failed.reason.as_deref(), Some("gone"));
        assert_eq!(failed.service_cidr, ["10.96.0.0/12"]);
    }
}
