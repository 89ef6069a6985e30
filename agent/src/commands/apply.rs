//! `spiderpool-agent apply -f`: make this node match SpiderNetworkNodePolicy documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use spiderpool_api::policy::{self, SpiderNetworkNodePolicy};
use spiderpool_device_plugin::kubelet::DEFAULT_KUBELET_DIR;
use spiderpool_linux::sysfs::{DEFAULT_SYSFS_ROOT, Sysfs};
use spiderpool_provisioner::applier::{LiveKernel, apply};
use spiderpool_provisioner::planner::Status;
use spiderpool_provisioner::render::render_table;

use crate::node::{hostname, observe, scan_node};

#[derive(clap::Args)]
pub struct Args {
    /// YAML with one or more SpiderNetworkNodePolicy documents.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Print the plan only.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, default_value = DEFAULT_SYSFS_ROOT)]
    sysfs_root: PathBuf,
    /// This node's labels for `nodeSelector` (repeatable `key=value`); default
    /// `kubernetes.io/hostname=<hostname>`.
    #[arg(long = "node-label")]
    node_labels: Vec<String>,
    /// Where kubelet's device checkpoint says which VFs pods hold.
    #[arg(long, default_value = DEFAULT_KUBELET_DIR)]
    kubelet_dir: PathBuf,
    /// Keep running: re-apply every this many seconds, correcting drift.
    #[arg(long)]
    watch: Option<u64>,
}

pub fn exec(args: Args) -> Result<()> {
    let Some(seconds) = args.watch else {
        return apply_once(&args);
    };
    let args = std::sync::Arc::new(args);
    spiderpool_daemon::runtime()?.block_on(async move {
        // Installed before the first round: a stop asked for mid-round waits for the round's
        // end, so it never leaves a bond without its members or a VF half configured.
        let stop = spiderpool_daemon::on_shutdown();
        tokio::pin!(stop);
        loop {
            let round = args.clone();
            match tokio::task::spawn_blocking(move || apply_once(&round)).await {
                // Failures are in the status output; the next round tries again.
                Ok(Err(e)) => eprintln!("{e:#}"),
                Err(e) => eprintln!("apply round: {e}"),
                Ok(Ok(())) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds.max(1))) => {}
                () = &mut stop => return Ok(()),
            }
        }
    })
}

fn read_policies(file: &Path) -> Result<Vec<SpiderNetworkNodePolicy>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    policy::parse_documents(&text).with_context(|| file.display().to_string())
}

fn node_labels(given: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for label in given {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--node-label {label:?}: want key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    if labels.is_empty()
        && let Some(host) = hostname()
    {
        labels.insert("kubernetes.io/hostname".into(), host);
    }
    Ok(labels)
}

fn apply_once(args: &Args) -> Result<()> {
    let policies = read_policies(&args.file)?;
    let node_labels = node_labels(&args.node_labels)?;
    let mut observe = || observe(&args.sysfs_root, &node_labels, &args.kubelet_dir);
    let plan = observe().plan(&policies);
    println!("plan ({} actions):", plan.steps.len());
    for step in &plan.steps {
        println!("  {}  ({})", step.action, step.reason);
    }
    if args.dry_run {
        print_status(&plan.status);
        return Ok(());
    }
    let started = Instant::now();
    let mut kernel = LiveKernel::new(Sysfs::new(&args.sysfs_root)).map_err(anyhow::Error::msg)?;
    let report = apply(&policies, &mut observe, &mut kernel);
    println!(
        "applied {} actions in {} rounds, {} ms:",
        report.executed.len(),
        report.rounds,
        started.elapsed().as_millis()
    );
    for (step, outcome) in &report.executed {
        match outcome {
            Ok(()) => println!("  ok    {}", step.action),
            Err(e) => println!("  FAIL  {}: {e}", step.action),
        }
    }
    print_status(&report.status);
    print!("{}", render_table(&scan_node(&args.sysfs_root)));
    if report.failed() {
        anyhow::bail!("some of the policy could not be applied (see status)");
    }
    Ok(())
}

fn print_status(status: &BTreeMap<String, Status>) {
    println!("status:");
    for (what, s) in status {
        println!("  {what}: {s}");
    }
}
