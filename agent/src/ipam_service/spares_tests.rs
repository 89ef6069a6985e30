//! The pool writer with spares against a scripted API server: a claim from a spare costs no call,
//! and what it lent is written within FLUSH_AFTER as a JSON patch of this node's string alone
//! when another node wrote meanwhile, with the guarded write again if that string changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spiderpool_api::crd::{Allocations, PoolIPAllocation};
use tokio::sync::oneshot;

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
