use spiderpool_api::crd::Allocations;

use super::*;
use crate::pool::{Pool, PoolSpec};

fn pool(ips: &str) -> Pool {
    Pool::from_spec(
        &PoolSpec {
            subnet: "10.0.0.0/16".into(),
            ips: vec![ips.to_string()],
            ..PoolSpec::default()
        },
        Some("p"),
    )
    .unwrap()
}

fn entry(uid: &str, node: &str) -> PoolIPAllocation {
    PoolIPAllocation {
        pod: format!("ns/{uid}"),
        pod_uid: uid.into(),
        interface: Some("eth0".into()),
        node: Some(node.into()),
        owner_stateful_set: None,
    }
}

fn claim(uid: &str, node: &str) -> Op {
    Op::Claim(entry(uid, node))
}

fn release(uid: &str) -> Op {
    Op::Release {
        pod_uid: uid.into(),
        interface: Some("eth0".into()),
    }
}

fn got(d: &Decision) -> String {
    match d {
        Decision::Claim(Some(ip)) => ip.to_string(),
        other => panic!("no address: {other:?}"),
    }
}

/// One node's writer over a store shared with others: what the agent's pool writer does, without
/// the API server (a write lands only on the version it was decided on).
struct Node {
    name: String,
    local: Local,
    cursor: Option<Cursor>,
    /// The store version its copy is of, and the copy.
    seen: (u64, Allocations),
    lazy: bool,
}

struct Store {
    version: u64,
    all: Allocations,
    pool: Pool,
    reserved: IpSet,
    accept_new: bool,
}

impl Store {
    fn new(pool: Pool) -> Store {
        Store {
            version: 1,
            all: Allocations::default(),
            pool,
            reserved: IpSet::default(),
            accept_new: true,
        }
    }

    fn node(&self, name: &str) -> Node {
        Node {
            name: name.into(),
            local: Local::default(),
            cursor: None,
            seen: (self.version, self.all.clone()),
            lazy: true,
        }
    }

    /// Runs `ops` on `node` to the end, reading again after a lost write; the outcome that
    /// landed (or needed no write).
    fn run(&mut self, node: &mut Node, ops: &[Op], flush: Flush) -> Outcome {
        let cx = Context {
            pool: &self.pool,
            reserved: &self.reserved,
            accept_new: self.accept_new,
        };
        let batch: Vec<&Op> = ops.iter().collect();
        if flush != Flush::No && node.seen.0 != self.version {
            // As the agent's writer: a flush decides on a fresh copy (it may give spares back).
            node.seen = (self.version, self.all.clone());
            node.local.sync(self.all.of_node(&node.name));
        }
        loop {
            let view = node.seen.1.view(Some(&node.name));
            let mut walk = node.cursor;
            let writer = Writer {
                node: &node.name,
                lazy: node.lazy,
            };
            let out = decide(&view, &node.local, &mut walk, &cx, &writer, &batch, flush);
            let refused = out.decisions.contains(&Decision::Claim(None));
            if (out.write.is_some() || refused) && node.seen.0 != self.version {
                // As the agent's writer: a write or a refusal is decided on a fresh copy.
                node.seen = (self.version, self.all.clone());
                node.local.sync(self.all.of_node(&node.name));
                continue;
            }
            let Some(after) = &out.write else {
                node.local = out.local.clone();
                node.cursor = walk;
                return out;
            };
            let mut stored = node.seen.1.clone();
            stored.apply(&view, after, Some(&node.name));
            self.all = stored.clone();
            self.version += 1;
            node.seen = (self.version, stored);
            node.local = out.local.clone();
            node.cursor = walk;
            return out;
        }
    }

    fn own(&self, node: &str) -> BTreeMap<String, PoolIPAllocation> {
        self.all.of_node(node).cloned().unwrap_or_default()
    }
}

