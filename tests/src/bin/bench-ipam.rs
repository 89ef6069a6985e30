//! Drives two IPAM plugins side by side through the CNI exec protocol and reports latency per
//! verb: `spiderpool` and Debian's `host-local`, same subnet size. The plugins take turns in
//! blocks of 50 calls, so both see the same machine over the run; per-call alternation would
//! charge each call for the previous process' teardown (a Go runtime's exit costs the next
//! process on this 2-core machine about 0.7 ms). Run by hack/bench-ipam.sh.
//!
//! usage: bench-ipam OURS HOST_LOCAL [N]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use spiderpool_cni::exec::Invocation;

struct Plugin {
    label: &'static str,
    binary: PathBuf,
    netconf: Value,
}

fn netconf(label: &str, data_dir: &Path) -> Value {
    // A /20 for both: 4094 usable addresses, room for every phase without reuse.
    let ipam = if label == "host-local" {
        json!({"type": "host-local", "dataDir": data_dir,
               "ranges": [[{"subnet": "10.10.0.0/20", "rangeStart": "10.10.0.2", "rangeEnd": "10.10.15.254",
                            "gateway": "10.10.0.1"}]]})
    } else {
        json!({"type": "spiderpool", "dataDir": data_dir,
               "pools": [{"name": "bench", "subnet": "10.10.0.0/20", "ips": ["10.10.0.2-10.10.15.254"],
                          "gateway": "10.10.0.1"}]})
    };
    json!({"cniVersion": "1.0.0", "name": "bench", "type": "macvlan", "ipam": ipam})
}

fn call(plugin: &Plugin, verb: &str, id: &str) -> Result<Duration> {
    let body = plugin.netconf.to_string();
    let inv = Invocation::new(verb, id, "/var/run/netns/bench", "eth0")
        .with_path(vec![
            plugin.binary.parent().map(Path::to_path_buf).unwrap_or_default(),
        ])
        .with_trusted_dirs(vec![std::env::temp_dir()]);
    let start = Instant::now();
    let out = inv.run(&plugin.binary, body.as_bytes())?;
    let took = start.elapsed();
    if !out.success {
        bail!(
            "{} {verb} {id} failed: {}{}",
            plugin.label,
            out.stdout,
            out.stderr
        );
    }
    Ok(took)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

const BLOCK: usize = 50;

/// Runs `verb` for `ids` on every plugin, taking turns block by block.
fn take_turns(plugins: &[Plugin], samples: &mut [Samples], verb: &str, ids: &[String]) -> Result<()> {
    for block in ids.chunks(BLOCK) {
        for (p, s) in plugins.iter().zip(samples.iter_mut()) {
            for id in block {
                let took = call(p, verb, id)?;
                if verb == "ADD" {
                    s.add.push(took)
                } else {
                    s.del.push(took)
                }
            }
        }
    }
    Ok(())
}

/// Sequential: N ADDs then N DELs.
fn sequential(plugins: &[Plugin], n: usize) -> Result<Vec<Samples>> {
    let mut samples: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("seq-{i}")).collect();
    take_turns(plugins, &mut samples, "ADD", &ids)?;
    take_turns(plugins, &mut samples, "DEL", &ids)?;
    Ok(samples)
}

/// Two workers at once, each doing N/2 ADDs then N/2 DELs, alternating plugins.
fn parallel(plugins: &[Plugin], n: usize) -> Result<Vec<Samples>> {
    let per_worker = n / 2;
    let results: Vec<Result<Vec<Samples>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                scope.spawn(move || -> Result<Vec<Samples>> {
                    let mut samples: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
                    let ids: Vec<String> = (0..per_worker).map(|i| format!("par-{w}-{i}")).collect();
                    take_turns(plugins, &mut samples, "ADD", &ids)?;
                    take_turns(plugins, &mut samples, "DEL", &ids)?;
                    Ok(samples)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("worker panicked")))
            .collect()
    });
    let mut merged: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
    for worker in results {
        for (m, s) in merged.iter_mut().zip(worker?) {
            m.add.extend(s.add);
            m.del.extend(s.del);
        }
    }
    Ok(merged)
}

fn report(phase: &str, plugins: &[Plugin], samples: &[Samples]) {
    println!("\n{phase}");
    println!(
        "{:<12} {:>6} {:>12} {:>10}",
        "plugin", "verb", "median(ms)", "p99(ms)"
    );
    for (p, s) in plugins.iter().zip(samples) {
        for (verb, v) in [("ADD", &s.add), ("DEL", &s.del)] {
            println!(
                "{:<12} {:>6} {:>12} {:>10}",
                p.label,
                verb,
                ms(percentile(v, 50.0)),
                ms(percentile(v, 99.0))
            );
        }
    }
    for (verb, pick) in [("ADD", 0usize), ("DEL", 1)] {
        let med = |s: &Samples| percentile(if pick == 0 { &s.add } else { &s.del }, 50.0).as_secs_f64();
        println!(
            "median {verb} ratio host-local / spiderpool: {:.1}x",
            med(&samples[1]) / med(&samples[0]).max(f64::MIN_POSITIVE)
        );
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: {} SPIDERPOOL HOST_LOCAL [N]", args[0]);
    }
    let n: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()
        .context("N")?
        .unwrap_or(1000);
    let data = tempfile::tempdir()?;
    let plugins = vec![
        Plugin {
            label: "spiderpool",
            binary: PathBuf::from(&args[1]),
            netconf: netconf("spiderpool", &data.path().join("spiderpool-seq")),
        },
        Plugin {
            label: "host-local",
            binary: PathBuf::from(&args[2]),
            netconf: netconf("host-local", &data.path().join("host-local-seq")),
        },
    ];
    println!(
        "{n} sequential ADDs then {n} DELs, then 2 workers x {} ADDs + DELs; /20 subnet for both",
        n / 2
    );
    let seq = sequential(&plugins, n)?;
    report("sequential", &plugins, &seq);
    let window = 100.min(n);
    for (p, s) in plugins.iter().zip(&seq) {
        let first = percentile(&s.add[..window], 50.0);
        let last = percentile(&s.add[n - window..], 50.0);
        println!(
            "{:<12} ADD median of first {window}: {} ms, of last {window}: {} ms (last/first {:.2})",
            p.label,
            ms(first),
            ms(last),
            last.as_secs_f64() / first.as_secs_f64().max(f64::MIN_POSITIVE)
        );
    }
    let plugins: Vec<Plugin> = plugins
        .into_iter()
        .map(|p| {
            let label = p.label;
            Plugin {
                netconf: netconf(label, &data.path().join(format!("{label}-par"))),
                ..p
            }
        })
        .collect();
    let par = parallel(&plugins, n)?;
    report("2 parallel workers", &plugins, &par);
    Ok(())
}
