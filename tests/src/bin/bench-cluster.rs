//! Cluster-mode allocation throughput against the real API server, side by side with a peer: the
//! same pods, the same plugin processes at a time, one range of exactly as many addresses.
//! - `spiderpool`: N agents (processes, each its own node), the `spiderpool` plugin exec'd per pod;
//! - `whereabouts`: Whereabouts' plugin exec'd per pod (it talks to the API server itself; it has
//!   no agents), its CRDs applied first.
//!
//! For each, and each phase (allocate, release): wall time, allocations per second, latency
//! percentiles, failures, the API server's CPU seconds and bytes sent (responses and watch events,
//! from its own /metrics) per allocation, and what the store still holds after the release (exit
//! codes are not enough: a DEL that reports success may leave its address behind). Besides, per
//! allocation: the machine's CPU by process and the API requests by verb and resource, which say
//! where the cost is.
//!
//! `floor` is not an IPAM: per pod one plugin process (ours, answering VERSION) and one
//! SpiderEndpoint of the agent's shape, created on ADD and deleted on DEL by this process's client.
//! It is the least any IPAM that keeps Spiderpool's per-pod record costs on this machine.
//! `floor-claim` adds per pod one small cluster-scoped object named after its address (a
//! SpiderReservedIP stands in), created before the endpoint and deleted after it: the least an
//! IPAM costs that claims each address as an object of its own, unique by name, as Kubernetes'
//! IPAddress API does for Service IPs (no shared object to fight over, one more write per pod).
//! `floor-objects` writes, from this one process, exactly the two objects our agent writes per pod
//! (its SpiderIPClaim and its SpiderEndpoint with owner reference): what separates our objects'
//! cost from our agents' (their processes, connections and watches).
//!
//! SPIDERPOOL_BENCH_IN_FLIGHT=N starts our agents with `--ipam-in-flight N` (0: no limit).
//! SPIDERPOOL_BENCH_PPROF=DIR writes the API server's CPU profile of each phase's first seconds there.
//!
//! usage: bench-cluster [PODS] [AGENTS] [CONCURRENCY] [PEERS] [ACTIVE]   (PEERS: spiderpool,whereabouts,floor,floor-claim,floor-objects;
//! ACTIVE: how many of the AGENTS' nodes the pods run on, default all: the others' agents only
//! watch, which is what a pool's writes cost the nodes that do not use it)
//! Whereabouts' plugin and CRDs: the directory in WHEREABOUTS_DIR (`hack/control-plane.sh
//! whereabouts`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spiderpool_api::crd::{
    EndpointStatus, IPAllocationDetail, PodIPAllocation, PoolIPAllocation, ReservedIPSpec, SpiderEndpoint,
    SpiderEndpointSpec, SpiderIPPool, SpiderReservedIP, claim::IPClaimSpec, claim::SpiderIPClaim,
};
use spiderpool_e2e::cluster::{Agent, Cluster, cni_with, netconf, pool_holders, run_parallel, unique};
use spiderpool_ipam::cluster::register::{Outcome, register};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What a phase costs, read before and after it: the API server's own counters (CPU seconds,
/// bytes sent, requests by kind) and the machine's CPU, in total and by process.
#[derive(Debug, Clone, Default)]
struct ServerCost {
    cpu_seconds: f64,
    /// Bytes sent, by "watch|response resource": which objects the bytes were.
    sent: BTreeMap<String, f64>,
    /// Requests served, by "VERB resource[/subresource]".
    requests: BTreeMap<String, f64>,
    /// The whole machine's CPU seconds (every process: API server, etcd, agents, plugins).
    machine_cpu_seconds: f64,
    /// CPU seconds of the processes running now, by command name, and of the plugin processes
    /// this one ran ("plugins": its waited-for children).
    by_process: BTreeMap<String, f64>,
}

impl ServerCost {
    /// Every response body and every watch event the server sent.
    fn bytes_sent(&self) -> f64 {
        self.sent.values().sum()
    }
}

/// CPU seconds by command name of every process now running (/proc/PID/stat: utime + stime).
fn cpu_by_process() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (comm) state ppid ..." with utime and stime the 14th and 15th fields.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(comm).or_default() += (ticks(11) + ticks(12)) / 100.0;
        // This process's children that exited and were waited for (cutime, cstime): the plugin
        // processes (the agents, its other children, run until the peer ends).
        if entry.file_name().to_str() == Some(me.as_str()) {
            *out.entry("plugins".to_string()).or_default() += (ticks(13) + ticks(14)) / 100.0;
        }
    }
    out
}

