//! Prints the CRD manifests generated from the `spiderpool-api` types, or writes one file per CRD
//! with `--out-dir DIR` (what `charts/spiderpool/crds/` holds; CI compares the two), and with
//! `--policy FILE` the ValidatingAdmissionPolicy for IPv6 ranges (the chart's templates hold it).

use std::{fs, path::PathBuf, process::ExitCode};

use spiderpool_api::crd;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out_dir, policy) = match args.as_slice() {
        [] => (None, None),
        [flag, dir] if flag == "--out-dir" => (Some(PathBuf::from(dir)), None),
        [flag, dir, pflag, file] if flag == "--out-dir" && pflag == "--policy" => {
            (Some(PathBuf::from(dir)), Some(PathBuf::from(file)))
        }
        _ => {
            eprintln!("usage: crdgen [--out-dir DIR [--policy FILE]]");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &policy {
        let written = crd::admission::to_yaml()
            .map_err(|e| e.to_string())
            .and_then(|yaml| fs::write(file, yaml).map_err(|e| format!("{}: {e}", file.display())));
        if let Err(err) = written {
            eprintln!("crdgen: {err}");
            return ExitCode::FAILURE;
        }
    }
    for def in crd::all() {
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
