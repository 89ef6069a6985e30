//! A pool's holders as they are stored: `status.allocatedIPsByNode`, one JSON string per node
//! (address → holder), so that which node's entries a write changes is visible to admission
//! without parsing JSON (CEL cannot): the agents' own-node policy
//! ([`super::node_scope`]) lets an agent's token change only its own node's string.
//!
//! Strings, not objects: the API server handles a few strings in a fraction of the time it
//! needs for a thousand-key object (measured when the format was chosen: a status write of a
//! 1000-address pool 27 ms against 60 ms, a read 14 ms against 27 ms). A write sends only the
//! strings of the nodes it changed.
//!
//! The same address can sit in two nodes' strings: a StatefulSet pod that moved keeps its
//! address, and its new node's agent may not remove the old node's entry, so it adds its own and
//! the controller's garbage collection drops the stale one. An address is free only while no
//! string holds it, so a duplicate never lets it out twice.

use std::collections::BTreeMap;

use super::PoolIPAllocation;

/// Every holder of a pool, node by node. An entry's `node` is the node whose string holds it
/// (`None` for the string under the empty key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    by_node: BTreeMap<String, BTreeMap<String, PoolIPAllocation>>,
}

impl Allocations {
    /// Decodes `status.allocatedIPsByNode`.
    pub fn decode(by_node: &BTreeMap<String, String>) -> Result<Allocations, String> {
        let mut out = Allocations::default();
        for (node, text) in by_node {
            let mut held: BTreeMap<String, PoolIPAllocation> = if text.is_empty() {
                BTreeMap::new()
            } else {
                serde_json::from_str(text).map_err(|e| format!("node {node:?}: {e}"))?
            };
            for entry in held.values_mut() {
                // The key is authoritative: a string cannot speak for another node.
                entry.node = (!node.is_empty()).then(|| node.clone());
            }
            if !held.is_empty() {
                out.by_node.insert(node.clone(), held);
            }
        }
        Ok(out)
    }

    /// Address → holder, one holder per address: where an address is held twice, the entry of
    /// `prefer` (the reading agent's node) first, otherwise the first node's in name order.
    pub fn view(&self, prefer: Option<&str>) -> BTreeMap<String, PoolIPAllocation> {
        let mut out = BTreeMap::new();
        if let Some(own) = prefer.and_then(|n| self.by_node.get(n)) {
            out.extend(own.iter().map(|(ip, e)| (ip.clone(), e.clone())));
        }
        for held in self.by_node.values() {
            for (ip, entry) in held {
                out.entry(ip.clone()).or_insert_with(|| entry.clone());
            }
        }
        out
    }

    /// Every entry, duplicates included, as `(address, holder)`.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &PoolIPAllocation)> {
        self.by_node.values().flat_map(|held| held.iter())
    }

    /// The number of distinct addresses pods hold (a node's spares are not counted).
    pub fn count(&self) -> usize {
        self.by_node
            .values()
            .flat_map(|held| held.iter())
            .filter(|(_, e)| !e.is_spare())
            .map(|(ip, _)| ip)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    /// Carries the change from the view `before` to the view `after` into the node strings: an
    /// entry that went leaves its node's string, an entry that came joins its own node's.
    /// `writer`: the agent's node, which leaves other nodes' entries in place (an admission
    /// policy refuses it their strings); `None` for the controller, which may change any.
    pub fn apply(
        &mut self,
        before: &BTreeMap<String, PoolIPAllocation>,
        after: &BTreeMap<String, PoolIPAllocation>,
        writer: Option<&str>,
    ) {
        for (ip, old) in before {
            if after.get(ip) == Some(old) {
                continue;
            }
            let node = old.node.clone().unwrap_or_default();
            if writer.is_some_and(|w| w != node) {
                continue;
            }
            self.remove(&node, ip, old);
        }
        for (ip, new) in after {
            if before.get(ip) != Some(new) {
                let node = new.node.clone().unwrap_or_default();
                self.by_node
                    .entry(node)
                    .or_default()
                    .insert(ip.clone(), new.clone());
            }
        }
    }

    /// Drops `ip` from `node`'s string if it still holds `entry` there.
    pub fn remove(&mut self, node: &str, ip: &str, entry: &PoolIPAllocation) -> bool {
        let Some(held) = self.by_node.get_mut(node) else {
            return false;
        };
        if held.get(ip) != Some(entry) {
            return false;
        }
        held.remove(ip);
        if held.is_empty() {
            self.by_node.remove(node);
        }
        true
    }

    /// The `allocatedIPsByNode` merge-patch value that turns `before` into `self`: the strings
    /// of the nodes that changed, `null` for a node that holds nothing any more.
    pub fn patch_from(&self, before: &Allocations) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for (node, held) in &self.by_node {
            if before.by_node.get(node) != Some(held) {
                out.insert(node.clone(), encode(held).into());
            }
        }
        for node in before.by_node.keys() {
            if !self.by_node.contains_key(node) {
                out.insert(node.clone(), serde_json::Value::Null);
            }
        }
        out
    }

    /// `status.allocatedIPsByNode` holding `self` in full.
    pub fn encoded(&self) -> BTreeMap<String, String> {
        self.by_node
            .iter()
            .map(|(node, held)| (node.clone(), encode(held)))
            .collect()
    }

    /// Holders given as a view (address → holder), each under its own node.
    pub fn from_view(view: &BTreeMap<String, PoolIPAllocation>) -> Allocations {
        let mut out = Allocations::default();
        out.apply(&BTreeMap::new(), view, None);
        out
    }
}

