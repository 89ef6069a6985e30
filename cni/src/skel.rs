//! The plugin skeleton: reads the `CNI_*` environment and the netconf, checks that the verb is
//! allowed in the netconf's version, calls the plugin, and prints its result or error JSON.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::args::CniArgs;
use crate::error::{CniError, ErrorCode};
use crate::netconf::{NetConf, is_identifier};
use crate::result::CniResult;
use crate::version::CniVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => return Err(CniError::invalid_env(format!("unknown CNI_COMMAND {other:?}"))),
        })
    }

    /// The variables the spec requires for this verb (besides `CNI_COMMAND`).
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// Where the skeleton reads `CNI_*` variables from: the process environment, or a map in tests.
pub trait Environment {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// One invocation, decoded and validated.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// Empty for STATUS and GC.
    pub container_id: String,
    /// Empty when the runtime has no netns any more (DEL), and for STATUS and GC.
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    pub conf: NetConf,
}

pub struct PluginInfo {
    /// Printed to stderr when the binary runs without `CNI_COMMAND`.
    pub about: String,
}

/// A CNI plugin: one method per verb. VERSION is answered by the skeleton.
pub trait Plugin {
    fn info(&self) -> PluginInfo;
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    /// STATUS (1.1): whether an ADD can succeed now; plugins without a notion of readiness are ready.
    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
    /// GC (1.1): release what `cni.dev/valid-attachments` no longer lists; nothing to do by default.
    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

/// What a run ends with: bytes for stdout and stderr, and the exit status.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// The largest netconf read from stdin (a conflist entry with a prevResult of many interfaces is a
/// few KiB; Multus delegates are far below this).
pub const NETCONF_LIMIT: u64 = 1 << 20;

/// Runs one invocation without touching the process' own stdio or environment.
pub fn run(plugin: &dyn Plugin, env: &dyn Environment, stdin: &mut dyn Read) -> Outcome {
    let mut stdin_bytes = Vec::new();
    let mut version_for_errors = CniVersion::LATEST;
    let result = (|| -> Result<Option<String>, CniError> {
        let command = match env.var("CNI_COMMAND") {
            None => return Ok(None),
            Some(c) if c.is_empty() => return Ok(None),
            Some(c) => Command::parse(&c)?,
        };
        let missing: Vec<&str> = command
            .required_env()
            .iter()
            .copied()
            .filter(|k| env.var(k).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "required env variables {missing:?} missing"
            )));
        }
        stdin
            .take(NETCONF_LIMIT + 1)
            .read_to_end(&mut stdin_bytes)
            .map_err(|e| CniError::io(format!("failed to read network configuration from stdin: {e}")))?;
        if stdin_bytes.len() as u64 > NETCONF_LIMIT {
            return Err(CniError::decoding(format!(
                "the network configuration is larger than {NETCONF_LIMIT} bytes"
            )));
        }
        if command == Command::Version {
            return Ok(Some(version_json()));
        }
        version_for_errors = NetConf::peek_version(&stdin_bytes).unwrap_or(CniVersion::LATEST);
        let conf = NetConf::parse(&stdin_bytes)?;
        match command {
            Command::Check if !conf.cni_version.allows_check() => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleCniVersion,
                    format!("config version {} does not allow CHECK", conf.cni_version),
                ));
            }
            Command::Status | Command::Gc if !conf.cni_version.allows_status_and_gc() => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleCniVersion,
                    format!("config version {} does not allow {command:?}", conf.cni_version).to_uppercase(),
                ));
            }
            _ => {}
        }
        let container_id = env.var("CNI_CONTAINERID").unwrap_or_default();
        if !container_id.is_empty() && !is_identifier(&container_id) {
            return Err(
                CniError::invalid_env("invalid characters in CNI_CONTAINERID").with_details(container_id)
            );
        }
        let ifname = env.var("CNI_IFNAME").unwrap_or_default();
        if !ifname.is_empty() {
            validate_ifname(&ifname)?;
        }
        let req = Request {
            command,
            container_id,
            netns: env.var("CNI_NETNS").unwrap_or_default(),
            ifname,
            args: CniArgs::parse(&env.var("CNI_ARGS").unwrap_or_default())?,
            path: std::env::split_paths(&env.var("CNI_PATH").unwrap_or_default()).collect(),
            conf,
        };
        let version = req.conf.cni_version;
        match command {
            Command::Add => plugin.add(&req).map(|r| Some(r.to_json(version).to_string())),
            Command::Del => plugin.del(&req).map(|()| None),
            Command::Check => plugin.check(&req).map(|()| None),
            Command::Status => plugin.status(&req).map(|()| None),
            Command::Gc => plugin.gc(&req).map(|()| None),
            Command::Version => Ok(Some(version_json())),
        }
    })();
    match result {
        Ok(Some(stdout)) => Outcome {
            stdout,
            stderr: String::new(),
            exit_code: 0,
        },
        Ok(None) if env.var("CNI_COMMAND").is_none_or(|c| c.is_empty()) => Outcome {
            stdout: String::new(),
            stderr: format!("{}\n", plugin.info().about),
            exit_code: 0,
        },
        Ok(None) => Outcome::default(),
        Err(err) => Outcome {
            stdout: err.to_json(version_for_errors),
            stderr: String::new(),
            exit_code: 1,
        },
    }
}

