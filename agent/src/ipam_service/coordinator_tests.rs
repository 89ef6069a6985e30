//! What the agent tells the coordinator plugin: the SpiderCoordinator's spec, with the pod's
//! `ipam.spidernet.io/default-route-nic` in place of `podDefaultRouteNIC`, and the pod's
//! `ipam.spidernet.io/dns` as `podDns`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher};
use serde_json::json;
use spiderpool_api::coordinator::SpiderCoordinator;
use spiderpool_cni::agent::{CoordinatorRequest, CoordinatorVerb};

use super::IpamService;
use super::mock_api::MockApi;

fn store_of<K>(objects: Vec<K>) -> reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = reflector::store();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    store
}

fn request(pod: Option<&str>) -> CoordinatorRequest {
    CoordinatorRequest {
        verb: CoordinatorVerb::Coordinator,
        network: "macvlan".into(),
        pod_namespace: pod.map(|_| "ns".to_string()),
        pod_name: pod.map(String::from),
    }
}

fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "annotations": annotations}}))
    .unwrap()
}

fn service(api: &MockApi, pods: Vec<Pod>, coordinators: Vec<SpiderCoordinator>) -> Arc<IpamService> {
    super::tests::service_with(api, store_of(pods), store_of(coordinators))
}

fn default_coordinator() -> SpiderCoordinator {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
        "metadata": {"name": "default"}, "spec": {"mode": "auto", "podDefaultRouteNIC": "eth0"}
    }))
    .unwrap()
}

#[tokio::test]
async fn the_pod_s_default_route_nic_replaces_the_coordinator_s() {
    let api = MockApi::new();
    let svc = service(
        &api,
        vec![
            pod("multi", json!({"ipam.spidernet.io/default-route-nic": "net1"})),
            pod("plain", json!({})),
        ],
        vec![default_coordinator()],
    );
    let nic = |pod| svc.coordinator_settings(&request(pod))["spec"]["podDefaultRouteNIC"].clone();
    assert_eq!(nic(Some("multi")), "net1", "the annotation wins over the spec");
    assert_eq!(nic(Some("plain")), "eth0", "no annotation: the spec");
    assert_eq!(
        nic(Some("unknown")),
        "eth0",
        "a pod the agent does not know: the spec"
    );
    assert_eq!(nic(None), "eth0", "an older plugin that names no pod: the spec");
    assert_eq!(svc.coordinator_settings(&request(None))["spec"]["mode"], "auto");
}

/// Main plugins such as macvlan drop the IPAM's DNS from their result; the coordinator puts the
/// pod's back from what the agent says, with or without a SpiderCoordinator.
#[tokio::test]
async fn the_pod_s_dns_annotation_goes_to_the_coordinator() {
    let api = MockApi::new();
    let dns = json!({"nameservers": ["10.0.0.53"], "search": ["example.test"]});
    let pods = vec![
        pod("dns", json!({"ipam.spidernet.io/dns": dns.to_string()})),
        pod("bad", json!({"ipam.spidernet.io/dns": "[1]"})),
        pod("plain", json!({})),
    ];
    let with = service(&api, pods.clone(), vec![default_coordinator()]);
    assert_eq!(with.coordinator_settings(&request(Some("dns")))["podDns"], dns);
    assert_eq!(
        with.coordinator_settings(&request(Some("dns")))["spec"]["mode"],
        "auto"
    );
    assert!(
        with.coordinator_settings(&request(Some("plain")))
            .get("podDns")
            .is_none()
    );
    assert!(
        with.coordinator_settings(&request(Some("bad")))
            .get("podDns")
            .is_none(),
        "a malformed annotation (refused by IPAM's ADD) gives nothing"
    );
    let without = service(&api, pods, vec![]);
    assert_eq!(
        without.coordinator_settings(&request(Some("dns"))),
        json!({"podDns": dns})
    );
    assert!(without.coordinator_settings(&request(Some("plain"))).is_null());
}
