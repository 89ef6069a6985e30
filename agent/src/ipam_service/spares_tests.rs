//! The pool writer with spares against a scripted API server: a claim from a spare costs no call,
//! and what it lent is written within FLUSH_AFTER as a JSON patch of this node's string alone
//! when another node wrote meanwhile, with the guarded write again if that string changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spiderpool_api::crd::{Allocations, PoolIPAllocation};
use std::time::Duration;

use spiderpool_ipam::cluster::decide::{Decision, Op};
use tokio::sync::oneshot;

use super::lend_right::test_support::{agent, take_over};
use super::lend_right::{LendRight, Right};
use super::mock_api::{MockApi, status_body};
use super::pool_writer;
use super::tests::{claim, claimed, entry, sources};

const STATUS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippools/p/status";

/// Pool `p` of 200 addresses (10.0.0.10 up) at `version`, n1's string holding `held`.
fn pool(version: &str, held: &[(&str, Option<&str>)]) -> Value {
    let view: BTreeMap<String, PoolIPAllocation> = held
        .iter()
        .map(|(ip, pod)| {
            let e = pod.map_or_else(|| PoolIPAllocation::spare("n1"), entry);
            (ip.to_string(), e)
        })
        .collect();
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": "p", "resourceVersion": version},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.10-10.0.0.209"]},
        "status": {"allocatedIPsByNode": Allocations::from_view(&view).encoded()}
    })
}

const ENDPOINTS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderendpoints";

/// An empty SpiderEndpoint list: no spare was lent before a restart.
fn no_endpoints() -> Value {
    json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpointList",
        "metadata": {}, "items": []})
}

/// A writer of pool `p` for n1 under `right`.
fn writer_under(
    api: &MockApi,
    right: &Arc<LendRight>,
) -> tokio::sync::mpsc::UnboundedSender<pool_writer::PoolOp> {
    let mut src = sources(api, Arc::default());
    src.right = right.clone();
    pool_writer::spawn(src, "p".into())
}

async fn got(rx: oneshot::Receiver<Result<pool_writer::Answer, super::ServiceError>>) -> String {
    claimed(rx.await.unwrap()).to_string()
}

#[tokio::test]
async fn a_lent_spare_is_written_as_a_json_patch_of_the_own_string_and_again_guarded_if_it_changed() {
    let api = MockApi::new();
    let first = [
        ("10.0.0.10", Some("a")),
        ("10.0.0.11", None),
        ("10.0.0.12", None),
        ("10.0.0.13", None),
        ("10.0.0.14", None),
    ];
    let own_first = pool("6", &first)["status"]["allocatedIPsByNode"]["n1"].clone();
    api.reply("GET", STATUS, 200, pool("5", &[]))
        .reply("PATCH", STATUS, 200, pool("6", &first))
        .reply("PATCH", STATUS, 422, status_body(422, "test failed"))
        .reply("GET", STATUS, 200, pool("11", &first))
        .reply("PATCH", STATUS, 200, pool("12", &[]));
    let latest: Arc<Mutex<Option<u64>>> = Arc::default();
    let tx = pool_writer::spawn(sources(&api, latest.clone()), "p".into());
    // The first claim takes a few spares with it, in one guarded write.
    assert_eq!(got(claim(&tx, "a")).await, "10.0.0.10");
    assert_eq!(api.calls().len(), 2);
    assert_eq!(
        api.seen()[1].body.as_ref().unwrap()["metadata"]["resourceVersion"],
        "5"
    );
    // The second is a spare: no call.
    assert_eq!(got(claim(&tx, "b")).await, "10.0.0.11");
    assert_eq!(api.calls().len(), 2);
    // Another node writes (the watch shows version 9): the lent spare goes as a JSON patch that
    // tests n1's string; the server refuses it (the string changed), so the writer reads and
    // writes guarded.
    *latest.lock().unwrap() = Some(9);
    tokio::time::sleep(pool_writer::FLUSH_AFTER + std::time::Duration::from_millis(400)).await;
    assert_eq!(
        api.calls(),
        [
            format!("GET {STATUS}"),
            format!("PATCH {STATUS}"),
            format!("PATCH {STATUS}"),
            format!("GET {STATUS}"),
            format!("PATCH {STATUS}"),
        ]
    );
    let ops = api.seen()[2].body.clone().unwrap();
    assert_eq!(
        ops[0],
        json!({"op": "test", "path": "/status/allocatedIPsByNode/n1", "value": own_first})
    );
    assert_eq!(ops[1]["op"], "replace");
    assert!(ops[1]["value"].as_str().unwrap().contains("uid-b"), "{ops}");
    assert_eq!(ops.as_array().unwrap().len(), 2, "nothing but n1's string: {ops}");
    let guarded = api.seen()[4].body.clone().unwrap();
    assert_eq!(guarded["metadata"]["resourceVersion"], "11");
    assert!(
        guarded["status"]["allocatedIPsByNode"]["n1"]
            .as_str()
            .unwrap()
            .contains("uid-b")
    );
    assert_eq!(guarded["status"]["allocatedIPCount"], 2);
    assert_eq!(api.unused(), 0);
}

