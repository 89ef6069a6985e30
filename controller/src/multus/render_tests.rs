//! The NAD each cniType makes, from Spiderpool-style manifests.

use serde_json::{Value, json};
use spiderpool_api::multus::SpiderMultusConfig;

use super::render::*;

fn smc(annotations: Value, spec: Value) -> SpiderMultusConfig {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
        "metadata": {"name": "net1", "namespace": "ns", "annotations": annotations},
        "spec": spec
    }))
    .expect("a SpiderMultusConfig")
}

fn conflist(r: &Rendered) -> Value {
    serde_json::from_str(r.config.as_deref().expect("a config")).expect("JSON")
}

fn types(conf: &Value) -> Vec<String> {
    conf["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn macvlan_on_a_bond_with_a_vlan_gets_ifacer_first_and_the_coordinator_after_the_chain() {
    let r = render(&smc(
        json!({}),
        json!({"cniType": "macvlan",
               "macvlan": {"master": ["eth1", "eth2"], "vlanID": 100, "mtu": 9000,
                           "bond": {"name": "bond0", "mode": 1, "options": "miimon=100"},
                           "ippools": {"ipv4": ["v4"], "ipv6": ["v6a", "v6b"]}},
               "chainCNIJsonData": ["{\"type\": \"tuning\", \"sysctl\": {\"net.core.somaxconn\": \"4096\"}}"],
               "coordinator": {"podDefaultRouteNIC": "net1", "tunePodRoutes": false}}),
    ))
    .unwrap();
    assert_eq!(r.name, "net1");
    let conf = conflist(&r);
    assert_eq!(conf["cniVersion"], DEFAULT_CNI_VERSION);
    assert_eq!(conf["name"], "net1");
    assert_eq!(types(&conf), ["ifacer", "macvlan", "tuning", "coordinator"]);
    let p = &conf["plugins"];
    assert_eq!(
        p[0],
        json!({"type": "ifacer", "interfaces": ["eth1", "eth2"], "vlanID": 100,
               "bond": {"name": "bond0", "mode": 1, "options": "miimon=100"}})
    );
    assert_eq!(
        p[1],
        json!({"type": "macvlan", "master": "bond0.100", "mode": "bridge", "mtu": 9000,
               "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v4"],
                        "default_ipv6_ippool": ["v6a", "v6b"]}})
    );
    assert_eq!(p[2]["sysctl"]["net.core.somaxconn"], "4096");
    assert_eq!(
        p[3],
        json!({"type": "coordinator", "podDefaultRouteNIC": "net1", "tunePodRoutes": false})
    );
}

#[test]
fn one_master_without_a_vlan_needs_no_ifacer_and_ipvlan_has_no_mode() {
    let r = render(&smc(
        json!({}),
        json!({"cniType": "ipvlan", "ipvlan": {"master": ["eth1"]},
                                          "enableCoordinator": false, "disableIPAM": true}),
    ))
    .unwrap();
    let conf = conflist(&r);
    assert_eq!(conf["plugins"], json!([{"type": "ipvlan", "master": "eth1"}]));
    // `ipam.enabled` wins over the deprecated disableIPAM.
    let r = render(&smc(
        json!({}),
        json!({"cniType": "ipvlan", "ipvlan": {"master": ["eth1"]},
                                          "disableIPAM": true, "ipam": {"enabled": true,
                                          "logOptions": {"logLevel": "debug"}}}),
    ))
    .unwrap();
    assert_eq!(
        conflist(&r)["plugins"][0]["ipam"],
        json!({"type": "spiderpool", "log_level": "debug"})
    );
}

#[test]
fn sriov_has_rdma_after_it_tuning_last_and_the_resource_annotation() {
    let r = render(&smc(
        json!({CNI_VERSION: "1.0.0", "kubectl.kubernetes.io/last-applied-configuration": "{}",
               "team": "ai"}),
        json!({"cniType": "sriov",
               "sriov": {"resourceName": "spidernet.io/cx6_vfs", "vlanID": 200, "mtu": 4000,
                         "minTxRateMbps": 100, "maxTxRateMbps": 1000, "rdmaIsolation": true,
                         "ippools": {"ipv4": ["v4"], "matchMasterSubnet": true}}}),
    ))
    .unwrap();
    assert_eq!(r.annotations[RESOURCE_NAME], "spidernet.io/cx6_vfs");
    assert_eq!(
        r.annotations["team"], "ai",
        "the SpiderMultusConfig's annotations are the NAD's"
    );
    assert!(
        !r.annotations
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );
    let conf = conflist(&r);
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(types(&conf), ["sriov", "rdma", "coordinator", "tuning"]);
    assert_eq!(
        conf["plugins"][0],
        json!({"type": "sriov", "vlan": 200, "min_tx_rate": 100, "max_tx_rate": 1000,
               "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v4"], "match_master_subnet": true}})
    );
    assert_eq!(conf["plugins"][3], json!({"type": "tuning", "mtu": 4000}));
    // Older Spiderpool's enableRdma still means the same.
    let r = render(&smc(
        json!({}),
        json!({"cniType": "sriov", "enableCoordinator": false,
        "sriov": {"resourceName": "r", "enableRdma": true}}),
    ))
    .unwrap();
    assert_eq!(types(&conflist(&r)), ["sriov", "rdma"]);
}

