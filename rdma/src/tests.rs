//! The plugin's decisions against a fake node: which device, when to refuse, what ADD/DEL
//! leave behind. The real kernel is the VM tier's (tests/vm/rdma.sh).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Value, json};
use spiderpool_cni::skel::{Outcome, run};

use super::*;

#[derive(Default)]
struct FakeHost {
    shared: bool,
    pci: BTreeMap<String, Vec<String>>,
    macs: BTreeMap<String, Vec<String>>,
    /// Namespace ("host" or a netns path) -> device name -> index.
    spaces: RefCell<BTreeMap<String, BTreeMap<String, u32>>>,
    refuse_moves: Option<i32>,
    moves: RefCell<Vec<String>>,
}

impl FakeHost {
    fn with_vf() -> FakeHost {
        let mut host = FakeHost::default();
        host.pci.insert("0000:03:00.2".into(), vec!["mlx5_3".into()]);
        host.macs.insert("52:54:00:00:00:01".into(), vec!["rxe0".into()]);
        host.spaces.borrow_mut().insert(
            "host".into(),
            BTreeMap::from([("mlx5_3".into(), 3), ("rxe0".into(), 0)]),
        );
        host
    }

    fn space(&self, name: &str) -> BTreeMap<String, u32> {
        self.spaces.borrow().get(name).cloned().unwrap_or_default()
    }

    fn shift(&self, from: &str, to: &str, name: &str) {
        let mut spaces = self.spaces.borrow_mut();
        let index = spaces
            .get_mut(from)
            .and_then(|s| s.remove(name))
            .expect("device where it is moved from");
        spaces.entry(to.into()).or_default().insert(name.into(), index);
        self.moves.borrow_mut().push(format!("{name} {from} -> {to}"));
    }
}

impl Host for FakeHost {
    fn netns_mode_shared(&self) -> Result<bool, String> {
        Ok(self.shared)
    }
    fn devices_of_pci(&self, bdf: &str) -> Vec<String> {
        // As sysfs: only what the host's namespace holds.
        let host = self.space("host");
        self.pci
            .get(bdf)
            .into_iter()
            .flatten()
            .filter(|d| host.contains_key(*d))
            .cloned()
            .collect()
    }
    fn devices_of_mac(&self, mac: &str) -> Vec<String> {
        self.macs.get(mac).cloned().unwrap_or_default()
    }
    fn host_devices(&self) -> Result<BTreeMap<String, u32>, String> {
        Ok(self.space("host"))
    }
    fn pod_devices(&self, netns: &Path) -> Result<BTreeMap<String, u32>, String> {
        Ok(self.space(&netns.display().to_string()))
    }
    fn move_into(&self, _index: u32, name: &str, netns: &Path) -> Result<(), MoveRefused> {
        if let Some(errno) = self.refuse_moves {
            return Err(MoveRefused {
                errno: Some(errno),
                message: format!("netlink: rdma dev set {name} netns: errno {errno}"),
            });
        }
        self.shift("host", &netns.display().to_string(), name);
        Ok(())
    }
    fn move_out(&self, netns: &Path, _index: u32, name: &str) -> Result<(), String> {
        self.shift(&netns.display().to_string(), "host", name);
        Ok(())
    }
}

/// The plugin, trusting the temporary directories the tests keep state in.
fn plugin_on(host: FakeHost) -> RdmaPlugin<FakeHost> {
    RdmaPlugin {
        host,
        trusted_dirs: vec![std::env::temp_dir()],
    }
}

struct Pod {
    state: tempfile::TempDir,
    netns: tempfile::NamedTempFile,
}

impl Pod {
    fn new() -> Pod {
        Pod {
            state: tempfile::tempdir().unwrap(),
            netns: tempfile::NamedTempFile::new().unwrap(),
        }
    }

    fn netns(&self) -> String {
        self.netns.path().display().to_string()
    }