/// Two agents of n1 (an update's old and new one): the new one, without the lock, writes its
/// claim at once and leaves n1's spares alone, since the old one may have lent them; once the old
/// one lets go it reads n1's endpoints, finds what was lent, and lends only the rest.
#[tokio::test]
async fn a_second_agent_of_the_node_leaves_its_spares_alone_until_the_first_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, old) = agent(dir.path());
    assert_eq!(old.right(), Right::Held);
    let (_old_listener, new) = take_over(&socket);
    assert_eq!(new.right(), Right::Waiting);

    let api = MockApi::new();
    let spares = [
        ("10.0.0.10", Some("a")),
        ("10.0.0.11", None),
        ("10.0.0.12", None),
        ("10.0.0.13", None),
    ];
    let with_b = [
        ("10.0.0.10", Some("a")),
        ("10.0.0.11", None),
        ("10.0.0.12", None),
        ("10.0.0.13", None),
        ("10.0.0.14", Some("b")),
    ];
    api.reply("GET", STATUS, 200, pool("5", &spares))
        .reply("PATCH", STATUS, 200, pool("6", &with_b));
    let tx = writer_under(&api, &new);
    assert_eq!(got(claim(&tx, "b")).await, "10.0.0.14", "not one of n1's spares");
    let written = api.seen()[1].body.clone().unwrap();
    assert_eq!(written["metadata"]["resourceVersion"], "5", "a guarded write");
    let own = &written["status"]["allocatedIPsByNode"]["n1"];
    assert_eq!(
        pool("6", &with_b)["status"]["allocatedIPsByNode"]["n1"],
        *own,
        "the spares untouched"
    );

    // The old agent sees the takeover and, keeping nothing, lets go; the new one takes over.
    old.poll();
    assert_eq!(old.right(), Right::Closed);
    new.poll();
    assert_eq!(new.right(), Right::Held);
    // Pod x holds 10.0.0.11 by its endpoint: the old agent lent it and died before writing.
    api.reply("GET", STATUS, 200, pool("7", &with_b)).reply(
        "GET",
        "/apis/spiderpool.spidernet.io/v2beta1/spiderendpoints",
        200,
        json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpointList",
            "metadata": {}, "items": [{
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpoint",
            "metadata": {"name": "x", "namespace": "ns"}, "spec": {},
            "status": {"current": {"uid": "uid-x", "node": "n1",
                "ips": [{"interface": "eth0", "ipv4": "10.0.0.11/24", "ipv4Pool": "p"}]},
                "ownerControllerType": "Pod", "ownerControllerName": "x"}}]}),
    );
    // Lending c leaves one spare: the writer refills, and c does not wait for that write.
    api.reply_after(
        "PATCH",
        STATUS,
        200,
        pool("8", &with_b),
        Duration::from_millis(300),
    );
    let calls = api.calls().len();
    assert_eq!(
        got(claim(&tx, "c")).await,
        "10.0.0.12",
        "lent, past the one x holds"
    );
    assert_eq!(api.answered(), calls + 2, "answered before the refill's write");
    assert_eq!(
        api.calls()[calls..calls + 2],
        [
            format!("GET {STATUS}"),
            "GET /apis/spiderpool.spidernet.io/v2beta1/spiderendpoints".to_string()
        ],
        "read again, endpoints searched"
    );
}

