//! netns tier: Debian's macvlan + spiderpool + coordinator for two NICs in one pod, each on its own
//! uplink and gateway namespace; IP conflict and silent gateway make ADD fail without leaking an
//! address. Root only; hack/test.sh runs these with `--ignored`.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::{Value, json};
use spiderpool_cni::exec::Invocation;
use spiderpool_e2e::{Topology, ip, ping, store_records};
use spiderpool_linux::netns::NetNs;

fn macvlan(name: &str, master: &str, data: &Path, pools: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": master, "mode": "bridge",
           "ipam": {"type": "spiderpool", "dataDir": data, "pools": pools}})
}

fn coordinator(name: &str, prev: &Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "coordinator", "prevResult": prev,
           "hijackCIDR": ["10.96.0.0/12"], "podMACPrefix": "0a:1b", "txQueueLen": 2000, "podRPFilter": 2,
           "vethMTU": 1400, "vethLinkAddress": "169.254.200.1"})
}

/// The runtime's side of a two-plugin chain: ADD both; on a failure, DEL both (as libcni does).
fn chain_add(topo: &Topology, inv: &Invocation, main: &Value, name: &str) -> Result<Value, Value> {
    let out = topo.exec("macvlan", inv, main).unwrap();
    assert!(out.success, "macvlan ADD: {}", out.stdout);
    let result = out.json();
    let out = topo
        .exec("coordinator", inv, &coordinator(name, &result))
        .unwrap();
    if out.success {
        return Ok(out.json());
    }
    let del = Invocation {
        command: "DEL".into(),
        ..inv.clone()
    };
    assert!(
        topo.exec("coordinator", &del, &coordinator(name, &result))
            .unwrap()
            .success
    );
    assert!(topo.exec("macvlan", &del, main).unwrap().success);
    Err(out.json())
}