/// Runs the plugin as a process: real environment and stdio; never panics out, never prints a
/// backtrace (a panic becomes CNI error JSON with code 999).
pub fn main(plugin: &dyn Plugin) -> ! {
    std::panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_string(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".into()),
        };
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let err = CniError::new(ErrorCode::Internal, format!("internal error: {msg}")).with_details(location);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(err.to_json(CniVersion::LATEST).as_bytes());
        let _ = out.flush();
        std::process::exit(1);
    }));
    let outcome = run(plugin, &ProcessEnvironment, &mut std::io::stdin().lock());
    let _ = std::io::stdout().lock().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().lock().write_all(outcome.stderr.as_bytes());
    std::process::exit(outcome.exit_code)
}

fn version_json() -> String {
    serde_json::json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Linux interface names: 1-15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::invalid_env(format!("invalid CNI_IFNAME {name:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<(Command, String, String)>>,
    }

    impl Plugin for Recorder {
        fn info(&self) -> PluginInfo {
            PluginInfo {
                about: "test plugin".into(),
            }
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.record(req);
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..CniResult::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.record(req);
            Ok(())
        }
        fn check(&self, req: &Request) -> Result<(), CniError> {
            self.record(req);
            Err(CniError::new(ErrorCode::UnknownContainer, "gone"))
        }
        fn status(&self, req: &Request) -> Result<(), CniError> {
            self.record(req);
            Ok(())
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.record(req);
            Ok(())
        }
    }

    impl Recorder {
        fn record(&self, req: &Request) {
            self.calls
                .borrow_mut()
                .push((req.command, req.container_id.clone(), req.netns.clone()));
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "K8S_POD_NAME=p;IgnoreUnknown=1"),
    ];

    fn run_with(command: &str, extra: &[(&str, &str)], stdin: &str) -> (Outcome, Recorder) {
        let mut e = env(&FULL);
        e.insert("CNI_COMMAND".into(), command.into());
        for (k, v) in extra {
            if v.is_empty() {
                e.remove(*k);
            } else {
                e.insert(k.to_string(), v.to_string());
            }
        }
        let plugin = Recorder::default();
        let out = run(&plugin, &e, &mut stdin.as_bytes());
        (out, plugin)
    }

    fn code(out: &Outcome) -> u64 {
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["code"].as_u64().unwrap()
    }

    #[test]
    fn add_prints_result_in_netconf_version() {
        let (out, plugin) = run_with("ADD", &[], r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#);
        assert_eq!(out.exit_code, 0, "{}", out.stdout);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(
            plugin.calls.borrow()[0],
            (Command::Add, "c1".into(), "/run/netns/x".into())
        );
    }

    #[test]
    fn del_without_netns_is_fine() {
        let (out, plugin) = run_with(
            "DEL",
            &[("CNI_NETNS", "")],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert_eq!((out.exit_code, out.stdout.as_str()), (0, ""));
        assert_eq!(
            plugin.calls.borrow()[0],
            (Command::Del, "c1".into(), String::new())
        );
    }

    #[test]
    fn version_lists_every_supported_version() {
        let (out, _) = run_with("VERSION", &[], r#"{"cniVersion":"0.4.0"}"#);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn no_command_prints_about() {
        let plugin = Recorder::default();
        let out = run(&plugin, &HashMap::new(), &mut "".as_bytes());
        assert_eq!((out.exit_code, out.stderr.trim()), (0, "test plugin"));
    }

    #[test]
    fn error_table() {
        let conf10 = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        // (verb, env overrides, stdin, expected code)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u64);
        let cases: Vec<Case> = vec![
            ("ADD", vec![("CNI_NETNS", "")], conf10, 4),
            ("ADD", vec![("CNI_CONTAINERID", "")], conf10, 4),
            ("ADD", vec![("CNI_PATH", "")], conf10, 4),
            ("ADD", vec![("CNI_CONTAINERID", "bad id")], conf10, 4),
            ("ADD", vec![("CNI_IFNAME", "eth0/1")], conf10, 4),
            ("ADD", vec![("CNI_IFNAME", "a-very-long-interface")], conf10, 4),
            ("ADD", vec![("CNI_ARGS", "FOO=1")], conf10, 4),
            ("FROB", vec![], conf10, 4),
            ("ADD", vec![], "{", 6),
            ("ADD", vec![], r#"{"cniVersion":"9.9.9","name":"n"}"#, 1),
            ("ADD", vec![], r#"{"name":"n"}"#, 7),
            ("CHECK", vec![], r#"{"cniVersion":"0.3.1","name":"n"}"#, 1),
            ("GC", vec![], conf10, 1),
            ("STATUS", vec![], conf10, 1),
            ("CHECK", vec![], r#"{"cniVersion":"1.1.0","name":"n"}"#, 3),
        ];
        for (cmd, extra, stdin, want) in cases {
            let (out, _) = run_with(cmd, &extra, stdin);
            assert_eq!(out.exit_code, 1, "{cmd} {extra:?} {stdin}");
            assert_eq!(code(&out), want, "{cmd} {extra:?} {stdin}: {}", out.stdout);
        }
    }

    #[test]
    fn errors_use_the_netconf_version_when_known() {
        let (out, _) = run_with("CHECK", &[], r#"{"cniVersion":"0.3.1","name":"n"}"#);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    #[test]
    fn status_and_gc_need_only_cni_path() {
        for cmd in ["STATUS", "GC"] {
            let mut e = env(&[("CNI_PATH", "/opt/cni/bin")]);
            e.insert("CNI_COMMAND".into(), cmd.into());
            let plugin = Recorder::default();
            let out = run(
                &plugin,
                &e,
                &mut r#"{"cniVersion":"1.1.0","name":"n"}"#.as_bytes(),
            );
            assert_eq!(out.exit_code, 0, "{cmd}: {}", out.stdout);
        }
    }
}