#[test]
fn the_first_claim_sets_spares_aside_and_the_next_ones_cost_no_write() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    let out = s.run(&mut n1, &[claim("a", "n1"), claim("b", "n1")], Flush::No);
    let written = out.write.expect("the first claims need spares: one write");
    assert_eq!(got(&out.decisions[0]), "10.0.0.1");
    assert_eq!(got(&out.decisions[1]), "10.0.0.2");
    // Two claimed and the node's share set aside (half of what is free past SPARE_FLOOR, at most
    // SPARE_MOST), all in that one write.
    assert_eq!(written.len(), 2 + SPARE_MOST);
    assert_eq!(s.own("n1")["10.0.0.1"], entry("a", "n1"));
    assert_eq!(s.own("n1").values().filter(|e| e.is_spare()).count(), SPARE_MOST);
    assert!(!n1.local.pending());

    let out = s.run(&mut n1, &[claim("c", "n1"), claim("a", "n1")], Flush::No);
    assert_eq!(out.write, None, "served from spares");
    assert_eq!(got(&out.decisions[0]), "10.0.0.3");
    assert_eq!(
        got(&out.decisions[1]),
        "10.0.0.1",
        "a repeated claim gets its address"
    );
    assert!(s.own("n1")["10.0.0.3"].is_spare(), "not written yet");
    assert_eq!(n1.local.lent.keys().collect::<Vec<_>>(), ["10.0.0.3"]);

    let out = s.run(&mut n1, &[claim("c", "n1")], Flush::No);
    assert_eq!(got(&out.decisions[0]), "10.0.0.3", "a lent spare is found again");
    let out = s.run(&mut n1, &[], Flush::Due);
    assert!(out.write.is_some(), "what is lent is written when due");
    assert_eq!(s.own("n1")["10.0.0.3"], entry("c", "n1"));
    assert!(!n1.local.pending());
    assert_eq!(s.all.count(), 3, "spares are not counted as allocated");
}

#[test]
fn releases_cost_no_write_until_due_and_a_claim_in_between_keeps_its_address() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    s.run(&mut n1, &[claim("a", "n1"), claim("b", "n1")], Flush::No);
    s.run(&mut n1, &[claim("c", "n1")], Flush::No);
    let out = s.run(&mut n1, &[release("a"), release("c")], Flush::No);
    assert_eq!(out.write, None);
    assert_eq!(
        out.decisions,
        [
            Decision::Release(vec!["10.0.0.1".parse().unwrap()]),
            Decision::Release(vec!["10.0.0.3".parse().unwrap()])
        ]
    );
    // The lent one went back to the spares, last in line; the written one waits for the write.
    assert_eq!(n1.local.spares.back().map(String::as_str), Some("10.0.0.3"));
    assert!(n1.local.freed.contains_key("10.0.0.1"));
    assert_eq!(s.own("n1")["10.0.0.1"], entry("a", "n1"));
    // A released address is not handed out before its release is written.
    let out = s.run(&mut n1, &[claim("d", "n1")], Flush::No);
    assert_ne!(got(&out.decisions[0]), "10.0.0.1");
    // The same pod again (a sandbox recreated): its address, and no release of it.
    let out = s.run(&mut n1, &[release("b"), claim("b", "n1")], Flush::No);
    assert_eq!(got(&out.decisions[1]), "10.0.0.2");
    assert!(!n1.local.freed.contains_key("10.0.0.2"));
    s.run(&mut n1, &[], Flush::Due);
    let own = s.own("n1");
    assert!(
        own["10.0.0.1"].is_spare(),
        "a released address stays the node's spare"
    );
    assert_eq!(own["10.0.0.2"], entry("b", "n1"));
    assert_eq!(s.all.count(), 2, "b and d");
}

