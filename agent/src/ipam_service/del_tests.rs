//! DEL against a scripted API server: what it reads and writes for the current sandbox, an
//! earlier one, another node's pod, and after this agent's own ADD (nothing read).

use super::IpamService;
use super::claims_tests::CLAIMS;
use super::mock_api::MockApi;
use super::tests::{ENDPOINTS, detail, endpoint, pod, pod_claims, request, service, service_limited};
use spiderpool_cni::agent::IpamVerb;

/// A DEL that is not the current holder's releases nothing of the holder's: a late DEL of an
/// earlier sandbox of the pod (its container ID differs from the endpoint's) reads only the
/// endpoint; a DEL for a pod whose endpoint is another node's (a newer pod of the name) releases
/// only what this node's claims show of the DEL's own pod UID, here nothing.
#[tokio::test]
async fn a_del_of_an_earlier_sandbox_or_another_node_s_pod_releases_nothing() {
    for (endpoint_node, endpoint_container, del_container) in [("n1", "c-new", "c-old"), ("n2", "c1", "c1")] {
        let api = MockApi::new();
        api.reply(
            "GET",
            &format!("{ENDPOINTS}/a"),
            200,
            endpoint("a", endpoint_node, endpoint_container, "10.0.0.10", "3"),
        );
        let mut want = vec![format!("GET {ENDPOINTS}/a")];
        if endpoint_node == "n2" {
            pod_claims(&api, "a", &[]);
            want.push(format!("GET {CLAIMS}"));
        }
        let svc = service(&api);
        svc.handle(request(IpamVerb::Del, "a", del_container))
            .await
            .expect("DEL succeeds");
        assert_eq!(
            api.calls(),
            want,
            "endpoint on {endpoint_node} of {endpoint_container}, DEL of {del_container}"
        );
        if endpoint_node == "n2" {
            let asked = &api.seen()[1].uri;
            assert!(asked.contains("spec.node%3Dn1"), "{asked}");
        }
    }
}

/// The sandbox that holds the addresses releases them: the claim, then the endpoint goes.
#[tokio::test]
async fn a_del_of_the_current_sandbox_releases_its_address() {
    let api = MockApi::new();
    api.reply(
        "GET",
        &format!("{ENDPOINTS}/a"),
        200,
        endpoint("a", "n1", "c1", "10.0.0.10", "3"),
    )
    .reply(
        "DELETE",
        &format!("{ENDPOINTS}/a"),
        200,
        endpoint("a", "n1", "c1", "10.0.0.10", "4"),
    );
    pod_claims(&api, "a", &["10.0.0.10"]);
    let svc = service(&api);
    svc.handle(request(IpamVerb::Del, "a", "c1"))
        .await
        .expect("DEL succeeds");
    assert_eq!(
        api.calls(),
        [
            format!("GET {ENDPOINTS}/a"),
            format!("GET {CLAIMS}"),
            format!("DELETE {CLAIMS}/10.0.0.10"),
            format!("DELETE {ENDPOINTS}/a"),
        ]
    );
    assert_eq!(api.unused(), 0);
}

/// Scripts this agent's ADD of `name` at `ip` (the endpoint created at `version`) and the claim
/// list and delete of its DEL.
fn scripted_add(api: &MockApi, name: &str, ip: &str, version: &str) {
    api.reply("POST", ENDPOINTS, 201, endpoint(name, "n1", "c1", ip, version));
    pod_claims(api, name, &[ip]);
}

/// This agent's ADD of `name` at `ip` (its endpoint written), then its DEL, written.
async fn add_then_del(api: &MockApi, name: &str, ip: &str) {
    let svc: std::sync::Arc<IpamService> = service(api);
    svc.record_endpoint(&pod(name), &request(IpamVerb::Add, name, "c1"), detail(ip), None)
        .await
        .unwrap();
    svc.handle(request(IpamVerb::Del, name, "c1"))
        .await
        .expect("DEL succeeds");
}