#[test]
fn infiniband_ovs_vlan_and_custom_kinds() {
    let r = render(&smc(
        json!({}),
        json!({"cniType": "ib-sriov", "enableCoordinator": false,
        "ibsriov": {"resourceName": "ib", "pkey": "0x7fff", "ibKubernetesEnabled": true}}),
    ))
    .unwrap();
    assert_eq!(r.annotations[RESOURCE_NAME], "ib");
    assert_eq!(
        conflist(&r)["plugins"][0],
        json!({"type": "ib-sriov", "pkey": "0x7fff", "link_state": "enable", "rdmaIsolation": true,
               "ibKubernetesEnabled": true, "ipam": {"type": "spiderpool"}})
    );

    let r = render(&smc(
        json!({}),
        json!({"cniType": "ipoib", "enableCoordinator": false,
        "ipoib": {"master": "ib0"}}),
    ))
    .unwrap();
    assert_eq!(conflist(&r)["plugins"][0]["master"], "ib0");

    let r = render(&smc(json!({}), json!({"cniType": "ovs", "enableCoordinator": false,
        "ovs": {"bridge": "br1", "vlan": 10, "trunk": [{"minID": 1, "maxID": 9}], "deviceID": "0000:3b:00.2"}})))
    .unwrap();
    assert_eq!(r.annotations[RESOURCE_NAME], "ovs-cni.network.kubevirt.io/br1");
    assert_eq!(
        conflist(&r)["plugins"][0],
        json!({"type": "ovs", "bridge": "br1", "vlan": 10, "trunk": [{"minID": 1, "maxID": 9}],
               "deviceID": "0000:3b:00.2", "ipam": {"type": "spiderpool"}})
    );

    let r = render(&smc(
        json!({}),
        json!({"cniType": "vlan",
        "vlan": {"master": ["eth1", "eth2"], "vlanID": 30, "bond": {"name": "bond1", "mode": 4}}}),
    ))
    .unwrap();
    let conf = conflist(&r);
    assert_eq!(types(&conf), ["ifacer", "vlan", "coordinator"]);
    assert!(
        conf["plugins"][0].get("vlanID").is_none(),
        "the vlan plugin makes the VLAN"
    );
    assert_eq!(conf["plugins"][1]["master"], "bond1");
    assert_eq!(conf["plugins"][1]["vlanId"], 30);

    // custom: the config as given, with the annotations; nothing without one.
    let custom = "{\"cniVersion\": \"0.3.1\", \"name\": \"x\", \"type\": \"bridge\"}";
    let r = render(&smc(json!({CR_NAME: "other-name"}), json!({"customCNI": custom}))).unwrap();
    assert_eq!(
        (r.name.as_str(), r.config.as_deref()),
        ("other-name", Some(custom))
    );
    assert_eq!(render(&smc(json!({}), json!({}))).unwrap().config, None);
}

#[test]
fn what_cannot_make_a_nad_says_why() {
    let err = |a: Value, s: Value| render(&smc(a, s)).unwrap_err().0;
    assert!(err(json!({}), json!({"customCNI": "{not json"})).contains("customCNI is not a JSON object"));
    assert!(
        err(
            json!({}),
            json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]},
                               "chainCNIJsonData": ["{\"sysctl\": {}}"]})
        )
        .contains("chainCNIJsonData[0] is not a CNI plugin")
    );
    assert!(err(json!({CNI_VERSION: "0.2.0"}), json!({})).contains("unsupported CNI version \"0.2.0\""));
    assert!(err(json!({CR_NAME: "Not_A_Name"}), json!({})).contains("is not a valid object name"));
    assert!(
        err(
            json!({}),
            json!({"cniType": "macvlan", "macvlan": {"master": ["a", "b"]}})
        )
        .contains("needs bond")
    );
    assert!(err(json!({}), json!({"cniType": "sriov"})).contains("spec.sriov is missing"));
}
