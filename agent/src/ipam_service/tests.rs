//! The IPAM service's API calls against a scripted API server ([`super::mock_api`]): the exact
//! requests of a batched pool write, of a lost round (409), of a SpiderEndpoint's creation and of
//! a GC release. The decisions themselves are tested in `spiderpool_ipam::cluster`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector;
use serde_json::{Value, json};
use spiderpool_api::crd::{Allocations, IPAllocationDetail, PoolIPAllocation};
use spiderpool_cni::Attachment;
use spiderpool_cni::agent::{IpamRequest, IpamVerb, PodRef};
use spiderpool_ipam::cluster::decide::{Decision, Op};
use tokio::sync::oneshot;

use super::IpamService;
use super::mock_api::{MockApi, status_body};
use super::pool_writer::{self, PoolOp, Sources};

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

/// The pool `p` (10.0.0.10–10.0.0.20) at `version`, holding `held` (address → pod).
pub(super) fn pool(version: &str, held: &[(&str, &str)]) -> Value {
    let allocated: BTreeMap<String, PoolIPAllocation> = held
        .iter()
        .map(|(ip, pod)| (ip.to_string(), entry(pod)))
        .collect();
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": "p", "resourceVersion": version},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.10-10.0.0.20"], "gateway": "10.0.0.1"},
        "status": {"allocatedIPsByNode": Allocations::from_view(&allocated).encoded(), "allocatedIPCount": held.len()}
    })
}

/// The merge patch a writer of node n1 sends for `held` on top of `version`: n1's string only.
fn expected_patch(version: &str, held: &[(&str, &str)]) -> Value {
    let allocated: BTreeMap<String, PoolIPAllocation> = held
        .iter()
        .map(|(ip, pod)| (ip.to_string(), entry(pod)))
        .collect();
    json!({
        "metadata": {"resourceVersion": version},
        "status": {
            "allocatedIPsByNode": Allocations::from_view(&allocated).encoded(),
            "allocatedIPCount": held.len(),
            "totalIPCount": 11,
        }
    })
}

/// A writer of pool `p` whose registry watch already lists the pool.
fn writer(api: &MockApi) -> tokio::sync::mpsc::UnboundedSender<PoolOp> {
    writer_with(api, true)
}

fn writer_with(api: &MockApi, registered: bool) -> tokio::sync::mpsc::UnboundedSender<PoolOp> {
    let mut sources = sources(api, Arc::default());
    sources.registered = Arc::new(move |_, _| registered);
    pool_writer::spawn(sources, "p".into())
}

/// What a writer of node n1 reads, talking to `api`, with spares, the pool registered, and
/// `latest` as the newest version its watch has seen.
pub(super) fn sources(api: &MockApi, latest: Arc<Mutex<Option<u64>>>) -> Sources {
    Sources {
        node: "n1".into(),
        api: Api::all(api.client()),
        reserved: Arc::new(spiderpool_ipam::range::IpSet::default),
        latest: Arc::new(move || *latest.lock().unwrap()),
        meta: Arc::new(|| None),
        endpoints: Api::all(api.client()),
        registry: Api::all(api.client()),
        registered: Arc::new(|_, _| true),
        metrics: Arc::new(super::metrics::IpamMetrics::new()),
        spares: true,
        right: super::lend_right::test_support::held(),
    }
}

pub(super) fn claim(
    tx: &tokio::sync::mpsc::UnboundedSender<PoolOp>,
    pod: &str,
) -> oneshot::Receiver<Result<pool_writer::Answer, super::ServiceError>> {
    let (reply, rx) = oneshot::channel();
    tx.send(PoolOp::new(Op::Claim(entry(pod)), reply)).unwrap();
    rx
}

pub(super) fn claimed(answer: Result<pool_writer::Answer, super::ServiceError>) -> IpAddr {
    match answer.unwrap().decision {
        Decision::Claim(Some(ip)) => ip,
        other => panic!("not a claimed address: {other:?}"),
    }
}