#[test]
#[ignore = "netns tier: needs root, iproute2, ping and Debian containernetworking-plugins"]
fn two_nics_each_answer_by_their_own_gateway_and_bad_networks_fail_cleanly() {
    let topo = Topology::new("co", &["10.6.0.1/16", "fd00:6::1/64"]).unwrap();
    // A second uplink with its own gateway namespace, which also holds a "remote client" address.
    let gw2 = topo.uplink("up2", &["10.7.0.1/24", "fd00:7::1/64"]).unwrap();
    ip(&gw2, &["addr", "add", "fd00:72::1/128", "dev", "lo"]).unwrap();
    ip(&gw2, &["addr", "add", "172.16.2.1/32", "dev", "lo"]).unwrap();
    // The node's own address on the uplink: macvlan pods cannot reach their parent's addresses,
    // which is what the coordinator's veth is for.
    ip(&topo.node, &["addr", "add", "10.6.0.254/16", "dev", "up0"]).unwrap();
    ip(
        &topo.node,
        &["addr", "add", "fd00:6::fe/64", "dev", "up0", "nodad"],
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let pod = topo.pod("co").unwrap();
    let pod_path = pod.path().to_str().unwrap().to_string();

    let nic1 = macvlan(
        "net-a",
        "up0",
        data.path(),
        json!([{"name": "a", "subnet": "10.6.0.0/16",
            "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.6.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
            {"name": "a6", "subnet": "fd00:6::/64",
            "ips": ["fd00:6::10-fd00:6::20"], "gateway": "fd00:6::1", "routes": [{"dst": "::/0", "gw": "fd00:6::1"}]}]),
    );
    let nic2 = macvlan(
        "net-b",
        "up2",
        data.path(),
        json!([{"name": "b", "subnet": "10.7.0.0/24", "ips": ["10.7.0.10-10.7.0.20"], "gateway": "10.7.0.1"},
            {"name": "b6", "subnet": "fd00:7::/64", "ips": ["fd00:7::10-fd00:7::20"], "gateway": "fd00:7::1"}]),
    );
    let inv1 = Invocation::new("ADD", "pod-co", &pod_path, "net1");
    let inv2 = Invocation::new("ADD", "pod-co", &pod_path, "net2");
    chain_add(&topo, &inv1, &nic1, "net-a").unwrap();
    let out = topo.exec("macvlan", &inv2, &nic2).unwrap();
    assert!(out.success, "{}", out.stdout);
    let nic2_result = out.json();
    let nic2_ip = nic2_result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // Without policy routing the reply to a client behind NIC 2's gateway leaves by NIC 1's default route.
    let from_client = |ns: &NetNs| {
        ns.command("ping")
            .args(["-c", "1", "-W", "1", "-I", "172.16.2.1", &nic2_ip])
            .status()
            .unwrap()
            .success()
    };
    assert!(
        !from_client(&gw2),
        "control: the reply should not come back without the coordinator"
    );
    let out = topo
        .exec("coordinator", &inv2, &coordinator("net-b", &nic2_result))
        .unwrap();
    assert!(out.success, "coordinator ADD net2: {}", out.stdout);
    assert_eq!(out.json()["ips"], nic2_result["ips"], "prevResult passes through");

    ping(&pod, "10.6.0.1").unwrap();
    ping(&pod, "10.7.0.1").unwrap();
    ping(&pod, "10.6.0.254").unwrap(); // the node, through veth0
    ping(&pod, "fd00:6::1").unwrap();
    ping(&pod, "fd00:7::1").unwrap();
    ping(&pod, "fd00:6::fe").unwrap();
    let via6 = ip(&pod, &["-6", "route", "get", "fd00:6::fe"]).unwrap();
    assert!(via6.contains("dev veth0"), "{via6}");
    let from_client6 = gw2
        .command("ping")
        .args(["-6", "-c", "1", "-W", "2", "-I", "fd00:72::1", "fd00:7::10"])
        .status()
        .unwrap();
    assert!(
        from_client6.success(),
        "IPv6: a request arriving on NIC 2 is answered through NIC 2"
    );
    let rules6 = ip(&pod, &["-6", "rule", "show"]).unwrap();
    assert!(rules6.contains("from fd00:7::10 lookup"), "{rules6}");
    let table6 = ip(&topo.node, &["-6", "route", "show", "table", "500"]).unwrap();
    assert!(
        table6.contains("fd00:6::10 dev") && table6.contains("fd00:7::10 dev"),
        "{table6}"
    );
    let via = ip(&pod, &["route", "get", "10.6.0.254"]).unwrap();
    assert!(via.contains("dev veth0"), "{via}");
    let host_veth = spiderpool_coordinator::host_veth_name("pod-co");
    let table = ip(&topo.node, &["route", "show", "table", "500"]).unwrap();
    assert!(
        table.contains(&format!("10.6.0.10 dev {host_veth}"))
            && table.contains(&format!("{nic2_ip} dev {host_veth}")),
        "{table}"
    );
    assert!(
        ip(&topo.node, &["rule", "show"])
            .unwrap()
            .contains("to 10.6.0.10 lookup 500")
    );
    let hijack = ip(&pod, &["route", "get", "10.96.0.10"]).unwrap();
    assert!(
        hijack.contains("via 10.6.0.254 dev veth0"),
        "hijackCIDR goes through the node: {hijack}"
    );
    let net1 = ip(&pod, &["link", "show", "net1"]).unwrap();
    assert!(
        net1.contains("link/ether 0a:1b:0a:06:00:0a") && net1.contains("qlen 2000"),
        "{net1}"
    );
    let rp = pod
        .command("cat")
        .arg("/proc/sys/net/ipv4/conf/net1/rp_filter")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rp.stdout).trim(), "2");
    let veth = ip(&pod, &["addr", "show", "veth0"]).unwrap();
    assert!(
        veth.contains("mtu 1400") && veth.contains("inet 169.254.200.1/32 scope link"),
        "vethMTU and vethLinkAddress on the pod's veth0: {veth}"
    );
    let node_end = ip(&topo.node, &["link", "show", &host_veth]).unwrap();
    assert!(
        node_end.contains("mtu 1400"),
        "vethMTU on the node end: {node_end}"
    );
    let neigh = ip(&pod, &["neigh", "show", "10.6.0.254", "dev", "veth0"]).unwrap();
    assert!(
        neigh.contains("PERMANENT"),
        "static neighbour in the pod: {neigh}"
    );
    let neigh = ip(&topo.node, &["neigh", "show", "10.6.0.10", "dev", &host_veth]).unwrap();
    assert!(
        neigh.contains("PERMANENT"),
        "static neighbour on the node: {neigh}"
    );
    assert!(
        from_client(&gw2),
        "a request arriving on NIC 2 is answered through NIC 2"
    );
    let rules = ip(&pod, &["rule", "show"]).unwrap();
    assert!(rules.contains(&format!("from {nic2_ip} lookup")), "{rules}");
    let main_default = ip(&pod, &["route", "show", "default"]).unwrap();
    assert!(
        main_default.contains("dev net1"),
        "the default route stays on NIC 1: {main_default}"
    );

    // CHECK and DEL (twice, the second without netns) of the coordinator.
    let check = Invocation {
        command: "CHECK".into(),
        ..inv2.clone()
    };
    let out = topo
        .exec("coordinator", &check, &coordinator("net-b", &nic2_result))
        .unwrap();
    assert!(out.success, "CHECK: {}", out.stdout);
    // CHECK notices what ADD set going missing: the veth0 link address, then a rule.
    ip(&pod, &["addr", "del", "169.254.200.1/32", "dev", "veth0"]).unwrap();
    let out = topo
        .exec("coordinator", &check, &coordinator("net-b", &nic2_result))
        .unwrap();
    assert_eq!(out.error_code(), Some(104), "{}", out.stdout);
    assert!(out.stdout.contains("vethLinkAddress"), "{}", out.stdout);
    ip(&pod, &["addr", "add", "169.254.200.1/32", "dev", "veth0"]).unwrap();
    ip(&pod, &["rule", "del", "from", &nic2_ip]).unwrap();
    let out = topo
        .exec("coordinator", &check, &coordinator("net-b", &nic2_result))
        .unwrap();
    assert_eq!(out.error_code(), Some(104), "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains(&nic2_ip),
        "{}",
        out.stdout
    );
    let del = Invocation {
        command: "DEL".into(),
        ..inv2.clone()
    };
    assert!(
        topo.exec("coordinator", &del, &coordinator("net-b", &nic2_result))
            .unwrap()
            .success
    );
    let del_no_ns = Invocation {
        netns: String::new(),
        ..del.clone()
    };
    assert!(
        topo.exec("coordinator", &del_no_ns, &coordinator("net-b", &nic2_result))
            .unwrap()
            .success
    );

    // Someone on the wire already holds the next address: ADD fails with a conflict, nothing leaks.
    let pod2 = topo.pod("co2").unwrap();
    let pod2_path = pod2.path().to_str().unwrap().to_string();
    ip(&topo.gateway, &["addr", "add", "10.6.0.11/16", "dev", "eth0"]).unwrap();
    let inv = Invocation::new("ADD", "pod-co2", &pod2_path, "net1");
    let err = chain_add(&topo, &inv, &nic1, "net-a").unwrap_err();
    assert_eq!(err["code"], 102, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("10.6.0.11"), "{err}");
    // A gateway nobody answers for: ADD fails as unreachable, nothing leaks.
    let silent = macvlan(
        "net-c",
        "up2",
        data.path(),
        json!([{"name": "c", "subnet": "10.8.0.0/24", "ips": ["10.8.0.10"], "gateway": "10.8.0.1"}]),
    );
    let inv = Invocation::new("ADD", "pod-co2", &pod2_path, "net3");
    let err = chain_add(&topo, &inv, &silent, "net-c").unwrap_err();
    assert_eq!(err["code"], 103, "{err}");
    let mut left = store_records(data.path());
    left.sort();
    assert_eq!(
        left,
        ["net-a/pod-co/net1", "net-b/pod-co/net2"],
        "the failed ADDs left no allocation"
    );

    // The pod goes: both chains DEL'd twice (the second time without netns, as containerd does).
    for (inv, main, name) in [(&inv2, &nic2, "net-b"), (&inv1, &nic1, "net-a")] {
        for netns in [pod_path.as_str(), ""] {
            let del = Invocation {
                command: "DEL".into(),
                netns: netns.into(),
                ..inv.clone()
            };
            assert!(
                topo.exec("coordinator", &del, &coordinator(name, &nic2_result))
                    .unwrap()
                    .success
            );
            assert!(topo.exec("macvlan", &del, main).unwrap().success);
        }
    }
    assert!(store_records(data.path()).is_empty());
    let links = ip(&topo.node, &["link", "show"]).unwrap();
    assert!(!links.contains(&host_veth), "{links}");
    assert_eq!(
        ip(&topo.node, &["route", "show", "table", "500"]).unwrap().trim(),
        ""
    );
    assert!(
        !ip(&topo.node, &["rule", "show"]).unwrap().contains("lookup 500"),
        "rules to the pod are gone"
    );
}

