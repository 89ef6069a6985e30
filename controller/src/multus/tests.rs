//! The reconciler's decisions: which NADs are written, left alone, or deleted.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;

fn smc(name: &str, uid: &str, annotations: Value, spec: Value) -> Arc<SpiderMultusConfig> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "annotations": annotations},
            "spec": spec
        }))
        .expect("a SpiderMultusConfig"),
    )
}

fn macvlan(name: &str, uid: &str) -> Arc<SpiderMultusConfig> {
    smc(
        name,
        uid,
        json!({}),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]}}),
    )
}

/// The NAD `smc` renders, as the API server would hold it.
fn stored(smc: &SpiderMultusConfig, uid: &str) -> Arc<NetworkAttachmentDefinition> {
    let mut nad = desired(smc, &render(smc).expect("renders"));
    nad.metadata.uid = Some(uid.into());
    Arc::new(nad)
}

fn foreign(name: &str, owner: Option<(&str, &str)>) -> Arc<NetworkAttachmentDefinition> {
    let mut nad = NetworkAttachmentDefinition::new(name, NetworkAttachmentDefinitionSpec::default());
    nad.metadata.namespace = Some("ns".into());
    nad.metadata.uid = Some(format!("nad-{name}"));
    if let Some((owner, uid)) = owner {
        nad.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "spiderpool.spidernet.io/v2beta1".into(),
            kind: "SpiderMultusConfig".into(),
            name: owner.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
    }
    Arc::new(nad)
}

#[test]
fn a_new_config_gets_its_nad_and_an_unchanged_one_nothing() {
    let a = macvlan("a", "u-a");
    let steps = plan(std::slice::from_ref(&a), &[]);
    let [Step::Write(nad)] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert_eq!(
        (nad.namespace().as_deref(), nad.name_any().as_str()),
        (Some("ns"), "a")
    );
    assert_eq!(controller_uid(nad), Some("u-a"));
    assert!(plan(std::slice::from_ref(&a), &[stored(&a, "n1")]).is_empty());

    // Changed: rewritten.
    let edited = smc(
        "a",
        "u-a",
        json!({}),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth2"]}}),
    );
    let steps = plan(&[edited], &[stored(&a, "n1")]);
    assert!(
        matches!(steps.as_slice(), [Step::Write(n)] if n.spec.config.as_deref().is_some_and(|c| c.contains("eth2"))),
        "{steps:?}"
    );
}

#[test]
fn a_nad_that_is_not_its_own_is_left_alone_and_said() {
    let a = macvlan("a", "u-a");
    let steps = plan(std::slice::from_ref(&a), &[foreign("a", None)]);
    let [Step::Warn { reason, note, .. }] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert_eq!(*reason, "NADConflict");
    assert!(
        note.contains("ns/a exists and is not this SpiderMultusConfig's"),
        "{note}"
    );

    // Another SpiderMultusConfig makes it (through cr-name).
    let b = smc(
        "b",
        "u-b",
        json!({"multus.spidernet.io/cr-name": "a"}),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]}}),
    );
    let steps = plan(&[a, b.clone()], &[stored(&b, "n1")]);
    assert!(
        steps.iter().any(
            |s| matches!(s, Step::Warn { note, .. } if note.contains("is managed by SpiderMultusConfig ns/b"))
        ),
        "{steps:?}"
    );
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, Step::Delete { .. } | Step::Write(_))),
        "{steps:?}"
    );
}

#[test]
fn owned_nads_go_with_their_owner_or_when_it_names_another() {
    let gone = foreign("old", Some(("old", "u-gone")));
    let steps = plan(&[], &[gone]);
    assert_eq!(
        steps,
        [Step::Delete {
            namespace: "ns".into(),
            name: "old".into(),
            uid: "nad-old".into()
        }]
    );
    // Renamed through cr-name: the new one written, the old one deleted.
    let a = macvlan("a", "u-a");
    let renamed = smc(
        "a",
        "u-a",
        json!({"multus.spidernet.io/cr-name": "a2"}),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]}}),
    );
    let steps = plan(&[renamed], &[stored(&a, "n1")]);
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Step::Write(n) if n.name_any() == "a2")),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Step::Delete { name, .. } if name == "a")),
        "{steps:?}"
    );
    // A config that cannot render keeps what it has and says why.
    let broken = smc(
        "a",
        "u-a",
        json!({}),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]},
                                                   "chainCNIJsonData": ["{]"]}),
    );
    let steps = plan(&[broken], &[stored(&a, "n1")]);
    assert!(
        matches!(steps.as_slice(), [Step::Warn { reason: "InvalidConfig", note, .. }] if note.contains("chainCNIJsonData[0]")),
        "{steps:?}"
    );
}