/// Ops that queue while a write is in flight do not wait for it: a release is answered at once
/// (decided in the next round), and a claim takes a spare that is the node's whether the write
/// lands or not.
#[tokio::test]
async fn claims_and_releases_are_answered_while_a_refill_is_written() {
    let api = MockApi::new();
    // a holds 10.0.0.10; three spares, fewer than half a share once one is lent.
    let held = [
        ("10.0.0.10", Some("a")),
        ("10.0.0.11", None),
        ("10.0.0.12", None),
        ("10.0.0.13", None),
    ];
    // The first read finds spares: the endpoints are searched for any lent before a restart.
    api.reply("GET", STATUS, 200, pool("5", &held))
        .reply("GET", ENDPOINTS, 200, no_endpoints())
        .reply_after("PATCH", STATUS, 200, pool("6", &held), Duration::from_millis(500));
    let tx = pool_writer::spawn(sources(&api, Arc::default()), "p".into());
    assert_eq!(got(claim(&tx, "b")).await, "10.0.0.11", "it had that spare");
    assert_eq!(api.answered(), 2, "b is answered before the refill's write lands");
    assert_eq!(got(claim(&tx, "c")).await, "10.0.0.12", "lent during the write");
    let (reply, released) = oneshot::channel();
    let op = Op::Release {
        pod_uid: "uid-a".into(),
        interface: Some("eth0".into()),
    };
    tx.send(pool_writer::PoolOp::new(op, reply)).unwrap();
    assert!(matches!(
        released.await.unwrap().unwrap().decision,
        Decision::Release(_)
    ));
    assert_eq!(api.answered(), 2, "the write is still in flight");
    assert_eq!(api.calls().len(), 3);
    // The refill: guarded, b (lent in its round) written as its pod's, c (lent during the write)
    // still a spare in it (c's endpoint records it until the next write), new spares taken.
    let refill = api.seen()[2].body.clone().unwrap();
    assert_eq!(refill["metadata"]["resourceVersion"], "5");
    let own: BTreeMap<String, PoolIPAllocation> =
        serde_json::from_str(refill["status"]["allocatedIPsByNode"]["n1"].as_str().unwrap()).unwrap();
    assert_eq!(
        own["10.0.0.10"].pod_uid, "uid-a",
        "a's release waits for the next round"
    );
    assert_eq!(own["10.0.0.11"].pod_uid, "uid-b");
    assert!(own["10.0.0.12"].is_spare());
    assert!(own.len() > held.len(), "new spares: {own:?}");
}

/// The old agent of an update: once the socket is taken over it lends nothing more, writes what it
/// lent, gives every spare back, and only then unlocks for the new one.
#[tokio::test]
async fn an_agent_taken_over_writes_what_it_lent_and_gives_spares_back_before_letting_go() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, right) = agent(dir.path());
    let api = MockApi::new();
    let refilled = [
        ("10.0.0.10", Some("a")),
        ("10.0.0.11", None),
        ("10.0.0.12", None),
        ("10.0.0.13", None),
        ("10.0.0.14", None),
    ];
    let ab = [("10.0.0.10", Some("a")), ("10.0.0.11", Some("b"))];
    api.reply("GET", STATUS, 200, pool("5", &[]))
        .reply("PATCH", STATUS, 200, pool("6", &refilled))
        .reply("PATCH", STATUS, 200, pool("7", &ab));
    let tx = writer_under(&api, &right);
    assert_eq!(got(claim(&tx, "a")).await, "10.0.0.10");
    assert_eq!(got(claim(&tx, "b")).await, "10.0.0.11");
    assert_eq!(api.calls().len(), 2, "b was lent without a write");

    let (_old_listener, new) = take_over(&socket);
    right.poll();
    assert_eq!(right.right(), Right::Closing, "the writer still keeps spares");
    new.poll();
    assert_eq!(new.right(), Right::Waiting);
    // The writer's last round: well before FLUSH_AFTER.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(api.calls().len(), 3);
    let last = api.seen()[2].body.clone().unwrap();
    assert_eq!(
        last["status"]["allocatedIPsByNode"]["n1"],
        pool("7", &ab)["status"]["allocatedIPsByNode"]["n1"],
        "b written as its pod's, no spare left"
    );
    right.poll();
    assert_eq!(right.right(), Right::Closed);
    new.poll();
    assert_eq!(new.right(), Right::Held);
    assert_eq!(api.unused(), 0);
}

