//! The runtime side of the exec protocol: run a plugin binary with `CNI_*` variables and a netconf
//! on stdin, and read its result or error. Tests, benchmarks and tools drive plugins with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// One plugin call.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
    /// Directories added to what the plugin trusts in netconf paths
    /// ([`crate::paths::TRUSTED_DIRS_ENV`]); empty: the caller's own value passes through, as a
    /// runtime passes its environment.
    pub trusted_dirs: Vec<PathBuf>,
}

/// What the plugin printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout JSON (result or error), `Null` when empty or not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }

    /// The CNI error code, when the plugin failed with error JSON.
    pub fn error_code(&self) -> Option<u64> {
        if self.success {
            None
        } else {
            self.json().get("code").and_then(Value::as_u64)
        }
    }
}

impl Invocation {
    pub fn new(command: &str, container_id: &str, netns: &str, ifname: &str) -> Invocation {
        Invocation {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: String::new(),
            path: Vec::new(),
            trusted_dirs: Vec::new(),
        }
    }

    pub fn with_trusted_dirs(mut self, dirs: Vec<PathBuf>) -> Invocation {
        self.trusted_dirs = dirs;
        self
    }

    pub fn with_args(mut self, args: &str) -> Invocation {
        self.args = args.into();
        self
    }

    pub fn with_path(mut self, path: Vec<PathBuf>) -> Invocation {
        self.path = path;
        self
    }

    /// The child process, configured but not started (so a caller may place it in a netns or
    /// kill it); `CNI_*` variables left empty are not set at all.
    pub fn command(&self, plugin: &Path) -> Command {
        let mut cmd = Command::new(plugin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let trusted = if self.trusted_dirs.is_empty() {
            std::env::var_os(crate::paths::TRUSTED_DIRS_ENV)
        } else {
            std::env::join_paths(&self.trusted_dirs).ok()
        };
        if let Some(dirs) = trusted {
            cmd.env(crate::paths::TRUSTED_DIRS_ENV, dirs);
        }
        let vars = [
            ("CNI_COMMAND", self.command.clone()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.args.clone()),
            (
                "CNI_PATH",
                std::env::join_paths(&self.path)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ];
        for (key, value) in vars {
            if !value.is_empty() {
                cmd.env(key, value);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the plugin to completion.
    pub fn run(&self, plugin: &Path, netconf: &[u8]) -> std::io::Result<Output> {
        run_command(self.command(plugin), netconf)
    }
}

/// Starts `cmd`, writes `netconf` to its stdin and collects its output.
pub fn run_command(mut cmd: Command, netconf: &[u8]) -> std::io::Result<Output> {
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits before reading stdin is not an error of ours.
        let _ = stdin.write_all(netconf);
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
