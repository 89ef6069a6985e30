//! The IPAM service's API calls against a scripted API server ([`super::mock_api`]): the exact
//! requests of a SpiderEndpoint's creation, of a GC release and of a pool's registration. The
//! claim store's own calls are in `claims_tests`; the decisions in `spiderpool_ipam::cluster`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use serde_json::{Value, json};
use spiderpool_api::coordinator::SpiderCoordinator;
use spiderpool_api::crd::{Allocations, IPAllocationDetail, PoolIPAllocation};
use spiderpool_cni::Attachment;
use spiderpool_cni::agent::{IpamRequest, IpamVerb, PodRef};

use super::IpamService;
use super::claims_tests::{CLAIMS, claim, list, nodes_listed};
use super::mock_api::{MockApi, status_body};

pub(super) const POOLS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippools";
const REGISTRY: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippoolregistries/ipv4";
const REGISTRIES: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippoolregistries";
pub(super) const ENDPOINTS: &str = "/apis/spiderpool.spidernet.io/v2beta1/namespaces/ns/spiderendpoints";

pub(super) fn entry(pod: &str) -> PoolIPAllocation {
    PoolIPAllocation {
        pod: format!("ns/{pod}"),
        pod_uid: format!("uid-{pod}"),
        interface: Some("eth0".into()),
        node: Some("n1".into()),
        owner_stateful_set: None,
    }
}

/// The pool `p` (10.0.0.10–10.0.0.20) at `version`, its status holding `held` (address → pod),
/// as agents from before SpiderIPClaims recorded holders.
pub(super) fn pool(version: &str, held: &[(&str, &str)]) -> Value {
    let allocated: BTreeMap<String, PoolIPAllocation> = held
        .iter()
        .map(|(ip, pod)| (ip.to_string(), entry(pod)))
        .collect();
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": "p", "resourceVersion": version, "uid": "up", "generation": 1},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.10-10.0.0.20"], "gateway": "10.0.0.1"},
        "status": {"allocatedIPsByNode": Allocations::from_view(&allocated).encoded(), "allocatedIPCount": held.len()}
    })
}

/// Scripts the claims of pod `pod` on node n1 as listed by a release (`held`: its addresses),
/// and the delete of each.
pub(super) fn pod_claims(api: &MockApi, pod: &str, held: &[&str]) {
    let items = held.iter().map(|ip| claim(ip, pod, "n1", None, "5")).collect();
    api.reply("GET", CLAIMS, 200, list(items));
    for ip in held {
        api.reply(
            "DELETE",
            &format!("{CLAIMS}/{ip}"),
            200,
            status_body(200, "deleted"),
        );
    }
}

/// A service for node `n1` with empty caches, talking to `api`.
pub(super) fn service(api: &MockApi) -> Arc<IpamService> {
    service_with(api, reflector::store().0, reflector::store().0)
}

/// A service for node `n1` with the pods and coordinators of `pods` and `coordinators`.
pub(super) fn service_with(
    api: &MockApi,
    pods: reflector::Store<Pod>,
    coordinators: reflector::Store<SpiderCoordinator>,
) -> Arc<IpamService> {
    service_limited(api, pods, coordinators, 0)
}

/// As [`service_with`], with at most `in_flight` ADDs and DELs at work at once (0: no limit).
pub(super) fn service_limited(
    api: &MockApi,
    pods: reflector::Store<Pod>,
    coordinators: reflector::Store<SpiderCoordinator>,
    in_flight: usize,
) -> Arc<IpamService> {
    let metrics = Arc::new(super::metrics::IpamMetrics::new());
    Arc::new(IpamService {
        client: api.client(),
        node: "n1".into(),
        pools: super::pool_cache::PoolCache::empty(),
        reserved: reflector::store().0,
        registry: reflector::store().0,
        pods,
        namespaces: reflector::store().0,
        coordinators,
        metrics: metrics.clone(),
        written: Default::default(),
        claims: super::claims::ClaimStore::empty(api.client(), "n1", metrics),
        registered: Default::default(),
        turns: super::turns::Turns::new(in_flight, std::time::Duration::from_millis(200)),
    })
}

