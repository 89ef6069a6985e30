//! ADD, DEL and CHECK against a recording fake kernel: no root, no namespaces. A pod with `net1`
//! (macvlan on the node's uplink, which holds 10.6.0.254 and fd00:6::fe), and in overlay cases
//! an `eth0` with the default route.

mod add;
mod del_check;
mod fake;

use ipnet::IpNet;
use serde_json::{Value, json};
use spiderpool_cni::CniError;
use spiderpool_linux::rtnl::{MAIN_TABLE, Route};

use crate::NicAddress;
use crate::config::CoordinatorConf;
use fake::FakeKernel;

const CONTAINER: &str = "0123456789abcdef";

fn net(cidr: &str) -> IpNet {
    cidr.parse().unwrap()
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// A pod and its node.
struct World {
    pod: FakeKernel,
    node: FakeKernel,
}

impl World {
    /// Underlay: the pod has only `net1`, which carries the default routes.
    fn underlay() -> World {
        let node = FakeKernel::default();
        {
            let mut n = node.state();
            n.add_link("lo");
            n.add_address("lo", "127.0.0.1/8", false);
            n.add_link("up0");
            n.add_address("up0", "10.6.0.254/16", true);
            n.add_address("up0", "fd00:6::fe/64", true);
            n.add_address("up0", "fe80::fe/64", false);
        }
        let pod = FakeKernel::default();
        {
            let mut p = pod.state();
            p.add_link("lo");
            let net1 = p.add_link("net1");
            p.add_address("net1", "10.6.0.10/16", true);
            p.add_address("net1", "fd00:6::10/64", true);
            p.routes = vec![
                Route::link(net("10.6.0.0/16"), net1, MAIN_TABLE),
                Route::default_via(ip("10.6.0.1"), net1, MAIN_TABLE),
                Route::link(net("fd00:6::/64"), net1, MAIN_TABLE),
                Route::default_via(ip("fd00:6::1"), net1, MAIN_TABLE),
            ];
            p.on_wire.insert(ip("10.6.0.1"), [0x02, 0x47, 0, 0, 0, 1]);
            p.on_wire.insert(ip("fd00:6::1"), [0x02, 0x47, 0, 0, 0, 1]);
        }
        World { pod, node }
    }

    /// Overlay: the pod's `eth0` (the overlay's) carries the default routes; `net1` is extra.
    fn overlay() -> World {
        let w = World::underlay();
        {
            let mut p = w.pod.state();
            let net1 = p.index("net1").unwrap();
            let eth0 = p.add_link("eth0");
            p.add_address("eth0", "10.244.1.5/24", true);
            p.routes = vec![
                Route::link(net("10.244.1.0/24"), eth0, MAIN_TABLE),
                Route::default_via(ip("10.244.1.1"), eth0, MAIN_TABLE),
                Route::link(net("10.6.0.0/16"), net1, MAIN_TABLE),
                Route::link(net("fd00:6::/64"), net1, MAIN_TABLE),
            ];
        }
        w
    }

    fn add(&mut self, conf: &Value) -> Result<(), CniError> {
        crate::add(
            &parse(conf),
            CONTAINER,
            "net1",
            &addresses(),
            &mut self.pod,
            &mut self.node,
        )
    }

    fn del(&mut self, conf: &Value) -> Result<(), CniError> {
        crate::del(&parse(conf), CONTAINER, &mut self.node)
    }

    fn check(&mut self, conf: &Value) -> Result<(), CniError> {
        crate::check(
            &parse(conf),
            CONTAINER,
            "net1",
            &addresses(),
            &mut self.pod,
            &mut self.node,
        )
    }

    /// The node's MAC for the pod's veth end, known once ADD made it.
    fn host_veth(&self) -> (String, u32) {
        let name = crate::host_veth_name(CONTAINER);
        let index = self.node.state().index(&name).unwrap();
        (name, index)
    }

    /// Everything either side holds, to compare before and after.
    fn snapshot(&self) -> String {
        let show = |k: &FakeKernel| {
            let s = k.state();
            format!(
                "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
                s.links, s.addresses, s.routes, s.rules, s.neighbours, s.sysctls
            )
        };
        format!("pod:\n{}\nnode:\n{}", show(&self.pod), show(&self.node))
    }
}

fn parse(conf: &Value) -> CoordinatorConf {
    CoordinatorConf::parse(conf).unwrap()
}

/// What prevResult gave `net1`.
fn addresses() -> Vec<NicAddress> {
    vec![
        (net("10.6.0.10/16"), Some(ip("10.6.0.1"))),
        (net("fd00:6::10/64"), Some(ip("fd00:6::1"))),
    ]
}

fn conf() -> Value {
    json!({"type": "coordinator", "hijackCIDR": ["10.96.0.0/12", "fd00:96::/108"]})
}