#[tokio::test]
async fn claims_queued_together_are_one_status_patch_guarded_by_the_read_version() {
    let api = MockApi::new();
    api.reply("GET", &format!("{POOLS}/p/status"), 200, pool("5", &[]))
        .reply("PATCH", &format!("{POOLS}/p/status"), 200, pool("6", &[]));
    let tx = writer(&api);
    // Queued before the writer runs: one batch.
    let replies = [claim(&tx, "a"), claim(&tx, "b"), claim(&tx, "c")];
    let mut ips = Vec::new();
    for r in replies {
        ips.push(claimed(r.await.unwrap()).to_string());
    }
    assert_eq!(ips, ["10.0.0.10", "10.0.0.11", "10.0.0.12"]);
    assert_eq!(
        api.calls(),
        [format!("GET {POOLS}/p/status"), format!("PATCH {POOLS}/p/status")]
    );
    let patch = api.seen()[1].body.clone();
    assert_eq!(
        patch,
        Some(expected_patch(
            "5",
            &[("10.0.0.10", "a"), ("10.0.0.11", "b"), ("10.0.0.12", "c")]
        ))
    );
}

#[tokio::test]
async fn a_lost_round_reads_the_winner_s_version_and_decides_again() {
    let api = MockApi::new();
    api.reply("GET", &format!("{POOLS}/p/status"), 200, pool("5", &[]))
        .reply(
            "PATCH",
            &format!("{POOLS}/p/status"),
            409,
            status_body(409, "the object has been modified"),
        )
        // Another agent gave .10 to pod x meanwhile.
        .reply(
            "GET",
            &format!("{POOLS}/p/status"),
            200,
            pool("6", &[("10.0.0.10", "x")]),
        )
        .reply("PATCH", &format!("{POOLS}/p/status"), 200, pool("7", &[]));
    let tx = writer(&api);
    let ip = claimed(claim(&tx, "a").await.unwrap());
    assert_eq!(ip.to_string(), "10.0.0.11", "never the winner's address");
    assert_eq!(api.calls().len(), 4);
    assert_eq!(
        api.seen()[3].body,
        Some(expected_patch("6", &[("10.0.0.10", "x"), ("10.0.0.11", "a")]))
    );
    assert_eq!(api.unused(), 0);
}

/// A pool whose spec grew (an auto-pool scaled up) while the writer kept its last copy: once the
/// (metadata) watch shows a newer version, the writer reads the pool before deciding, instead of
/// finding no free address on its own copy and, writing nothing, never learning better.
#[tokio::test]
async fn a_copy_the_watch_has_overtaken_is_read_again_before_deciding() {
    let api = MockApi::new();
    let one = |version: &str, held: &[(&str, &str)], ips: &str| {
        let mut p = pool(version, held);
        p["spec"]["ips"] = json!([ips]);
        p
    };
    let grown = "10.0.0.10-10.0.0.11";
    api.reply(
        "GET",
        &format!("{POOLS}/p/status"),
        200,
        one("5", &[], "10.0.0.10"),
    )
    .reply(
        "PATCH",
        &format!("{POOLS}/p/status"),
        200,
        one("6", &[("10.0.0.10", "a")], "10.0.0.10"),
    )
    .reply(
        "GET",
        &format!("{POOLS}/p/status"),
        200,
        one("7", &[("10.0.0.10", "a")], grown),
    )
    .reply(
        "PATCH",
        &format!("{POOLS}/p/status"),
        200,
        one("8", &[("10.0.0.10", "a"), ("10.0.0.11", "b")], grown),
    );
    let latest: Arc<Mutex<Option<u64>>> = Arc::default();
    let tx = pool_writer::spawn(sources(&api, latest.clone()), "p".into());
    assert_eq!(claimed(claim(&tx, "a").await.unwrap()).to_string(), "10.0.0.10");
    // Its own write: nothing newer, no read.
    *latest.lock().unwrap() = Some(6);
    // The controller grows the pool; the watch shows version 7.
    *latest.lock().unwrap() = Some(7);
    assert_eq!(claimed(claim(&tx, "b").await.unwrap()).to_string(), "10.0.0.11");
    assert_eq!(
        api.calls(),
        [
            format!("GET {POOLS}/p/status"),
            format!("PATCH {POOLS}/p/status"),
            format!("GET {POOLS}/p/status"),
            format!("PATCH {POOLS}/p/status"),
        ]
    );
    assert_eq!(
        api.seen()[3].body.as_ref().unwrap()["metadata"]["resourceVersion"],
        "7",
        "guarded by the version read"
    );
}

