//! Which links in other network namespaces hang off links of this one. A macvlan, ipvlan or VLAN
//! made on a host bond and moved into a pod leaves no trace in the host's own link dump (the
//! kernel drops the `upper_*` sysfs links across namespaces), yet deleting the bond deletes it
//! with it: whoever removes a link asks here first.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::links::LinkTable;
use crate::netns::NetNs;

/// Host link index → the links in other namespaces whose parent it is, described as
/// `"macvlan net1 in /run/netns/cni-…"`. Looks into every namespace named under `/run/netns`
/// and every process's namespace (each once). A link counts when its parent is in another
/// namespace and has that index; the parent's namespace is not resolved, so a link on a third
/// namespace's device of the same index counts too: a false alarm keeps a link, it never
/// removes one that is in use.
pub fn users_in_other_namespaces(of: &HashSet<u32>) -> io::Result<BTreeMap<u32, Vec<String>>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    if of.is_empty() {
        return Ok(out);
    }
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    let mut seen: HashSet<(u64, u64)> = HashSet::from([(own.dev(), own.ino())]);
    for path in namespaces() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // the process ended, the name was removed
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let ns = match NetNs::open(&path) {
            Ok(ns) => ns,
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let table = match ns.run(LinkTable::dump) {
            Ok(Ok(table)) => table,
            Ok(Err(e)) => return Err(io::Error::other(format!("{}: {e}", path.display()))),
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("enter {}: {e}", path.display()))),
        };
        for name in table.names() {
            let Some(facts) = table.facts(name) else { continue };
            if let Some(parent) = facts.parent.filter(|p| facts.parent_elsewhere && of.contains(p)) {
                let kind = facts.kind.as_deref().unwrap_or("link");
                out.entry(parent)
                    .or_default()
                    .push(format!("{kind} {name} in {}", path.display()));
            }
        }
    }
    Ok(out)
}

/// Named namespaces first (their names say more than a process number), then every process's.
fn namespaces() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        out.extend(sorted_entries(Path::new(dir)));
    }
    for entry in sorted_entries(Path::new("/proc")) {
        let is_pid = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if is_pid {
            out.push(entry.join("ns/net"));
        }
    }
    out
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unprivileged: nothing asked, nothing walked.
    #[test]
    fn nothing_asked_is_nothing_found() {
        assert!(users_in_other_namespaces(&HashSet::new()).unwrap().is_empty());
    }

    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Root-only; hack/test.sh runs it in the netns tier (`--ignored`).
    #[test]
    #[ignore = "netns tier: needs root"]
    fn a_macvlan_moved_into_another_namespace_is_a_user_of_its_parent() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the netns tier runs as root"
        );
        // veth and macvlan: the kernels this tier runs on may lack dummy, bond and 8021q.
        let tag = std::process::id() % 100_000;
        let (parent, child, ns_name) = (format!("lu{tag}a"), format!("lu{tag}m"), format!("lu-{tag}"));
        ip(&[
            "link",
            "add",
            &parent,
            "type",
            "veth",
            "peer",
            "name",
            &format!("lu{tag}b"),
        ]);
        ip(&["link", "add", "link", &parent, "name", &child, "type", "macvlan"]);
        let ns = NetNs::create(&ns_name).unwrap();
        let index = crate::rtnl::Rtnl::new()
            .unwrap()
            .link_index(&parent)
            .unwrap()
            .unwrap();
        let asked = HashSet::from([index]);
        // Still in this namespace: not "elsewhere" (the host's own dump shows it).
        let before = users_in_other_namespaces(&asked).unwrap();
        ip(&["link", "set", &child, "netns", &ns_name]);
        let after = users_in_other_namespaces(&asked).unwrap();
        drop(ns);
        let gone = users_in_other_namespaces(&asked).unwrap();
        ip(&["link", "del", &parent]);
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(
            after.get(&index).map(Vec::as_slice),
            Some([format!("macvlan {child} in /run/netns/{ns_name}")].as_slice()),
            "{after:?}"
        );
        assert!(
            gone.is_empty(),
            "the namespace and its macvlan are gone: {gone:?}"
        );
    }
}
