//! Prints the CRD manifests generated from the `spiderpool-api` types, or writes one file per CRD
//! with `--out-dir DIR` (what `charts/spiderpool/crds/` holds; CI compares the two).

use std::{fs, path::PathBuf, process::ExitCode};

use spiderpool_api::crd;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out_dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--out-dir" => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--out-dir DIR]");
            return ExitCode::from(2);
        }
    };
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