/// CPU seconds every process on the machine used so far (/proc/stat, in USER_HZ ticks).
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal: all but idle and iowait are work.
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    busy / 100.0
}

/// SPIDERPOOL_BENCH_PPROF=DIR: the API server's CPU profile over a phase's first seconds (its
/// `/debug/pprof`, on by default), for `go tool pprof -top FILE`: where its cost per write goes.
async fn api_server_profile(client: kube::Client, path: PathBuf) -> Result<()> {
    let req = http::Request::get(format!("/debug/pprof/profile?seconds={PROFILE_SECONDS}"))
        .body(kube::client::Body::empty())?;
    let res = client.send(req).await.context("GET /debug/pprof/profile")?;
    anyhow::ensure!(
        res.status().is_success(),
        "GET /debug/pprof/profile: {}",
        res.status()
    );
    let bytes = res.into_body().collect_bytes().await?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("API server profile: {}", path.display());
    Ok(())
}

/// How long a phase's profile runs: the phases here last 2 s or more.
const PROFILE_SECONDS: u32 = 2;

/// A label's value in a metric line's `{...}`.
fn label_value<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(key)?
                .strip_prefix("=\"")?
                .strip_suffix('"')
        })
        .unwrap_or_default()
}

async fn server_cost(cluster: &Cluster) -> Result<ServerCost> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = cluster.client.request_text(req).await.context("GET /metrics")?;
    let mut cost = ServerCost::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let (metric, labels) = name
            .split_once('{')
            .map_or((name, ""), |(m, l)| (m, l.trim_end_matches('}')));
        match metric {
            "process_cpu_seconds_total" => cost.cpu_seconds += value,
            "apiserver_response_sizes_sum" | "apiserver_watch_events_sizes_sum" => {
                let how = if metric == "apiserver_watch_events_sizes_sum" {
                    "watch"
                } else {
                    "response"
                };
                *cost
                    .sent
                    .entry(format!("{how} {}", label_value(labels, "resource")))
                    .or_default() += value;
            }
            "apiserver_request_total" => {
                let sub = label_value(labels, "subresource");
                let key = format!(
                    "{} {}{}{}",
                    label_value(labels, "verb"),
                    label_value(labels, "resource"),
                    if sub.is_empty() { "" } else { "/" },
                    sub
                );
                *cost.requests.entry(key).or_default() += value;
            }
            _ => {}
        }
    }
    cost.machine_cpu_seconds = machine_cpu_seconds();
    cost.by_process = cpu_by_process();
    Ok(cost)
}

