//! Prints the CRD manifests generated from the `spiderpool-api` types, or writes one file per CRD
//! with `--out-dir DIR` (what `charts/spiderpool/crds/` holds; CI compares the two), and with
//! `--policy FILE` the ValidatingAdmissionPolicy for IPv6 ranges and with `--agent-policy FILE` the one
//! that keeps each agent to its own node's objects (the chart's templates hold both). The
//! manifests include Multus's NetworkAttachmentDefinition CRD.

use std::{fs, path::PathBuf, process::ExitCode};

use spiderpool_api::crd;
use spiderpool_api::multus::network_attachment_definition_crd;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut out_dir, mut policy, mut agent_policy) = (None, None, None);
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if flag == "--out-dir" => out_dir = Some(PathBuf::from(value)),
            [flag, value] if flag == "--policy" => policy = Some(PathBuf::from(value)),
            [flag, value] if flag == "--agent-policy" => agent_policy = Some(PathBuf::from(value)),
            _ => {
                eprintln!("usage: crdgen [--out-dir DIR] [--policy FILE] [--agent-policy FILE]");
                return ExitCode::from(2);
            }
        }
    }
    let policies = [
        (
            policy,
            crd::admission::to_yaml as fn() -> Result<String, serde_yaml_ng::Error>,
        ),
        (agent_policy, crd::node_scope::chart_template),
    ];
    for (file, render) in policies {
        let Some(file) = file else { continue };
        let written = render()
            .map_err(|e| e.to_string())
            .and_then(|yaml| fs::write(&file, yaml).map_err(|e| format!("{}: {e}", file.display())));
        if let Err(err) = written {
            eprintln!("crdgen: {err}");
            return ExitCode::FAILURE;
        }
    }
    // Multus's NetworkAttachmentDefinition CRD too: the chart installs Multus and the controller
    // writes NADs (helm leaves a CRD that already exists alone, as with an existing Multus).
    for def in crd::all()
        .into_iter()
        .chain([network_attachment_definition_crd()])
    {
        let yaml = match crd::to_yaml(&def) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: {err}");
                return ExitCode::FAILURE;
            }
        };
        match &out_dir {
            None => print!("---\n{yaml}"),
            Some(dir) => {
                let path = dir.join(crd::file_name(&def));
                if let Err(err) = fs::create_dir_all(dir).and_then(|()| fs::write(&path, yaml)) {
                    eprintln!("crdgen: {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