#[tokio::test]
async fn an_api_error_reaches_every_op_of_the_batch() {
    let api = MockApi::new();
    api.reply(
        "GET",
        &format!("{POOLS}/p/status"),
        404,
        status_body(404, "not found"),
    );
    let tx = writer(&api);
    let replies = [claim(&tx, "a"), claim(&tx, "b")];
    for r in replies {
        let err = r.await.unwrap().unwrap_err();
        assert!(matches!(err, super::ServiceError::NotFound(_)), "{err:?}");
    }
}

/// A service for node `n1` with empty caches, talking to `api`.
pub(super) fn service(api: &MockApi) -> Arc<IpamService> {
    Arc::new(IpamService {
        client: api.client(),
        node: "n1".into(),
        pools: super::pool_cache::PoolCache::empty(),
        reserved: reflector::store().0,
        registry: reflector::store().0,
        pods: reflector::store().0,
        namespaces: reflector::store().0,
        coordinators: reflector::store().0,
        writers: Mutex::new(HashMap::new()),
        metrics: Arc::new(super::metrics::IpamMetrics::new()),
        spares: true,
        right: super::lend_right::test_support::held(),
        written: Default::default(),
        claims: None,
        registered: Default::default(),
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
        "GET",
        &format!("{POOLS}/p/status"),
        200,
        pool(
            "20",
            &[("10.0.0.10", "a"), ("10.0.0.11", "b"), ("10.0.0.12", "c")],
        ),
    )
    .reply("PATCH", &format!("{POOLS}/p/status"), 200, pool("21", &[]))
    .reply(
        "DELETE",
        &format!("{ENDPOINTS}/b"),
        200,
        status_body(200, "deleted"),
    );
    let svc = service(&api);
    let mut gc = request(IpamVerb::Gc, "", "");
    gc.pod = None;
    gc.valid_attachments = vec![Attachment {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    }];
    svc.gc(&gc).await.unwrap();
    wait_for_flush().await;
    // a (valid), c (another node), d (another network) and e (network not recorded) are left alone.
    assert_calls(
        &api,
        &[
            format!("GET {all}"),
            format!("GET {ENDPOINTS}/b"),
            format!("GET {POOLS}/p/status"),
        ],
        &[format!("DELETE {ENDPOINTS}/b"), format!("PATCH {POOLS}/p/status")],
    );
    assert_eq!(
        body_of(&api, "PATCH"),
        expected_patch("20", &[("10.0.0.10", "a"), ("10.0.0.12", "c")])
    );
    assert_eq!(body_of(&api, "DELETE")["preconditions"]["resourceVersion"], "7");
}

/// The IPv4 registry at `version` with one entry.
fn registry(version: &str, name: &str, uid: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPoolRegistry",
        "metadata": {"name": "ipv4", "resourceVersion": version},
        "spec": {"pools": [{"name": name, "uid": uid, "generation": 1, "ips": ips}]}
    })
}

