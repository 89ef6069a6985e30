//! The claim store against a scripted API server: what it lists, creates and deletes for a
//! claim, a miss, a repeated claim, a release and a StatefulSet pod's takeover.

use std::sync::Arc;

use serde_json::{Value, json};
use spiderpool_api::crd::{IPPoolSpec, PoolIPAllocation};
use spiderpool_ipam::range::{IpSet, set_of_entries};

use super::claims::{ClaimStore, Want};
use super::metrics::IpamMetrics;
use super::mock_api::{MockApi, status_body};

pub(super) const CLAIMS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spideripclaims";

pub(super) fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPClaimList", "metadata": {"resourceVersion": "1"}, "items": items})
}

pub(super) fn claim(ip: &str, pod: &str, node: &str, sts: Option<&str>, version: &str) -> Value {
    let mut spec = json!({"pool": "p", "pod": format!("ns/{pod}"), "podUID": format!("uid-{pod}"), "interface": "eth0", "node": node});
    if let Some(sts) = sts {
        spec["ownerStatefulSet"] = json!(sts);
    }
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPClaim",
        "metadata": {"name": ip.replace(':', "-"), "uid": format!("cuid-{ip}"), "resourceVersion": version},
        "spec": spec
    })
}

fn holder(pod: &str, sts: Option<&str>) -> PoolIPAllocation {
    PoolIPAllocation {
        pod: format!("ns/{pod}"),
        pod_uid: format!("uid-{pod}"),
        interface: Some("eth0".into()),
        node: None,
        owner_stateful_set: sts.map(str::to_string),
    }
}

/// Scripts the Node list (metadata only): `nodes`.
pub(super) fn nodes_listed(api: &MockApi, nodes: &[&str]) {
    let items: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": n}}))
        .collect();
    api.reply(
        "GET",
        "/api/v1/nodes",
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items}),
    );
}

/// Scripts the pool's list, `taken` claimed by another node's pod.
fn pool_listed(api: &MockApi, taken: &str) {
    api.reply("GET", CLAIMS, 200, list(vec![claim(taken, "x", "n2", None, "5")]));
}

/// A claim in pool `p` for `holder`, new addresses accepted.
fn want_of<'a>(spec: &'a IPPoolSpec, usable: &'a IpSet, holder: &'a PoolIPAllocation) -> Want<'a> {
    Want {
        pool: "p",
        spec,
        usable,
        holder,
        accept_new: true,
        legacy: &[],
    }
}

async fn store(api: &MockApi, mine: Vec<Value>) -> ClaimStore {
    store_counting(api, mine, Arc::new(IpamMetrics::new())).await
}

async fn store_counting(api: &MockApi, mine: Vec<Value>, metrics: Arc<IpamMetrics>) -> ClaimStore {
    api.reply("GET", CLAIMS, 200, list(mine));
    ClaimStore::start(api.client(), "n1", metrics)
        .await
        .expect("store starts")
}