#[test]
fn a_stateful_set_pod_is_written_at_once() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    let mut sts = entry("web-0", "n1");
    sts.owner_stateful_set = Some("web".into());
    let out = s.run(&mut n1, &[Op::Claim(sts.clone())], Flush::No);
    assert!(out.write.is_some());
    let ip = got(&out.decisions[0]);
    assert_eq!(s.own("n1")[&ip], sts);
    // Its successor under the same name, on another node, finds it.
    let mut n2 = s.node("n2");
    let mut next = sts.clone();
    next.pod_uid = "web-0-again".into();
    next.node = Some("n2".into());
    let out = s.run(&mut n2, &[Op::Claim(next)], Flush::No);
    assert_eq!(got(&out.decisions[0]), ip);
    assert!(out.write.is_some(), "the new pod's entry is written at once");
    assert_eq!(s.own("n2")[&ip].pod_uid, "web-0-again");
}

#[test]
fn a_small_pool_sets_nothing_aside_and_every_claim_is_written() {
    let mut s = Store::new(pool("10.0.0.1-10.0.0.40"));
    let mut n1 = s.node("n1");
    let out = s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    assert!(out.write.is_some());
    assert_eq!(s.own("n1").len(), 1);
    assert!(n1.local.spares.is_empty());
    let out = s.run(&mut n1, &[release("a")], Flush::No);
    assert_eq!(out.write, None, "a release is still written later");
    s.run(&mut n1, &[], Flush::Due);
    assert!(s.own("n1").is_empty(), "no spares kept under the floor");
}

#[test]
fn near_exhaustion_spares_go_back_and_the_last_addresses_reach_the_node_that_asks() {
    // 100 addresses; n1 sets some aside, n2 takes what is left directly.
    let mut s = Store::new(pool("10.0.0.1-10.0.0.100"));
    let (mut n1, mut n2) = (s.node("n1"), s.node("n2"));
    let out = s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    assert_eq!(n1.local.spares.len(), 18, "half of 100 free past 64: {out:?}");
    let spare = n1.local.spares.len();
    let ops: Vec<Op> = (0..99 - spare).map(|i| claim(&format!("b{i}"), "n2")).collect();
    let out = s.run(&mut n2, &ops, Flush::No);
    assert!(
        out.decisions
            .iter()
            .all(|d| matches!(d, Decision::Claim(Some(_))))
    );
    assert_eq!(out.free, 0);
    assert_eq!(out.others_spare, spare);
    let out = s.run(&mut n2, &[claim("last", "n2")], Flush::No);
    assert_eq!(out.decisions, [Decision::Claim(None)]);
    assert_eq!(out.others_spare, spare, "the writer may wait for these");
    // n1's next write (due, after its copy is found stale) gives them back.
    let out = s.run(&mut n1, &[], Flush::Due);
    assert!(out.write.is_some());
    assert!(n1.local.spares.is_empty());
    let out = s.run(&mut n2, &[claim("last", "n2")], Flush::No);
    assert!(matches!(out.decisions[0], Decision::Claim(Some(_))));
}

#[test]
fn idle_and_terminating_pools_give_spares_back_and_lent_ones_are_kept() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    s.run(&mut n1, &[claim("b", "n1")], Flush::No);
    s.run(&mut n1, &[], Flush::ReturnAll);
    assert_eq!(s.own("n1").len(), 2);
    assert!(s.own("n1").values().all(|e| !e.is_spare()));

    s.run(&mut n1, &[claim("c", "n1")], Flush::No);
    s.run(&mut n1, &[claim("d", "n1")], Flush::No);
    s.accept_new = false;
    let out = s.run(&mut n1, &[claim("d", "n1"), claim("e", "n1")], Flush::Due);
    assert_eq!(out.decisions[1], Decision::Claim(None));
    assert!(matches!(out.decisions[0], Decision::Claim(Some(_))));
    assert_eq!(s.own("n1").len(), 4, "a b c d, no spares");
}

#[test]
fn a_spare_reserved_or_cut_from_the_pool_is_handed_to_nobody() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    let next = n1.local.spares.front().cloned().unwrap();
    s.reserved = crate::range::set_of_entries([next.as_str()]);
    let out = s.run(&mut n1, &[claim("b", "n1")], Flush::Due);
    assert_ne!(got(&out.decisions[0]), next);
    assert!(!s.own("n1").contains_key(&next), "dropped at the write");
}