/// What grew most in a phase, per allocation, `top` of them: counters by name, before and after,
/// times `scale`. "kube-apiserver 11.20, etcd 2.10, …" (CPU ms, scale 1000) or
/// "PATCH spiderippools/status 0.21, …" (requests, scale 1).
fn most_per_op(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    pods: usize,
    (top, scale): (usize, f64),
) -> String {
    let mut per: Vec<(f64, &String)> = after
        .iter()
        .map(|(k, v)| (v - before.get(k).copied().unwrap_or(0.0), k))
        .filter(|(d, _)| *d > 0.0)
        .collect();
    per.sort_by(|a, b| b.0.total_cmp(&a.0));
    per.iter()
        .take(top)
        .map(|(d, k)| format!("{k} {:.2}", d * scale / pods as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One IPAM under test.
struct Peer {
    name: &'static str,
    plugin: PathBuf,
    /// The netconf the i-th pod's ADD and DEL use.
    confs: Vec<Value>,
    _agents: Vec<Agent>,
    /// A floor peer (no IPAM; this process writes per pod), and what it writes besides the endpoint.
    floor: Option<FloorClaim>,
}

/// The first and last address of a range of `n` from `base`.
fn range_of(base: std::net::Ipv4Addr, n: usize) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    (
        std::net::Ipv4Addr::from(u32::from(base) + 1),
        std::net::Ipv4Addr::from(u32::from(base) + n),
    )
}

/// Our agents, as installed: each address one SpiderIPClaim.
async fn spiderpool(
    cluster: &Cluster,
    pods: usize,
    (agents_n, active): (usize, usize),
    dir: &std::path::Path,
) -> Result<(Peer, String)> {
    let pool = format!("bench-{}", unique());
    let base = 128;
    let (first, last) = range_of(std::net::Ipv4Addr::new(10, base, 0, 0), pods);
    let api: Api<SpiderIPPool> = Api::all(cluster.client.clone());
    let obj: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": pool},
        "spec": {"subnet": format!("10.{base}.0.0/12"), "ips": [format!("{first}-{last}")]}
    }))?;
    let created = api.create(&PostParams::default(), &obj).await?;
    // Registered as the controller registers a pool when it appears (pools are made before the
    // pods that use them): without a controller here, each agent's first ADD would race the others
    // to register it, a cost a cluster pays once per pool, not per agent and burst.
    let cand = spiderpool_ipam::cluster::registry::candidate_of(&created).map_err(anyhow::Error::msg)?;
    match register(&Api::all(cluster.client.clone()), &cand)
        .await
        .with_context(|| format!("register pool {pool}"))?
    {
        Outcome::Registered => {}
        Outcome::Refused(why) => anyhow::bail!("pool {pool} refused by the registry: {why}"),
    }
    let log = std::env::var("SPIDERPOOL_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into());
    // SPIDERPOOL_BENCH_IN_FLIGHT: the agents' --ipam-in-flight (their default otherwise).
    let extra: Vec<String> = std::env::var("SPIDERPOOL_BENCH_IN_FLIGHT")
        .map(|n| vec!["--ipam-in-flight".to_string(), n])
        .unwrap_or_default();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let agents: Vec<Agent> = (0..agents_n)
        .map(|i| Agent::start_with(&cluster.kubeconfig, &format!("node-{i}"), dir, &log, &extra))
        .collect::<Result<_>>()?;
    let confs = (0..pods)
        .map(|i| netconf(&agents[i % active].socket, &[&pool], &[]))
        .collect();
    let peer = Peer {
        name: "spiderpool",
        plugin: spiderpool_e2e::bin_dir().join("spiderpool"),
        confs,
        _agents: agents,
        floor: None,
    };
    Ok((peer, pool))
}

fn whereabouts_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "whereabouts.cni.cncf.io".into(),
        version: "v1alpha1".into(),
        api_version: "whereabouts.cni.cncf.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

async fn whereabouts(
    cluster: &Cluster,
    pods: usize,
    plugin_dir: PathBuf,
    dir: &std::path::Path,
) -> Result<Peer> {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    for entry in std::fs::read_dir(plugin_dir.join("crds")).context("Whereabouts' CRDs")? {
        let text = std::fs::read_to_string(entry?.path())?;
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&crd))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Whereabouts refuses to run without its flat configuration file.
    let flat = dir.join("whereabouts.conf");
    let flat_conf = json!({"datastore": "kubernetes", "kubernetes": {"kubeconfig": cluster.kubeconfig}, "log_level": "error"});
    std::fs::write(&flat, serde_json::to_vec(&flat_conf)?)?;
    let (first, last) = range_of(std::net::Ipv4Addr::new(10, 144, 0, 0), pods);
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": "whereabouts-bench",
        "type": "macvlan",
        "ipam": {
            "type": "whereabouts",
            "range": "10.144.0.0/12",
            "range_start": first.to_string(),
            "range_end": last.to_string(),
            "configuration_path": flat,
        }
    });
    Ok(Peer {
        name: "whereabouts",
        plugin: plugin_dir.join("whereabouts"),
        confs: vec![conf; pods],
        _agents: Vec::new(),
        floor: None,
    })
}

/// The name of `floor-claim`'s object for address `addr`.
fn claim_name(addr: std::net::Ipv4Addr) -> String {
    format!("floor-{}", addr.to_string().replace('.', "-"))
}

/// What a floor writes per pod besides the endpoint.
#[derive(Clone, Copy, PartialEq)]
enum FloorClaim {
    None,
    /// A SpiderReservedIP named after the address.
    Small,
    /// The agent's own SpiderIPClaim, and its endpoint's owner reference.
    Ours,
}

/// A floor peer: our plugin exec'd per pod, the API writes made by this process.
fn floor_peer(name: &'static str, claim: FloorClaim) -> Peer {
    Peer {
        name,
        plugin: spiderpool_e2e::bin_dir().join("spiderpool"),
        confs: Vec::new(),
        _agents: Vec::new(),
        floor: Some(claim),
    }
}