#[test]
#[ignore = "netns tier: needs root, iproute2, ping and Debian containernetworking-plugins"]
fn beside_an_overlay_eth0_there_is_no_veth_and_replies_follow_the_nic() {
    let topo = Topology::new("ov", &["10.6.0.1/16"]).unwrap();
    ip(&topo.gateway, &["addr", "add", "172.16.1.1/32", "dev", "lo"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let pod = topo.pod("ov").unwrap();
    let pod_path = pod.path().to_str().unwrap().to_string();
    // eth0 from Debian's bridge stands in for an overlay CNI: it brings the default route.
    let overlay = json!({"cniVersion": "1.0.0", "name": "overlay", "type": "bridge", "bridge": "spbr1",
        "isGateway": true, "ipMasq": false, "ipam": {"type": "spiderpool", "dataDir": data.path(),
        "pools": [{"name": "ov", "subnet": "10.244.0.0/24", "ips": ["10.244.0.10-10.244.0.20"], "gateway": "10.244.0.1",
                   "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]}]}});
    let eth0 = Invocation::new("ADD", "pod-ov", &pod_path, "eth0");
    let out = topo.exec("bridge", &eth0, &overlay).unwrap();
    assert!(out.success, "bridge ADD: {}", out.stdout);
    let underlay = macvlan(
        "net-u",
        "up0",
        data.path(),
        json!([{"name": "u", "subnet": "10.6.0.0/16",
        "ips": ["10.6.0.10-10.6.0.20"], "gateway": "10.6.0.1"}]),
    );
    let net1 = Invocation::new("ADD", "pod-ov", &pod_path, "net1");
    chain_add(&topo, &net1, &underlay, "net-u").unwrap();

    assert!(
        ip(&pod, &["link", "show", "veth0"]).is_err(),
        "no veth beside an overlay eth0"
    );
    let host_veth = spiderpool_coordinator::host_veth_name("pod-ov");
    assert!(!ip(&topo.node, &["link", "show"]).unwrap().contains(&host_veth));
    let rules = ip(&pod, &["rule", "show"]).unwrap();
    assert!(rules.contains("from 10.6.0.10 lookup"), "{rules}");
    assert!(
        ip(&pod, &["route", "show", "default"])
            .unwrap()
            .contains("dev eth0")
    );
    // The hijacked CIDR (services, say) stays on the overlay: through eth0's gateway.
    let hijacked = ip(&pod, &["route", "show", "10.96.0.0/12"]).unwrap();
    assert!(hijacked.contains("via 10.244.0.1 dev eth0"), "{hijacked}");
    // A client behind the underlay gateway is answered through net1, not the overlay's default.
    let answered = topo
        .gateway
        .command("ping")
        .args(["-c", "1", "-W", "2", "-I", "172.16.1.1", "10.6.0.10"])
        .status()
        .unwrap();
    assert!(
        answered.success(),
        "the reply leaves by the NIC the request came in on"
    );

    let del = Invocation {
        command: "DEL".into(),
        ..net1.clone()
    };
    assert!(
        topo.exec("coordinator", &del, &coordinator("net-u", &json!({})))
            .unwrap()
            .success
    );
    assert!(topo.exec("macvlan", &del, &underlay).unwrap().success);
    assert!(
        topo.exec(
            "bridge",
            &Invocation {
                command: "DEL".into(),
                ..eth0
            },
            &overlay
        )
        .unwrap()
        .success
    );
    assert!(store_records(data.path()).is_empty());
}

/// One pod's DEL and another's ADD at the same moment, over and over: the DEL's sweep for rules
/// whose route is gone never takes the rule the ADD has just written, so the node can always
/// reach every pod that is there.
#[test]
#[ignore = "netns tier: needs root, iproute2, ping and Debian containernetworking-plugins"]
fn a_del_beside_an_add_never_takes_the_new_pod_s_rule() {
    const ROUNDS: usize = 25;
    let topo = Topology::new("race", &["10.8.0.1/16"]).unwrap();
    ip(&topo.node, &["addr", "add", "10.8.0.254/16", "dev", "up0"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let main = macvlan(
        "net-r",
        "up0",
        data.path(),
        json!([{"name": "r", "subnet": "10.8.0.0/16", "ips": ["10.8.0.10-10.8.0.200"], "gateway": "10.8.0.1"}]),
    );
    let pods: Vec<_> = (0..=ROUNDS)
        .map(|i| topo.pod(&format!("r{i}")).unwrap())
        .collect();
    let inv = |i: usize, verb: &str| {
        Invocation::new(
            verb,
            &format!("pod-r{i}"),
            pods[i].path().to_str().unwrap(),
            "net1",
        )
    };
    let host_rule_of = |result: &Value| {
        let addr = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        move |rules: &str| rules.contains(&format!("to {addr} lookup 500"))
    };
    let mut previous = chain_add(&topo, &inv(0, "ADD"), &main, "net-r").unwrap();
    for i in 1..=ROUNDS {
        let (added, ()) = std::thread::scope(|s| {
            let add = s.spawn(|| chain_add(&topo, &inv(i, "ADD"), &main, "net-r"));
            let del = s.spawn(|| {
                let del = inv(i - 1, "DEL");
                let out = topo
                    .exec("coordinator", &del, &coordinator("net-r", &previous))
                    .unwrap();
                assert!(out.success, "coordinator DEL: {}", out.stdout);
                assert!(topo.exec("macvlan", &del, &main).unwrap().success);
            });
            (add.join().unwrap(), del.join().unwrap())
        });
        let added = added.unwrap_or_else(|e| panic!("round {i}: ADD failed: {e}"));
        let rules = ip(&topo.node, &["rule", "show"]).unwrap();
        assert!(
            host_rule_of(&added)(&rules),
            "round {i}: the new pod's rule was lost:\n{rules}"
        );
        assert!(
            !host_rule_of(&previous)(&rules),
            "round {i}: the deleted pod's rule stayed:\n{rules}"
        );
        previous = added;
    }
    ping(&pods[ROUNDS], "10.8.0.254").unwrap();
}