#[test]
fn sync_keeps_the_order_known_and_forgets_what_others_removed() {
    let spare = PoolIPAllocation::spare("n1");
    let own: BTreeMap<String, PoolIPAllocation> = [
        ("10.0.0.1", spare.clone()),
        ("10.0.0.2", spare.clone()),
        ("10.0.0.3", spare.clone()),
        ("10.0.0.4", entry("a", "n1")),
    ]
    .into_iter()
    .map(|(ip, e)| (ip.to_string(), e))
    .collect();
    let mut local = Local {
        spares: ["10.0.0.3", "10.0.0.9"].into_iter().map(String::from).collect(),
        lent: [("10.0.0.2".to_string(), entry("b", "n1"))].into(),
        freed: [
            ("10.0.0.4".to_string(), entry("a", "n1")),
            ("10.0.0.5".to_string(), entry("c", "n1")),
        ]
        .into(),
    };
    local.sync(Some(&own));
    assert_eq!(local.spares, ["10.0.0.3", "10.0.0.1"]);
    assert_eq!(local.freed.keys().collect::<Vec<_>>(), ["10.0.0.4"]);
    assert_eq!(local.lent.len(), 1);
}

#[test]
fn an_agent_restarted_finds_what_it_lent_in_its_endpoints() {
    let own: BTreeMap<String, PoolIPAllocation> = [
        ("10.0.0.1".to_string(), PoolIPAllocation::spare("n1")),
        ("10.0.0.2".to_string(), PoolIPAllocation::spare("n1")),
        ("10.0.0.3".to_string(), entry("x", "n1")),
    ]
    .into();
    let ep = |name: &str, node: &str, ip: &str, pool: &str| -> SpiderEndpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpoint",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {},
            "status": {"current": {"uid": format!("uid-{name}"), "node": node,
                "ips": [{"interface": "eth0", "ipv4": format!("{ip}/16"), "ipv4Pool": pool}]},
                "ownerControllerType": "Pod", "ownerControllerName": name}
        }))
        .unwrap()
    };
    let eps = [
        ep("a", "n1", "10.0.0.1", "p"),
        ep("b", "n2", "10.0.0.2", "p"),
        ep("c", "n1", "10.0.0.2", "other"),
        ep("x", "n1", "10.0.0.3", "p"),
    ];
    let lent = lent_from_endpoints(&eps, "p", "n1", &own);
    assert_eq!(lent.len(), 1, "{lent:?}");
    assert_eq!(lent["10.0.0.1"].pod, "ns/a");
    assert_eq!(lent["10.0.0.1"].pod_uid, "uid-a");
}