#[tokio::test]
async fn an_unregistered_pool_is_registered_before_it_hands_out_and_only_once() {
    let api = MockApi::new();
    api.reply("GET", &format!("{POOLS}/p/status"), 200, pool("5", &[]))
        .reply("GET", REGISTRY, 404, status_body(404, "not found"))
        .reply(
            "POST",
            REGISTRIES,
            201,
            registry("1", "p", "", &["10.0.0.10-10.0.0.20"]),
        )
        .reply(
            "PATCH",
            &format!("{POOLS}/p/status"),
            200,
            pool("6", &[("10.0.0.10", "a")]),
        )
        .reply("PATCH", &format!("{POOLS}/p/status"), 200, pool("7", &[]));
    let tx = writer_with(&api, false);
    assert_eq!(claimed(claim(&tx, "a").await.unwrap()).to_string(), "10.0.0.10");
    // The next batch relies on the registration this writer made: no second registry read.
    assert_eq!(claimed(claim(&tx, "b").await.unwrap()).to_string(), "10.0.0.11");
    assert_eq!(
        api.calls(),
        [
            format!("GET {POOLS}/p/status"),
            format!("GET {REGISTRY}"),
            format!("POST {REGISTRIES}"),
            format!("PATCH {POOLS}/p/status"),
            format!("PATCH {POOLS}/p/status"),
        ]
    );
    let created = api.seen()[2].body.clone().unwrap();
    assert_eq!(created["metadata"]["name"], "ipv4");
    assert_eq!(
        created["spec"]["pools"],
        json!([{"name": "p", "uid": "", "generation": 0, "ips": ["10.0.0.10-10.0.0.20"]}])
    );
}

#[tokio::test]
async fn a_pool_whose_addresses_another_pool_registered_first_hands_out_nothing_but_still_releases() {
    let api = MockApi::new();
    api.reply(
        "GET",
        &format!("{POOLS}/p/status"),
        200,
        pool("5", &[("10.0.0.12", "old")]),
    )
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
    )
    .reply("PATCH", &format!("{POOLS}/p/status"), 200, pool("6", &[]));
    let tx = writer_with(&api, false);
    let (reply, release) = oneshot::channel();
    let claim_reply = claim(&tx, "a");
    tx.send(PoolOp::new(
        Op::Release {
            pod_uid: "uid-old".into(),
            interface: None,
        },
        reply,
    ))
    .unwrap();
    let answer = claim_reply.await.unwrap().unwrap();
    assert_eq!(answer.decision, Decision::Claim(None));
    let why = answer.refused.expect("refused with a reason");
    assert!(why.contains("belong to pool q"), "{why}");
    assert!(why.contains("10.0.0.15-10.0.0.20"), "{why}");
    let released = release.await.unwrap().unwrap().decision;
    assert_eq!(released, Decision::Release(vec!["10.0.0.12".parse().unwrap()]));
    let put = api.seen()[2].body.clone().unwrap();
    assert_eq!(
        put["metadata"]["resourceVersion"], "1",
        "the registry write is guarded by its read"
    );
    wait_for_flush().await;
    assert_eq!(api.unused(), 0, "the release written");
}

/// The calls were `first` in this order, then `then` in any order: the pool write is the
/// writer's, at once in a nearly full pool (as the test pool is) or within FLUSH_AFTER, so it
/// may come before or after the endpoint's delete.
pub(super) fn assert_calls(api: &MockApi, first: &[String], then: &[String]) {
    let calls = api.calls();
    assert_eq!(calls.len(), first.len() + then.len(), "{calls:?}");
    assert_eq!(&calls[..first.len()], first, "{calls:?}");
    let mut rest = calls[first.len()..].to_vec();
    let mut want = then.to_vec();
    rest.sort();
    want.sort();
    assert_eq!(rest, want, "{calls:?}");
}

/// The body of the one call of `method`.
pub(super) fn body_of(api: &MockApi, method: &str) -> serde_json::Value {
    let seen: Vec<_> = api.seen().into_iter().filter(|s| s.method == method).collect();
    assert_eq!(seen.len(), 1, "one {method}");
    seen[0].body.clone().expect("a body")
}

/// Waits until a writer's pending releases are written.
pub(super) async fn wait_for_flush() {
    tokio::time::sleep(pool_writer::FLUSH_AFTER + std::time::Duration::from_millis(300)).await;
}