/// The floor's ADD or DEL of pod `i`: the plugin process, then its SpiderEndpoint written or
/// deleted, and with `claim` its address's object before or after (success, stdout, stderr).
fn floor_op(
    handle: &tokio::runtime::Handle,
    client: &kube::Client,
    (plugin, claim): (&Path, FloorClaim),
    verb: &str,
    (ns, i, uid): (&str, usize, &str),
) -> (bool, String, String) {
    let name = format!("p-{i}");
    let exec = cni_with(
        plugin,
        "VERSION",
        &json!({"cniVersion": "1.0.0"}),
        ns,
        &name,
        uid,
        "net1",
    );
    if !exec.success {
        return (false, exec.stdout, exec.stderr);
    }
    let api: Api<SpiderEndpoint> = Api::namespaced(client.clone(), ns);
    // Pod i's address, as the spiderpool peer's pool would give it.
    let (_, addr) = range_of(std::net::Ipv4Addr::new(10, 160, 0, 0), i + 1);
    let claims: Api<SpiderReservedIP> = Api::all(client.clone());
    let ours: Api<SpiderIPClaim> = Api::all(client.clone());
    let our_name = spiderpool_api::crd::claim::claim_name(addr.into());
    let written = if verb == "ADD" {
        if claim == FloorClaim::Ours {
            // As the agent makes it (`ClaimStore::object`).
            let holder = PoolIPAllocation {
                pod: format!("{ns}/{name}"),
                pod_uid: uid.to_string(),
                interface: Some("net1".into()),
                node: Some("node-0".into()),
                owner_stateful_set: None,
            };
            let obj = SpiderIPClaim::new(&our_name, IPClaimSpec::of("floor", &holder, "node-0"));
            if let Err(e) = handle.block_on(ours.create(&PostParams::default(), &obj)) {
                return (false, String::new(), format!("ADD claim of {addr}: {e}"));
            }
        }
        if claim == FloorClaim::Small {
            let obj = SpiderReservedIP::new(
                &claim_name(addr),
                ReservedIPSpec {
                    ip_version: Some(4),
                    ips: vec![addr.to_string()],
                },
            );
            if let Err(e) = handle.block_on(claims.create(&PostParams::default(), &obj)) {
                return (false, String::new(), format!("ADD claim of {addr}: {e}"));
            }
        }
        let mut ep = SpiderEndpoint::new(&name, SpiderEndpointSpec {});
        ep.metadata.namespace = Some(ns.to_string());
        if claim == FloorClaim::Ours {
            ep.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: name.clone(),
                    uid: uid.to_string(),
                    ..Default::default()
                },
            ]);
        }
        ep.status = Some(EndpointStatus {
            current: PodIPAllocation {
                uid: uid.to_string(),
                node: "node-0".into(),
                container_id: Some(format!("ctr-{uid}")),
                ips: vec![IPAllocationDetail {
                    interface: "net1".into(),
                    ipv4: Some(format!("{addr}/12")),
                    ipv4_pool: Some("floor".into()),
                    network: Some("bench".into()),
                    clean_gateway: (claim == FloorClaim::Ours).then_some(false),
                    ..Default::default()
                }],
            },
            owner_controller_type: Some("Pod".into()),
            owner_controller_name: Some(name.clone()),
        });
        handle.block_on(api.create(&PostParams::default(), &ep)).map(drop)
    } else {
        handle
            .block_on(api.delete(&name, &DeleteParams::default()))
            .map(drop)
            .and_then(|()| match claim {
                FloorClaim::None => Ok(()),
                FloorClaim::Small => handle
                    .block_on(claims.delete(&claim_name(addr), &DeleteParams::default()))
                    .map(drop),
                FloorClaim::Ours => handle
                    .block_on(ours.delete(&our_name, &DeleteParams::default()))
                    .map(drop),
            })
    };
    match written {
        Ok(()) => (true, exec.stdout, String::new()),
        Err(e) => (
            false,
            String::new(),
            format!("{verb} SpiderEndpoint {ns}/{name}: {e}"),
        ),
    }
}

/// How long after a phase's last answer its costs are read.
const SETTLE: Duration = Duration::from_millis(1500);

/// Waits (up to 30 s) until the pool's claims hold `want` pods' addresses; how long it
/// waited.
async fn settled(cluster: &Cluster, pool: &str, want: usize) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if pool_holders(&cluster.client, pool).await?.len() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed())
}