/// Three nodes claim, release and flush in a fixed pseudo-random order over one store of 150
/// addresses (spares, the floor and direct writes all take turns): no address is ever held by
/// two pods, counting what each writer has lent and not yet written.
#[test]
fn no_address_twice_across_nodes_in_any_interleaving() {
    for seed in 1..20u64 {
        let mut s = Store::new(pool("10.0.0.1-10.0.0.150"));
        let mut nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| s.node(n)).collect();
        // Some seeds with a node that writes everything at once (a pool shared by many nodes).
        nodes[2].lazy = seed % 2 == 0;
        let mut rnd = seed;
        let mut next = || {
            rnd ^= rnd << 13;
            rnd ^= rnd >> 7;
            rnd ^= rnd << 17;
            rnd
        };
        let mut live: Vec<(usize, String)> = Vec::new();
        for step in 0..400 {
            let k = (next() % 3) as usize;
            let r = next() % 10;
            let (ops, flush) = if r < 6 {
                let uid = format!("p{seed}-{step}");
                (vec![claim(&uid, &nodes[k].name.clone())], Flush::No)
            } else if r < 8 {
                let mine: Vec<usize> = (0..live.len()).filter(|i| live[*i].0 == k).collect();
                match mine.first() {
                    Some(i) => {
                        let (_, uid) = live.remove(*i);
                        (vec![release(&uid)], Flush::No)
                    }
                    None => (vec![], Flush::Due),
                }
            } else if r < 9 {
                (vec![], Flush::Due)
            } else {
                (vec![], Flush::ReturnAll)
            };
            let out = s.run(&mut nodes[k], &ops, flush);
            if let (Some(Op::Claim(e)), Some(Decision::Claim(Some(_)))) = (ops.first(), out.decisions.first())
            {
                live.push((k, e.pod_uid.clone()));
            }
            // Every pod's address: written holders, and what writers lent and have not written.
            let mut holder_of: BTreeMap<String, String> = BTreeMap::new();
            for (ip, e) in s.all.entries().filter(|(_, e)| !e.is_spare()) {
                let freed = nodes.iter().any(|n| n.local.freed.contains_key(ip));
                if !freed {
                    assert!(
                        holder_of.insert(ip.clone(), e.pod_uid.clone()).is_none(),
                        "seed {seed} step {step}: {ip} written twice"
                    );
                }
            }
            for n in &nodes {
                for (ip, e) in &n.local.lent {
                    if let Some(other) = holder_of.insert(ip.clone(), e.pod_uid.clone()) {
                        panic!(
                            "seed {seed} step {step}: {ip} lent to {} and held by {other}",
                            e.pod_uid
                        );
                    }
                    assert!(
                        s.own(&n.name).get(ip).is_some_and(|e| e.is_spare()),
                        "seed {seed} step {step}: {ip} lent but not the node's spare"
                    );
                }
            }
            assert_eq!(
                holder_of.len(),
                live.len(),
                "seed {seed} step {step}: every live pod holds one address"
            );
        }
    }
}

#[test]
fn a_writer_that_is_not_lazy_writes_claims_and_releases_at_once_and_keeps_no_spares() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    assert!(!n1.local.spares.is_empty());
    n1.lazy = false;
    let out = s.run(&mut n1, &[claim("b", "n1")], Flush::No);
    assert!(out.write.is_some(), "written at once");
    let b = got(&out.decisions[0]);
    assert!(n1.local.spares.is_empty(), "spares given back with it");
    assert!(!n1.local.pending());
    let out = s.run(&mut n1, &[release("a")], Flush::No);
    assert!(out.write.is_some(), "a release too");
    assert_eq!(s.own("n1").keys().cloned().collect::<Vec<_>>(), [b]);
}

/// A full pool: what the node released and has not written yet goes to its next claims at once,
/// in the write that records them (not "no free address" until the flush).
#[test]
fn released_and_unwritten_addresses_serve_claims_in_a_full_pool() {
    let mut s = Store::new(pool("10.0.0.1-10.0.0.8"));
    let mut n1 = s.node("n1");
    let claims: Vec<Op> = (0..8).map(|i| claim(&format!("a{i}"), "n1")).collect();
    let out = s.run(&mut n1, &claims, Flush::No);
    assert!(
        out.decisions
            .iter()
            .all(|d| matches!(d, Decision::Claim(Some(_))))
    );
    let out = s.run(&mut n1, &[release("a3"), release("a5")], Flush::No);
    assert!(out.write.is_none(), "a release is written later");
    assert_eq!(n1.local.freed.len(), 2);
    let out = s.run(&mut n1, &[claim("b", "n1"), claim("c", "n1")], Flush::No);
    let mut ips: Vec<String> = out.decisions.iter().map(got).collect();
    ips.sort();
    assert_eq!(ips, ["10.0.0.4", "10.0.0.6"]);
    let held = s.all.view(None);
    assert_eq!(held["10.0.0.4"].pod_uid, "b");
    assert_eq!(held["10.0.0.6"].pod_uid, "c");
    assert!(n1.local.freed.is_empty());
    assert_eq!(held.len(), 8);
}

