//! An agent update with maxSurge: the new agent of a node starts beside the old one, takes the
//! IPAM socket over mid-burst, and both run for a while. No address is ever held twice, through
//! the takeover and after the old agent is gone: with SpiderIPClaims (the default) because the
//! API server creates each address's claim once; with holders in the pool's status
//! (`--ipam-claims=false`) spares are lent without a pool write, so only one of the two may lend
//! at a time (a lock beside the socket): the old one finishes what it has, writes what it lent
//! and gives its spares back before the new one lends.

use super::*;

/// Live pod name → the address its ADD answered.
type Answered = BTreeMap<String, String>;

fn no_address_twice(answered: &Answered) {
    let mut by_ip: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (pod, ip) in answered {
        by_ip.entry(ip).or_default().push(pod);
    }
    let twice: Vec<_> = by_ip.iter().filter(|(_, pods)| pods.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "one address answered to two live pods: {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agent_update_with_two_agents_of_one_node_never_lends_one_address_twice() {
    agent_update(false, "10.213").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_agent_update_with_claims_never_gives_one_address_twice() {
    agent_update(true, "10.214").await;
}

/// The update on a pool of `net`.0.0/23, with claims or with spares.
async fn agent_update(claims: bool, net: &str) {
    const PODS: usize = 400;
    let cluster = Cluster::connect().await.expect("set up");
    let u = unique();
    let pool = format!("takeover-{u}");
    let node = format!("node-t-{u}");
    // Exactly 400 addresses for the 400 first pods: a duplicate also shows as a failed ADD.
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": format!("{net}.0.0/23"), "ips": [format!("{net}.0.1-{net}.1.144")]}),
    )
    .await
    .expect("set up");
    let ns = cluster.namespace("takeover", json!({})).await.expect("set up");
    let uids = cluster
        .pods(&ns, "p", PODS + PODS / 2, |_| node.clone(), json!({}))
        .await
        .expect("set up");
    let dir = tempfile::tempdir().expect("set up");
    let log = "warn,spiderpool_agent::ipam_service::lend_right=info";
    let extra: &[&str] = if claims { &[] } else { &["--ipam-claims=false"] };
    let mut old = Agent::start_with(&cluster.kubeconfig, &node, dir.path(), log, extra).expect("set up");
    let conf = netconf(&old.socket, &[&pool], &[]);
    let add = |i: usize| {
        let out = cni("ADD", &conf, &ns, &format!("p-{i}"), &uids[i], "net1");
        (out.success, first_ip(&out), out.stdout)
    };

    // The old agent lends; a quarter into the burst the new one takes the socket over, while
    // ADDs the old one accepted are still under way.
    let done = std::sync::atomic::AtomicUsize::new(0);
    let new: Mutex<Option<Agent>> = Mutex::new(None);
    let first = std::thread::scope(|s| {
        s.spawn(|| {
            while done.load(std::sync::atomic::Ordering::Relaxed) < PODS / 4 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let agent = old.beside("new", log).expect("set up");
            *new.lock().expect("lock") = Some(agent);
        });
        run_parallel(40, PODS, |i| {
            let r = add(i);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r
        })
    });
    let new = new.into_inner().expect("set up").expect("the new agent started");
    for (i, (ok, _, why)) in first.iter().enumerate() {
        assert!(ok, "ADD p-{i} failed: {why}");
    }
    let mut answered: Answered = first
        .iter()
        .enumerate()
        .map(|(i, (_, ip, _))| (format!("p-{i}"), ip.clone().expect("an address")))
        .collect();
    no_address_twice(&answered);

    // The old agent lets go once it has written everything; the update then stops it and the
    // new one lends.
    if claims {
        old.kill();
    } else {
        lends_after_let_go(&mut old, &new).await;
    }

    // Half the pods go and as many new ones come, through the new agent alone.
    let gone: Vec<usize> = (0..PODS).filter(|i| i % 2 == 0).collect();
    let deleted = run_parallel(40, gone.len(), |k| {
        let i = gone[k];
        cni("DEL", &conf, &ns, &format!("p-{i}"), &uids[i], "net1").success
    });
    assert!(deleted.iter().all(|ok| *ok), "a DEL failed");
    for i in &gone {
        answered.remove(&format!("p-{i}"));
    }
    let second = run_parallel(40, PODS / 2, |k| add(PODS + k));
    for (k, (ok, ip, why)) in second.into_iter().enumerate() {
        assert!(ok, "ADD p-{} failed: {why}", PODS + k);
        answered.insert(format!("p-{}", PODS + k), ip.expect("an address"));
    }
    no_address_twice(&answered);

    // The pool agrees: each live pod holds exactly the address it was answered.
    let held = allocations(&cluster, &pool).await;
    let pods: BTreeMap<String, String> = held
        .iter()
        .map(|(ip, a)| {
            (
                a.pod.rsplit('/').next().unwrap_or_default().to_string(),
                ip.clone(),
            )
        })
        .collect();
    let differ: Vec<_> = answered
        .iter()
        .filter(|(pod, ip)| pods.get(*pod) != Some(*ip))
        .map(|(pod, ip)| (pod, ip, pods.get(pod)))
        .collect();
    assert!(
        differ.is_empty(),
        "live pod, answered address, held in the pool: {differ:?}"
    );
    assert_eq!(held.len(), PODS, "one holder per live pod");
    drop(new);
}

/// With spares: the old agent lets go of them once it has written everything, and once it is
/// stopped the new one lends.
async fn lends_after_let_go(old: &mut Agent, new: &Agent) {
    let old_log = || old.log_text();
    let let_go = eventually(Duration::from_secs(20), || async {
        old_log().contains("spares let go").then_some(())
    })
    .await;
    assert!(let_go.is_some(), "the old agent never let go: {}", old_log());
    assert!(old_log().contains("taken over by a newer agent"), "{}", old_log());
    old.kill();
    let lends = eventually(Duration::from_secs(10), || async {
        new.log_text().contains("this agent lends").then_some(())
    })
    .await;
    assert!(lends.is_some(), "the new agent never lent: {}", new.log_text());
}