/// Addresses the store still holds for `peer` after the release phase.
async fn still_held(cluster: &Cluster, peer: &str, pool: &str, ns: &str) -> Result<usize> {
    if peer.starts_with("floor") {
        let api: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), ns);
        let claims: Api<SpiderReservedIP> = Api::all(cluster.client.clone());
        let claimed = claims
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("floor-"))
            })
            .count()
            + Api::<SpiderIPClaim>::all(cluster.client.clone())
                .list(&ListParams::default().fields("spec.pool=floor"))
                .await?
                .items
                .len();
        return Ok(api.list(&ListParams::default()).await?.items.len() + claimed);
    }
    if peer.starts_with("spiderpool") {
        return Ok(pool_holders(&cluster.client, pool).await?.len());
    }
    let pools: Api<DynamicObject> =
        Api::all_with(cluster.client.clone(), &whereabouts_resource("IPPool", "ippools"));
    let held = pools
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|p| p.data["spec"]["allocations"].as_object().map(|a| a.len()))
        .sum();
    Ok(held)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let pods = num(0, 1000);
    let agents_n = num(1, 10);
    let concurrency = num(2, pods);
    let peers: Vec<String> = args
        .get(3)
        .map_or("spiderpool", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    let active = num(4, agents_n).clamp(1, agents_n);
    let cluster = Cluster::connect().await?;
    // The floor's API calls are made from the plugin-process threads through this runtime, with
    // the client the agents use (HTTP/2): the floor is the least an IPAM's own writes cost.
    let handle = tokio::runtime::Handle::current();
    let floor_client = spiderpool_daemon::kube_client::client_for(spiderpool_e2e::cluster::config().await?)?;
    let pprof = std::env::var_os("SPIDERPOOL_BENCH_PPROF").map(PathBuf::from);
    let perf = std::env::var_os("SPIDERPOOL_BENCH_PERF").map(PathBuf::from);
    let tmp = tempfile::tempdir()?;
    // SPIDERPOOL_BENCH_KEEP: the agents' logs stay (in this directory) for reading afterwards.
    let (_removed_at_end, dir) = if std::env::var_os("SPIDERPOOL_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("agents' logs kept in {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    };
    let trace = std::env::var_os("SPIDERPOOL_BENCH_TRACE");
    println!(
        "{pods} pods on {active} of {agents_n} nodes (an agent each), {concurrency} plugin processes at a time, a range of exactly {pods} addresses"
    );
    println!(
        "{:<12} {:<9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>11} {:>12}",
        "ipam",
        "phase",
        "wall s",
        "per s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "cpu ms/op",
        "KiB sent/op"
    );
    // The agents' nodes registered, as kubelets do: ours share pools by them.
    let node_names: Vec<String> = (0..agents_n).map(|i| format!("node-{i}")).collect();
    let _registered = cluster.nodes(&node_names, json!({})).await?;
    for peer_name in &peers {
        let ns = cluster.namespace("bench", json!({})).await?;
        let uids = cluster
            .pods(&ns, "p", pods, |i| format!("node-{}", i % active), json!({}))
            .await?;
        let (peer, pool) = match peer_name.as_str() {
            "spiderpool" => spiderpool(&cluster, pods, (agents_n, active), &dir).await?,
            "whereabouts" => {
                let wb = std::env::var("WHEREABOUTS_DIR").context("WHEREABOUTS_DIR")?;
                (whereabouts(&cluster, pods, wb.into(), &dir).await?, String::new())
            }
            "floor" => (floor_peer("floor", FloorClaim::None), String::new()),
            "floor-claim" => (floor_peer("floor-claim", FloorClaim::Small), String::new()),
            "floor-objects" => (floor_peer("floor-objects", FloorClaim::Ours), String::new()),
            other => anyhow::bail!(
                "unknown peer {other} (spiderpool, whereabouts, floor, floor-claim, floor-objects)"
            ),
        };
        // Agents list their caches at start: the phases count only what the pods cost.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (verb, label) in [("ADD", "allocate"), ("DEL", "release")] {
            let before = server_cost(&cluster).await?;
            let profile = pprof.as_ref().map(|dir| {
                tokio::spawn(api_server_profile(
                    cluster.client.clone(),
                    dir.join(format!("{}-{label}.pprof", peer.name)),
                ))
            });
            // SPIDERPOOL_BENCH_PERF: the whole machine's CPU profile of the phase (every process,
            // the kernel included: on one machine the agents compete with the API server).
            let machine_profile = match &perf {
                Some(dir) => Some(
                    std::process::Command::new("perf")
                        .args(["record", "-a", "-g", "-F", "499", "-q", "-o"])
                        .arg(dir.join(format!("{}-{label}.perf.data", peer.name)))
                        .args(["--", "sleep", &PROFILE_SECONDS.to_string()])
                        .stdout(std::process::Stdio::null())
                        .spawn()
                        .context("perf record (SPIDERPOOL_BENCH_PERF)")?,
                ),
                None => None,
            };
            let started = Instant::now();
            let results = run_parallel(concurrency, pods, |i| {
                let t = Instant::now();
                let began = t - started;
                if let Some(claim) = peer.floor {
                    let plugin = (peer.plugin.as_path(), claim);
                    let (ok, out, err) = floor_op(&handle, &floor_client, plugin, verb, (&ns, i, &uids[i]));
                    return (ok, t.elapsed(), out, err, began);
                }
                let out = cni_with(
                    &peer.plugin,
                    verb,
                    &peer.confs[i],
                    &ns,
                    &format!("p-{i}"),
                    &uids[i],
                    "net1",
                );
                (out.success, t.elapsed(), out.stdout, out.stderr, began)
            });
            let wall = started.elapsed();
            if let Some(profile) = profile {
                profile.await??;
            }
            if let Some(mut perf) = machine_profile {
                let status = perf.wait()?;
                anyhow::ensure!(status.success(), "perf record (SPIDERPOOL_BENCH_PERF): {status}");
            }
            if let Some(path) = &trace {
                // SPIDERPOOL_BENCH_TRACE: one line per call, to see when the slow ones started.
                let lines: String = results
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        format!(
                            "{} {verb} {i} {:.1} {:.1} {}\n",
                            peer.name,
                            r.4.as_secs_f64() * 1e3,
                            r.1.as_secs_f64() * 1e3,
                            r.0
                        )
                    })
                    .collect();
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                std::io::Write::write_all(&mut f, lines.as_bytes())?;
            }
            let failed = results.iter().filter(|r| !r.0).count();
            // Costs are counted past the last answer, for anything a peer does after it; every
            // peer gets SETTLE. They are read before ours is checked: that check's list of
            // every claim is the bench's, not the IPAM's, cost.
            tokio::time::sleep(SETTLE).await;
            let after = server_cost(&cluster).await?;
            if peer.name.starts_with("spiderpool") {
                let want = if verb == "ADD" { pods - failed } else { failed };
                let waited = settled(&cluster, &pool, want).await?;
                println!(
                    "{:<12} {:<9} its claims showed every pod {:.1} s after the last answer",
                    peer.name,
                    label,
                    (SETTLE + waited).as_secs_f64()
                );
            }
            println!(
                "{:<12} {:<9} machine CPU {:.2} ms/op ({}); requests/op: {}; KiB sent/op: {}",
                peer.name,
                label,
                (after.machine_cpu_seconds - before.machine_cpu_seconds) * 1e3 / pods as f64,
                most_per_op(&before.by_process, &after.by_process, pods, (5, 1e3)),
                most_per_op(&before.requests, &after.requests, pods, (8, 1.0)),
                most_per_op(&before.sent, &after.sent, pods, (4, 1.0 / 1024.0))
            );
            if let Some((_, _, out, err, _)) = results.iter().find(|r| !r.0) {
                eprintln!("{} {verb} failed, e.g.: {out} {err}", peer.name);
            }
            let mut lat: Vec<Duration> = results.iter().map(|r| r.1).collect();
            lat.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{:<12} {:<9} {:>6.2} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7} {:>11.2} {:>12.1}",
                peer.name,
                label,
                wall.as_secs_f64(),
                pods as f64 / wall.as_secs_f64(),
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                lat.last().map_or(0.0, |d| ms(*d)),
                failed,
                (after.cpu_seconds - before.cpu_seconds) * 1e3 / pods as f64,
                (after.bytes_sent() - before.bytes_sent()) / 1024.0 / pods as f64,
            );
        }
        println!(
            "{:<12} held after every DEL: {}",
            peer.name,
            still_held(&cluster, peer.name, &pool, &ns).await?
        );
        drop(peer);
    }
    Ok(())
}
