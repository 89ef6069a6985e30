//! Hostile netconfs and environments against the `spiderpool` binary: every one refused with its
//! exact CNI code, none creating, reading or connecting to anything outside the directories the
//! plugin trusts, and no error quoting a file it was pointed at.

use std::path::PathBuf;

use serde_json::{Value, json};
use spiderpool_cni::exec::{Invocation, Output};

/// The plugin as it ships under hack/test.sh (static), else cargo's build of it.
fn plugin() -> PathBuf {
    spiderpool_testing::process::shipped_or("spiderpool", env!("CARGO_BIN_EXE_spiderpool"))
}
const SECRET: &str = "SECRET-TOKEN-4711";

/// A scratch tree: `trusted/` is what the plugin trusts; `outside/` holds a secret it must never
/// read; links from inside point out.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical tempdir");
        let t = root.join("trusted");
        let o = root.join("outside");
        std::fs::create_dir_all(&t).expect("trusted");
        std::fs::create_dir_all(&o).expect("outside");
        std::fs::write(o.join("secret.yaml"), format!("{SECRET}\n")).expect("secret");
        std::os::unix::fs::symlink(&o, t.join("link-out")).expect("link");
        std::os::unix::fs::symlink(o.join("secret.yaml"), t.join("secret-link.yaml")).expect("link");
        std::os::unix::fs::symlink("/dev/zero", t.join("zero.yaml")).expect("link");
        let fifo = std::process::Command::new("mkfifo")
            .arg(t.join("fifo.yaml"))
            .status()
            .expect("mkfifo runs");
        assert!(fifo.success());
        std::fs::write(t.join("big.yaml"), vec![b'#'; 5 << 20]).expect("big");
        std::fs::write(t.join("binary.yaml"), [0xff, 0xfe, 0x00, 0x41]).expect("binary");
        std::fs::write(
            t.join("leak.yaml"),
            format!("kind: SpiderIPPool\nmetadata: {{name: x}}\nspec: {SECRET}\n"),
        )
        .expect("leak");
        std::fs::write(t.join("malformed.yaml"), format!("{SECRET}: [\n")).expect("malformed");
        Tree { _dir: dir, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A standalone netconf whose `ipam` section is `ipam` (a store in `trusted/store` unless
    /// `ipam` says otherwise).
    fn conf(&self, ipam: Value) -> Value {
        let mut section = json!({"type": "spiderpool", "dataDir": self.p("trusted/store"),
            "pools": [{"name": "p", "subnet": "10.9.0.0/24", "ips": ["10.9.0.10-10.9.0.20"]}]});
        if let (Value::Object(base), Value::Object(extra)) = (&mut section, ipam) {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    base.insert(k, v);
                }
            }
        }
        json!({"cniVersion": "1.0.0", "name": "net1", "type": "macvlan", "ipam": section})
    }

    fn pool_file(&self, path: impl Into<Value>) -> Value {
        self.conf(json!({"pools": null, "poolFile": path.into()}))
    }

    /// Every file and directory under the tree, to compare before and after.
    fn listing(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
        out.sort();
        out
    }
}

enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