    fn conf(&self, device_id: Option<&str>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0", "name": "rdma-net", "type": "rdma",
            "stateDir": self.state.path(),
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "net1", "mac": "52:54:00:00:00:01", "sandbox": self.netns()}],
                "ips": [{"address": "10.6.0.10/24", "interface": 0}]}
        });
        if let Some(id) = device_id {
            conf["deviceID"] = json!(id);
        }
        conf
    }

    fn call(
        &self,
        plugin: &RdmaPlugin<FakeHost>,
        command: &str,
        id: &str,
        netns: &str,
        conf: &Value,
    ) -> Outcome {
        let env: HashMap<String, String> = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        run(plugin, &env, &mut conf.to_string().as_bytes())
    }

    fn held(&self) -> Vec<String> {
        std::fs::read_dir(self.state.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn error_of(out: &Outcome) -> (u64, String) {
    assert_ne!(out.exit_code, 0, "expected a failure: {}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).expect("CNI error JSON");
    (
        v["code"].as_u64().unwrap_or(0),
        v["msg"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn add_moves_the_vf_s_device_into_the_pod_and_del_returns_it() {
    let plugin = plugin_on(FakeHost::with_vf());
    let pod = Pod::new();
    let conf = pod.conf(Some("0000:03:00.2"));
    let out = pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf);
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        result["interfaces"][0]["name"], "net1",
        "prevResult passed through"
    );
    assert!(plugin.host.space(&pod.netns()).contains_key("mlx5_3"));
    assert!(!plugin.host.space("host").contains_key("mlx5_3"));
    assert_eq!(pod.held(), ["c1-net1"]);

    // Repeated ADD: nothing moves again.
    assert_eq!(pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf).exit_code, 0);
    assert_eq!(plugin.host.moves.borrow().len(), 1);
    assert_eq!(pod.call(&plugin, "CHECK", "c1", &pod.netns(), &conf).exit_code, 0);

    assert_eq!(pod.call(&plugin, "DEL", "c1", &pod.netns(), &conf).exit_code, 0);
    assert!(plugin.host.space("host").contains_key("mlx5_3"));
    assert!(pod.held().is_empty());
    // DEL twice.
    assert_eq!(pod.call(&plugin, "DEL", "c1", &pod.netns(), &conf).exit_code, 0);
    assert_eq!(plugin.host.moves.borrow().len(), 2);
}

#[test]
fn a_device_another_pod_holds_is_refused_and_nothing_is_left() {
    let plugin = plugin_on(FakeHost::with_vf());
    let first = Pod::new();
    assert_eq!(
        first
            .call(
                &plugin,
                "ADD",
                "c1",
                &first.netns(),
                &first.conf(Some("0000:03:00.2"))
            )
            .exit_code,
        0
    );
    let second = Pod::new();
    let (code, msg) = error_of(&second.call(
        &plugin,
        "ADD",
        "c2",
        &second.netns(),
        &second.conf(Some("0000:03:00.2")),
    ));
    assert_eq!(code, 102);
    assert!(
        msg.contains("no RDMA device of PCI device 0000:03:00.2 is in the host's network namespace"),
        "{msg}"
    );
    assert!(second.held().is_empty());
    // Soft-RoCE, found by MAC, held elsewhere: named.
    let (host, to) = (&plugin.host, "/elsewhere");
    host.shift("host", to, "rxe0");
    let (code, msg) = error_of(&second.call(&plugin, "ADD", "c2", &second.netns(), &second.conf(None)));
    assert_eq!(code, 102);
    assert!(msg.contains("RDMA device rxe0 of the pod's net1 (MAC 52:54:00:00:00:01) is not in the host's network namespace: another pod holds it"), "{msg}");
}

#[test]
fn shared_mode_and_kernel_refusals_are_clear_errors() {
    let mut host = FakeHost::with_vf();
    host.shared = true;
    let plugin = plugin_on(host);
    let pod = Pod::new();
    let (code, msg) = error_of(&pod.call(
        &plugin,
        "ADD",
        "c1",
        &pod.netns(),
        &pod.conf(Some("0000:03:00.2")),
    ));
    assert_eq!(code, 102);
    assert!(msg.contains("shared netns mode"), "{msg}");

    let mut host = FakeHost::with_vf();
    host.refuse_moves = Some(libc::EOPNOTSUPP);
    let plugin = plugin_on(host);
    let (code, msg) = error_of(&pod.call(&plugin, "ADD", "c1", &pod.netns(), &pod.conf(None)));
    assert_eq!(code, 102);
    assert!(msg.contains("the kernel cannot move RDMA device rxe0"), "{msg}");
    assert!(pod.held().is_empty());
    assert!(plugin.host.space("host").contains_key("rxe0"));
}

#[test]
fn bad_netconfs_are_refused_with_their_reason() {
    let plugin = plugin_on(FakeHost::with_vf());
    let pod = Pod::new();
    let mut conf = pod.conf(Some("03:00.2"));
    let (code, msg) = error_of(&pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf));
    assert_eq!((code, msg.contains("is not a PCI address")), (7, true), "{msg}");
    conf = pod.conf(Some("0000:03:00.2"));
    conf.as_object_mut().unwrap().remove("prevResult");
    let (code, msg) = error_of(&pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf));
    assert_eq!((code, msg.contains("no prevResult")), (7, true), "{msg}");
    conf = pod.conf(None);
    conf["prevResult"]["interfaces"][0]
        .as_object_mut()
        .unwrap()
        .remove("mac");
    let (code, msg) = error_of(&pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf));
    assert_eq!((code, msg.contains("no deviceID")), (7, true), "{msg}");
    for (dir, why) in [
        ("relative/dir", "must be an absolute path"),
        ("/etc", "outside the directories trusted for it"),
    ] {
        conf = pod.conf(None);
        conf["stateDir"] = json!(dir);
        let (code, msg) = error_of(&pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf));
        assert_eq!((code, msg.contains(why)), (7, true), "{msg}");
    }
    assert!(plugin.host.moves.borrow().is_empty());
}

#[test]
fn del_without_a_netns_forgets_the_device_the_kernel_returns_itself() {
    let plugin = plugin_on(FakeHost::with_vf());
    let pod = Pod::new();
    let conf = pod.conf(Some("0000:03:00.2"));
    assert_eq!(pod.call(&plugin, "ADD", "c1", &pod.netns(), &conf).exit_code, 0);
    let out = pod.call(&plugin, "DEL", "c1", "", &conf);
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    assert!(pod.held().is_empty());
    assert_eq!(
        plugin.host.moves.borrow().len(),
        1,
        "nothing to move without the namespace"
    );
    // A DEL of an attachment never added.
    assert_eq!(pod.call(&plugin, "DEL", "c9", "", &conf).exit_code, 0);
}