/// A spare lent and released before any write leaves nothing to write; the node, idle, still
/// gives its spares back (the writer once kept asking for a flush with nothing in it instead).
#[tokio::test]
async fn spares_lent_and_released_before_a_write_go_back_when_the_node_idles() {
    let api = MockApi::new();
    // 40 spares: lending one leaves more than half a share, so no refill.
    let ips: Vec<String> = (10..50).map(|i| format!("10.0.0.{i}")).collect();
    let spares: Vec<(&str, Option<&str>)> = ips.iter().map(|ip| (ip.as_str(), None)).collect();
    api.reply("GET", STATUS, 200, pool("5", &spares))
        .reply("GET", ENDPOINTS, 200, no_endpoints())
        .reply("PATCH", STATUS, 200, pool("6", &[]));
    let tx = pool_writer::spawn(sources(&api, Arc::default()), "p".into());
    assert_eq!(got(claim(&tx, "b")).await, "10.0.0.10");
    let (reply, released) = oneshot::channel();
    let op = Op::Release {
        pod_uid: "uid-b".into(),
        interface: Some("eth0".into()),
    };
    tx.send(pool_writer::PoolOp::new(op, reply)).unwrap();
    released.await.unwrap().unwrap();
    assert_eq!(api.calls().len(), 2, "lent and given back without a write");
    tokio::time::sleep(pool_writer::IDLE_RETURN + Duration::from_millis(700)).await;
    assert_eq!(api.calls().len(), 3, "{:?}", api.calls());
    let returned = api.seen()[2].body.clone().unwrap();
    assert!(
        returned["status"]["allocatedIPsByNode"]["n1"].is_null(),
        "every spare given back: {returned}"
    );
}

/// An agent that restarted after its node's pods of a pool went: no op will come for the pool,
/// but the writer it starts for the node's spares reads the pool, writes what the node had lent
/// (here b, from its endpoint) as b's, and gives the rest back once idle. Without it the spares
/// stayed set aside for good (the control-plane tier's killed-agent test failed on them).
#[tokio::test]
async fn an_agent_started_gives_its_node_s_spares_back_without_any_pod() {
    let api = MockApi::new();
    // a holds .10; .11 to .13 are spares.
    let spares = ["10.0.0.11", "10.0.0.12", "10.0.0.13"].map(|ip| (ip, None));
    let held: Vec<(&str, Option<&str>)> = [("10.0.0.10", Some("a"))].into_iter().chain(spares).collect();
    // b was lent 10.0.0.11 before the restart: only its endpoint says so.
    let endpoints = json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpointList",
    "metadata": {}, "items": [{
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpoint",
        "metadata": {"name": "b", "namespace": "ns"}, "spec": {},
        "status": {"current": {"uid": "uid-b", "node": "n1", "ips": [
            {"interface": "eth0", "ipv4": "10.0.0.11/24", "ipv4Pool": "p"}]}}
    }]});
    api.reply("GET", STATUS, 200, pool("5", &held))
        .reply("GET", ENDPOINTS, 200, endpoints)
        .reply(
            "PATCH",
            STATUS,
            200,
            pool(
                "6",
                &[
                    ("10.0.0.10", Some("a")),
                    ("10.0.0.11", Some("b")),
                    ("10.0.0.12", None),
                    ("10.0.0.13", None),
                ],
            ),
        )
        .reply(
            "PATCH",
            STATUS,
            200,
            pool("7", &[("10.0.0.10", Some("a")), ("10.0.0.11", Some("b"))]),
        );
    let _tx = pool_writer::adopt(sources(&api, Arc::default()), "p".into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.calls(), [format!("GET {STATUS}"), format!("GET {ENDPOINTS}")]);
    // What was lent is written within FLUSH_AFTER, the spares go once the node idles.
    tokio::time::sleep(pool_writer::IDLE_RETURN + Duration::from_millis(900)).await;
    assert_eq!(api.calls().len(), 4, "{:?}", api.calls());
    assert_eq!(api.unused(), 0);
    let lent = api.seen()[2].body.clone().unwrap();
    let own: BTreeMap<String, PoolIPAllocation> =
        serde_json::from_str(lent["status"]["allocatedIPsByNode"]["n1"].as_str().unwrap()).unwrap();
    assert_eq!(own["10.0.0.11"].pod_uid, "uid-b", "{lent}");
    let written = api.seen()[3].body.clone().unwrap();
    let own: BTreeMap<String, PoolIPAllocation> =
        serde_json::from_str(written["status"]["allocatedIPsByNode"]["n1"].as_str().unwrap()).unwrap();
    assert_eq!(
        own.keys().collect::<Vec<_>>(),
        ["10.0.0.10", "10.0.0.11"],
        "{written}"
    );
    assert!(own.values().all(|e| !e.is_spare()));
    assert_eq!(own["10.0.0.11"].pod_uid, "uid-b");
}