pub(super) fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}
    }))
    .unwrap()
}

pub(super) fn request(verb: IpamVerb, pod: &str, container: &str) -> IpamRequest {
    IpamRequest {
        verb,
        network: "macvlan".into(),
        container_id: container.into(),
        ifname: "eth0".into(),
        pod: Some(PodRef {
            namespace: "ns".into(),
            name: pod.into(),
            uid: format!("uid-{pod}"),
        }),
        default_ipv4_pools: Vec::new(),
        default_ipv6_pools: Vec::new(),
        clean_gateway: false,
        valid_attachments: Vec::new(),
    }
}

pub(super) fn detail(ip: &str) -> IPAllocationDetail {
    IPAllocationDetail {
        interface: "eth0".into(),
        ipv4: Some(format!("{ip}/24")),
        ipv4_pool: Some("p".into()),
        network: Some("macvlan".into()),
        ..IPAllocationDetail::default()
    }
}

pub(super) fn endpoint(pod: &str, node: &str, container: &str, ip: &str, version: &str) -> Value {
    endpoint_on(pod, node, container, detail(ip), version)
}

fn endpoint_on(pod: &str, node: &str, container: &str, detail: IPAllocationDetail, version: &str) -> Value {
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpoint",
        "metadata": {"name": pod, "namespace": "ns", "resourceVersion": version},
        "spec": {},
        "status": {
            "current": {"uid": format!("uid-{pod}"), "node": node, "containerID": container,
                        "ips": [serde_json::to_value(detail).unwrap()]},
            "ownerControllerType": "Pod", "ownerControllerName": pod
        }
    })
}