/// One node's string. The node is the key, so it is not repeated in each entry.
fn encode(held: &BTreeMap<String, PoolIPAllocation>) -> String {
    let bare: BTreeMap<&String, PoolIPAllocation> = held
        .iter()
        .map(|(ip, e)| {
            let mut e = e.clone();
            e.node = None;
            (ip, e)
        })
        .collect();
    // A map of strings and plain structs always encodes.
    serde_json::to_string(&bare).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str, node: &str) -> PoolIPAllocation {
        PoolIPAllocation {
            pod: format!("ns/{uid}"),
            pod_uid: uid.into(),
            interface: Some("eth0".into()),
            node: Some(node.into()),
            owner_stateful_set: None,
        }
    }

    fn view(items: &[(&str, PoolIPAllocation)]) -> BTreeMap<String, PoolIPAllocation> {
        items.iter().map(|(ip, e)| (ip.to_string(), e.clone())).collect()
    }

    #[test]
    fn round_trips_and_the_key_names_the_node() {
        let all = Allocations::from_view(&view(&[
            ("10.0.0.1", entry("a", "n1")),
            ("10.0.0.2", entry("b", "n2")),
        ]));
        let encoded = all.encoded();
        assert_eq!(encoded.len(), 2);
        assert!(!encoded["n1"].contains("node"), "{}", encoded["n1"]);
        assert_eq!(Allocations::decode(&encoded).unwrap(), all);
        // An entry claiming another node inside n1's string is n1's.
        let forged = BTreeMap::from([(
            "n1".to_string(),
            r#"{"10.0.0.9":{"pod":"ns/x","podUid":"x","node":"n2"}}"#.to_string(),
        )]);
        let got = Allocations::decode(&forged).unwrap().view(None);
        assert_eq!(got["10.0.0.9"].node.as_deref(), Some("n1"));
        assert!(Allocations::decode(&BTreeMap::from([("n1".into(), "{".into())])).is_err());
    }

    #[test]
    fn a_write_sends_only_the_nodes_it_changed() {
        let before = Allocations::from_view(&view(&[
            ("10.0.0.1", entry("a", "n1")),
            ("10.0.0.2", entry("b", "n2")),
        ]));
        let mut after = before.clone();
        let v = before.view(Some("n1"));
        let mut w = v.clone();
        w.remove("10.0.0.1");
        w.insert("10.0.0.3".into(), entry("c", "n1"));
        after.apply(&v, &w, Some("n1"));
        let patch = after.patch_from(&before);
        assert_eq!(patch.keys().collect::<Vec<_>>(), ["n1"]);
        // The last entry of a node goes as null.
        let mut w2 = w.clone();
        w2.remove("10.0.0.3");
        let mut emptied = after.clone();
        emptied.apply(&w, &w2, Some("n1"));
        assert_eq!(emptied.patch_from(&after)["n1"], serde_json::Value::Null);
    }

    #[test]
    fn a_moved_stateful_set_pod_leaves_the_old_node_s_entry_to_the_controller() {
        let mut old = entry("web-0-old", "n1");
        old.pod = "ns/web-0".into();
        old.owner_stateful_set = Some("web".into());
        let before = Allocations::from_view(&view(&[("10.0.0.1", old.clone())]));
        let mut new = old.clone();
        new.pod_uid = "web-0-new".into();
        new.node = Some("n2".into());
        let mut after = before.clone();
        after.apply(
            &before.view(Some("n2")),
            &view(&[("10.0.0.1", new.clone())]),
            Some("n2"),
        );
        assert_eq!(after.patch_from(&before).keys().collect::<Vec<_>>(), ["n2"]);
        // Held twice, still one address; each agent sees its own node's holder.
        assert_eq!(after.count(), 1);
        assert_eq!(after.entries().count(), 2);
        assert_eq!(after.view(Some("n2"))["10.0.0.1"], new);
        assert_eq!(after.view(Some("n1"))["10.0.0.1"], old);
        // The controller drops the stale one.
        assert!(after.remove("n1", "10.0.0.1", &old));
        assert!(!after.remove("n1", "10.0.0.1", &old));
        assert_eq!(after.entries().count(), 1);
    }
}