#[test]
fn a_node_that_lends_refills_before_its_spares_run_out() {
    let mut s = Store::new(pool("10.0.0.1-10.0.3.232"));
    let mut n1 = s.node("n1");
    s.run(&mut n1, &[claim("a", "n1")], Flush::No);
    assert_eq!(n1.local.spares.len(), SPARE_MOST);
    // Lending leaves at least half a share (64 of 128): no write.
    let ops: Vec<Op> = (0..SPARE_MOST / 2)
        .map(|i| claim(&format!("b{i}"), "n1"))
        .collect();
    let out = s.run(&mut n1, &ops, Flush::No);
    assert_eq!(out.write, None);
    assert_eq!(n1.local.spares.len(), SPARE_MOST / 2);
    // One more and the node refills while it still has spares to lend during the write.
    let out = s.run(&mut n1, &[claim("c", "n1")], Flush::No);
    assert!(got(&out.decisions[0]).starts_with("10.0.0."), "a spare it had");
    assert!(
        out.write.is_some() && !out.own_only,
        "a refill: {:?}",
        out.own_only
    );
    assert_eq!(n1.local.spares.len(), SPARE_MOST);
    let own = s.own("n1");
    assert_eq!(own.values().filter(|e| e.is_spare()).count(), SPARE_MOST);
    assert_eq!(
        own.len(),
        SPARE_MOST + 1 + SPARE_MOST / 2 + 1,
        "what it lent is written with it"
    );
}

#[test]
fn a_claim_during_a_write_takes_only_a_spare_both_outcomes_keep() {
    let spares = |ips: &[&str]| Local {
        spares: ips.iter().map(|s| s.to_string()).collect(),
        ..Local::default()
    };
    let all = crate::range::set_of_entries(["10.0.0.0-10.0.0.255"]);
    let without_1 = all.subtract(&crate::range::set_of_entries(["10.0.0.1"]));
    let view: BTreeMap<String, PoolIPAllocation> = [("10.0.0.50".to_string(), entry("held", "n1"))].into();
    // The round lent .1 and refilled .9: .2 is a spare whether the write lands or not.
    let mut before = spares(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    let mut after = spares(&["10.0.0.2", "10.0.0.3", "10.0.0.9"]);
    after.lent.insert("10.0.0.1".into(), entry("a", "n1"));
    let got = lend_meanwhile(&view, &mut before, Some(&mut after), &entry("c", "n1"), &all);
    assert_eq!(got.as_deref(), Some("10.0.0.2"));
    for local in [&before, &after] {
        assert_eq!(local.lent.get("10.0.0.2"), Some(&entry("c", "n1")));
        assert!(!local.spares.contains(&"10.0.0.2".to_string()));
    }
    // A pod that holds an address, or was lent one in the round: left to the next round.
    assert_eq!(
        lend_meanwhile(&view, &mut before, Some(&mut after), &entry("held", "n1"), &all),
        None
    );
    assert_eq!(
        lend_meanwhile(&view, &mut before, Some(&mut after), &entry("a", "n1"), &all),
        None
    );
    let mut sts = entry("web-0", "n1");
    sts.owner_stateful_set = Some("web".into());
    assert_eq!(
        lend_meanwhile(&view, &mut before, Some(&mut after), &sts, &all),
        None,
        "written at once"
    );
    // .3 is the last spare both keep; then none is left for a claim.
    assert_eq!(
        lend_meanwhile(&view, &mut before, Some(&mut after), &entry("d", "n1"), &all).as_deref(),
        Some("10.0.0.3")
    );
    assert_eq!(
        lend_meanwhile(&view, &mut before, Some(&mut after), &entry("e", "n1"), &all),
        None
    );
    // During a backoff the round decides again from `before` alone; a spare reserved since is
    // lent to nobody.
    assert_eq!(
        lend_meanwhile(&view, &mut before, None, &entry("e", "n1"), &without_1),
        None
    );
    assert_eq!(
        lend_meanwhile(&view, &mut before, None, &entry("e", "n1"), &all).as_deref(),
        Some("10.0.0.1")
    );
}