struct Case {
    what: &'static str,
    body: Body,
    env: Vec<(&'static str, String)>,
    /// The CNI error code, `None` for success.
    code: Option<u64>,
    /// Paths that must not exist afterwards.
    absent: Vec<PathBuf>,
}

fn case(what: &'static str, netconf: Value, code: u64) -> Case {
    Case {
        what,
        body: Body::Json(netconf),
        env: Vec::new(),
        code: Some(code),
        absent: Vec::new(),
    }
}

fn run(tree: &Tree, c: &Case) -> Output {
    let mut inv = Invocation::new("ADD", "c1", "/var/run/netns/x", "eth0")
        .with_path(vec![PathBuf::from("/usr/lib/cni")])
        .with_trusted_dirs(vec![tree.p("trusted")])
        .with_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u");
    for (k, v) in &c.env {
        match *k {
            "ifname" => inv.ifname = v.clone(),
            "id" => inv.container_id = v.clone(),
            "args" => inv.args = v.clone(),
            "netns" => inv.netns = v.clone(),
            other => panic!("unknown override {other}"),
        }
    }
    let bytes = match &c.body {
        Body::Json(v) => v.to_string().into_bytes(),
        Body::Raw(b) => b.clone(),
    };
    inv.run(&plugin(), &bytes).expect("plugin runs")
}

#[test]
fn hostile_netconfs_are_refused_with_their_code_and_change_nothing() {
    let tree = Tree::new();
    let t = |rel: &str| tree.p(rel);
    let cluster = |socket: Value| tree.conf(json!({"pools": null, "ipam_unix_socket_path": socket}));
    let mut cases = vec![
        // poolFile
        case("poolFile /etc/shadow", tree.pool_file("/etc/shadow"), 7),
        case("poolFile /dev/zero", tree.pool_file("/dev/zero"), 7),
        case("poolFile symlink to /dev/zero", tree.pool_file(t("trusted/zero.yaml").to_str()), 7),
        case(
            "poolFile ../ out of the trusted directory",
            tree.pool_file(format!("{}/../outside/secret.yaml", t("trusted").display())),
            7,
        ),
        case(
            "poolFile through a symlinked directory",
            tree.pool_file(t("trusted/link-out/secret.yaml").to_str()),
            7,
        ),
        case("poolFile symlink to a file outside", tree.pool_file(t("trusted/secret-link.yaml").to_str()), 7),
        case("poolFile a FIFO (would block)", tree.pool_file(t("trusted/fifo.yaml").to_str()), 7),
        case("poolFile a directory", tree.pool_file(t("trusted").to_str()), 7),
        case("poolFile of 5 MiB", tree.pool_file(t("trusted/big.yaml").to_str()), 7),
        case("poolFile not UTF-8", tree.pool_file(t("trusted/binary.yaml").to_str()), 7),
        case("poolFile whose spec is a secret", tree.pool_file(t("trusted/leak.yaml").to_str()), 7),
        case("poolFile of malformed YAML", tree.pool_file(t("trusted/malformed.yaml").to_str()), 7),
        case("poolFile relative", tree.pool_file("pools.yaml"), 7),
        case(
            "poolFile with a NUL byte",
            tree.pool_file(format!("{}/a\u{0}b", t("trusted").display())),
            7,
        ),
        case("poolFile a number", tree.pool_file(5), 6),
        // dataDir
        case("dataDir /etc/cron.d", tree.conf(json!({"dataDir": "/etc/cron.d/spiderpool"})), 7),
        case("dataDir outside", tree.conf(json!({"dataDir": t("outside/store")})), 7),
        case(
            "dataDir through a symlinked directory",
            tree.conf(json!({"dataDir": t("trusted/link-out/store")})),
            7,
        ),
        case(
            "dataDir ../ out",
            tree.conf(json!({"dataDir": format!("{}/../outside/x", t("trusted").display())})),
            7,
        ),
        case("dataDir relative", tree.conf(json!({"dataDir": "store"})), 7),
        case("dataDir a number", tree.conf(json!({"dataDir": 5})), 6),
        case("dataDir a list", tree.conf(json!({"dataDir": ["/run/spiderpool"]})), 6),
        // the agent's socket (cluster mode)
        case("agent socket /etc/passwd", cluster(json!("/etc/passwd")), 7),
        case(
            "agent socket ../ out",
            cluster(json!(format!("{}/../outside/a.sock", t("trusted").display()))),
            7,
        ),
        case("agent socket through a symlink", cluster(json!(t("trusted/link-out/a.sock"))), 7),
        case("agent socket trusted but absent", cluster(json!(t("trusted/a.sock"))), 11),
        case("agent socket a number", cluster(json!(5)), 6),
        // pools
        case(
            "IPv4-mapped IPv6 subnet",
            tree.conf(json!({"pools": [{"name": "m", "subnet": "::ffff:10.9.0.0/120", "ips": ["::ffff:10.9.0.10"]}]})),
            7,
        ),
        case(
            "::/0 subnet",
            tree.conf(json!({"pools": [{"name": "m", "subnet": "::/0", "ips": ["fd00::1"]}]})),
            7,
        ),
        case("pools a string", tree.conf(json!({"pools": "p"})), 6),
        case(
            "range end before start",
            tree.conf(json!({"pools": [{"name": "p", "subnet": "10.9.0.0/24", "ips": ["10.9.0.20-10.9.0.10"]}]})),
            7,
        ),
        case(
            "pool name with a path",
            tree.conf(json!({"pools": [{"name": "../p", "subnet": "10.9.0.0/24", "ips": ["10.9.0.10"]}]})),
            7,
        ),
        case("default pool list of numbers", tree.conf(json!({"default_ipv4_ippool": [1]})), 6),
        // the netconf itself
        case("unknown version", json!({"cniVersion": "9.9.9", "name": "n", "type": "macvlan"}), 1),
        case("version a number", json!({"cniVersion": 1, "name": "n", "type": "macvlan"}), 6),
        case("name a number", json!({"cniVersion": "1.0.0", "name": 1, "type": "macvlan"}), 6),
        case("no ipam section", json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan"}), 7),
    ];
    cases.push(Case {
        what: "netconf of 2 MiB",
        body: Body::Raw(
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "pad": "{}"}}"#,
                "x".repeat(2 << 20)
            )
            .into_bytes(),
        ),
        env: Vec::new(),
        code: Some(6),
        absent: Vec::new(),
    });
    cases.push(Case {
        what: "netconf not UTF-8",
        body: Body::Raw(b"{\"cniVersion\": \"1.0.0\", \"name\": \"\xff\xfe\"}".to_vec()),
        env: Vec::new(),
        code: Some(6),
        absent: Vec::new(),
    });
    for (what, key, value) in [
        ("interface name with a slash", "ifname", "../../etc"),
        ("interface name too long", "ifname", "averyveryverylongname"),
        ("container id with a slash", "id", "../c1"),
        ("no netns", "netns", ""),
        (
            "pod name with a newline in CNI_ARGS",
            "args",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a\nb;FOO=1",
        ),
    ] {
        cases.push(Case {
            what,
            body: Body::Json(tree.conf(json!({}))),
            env: vec![(key, value.to_string())],
            code: Some(4),
            absent: vec![t("trusted/store")],
        });
    }
    for c in &mut cases {
        // No refused case may leave a store behind, here or where it pointed.
        c.absent.push(t("trusted/store"));
        c.absent.push(t("outside/store"));
        c.absent.push(t("outside/x"));
        c.absent.push(PathBuf::from("/etc/cron.d/spiderpool"));
    }
    assert!(cases.len() >= 40, "{} cases", cases.len());

    let before = tree.listing();
    let mut wrong = Vec::new();
    for c in &cases {
        let out = run(&tree, c);
        let got = if out.success { None } else { out.error_code() };
        if got != c.code {
            wrong.push(format!(
                "{}: want {:?}, got {got:?}: {}",
                c.what, c.code, out.stdout
            ));
        }
        if out.stdout.contains(SECRET) || out.stderr.contains(SECRET) {
            wrong.push(format!("{}: the error quotes the file: {}", c.what, out.stdout));
        }
        for p in &c.absent {
            if p.exists() {
                wrong.push(format!("{}: created {}", c.what, p.display()));
            }
        }
        assert_eq!(tree.listing(), before, "{}: the tree changed", c.what);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_huge_ipv6_range_is_served_without_expanding_it() {
    let tree = Tree::new();
    let conf = tree.conf(json!({"pools": [{"name": "big", "subnet": "fd00::/64",
        "ips": ["fd00::1-fd00::ffff:ffff:ffff:fffe"], "excludeIPs": ["fd00::1-fd00::ffff:ffff:ffff"]}]}));
    let c = Case {
        what: "huge range",
        body: Body::Json(conf),
        env: Vec::new(),
        code: None,
        absent: Vec::new(),
    };
    let out = run(&tree, &c);
    assert!(out.success, "{}", out.stdout);
    assert_eq!(out.json()["ips"][0]["address"], "fd00::1:0:0:0/64");
}

/// A store file that is no database: DEL (with and without a netns) still succeeds, ADD fails with
/// code 5 saying how to recover, and after the documented recovery ADD works again.
#[test]
fn a_corrupted_store_lets_del_through_and_add_says_how_to_recover() {
    let tree = Tree::new();
    let conf = tree.conf(json!({}));
    let add = Case {
        what: "add",
        body: Body::Json(conf.clone()),
        env: Vec::new(),
        code: None,
        absent: Vec::new(),
    };
    assert!(run(&tree, &add).success);
    let db = tree.p("trusted/store/ipam.redb");
    std::fs::write(&db, vec![0x5a; 8192]).expect("corrupt the store");

    let out = run(&tree, &add);
    assert_eq!(out.error_code(), Some(5), "{}", out.stdout);
    assert!(out.stdout.contains("move it aside"), "{}", out.stdout);
    for netns in ["/var/run/netns/x", ""] {
        let del = Invocation::new("DEL", "c1", netns, "eth0")
            .with_path(vec![PathBuf::from("/usr/lib/cni")])
            .with_trusted_dirs(vec![tree.p("trusted")])
            .run(&plugin(), conf.to_string().as_bytes())
            .expect("plugin runs");
        assert!(del.success, "DEL of a corrupted store: {}", del.stdout);
    }
    std::fs::rename(&db, tree.p("trusted/store/ipam.redb.corrupt")).expect("move aside");
    let again = run(&tree, &add);
    assert!(again.success, "{}", again.stdout);
}