#[tokio::test]
async fn add_creates_the_endpoint_owned_by_the_pod_without_reading_first() {
    let api = MockApi::new();
    api.reply(
        "POST",
        ENDPOINTS,
        201,
        endpoint("a", "n1", "c1", "10.0.0.10", "1"),
    );
    let svc = service(&api);
    svc.record_endpoint(
        &pod("a"),
        &request(IpamVerb::Add, "a", "c1"),
        detail("10.0.0.10"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(api.calls(), [format!("POST {ENDPOINTS}")]);
    let body = api.seen()[0].body.clone().unwrap();
    assert_eq!(body["metadata"]["name"], "a");
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-a");
    assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(body["status"]["current"]["node"], "n1");
    assert_eq!(body["status"]["current"]["containerID"], "c1");
    assert_eq!(body["status"]["current"]["ips"][0]["ipv4"], "10.0.0.10/24");
    assert_eq!(body["status"]["current"]["ips"][0]["network"], "macvlan");
}

#[tokio::test]
async fn a_second_interface_conflicting_with_the_first_reads_and_replaces() {
    let api = MockApi::new();
    api.reply("POST", ENDPOINTS, 409, status_body(409, "already exists"))
        .reply(
            "GET",
            &format!("{ENDPOINTS}/a"),
            200,
            endpoint("a", "n1", "c1", "10.0.0.10", "3"),
        )
        .reply(
            "PUT",
            &format!("{ENDPOINTS}/a"),
            200,
            endpoint("a", "n1", "c1", "10.0.0.10", "4"),
        );
    let svc = service(&api);
    let mut net1 = detail("10.0.0.11");
    net1.interface = "net1".into();
    let mut req = request(IpamVerb::Add, "a", "c1");
    req.ifname = "net1".into();
    svc.record_endpoint(&pod("a"), &req, net1, None).await.unwrap();
    assert_eq!(
        api.calls(),
        [
            format!("POST {ENDPOINTS}"),
            format!("GET {ENDPOINTS}/a"),
            format!("PUT {ENDPOINTS}/a")
        ]
    );
    let put = api.seen()[2].body.clone().unwrap();
    assert_eq!(
        put["metadata"]["resourceVersion"], "3",
        "guarded by the version read"
    );
    let ifaces: Vec<&str> = put["status"]["current"]["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["interface"].as_str())
        .collect();
    assert_eq!(ifaces, ["eth0", "net1"]);
}

#[tokio::test]
async fn gc_releases_only_this_node_s_attachments_of_its_network_the_runtime_no_longer_has() {
    let api = MockApi::new();
    let all = "/apis/spiderpool.spidernet.io/v2beta1/spiderendpoints";
    let mut other_network = detail("10.0.0.13");
    other_network.network = Some("sriov".into());
    let mut unrecorded = detail("10.0.0.14");
    unrecorded.network = None;
    api.reply(
        "GET",
        all,
        200,
        json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpointList", "metadata": {},
            "items": [
                endpoint("a", "n1", "c1", "10.0.0.10", "5"),
                endpoint("b", "n1", "c2", "10.0.0.11", "7"),
                endpoint("c", "n2", "c3", "10.0.0.12", "9"),
                endpoint_on("d", "n1", "c4", other_network, "11"),
                endpoint_on("e", "n1", "c5", unrecorded, "13"),
            ]
        }),
    )
    .reply(
        "GET",
        &format!("{ENDPOINTS}/b"),
        200,
        endpoint("b", "n1", "c2", "10.0.0.11", "7"),
    )
    .reply(
        "DELETE",
        &format!("{ENDPOINTS}/b"),
        200,
        status_body(200, "deleted"),
    );
    pod_claims(&api, "b", &["10.0.0.11"]);
    let svc = service(&api);
    let mut gc = request(IpamVerb::Gc, "", "");
    gc.pod = None;
    gc.valid_attachments = vec![Attachment {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    }];
    svc.gc(&gc).await.unwrap();
    // a (valid), c (another node), d (another network) and e (network not recorded) are left alone.
    assert_eq!(
        api.calls(),
        [
            format!("GET {all}"),
            format!("GET {ENDPOINTS}/b"),
            format!("GET {CLAIMS}"),
            format!("DELETE {CLAIMS}/10.0.0.11"),
            format!("DELETE {ENDPOINTS}/b"),
        ]
    );
    assert!(
        api.seen()[0]
            .uri
            .contains("fieldSelector=status.current.node%3Dn1"),
        "this node's endpoints only: {}",
        api.seen()[0].uri
    );
    assert!(
        api.seen()[2].uri.contains("spec.podUID%3Duid-b"),
        "{}",
        api.seen()[2].uri
    );
    let deletes: Vec<Value> = api
        .seen()
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.body.clone().unwrap()["preconditions"].clone())
        .collect();
    assert_eq!(deletes[0]["uid"], "cuid-10.0.0.11", "the claim's by its UID");
    assert_eq!(
        deletes[1]["resourceVersion"], "7",
        "the endpoint's by its version"
    );
}

/// An API server whose SpiderEndpoint CRD predates the selectable field refuses the selector
/// (agents updated before the controller applied the CRDs): GC lists every endpoint and keeps
/// this node's.
#[tokio::test]
async fn gc_falls_back_to_every_endpoint_when_the_node_selector_is_refused() {
    let api = MockApi::new();
    let all = "/apis/spiderpool.spidernet.io/v2beta1/spiderendpoints";
    api.reply(
        "GET",
        all,
        400,
        status_body(400, "field label not supported: status.current.node"),
    )
    .reply(
        "GET",
        all,
        200,
        json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpointList", "metadata": {},
            "items": [endpoint("c", "n2", "c3", "10.0.0.12", "9")]
        }),
    );
    let svc = service(&api);
    let mut gc = request(IpamVerb::Gc, "", "");
    gc.pod = None;
    svc.gc(&gc).await.unwrap();
    assert_eq!(api.calls(), [format!("GET {all}"), format!("GET {all}")]);
    assert!(
        api.seen()[0].uri.contains("fieldSelector"),
        "{}",
        api.seen()[0].uri
    );
    assert!(
        !api.seen()[1].uri.contains("fieldSelector"),
        "{}",
        api.seen()[1].uri
    );
}

