//! netns tier: Debian's real `macvlan` and `bridge` plugins call our `spiderpool` IPAM plugin,
//! put a pod interface with our addresses and routes into a network namespace, and the pod reaches
//! a gateway living in another namespace. Root only; hack/test.sh runs these with `--ignored`.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::{Value, json};
use spiderpool_cni::exec::Invocation;
use spiderpool_e2e::{Topology, ip, ping, store_records};

fn ipam(data_dir: &Path, v4: (&str, &str, &str), v6: (&str, &str, &str)) -> Value {
    json!({
        "type": "spiderpool",
        "pools": [
            {"name": "v4", "subnet": v4.0, "ips": [v4.1], "gateway": v4.2,
             "routes": [{"dst": "0.0.0.0/0", "gw": v4.2}]},
            {"name": "v6", "subnet": v6.0, "ips": [v6.1], "gateway": v6.2,
             "routes": [{"dst": "::/0", "gw": v6.2}]},
        ],
        "dataDir": data_dir,
    })
}

fn addresses(ns: &spiderpool_linux::netns::NetNs, dev: &str) -> String {
    ip(ns, &["-o", "addr", "show", "dev", dev]).unwrap()
}

#[test]
#[ignore = "netns tier: needs root, iproute2 and Debian containernetworking-plugins"]
fn macvlan_dual_stack_pod_reaches_its_gateway() {
    let topo = Topology::new("mv", &["10.6.0.1/16", "fd00:6::1/64"]).unwrap();
    let pod = topo.pod("mv").unwrap();
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "macvlan-net", "type": "macvlan", "master": "up0", "mode": "bridge",
        "ipam": ipam(data.path(), ("10.6.0.0/16", "10.6.0.10-10.6.3.250", "10.6.0.1"),
                     ("fd00:6::/64", "fd00:6::10-fd00:6::ffff", "fd00:6::1")),
    });
    let add = Invocation::new("ADD", "pod-mv", pod.path().to_str().unwrap(), "net1")
        .with_args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=mv;IgnoreUnknown=1");
    let out = topo.exec("macvlan", &add, &conf).unwrap();
    assert!(out.success, "ADD: {} {}", out.stdout, out.stderr);
    let result = out.json();
    assert_eq!(result["ips"][0]["address"], "10.6.0.10/16");
    assert_eq!(result["ips"][1]["address"], "fd00:6::10/64");

    let addrs = addresses(&pod, "net1");
    assert!(
        addrs.contains("10.6.0.10/16") && addrs.contains("fd00:6::10/64"),
        "{addrs}"
    );
    let routes = ip(&pod, &["route", "show", "default"]).unwrap();
    assert!(routes.contains("via 10.6.0.1 dev net1"), "{routes}");
    let routes6 = ip(&pod, &["-6", "route", "show", "default"]).unwrap();
    assert!(routes6.contains("via fd00:6::1 dev net1"), "{routes6}");
    ping(&pod, "10.6.0.1").unwrap();
    ping(&pod, "fd00:6::1").unwrap();

    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let check = Invocation {
        command: "CHECK".into(),
        ..add.clone()
    };
    let out = topo.exec("macvlan", &check, &check_conf).unwrap();
    assert!(out.success, "CHECK: {} {}", out.stdout, out.stderr);

    let del = Invocation {
        command: "DEL".into(),
        ..add.clone()
    };
    let out = topo.exec("macvlan", &del, &check_conf).unwrap();
    assert!(out.success, "DEL 1: {} {}", out.stdout, out.stderr);
    // containerd's second DEL: no netns, no prevResult.
    let del2 = Invocation {
        netns: String::new(),
        ..del.clone()
    };
    let out = topo.exec("macvlan", &del2, &conf).unwrap();
    assert!(out.success, "DEL 2: {} {}", out.stdout, out.stderr);
    assert!(!addresses(&pod, "lo").is_empty());
    assert!(
        ip(&pod, &["link", "show", "net1"]).is_err(),
        "net1 is gone from the pod"
    );
    assert_eq!(store_records(data.path()), Vec::<String>::new());

    // The released address is not the next one handed out.
    let pod2 = topo.pod("mv2").unwrap();
    let add2 = Invocation::new("ADD", "pod-mv2", pod2.path().to_str().unwrap(), "net1");
    let out = topo.exec("macvlan", &add2, &conf).unwrap();
    assert!(out.success, "ADD 2: {} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["ips"][0]["address"], "10.6.0.11/16");
    ping(&pod2, "10.6.0.1").unwrap();
}

#[test]
#[ignore = "netns tier: needs root, iproute2 and Debian containernetworking-plugins"]
fn bridge_dual_stack_pod_reaches_the_node_gateway() {
    let topo = Topology::new("br", &[]).unwrap();
    let pod = topo.pod("br").unwrap();
    let data = tempfile::tempdir().unwrap();
    // isGateway puts the pools' gateways on the bridge, in the node namespace.
    let conf = json!({
        "cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "spbr0", "isGateway": true,
        "ipMasq": false,
        "ipam": ipam(data.path(), ("10.7.0.0/24", "10.7.0.100-10.7.0.200", "10.7.0.1"),
                     ("fd00:7::/64", "fd00:7::100-fd00:7::200", "fd00:7::1")),
    });
    let add = Invocation::new("ADD", "pod-br", pod.path().to_str().unwrap(), "eth0");
    let out = topo.exec("bridge", &add, &conf).unwrap();
    assert!(out.success, "ADD: {} {}", out.stdout, out.stderr);
    let result = out.json();
    assert_eq!(result["cniVersion"], "0.4.0");
    let addrs = addresses(&pod, "eth0");
    assert!(
        addrs.contains("10.7.0.100/24") && addrs.contains("fd00:7::100/64"),
        "{addrs}"
    );
    let bridge = addresses(&topo.node, "spbr0");
    assert!(bridge.contains("10.7.0.1/24"), "{bridge}");
    ping(&pod, "10.7.0.1").unwrap();
    ping(&pod, "fd00:7::1").unwrap();

    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result;
    let out = topo
        .exec(
            "bridge",
            &Invocation {
                command: "CHECK".into(),
                ..add.clone()
            },
            &check_conf,
        )
        .unwrap();
    assert!(out.success, "CHECK: {} {}", out.stdout, out.stderr);
    let del = Invocation {
        command: "DEL".into(),
        ..add.clone()
    };
    assert!(topo.exec("bridge", &del, &check_conf).unwrap().success);
    let out = topo
        .exec(
            "bridge",
            &Invocation {
                netns: String::new(),
                ..del
            },
            &conf,
        )
        .unwrap();
    assert!(out.success, "DEL 2: {} {}", out.stdout, out.stderr);
    assert_eq!(store_records(data.path()), Vec::<String>::new());
}