/// After this agent's own ADD, a DEL takes the endpoint it wrote: no read, and the delete is
/// guarded by the version the create answered. One changed since (here: by a write the agent
/// did not make) fails that guard, and is read then.
#[tokio::test]
async fn a_del_after_this_agent_s_add_reads_no_endpoint_and_a_stale_one_is_read_then() {
    let api = MockApi::new();
    scripted_add(&api, "a", "10.0.0.10", "3");
    api.reply(
        "DELETE",
        &format!("{ENDPOINTS}/a"),
        200,
        endpoint("a", "n1", "c1", "10.0.0.10", "4"),
    );
    add_then_del(&api, "a", "10.0.0.10").await;
    assert_eq!(
        api.calls(),
        [
            format!("POST {ENDPOINTS}"),
            format!("GET {CLAIMS}"),
            format!("DELETE {CLAIMS}/10.0.0.10"),
            format!("DELETE {ENDPOINTS}/a"),
        ]
    );
    assert_eq!(
        api.seen()[3].body.as_ref().unwrap()["preconditions"]["resourceVersion"],
        "3"
    );

    // Written by this agent, then changed behind its back: the guarded delete fails.
    let api = MockApi::new();
    scripted_add(&api, "b", "10.0.0.11", "7");
    let stale = super::mock_api::status_body(409, "precondition");
    let read = endpoint("b", "n1", "c1", "10.0.0.11", "9");
    api.reply("DELETE", &format!("{ENDPOINTS}/b"), 409, stale)
        .reply("GET", &format!("{ENDPOINTS}/b"), 200, read.clone())
        .reply("DELETE", &format!("{ENDPOINTS}/b"), 200, read);
    add_then_del(&api, "b", "10.0.0.11").await;
    let deletes: Vec<serde_json::Value> = api
        .seen()
        .iter()
        .filter(|s| s.call().starts_with(&format!("DELETE {ENDPOINTS}")))
        .map(|s| s.body.clone().unwrap()["preconditions"]["resourceVersion"].clone())
        .collect();
    assert_eq!(deletes, ["7", "9"], "the stale version, then the one read");
    assert_eq!(api.unused(), 0);
}

/// With one request at work at a time, a DEL waits while another holds the turn and asks the API
/// server nothing meanwhile; one that gets no turn in time (here 200 ms; 30 s in the agent) tells
/// the runtime to try again later; one that gets the turn goes as soon as it is free.
#[tokio::test]
async fn a_del_waits_for_its_turn_and_without_one_in_time_is_told_to_try_again() {
    let api = MockApi::new();
    let svc = service_limited(
        &api,
        kube::runtime::reflector::store().0,
        kube::runtime::reflector::store().0,
        1,
    );
    let held = svc
        .turns
        .take()
        .await
        .expect("a turn")
        .expect("a limited service gives turns");
    let del = || {
        let svc = svc.clone();
        tokio::spawn(async move { svc.handle(request(IpamVerb::Del, "a", "c1")).await })
    };
    let late = del();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!late.is_finished(), "the DEL waits for the turn");
    let err = late.await.expect("joined").expect_err("no turn in time");
    assert_eq!(
        err.code,
        spiderpool_cni::ErrorCode::TryAgainLater as u32,
        "{}",
        err.msg
    );
    assert!(err.msg.contains("no turn"), "{}", err.msg);
    assert!(api.calls().is_empty(), "nothing asked without a turn");
    let waiting = del();
    api.reply(
        "GET",
        &format!("{ENDPOINTS}/a"),
        404,
        super::mock_api::status_body(404, "not found"),
    );
    pod_claims(&api, "a", &[]);
    drop(held);
    waiting.await.expect("joined").expect("DEL succeeds");
    assert_eq!(
        api.calls(),
        [format!("GET {ENDPOINTS}/a"), format!("GET {CLAIMS}")]
    );
}