/// The IPv4 registry at `version` with one entry.
fn registry(version: &str, name: &str, uid: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPoolRegistry",
        "metadata": {"name": "ipv4", "resourceVersion": version},
        "spec": {"pools": [{"name": name, "uid": uid, "generation": 1, "ips": ips}]}
    })
}

/// The calls to the registry, in order.
fn registry_calls(api: &MockApi) -> Vec<String> {
    api.calls()
        .into_iter()
        .filter(|c| c.contains("spiderippoolregistries"))
        .collect()
}

#[tokio::test]
async fn an_unregistered_pool_is_registered_before_it_hands_out_and_only_once() {
    let api = MockApi::new();
    api.reply("GET", &format!("{POOLS}/p"), 200, pool("5", &[]))
        .reply("GET", REGISTRY, 404, status_body(404, "not found"))
        .reply(
            "POST",
            REGISTRIES,
            201,
            registry("1", "p", "up", &["10.0.0.10-10.0.0.20"]),
        )
        .reply("POST", CLAIMS, 201, claim("10.0.0.10", "a", "n1", None, "6"))
        .reply("GET", &format!("{POOLS}/p"), 200, pool("5", &[]))
        .reply("POST", CLAIMS, 201, claim("10.0.0.11", "b", "n1", None, "7"));
    nodes_listed(&api, &[]);
    let svc = service(&api);
    let got = svc.claim("p", &entry("a")).await.unwrap().expect("an address");
    assert_eq!(got.ip.to_string(), "10.0.0.10");
    // The next claim relies on the registration this agent made: no second registry read.
    let got = svc.claim("p", &entry("b")).await.unwrap().expect("an address");
    assert_eq!(got.ip.to_string(), "10.0.0.11");
    assert_eq!(
        registry_calls(&api),
        [format!("GET {REGISTRY}"), format!("POST {REGISTRIES}")]
    );
    let created = api
        .seen()
        .into_iter()
        .find(|s| s.call() == format!("POST {REGISTRIES}"))
        .and_then(|s| s.body)
        .unwrap();
    assert_eq!(created["metadata"]["name"], "ipv4");
    assert_eq!(
        created["spec"]["pools"],
        json!([{"name": "p", "uid": "up", "generation": 1, "ips": ["10.0.0.10-10.0.0.20"]}])
    );
    assert_eq!(api.unused(), 0);
}

#[tokio::test]
async fn a_pool_whose_addresses_another_pool_registered_first_hands_out_nothing_but_still_releases() {
    let api = MockApi::new();
    api.reply("GET", &format!("{POOLS}/p"), 200, pool("5", &[]))
        // Lost the registry race: q was written between our read and our write.
        .reply("GET", REGISTRY, 200, registry("1", "r", "ur", &["10.1.0.1"]))
        .reply(
            "PUT",
            REGISTRY,
            409,
            status_body(409, "the object has been modified"),
        )
        .reply(
            "GET",
            REGISTRY,
            200,
            registry("2", "q", "uq", &["10.0.0.15-10.0.0.30"]),
        );
    let svc = service(&api);
    let err = match svc.claim("p", &entry("a")).await {
        Err(super::ServiceError::InvalidPool(why)) => why,
        Err(e) => panic!("not refused as a pool not in use: {e:?}"),
        Ok(_) => panic!("an address from a refused pool"),
    };
    assert!(err.contains("belong to pool q"), "{err}");
    assert!(err.contains("10.0.0.15-10.0.0.20"), "{err}");
    let put = api.seen()[2].body.clone().unwrap();
    assert_eq!(
        put["metadata"]["resourceVersion"], "1",
        "the registry write is guarded by its read"
    );
    assert!(
        !api.calls().iter().any(|c| c.contains("spideripclaims")),
        "nothing claimed: {:?}",
        api.calls()
    );
    // What a pod already holds there is still released.
    pod_claims(&api, "old", &["10.0.0.12"]);
    let released = svc.claims.release("p", "uid-old", None).await.unwrap();
    assert_eq!(released, ["10.0.0.12".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(api.unused(), 0);
}