/// The first claim lists the nodes, starts in this node's share of the pool past what this node
/// claimed of it (listed at start), and creates without a list; its first miss lists the pool's
/// claims (names only, from the API server's cache) and it jumps on, past what they hold; the same
/// pod and interface again gets its address without a call.
#[tokio::test]
async fn a_claim_lists_at_its_first_miss_skips_what_it_knows_and_a_repeat_costs_nothing() {
    let api = MockApi::new();
    let metrics = Arc::new(IpamMetrics::new());
    let s = store_counting(
        &api,
        vec![claim("10.0.0.14", "old", "n1", None, "4")],
        metrics.clone(),
    )
    .await;
    let spec = IPPoolSpec::default();
    let usable = set_of_entries(["10.0.0.10-10.0.0.17"]);
    // n1 is the second of two nodes: its share starts at the fifth of eight addresses, 10.0.0.14,
    // which its own claim holds.
    nodes_listed(&api, &["n0", "n1"]);
    api.reply("POST", CLAIMS, 409, status_body(409, "already exists"));
    pool_listed(&api, "10.0.0.10");
    api.reply("POST", CLAIMS, 201, claim("10.0.0.11", "a", "n1", None, "6"));
    let a = holder("a", None);
    let want = want_of(&spec, &usable, &a);
    let got = s.claim(&want).await.unwrap().expect("an address");
    let seen = api.seen();
    assert!(seen[1].uri.starts_with("/api/v1/nodes?"), "{}", seen[1].uri);
    assert!(seen[1].uri.contains("resourceVersion=0"), "{}", seen[1].uri);
    let name = |i: usize| {
        seen[i].body.as_ref().unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        name(2),
        "10.0.0.15",
        "this node's share past its claim, before any list"
    );
    // The pool's claims, at the first miss, from the API server's cache.
    assert!(
        seen[3].uri.contains("fieldSelector=spec.pool%3Dp"),
        "{}",
        seen[3].uri
    );
    assert!(seen[3].uri.contains("resourceVersion=0"), "{}", seen[3].uri);
    // Missed: half the pool on (10.0.0.10), past what the list shows taken there.
    assert_eq!(name(4), "10.0.0.11");
    assert_eq!(got.to_string(), "10.0.0.11");
    assert_eq!(seen[4].body.as_ref().unwrap()["spec"]["node"], "n1");
    assert_eq!(seen[4].body.as_ref().unwrap()["spec"]["podUID"], "uid-a");
    assert_eq!(seen.len(), 5, "no read of the pool: {seen:?}");
    let counted = metrics.render();
    assert!(
        counted.contains(r#"spiderpool_agent_ipam_claim_misses_total{pool="p"} 1"#),
        "{counted}"
    );
    let calls = api.calls().len();
    assert_eq!(s.claim(&want).await.unwrap(), Some(got), "a repeated ADD");
    assert_eq!(api.calls().len(), calls, "answered without a call");
    assert_eq!(api.unused(), 0);
}

/// Holders that agents before claims left in the pool's status (`Want::legacy`, from the pool
/// cache; they have no claim the API server would refuse a create of) are not tried, before a
/// list and after one: here the pool's only other address is such a holder, so it is full.
#[tokio::test]
async fn holders_left_in_the_pool_s_status_are_taken() {
    let api = MockApi::new();
    let s = store(&api, vec![]).await;
    let spec = IPPoolSpec::default();
    let usable = set_of_entries(["10.0.0.10-10.0.0.13"]);
    nodes_listed(&api, &[]);
    let others = || {
        list(
            ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
                .iter()
                .map(|ip| claim(ip, "x", "n2", None, "5"))
                .collect(),
        )
    };
    api.reply("POST", CLAIMS, 409, status_body(409, "already exists"))
        .reply("GET", CLAIMS, 200, others())
        .reply("GET", CLAIMS, 200, others());
    let a = holder("a", None);
    let legacy = ["10.0.0.10".parse().unwrap()];
    let want = Want {
        legacy: &legacy,
        ..want_of(&spec, &usable, &a)
    };
    assert_eq!(s.claim(&want).await.unwrap(), None);
    let tried: Vec<_> = api
        .seen()
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| {
            c.body.as_ref().unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tried, ["10.0.0.11"], "the lowest address is a legacy holder's");
    assert_eq!(api.unused(), 0);
}

/// A full pool: after the first list (at the first miss, from the API server's cache, which
/// may be behind) listed again from etcd before it says so; a refused or terminating pool
/// (`accept_new: false`) creates nothing.
#[tokio::test]
async fn a_pool_believed_full_is_listed_again_before_none() {
    let api = MockApi::new();
    let s = store(&api, vec![]).await;
    let spec = IPPoolSpec::default();
    let usable = set_of_entries(["10.0.0.10"]);
    nodes_listed(&api, &[]);
    api.reply("POST", CLAIMS, 409, status_body(409, "already exists"));
    pool_listed(&api, "10.0.0.10");
    pool_listed(&api, "10.0.0.10");
    let a = holder("a", None);
    let want = want_of(&spec, &usable, &a);
    assert_eq!(s.claim(&want).await.unwrap(), None);
    let seen = api.seen();
    assert_eq!(
        seen.len(),
        5,
        "one list at start, the nodes, the miss, the pool's claims from the cache, then from etcd"
    );
    let from_cache = |i: usize| seen[i].uri.contains("resourceVersion=0");
    assert!(from_cache(3), "{seen:?}");
    assert!(!from_cache(4), "{seen:?}");
    // Later, believed full: one more list, from etcd, which shows it free now.
    api.reply("GET", CLAIMS, 200, list(vec![])).reply(
        "POST",
        CLAIMS,
        201,
        claim("10.0.0.10", "a", "n1", None, "7"),
    );
    assert_eq!(s.claim(&want).await.unwrap(), Some("10.0.0.10".parse().unwrap()));
    assert!(!api.seen()[5].uri.contains("resourceVersion=0"));
    let b = holder("b", None);
    let refused = Want {
        accept_new: false,
        ..want_of(&spec, &usable, &b)
    };
    let calls = api.calls().len();
    assert_eq!(s.claim(&refused).await.unwrap(), None);
    assert_eq!(api.calls().len(), calls);
}

/// A release deletes the pod's claim with its UID as precondition (so a late DEL never deletes
/// a newer pod's claim of the address); a second release finds nothing of this agent's and asks
/// the API server for the node's claims of the pod.
#[tokio::test]
async fn a_release_deletes_by_uid_and_a_claim_listed_at_start_is_released_too() {
    let api = MockApi::new();
    let s = store(&api, vec![claim("10.0.0.11", "a", "n1", None, "3")]).await;
    api.reply(
        "DELETE",
        &format!("{CLAIMS}/10.0.0.11"),
        200,
        status_body(200, "deleted"),
    );
    let released = s.release("p", "uid-a", Some("eth0")).await.unwrap();
    assert_eq!(released, ["10.0.0.11".parse::<std::net::IpAddr>().unwrap()]);
    let del = &api.seen()[1];
    assert_eq!(
        del.body.as_ref().unwrap()["preconditions"]["uid"],
        "cuid-10.0.0.11"
    );
    api.reply("GET", CLAIMS, 200, list(vec![]));
    assert!(s.release("p", "uid-a", Some("eth0")).await.unwrap().is_empty());
    let asked = &api.seen()[2];
    assert!(asked.uri.contains("spec.podUID%3Duid-a"), "{}", asked.uri);
    assert!(asked.uri.contains("spec.node%3Dn1"), "{}", asked.uri);
    assert_eq!(api.unused(), 0);
}

/// A release without an endpoint (by the pod's UID, in every pool) is counted as released too.
#[tokio::test]
async fn a_release_everywhere_is_counted_by_pool() {
    let api = MockApi::new();
    let metrics = Arc::new(IpamMetrics::new());
    let s = store_counting(
        &api,
        vec![claim("10.0.0.11", "a", "n1", None, "3")],
        metrics.clone(),
    )
    .await;
    api.reply(
        "DELETE",
        &format!("{CLAIMS}/10.0.0.11"),
        200,
        status_body(200, "deleted"),
    );
    let released = s.release_everywhere("uid-a", "eth0").await.unwrap();
    assert_eq!(released, ["10.0.0.11".parse::<std::net::IpAddr>().unwrap()]);
    let counted = metrics.render();
    assert!(
        counted.contains(r#"spiderpool_agent_ipam_released_total{pool="p"} 1"#),
        "{counted}"
    );
    assert_eq!(api.unused(), 0);
}

/// A StatefulSet pod recreated on this node takes its name's claim over from the node it ran
/// on, guarded by the claim's resourceVersion; a conflict reads again.
#[tokio::test]
async fn a_stateful_set_pod_takes_its_claim_over_from_another_node() {
    let api = MockApi::new();
    let s = store(&api, vec![]).await;
    let spec = IPPoolSpec::default();
    let usable = set_of_entries(["10.0.0.10-10.0.0.20"]);
    let old = claim("10.0.0.15", "web-0", "n2", Some("web"), "8");
    let mut after = old.clone();
    after["spec"]["node"] = json!("n1");
    api.reply("GET", CLAIMS, 200, list(vec![old.clone()]))
        .reply(
            "PUT",
            &format!("{CLAIMS}/10.0.0.15"),
            409,
            status_body(409, "changed"),
        )
        .reply("GET", CLAIMS, 200, list(vec![old]))
        .reply("PUT", &format!("{CLAIMS}/10.0.0.15"), 200, after);
    let mut web = holder("web-0", Some("web"));
    web.pod_uid = "uid-new".into();
    let want = want_of(&spec, &usable, &web);
    assert_eq!(s.claim(&want).await.unwrap(), Some("10.0.0.15".parse().unwrap()));
    let seen = api.seen();
    assert!(seen[1].uri.contains("spec.pod%3Dns%2Fweb-0"), "{}", seen[1].uri);
    let put = seen[4].body.as_ref().unwrap();
    assert_eq!(put["spec"]["node"], "n1");
    assert_eq!(put["spec"]["podUID"], "uid-new");
    assert_eq!(put["metadata"]["resourceVersion"], "8");
    // Its release is the controller's: an agent's release leaves it.
    let calls = api.calls().len();
    assert!(
        s.release("p", "uid-web-0", Some("eth0"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(api.calls().len(), calls, "no delete of a StatefulSet pod's claim");
    assert_eq!(api.unused(), 0);
}

/// Claims that miss while the pool's first list is under way wait for it instead of each
/// listing (a burst's first ADDs on a node would otherwise list once each), and claims that
/// come while the walk starts wait for its one Node list.
#[tokio::test]
async fn claims_at_once_share_the_first_list() {
    let api = MockApi::new();
    let s = store(&api, vec![]).await;
    let spec = IPPoolSpec::default();
    let usable = set_of_entries(["10.0.0.10-10.0.0.20"]);
    nodes_listed(&api, &[]);
    api.reply("POST", CLAIMS, 409, status_body(409, "already exists"))
        .reply("POST", CLAIMS, 409, status_body(409, "already exists"))
        .reply_after(
            "GET",
            CLAIMS,
            200,
            list(vec![
                claim("10.0.0.10", "x", "n2", None, "5"),
                claim("10.0.0.11", "y", "n2", None, "5"),
            ]),
            std::time::Duration::from_millis(100),
        )
        .reply("POST", CLAIMS, 201, claim("10.0.0.12", "a", "n1", None, "6"))
        .reply("POST", CLAIMS, 201, claim("10.0.0.13", "b", "n1", None, "7"));
    let (a, b) = (holder("a", None), holder("b", None));
    let want = |h| want_of(&spec, &usable, h);
    let (want_a, want_b) = (want(&a), want(&b));
    let (got_a, got_b) = tokio::join!(s.claim(&want_a), s.claim(&want_b));
    assert_ne!(got_a.unwrap(), got_b.unwrap());
    let count = |call: &str| api.seen().iter().filter(|c| c.call() == call).count();
    assert_eq!(
        count(&format!("GET {CLAIMS}")),
        2,
        "one at start, one of the pool: {:?}",
        api.calls()
    );
    assert_eq!(count("GET /api/v1/nodes"), 1, "{:?}", api.calls());
    assert_eq!(api.unused(), 0);
}
