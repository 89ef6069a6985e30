//! GetPreferredAllocation: the devices kubelet must include, then devices on one NUMA node, then
//! devices on one PF, so a pod's VFs share a NUMA node and, where they fit, a PF.

use std::collections::HashMap;

use crate::pool::Candidate;

/// Chooses `size` of `available`, keeping `must_include`. Unknown IDs are ignored.
pub fn preferred(
    members: &[Candidate],
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    let by_id: HashMap<&str, &Candidate> = members.iter().map(|c| (c.pci_address.as_str(), c)).collect();
    let mut chosen: Vec<String> = must_include
        .iter()
        .filter(|id| by_id.contains_key(id.as_str()))
        .cloned()
        .collect();
    let mut rest: Vec<&Candidate> = available
        .iter()
        .filter(|id| !chosen.contains(id))
        .filter_map(|id| by_id.get(id.as_str()).copied())
        .collect();
    if chosen.len() >= size {
        chosen.truncate(size.max(must_include.len()));
        return chosen;
    }
    let count = |key: &dyn Fn(&Candidate) -> Option<String>, among: &[&Candidate]| {
        let mut m: HashMap<Option<String>, usize> = HashMap::new();
        for c in among {
            *m.entry(key(c)).or_default() += 1;
        }
        m
    };
    let numa_of = |c: &Candidate| c.numa_node.map(|n| n.to_string());
    let pf_of = |c: &Candidate| Some(c.pf_pci.clone());
    let picked: Vec<&Candidate> = chosen
        .iter()
        .filter_map(|id| by_id.get(id.as_str()).copied())
        .collect();
    // Target NUMA node: the one most must-include devices sit on, else the one with most room.
    let target_numa = most(&count(&numa_of, &picked))
        .or_else(|| most(&count(&numa_of, &rest)))
        .flatten();
    let pf_room = count(&pf_of, &rest);
    let picked_pfs: Vec<String> = picked.iter().map(|c| c.pf_pci.clone()).collect();
    rest.sort_by_key(|c| {
        (
            numa_of(c) != target_numa,
            !picked_pfs.contains(&c.pf_pci),
            std::cmp::Reverse(pf_room.get(&Some(c.pf_pci.clone())).copied().unwrap_or(0)),
            c.pf_pci.clone(),
            c.pci_address.clone(),
        )
    });
    chosen.extend(
        rest.into_iter()
            .take(size - chosen.len())
            .map(|c| c.pci_address.clone()),
    );
    chosen
}

/// The key with the highest count (ties: the smallest key, for determinism).
fn most(counts: &HashMap<Option<String>, usize>) -> Option<Option<String>> {
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vf(pci: &str, pf: &str, numa: u32) -> Candidate {
        Candidate {
            pci_address: pci.into(),
            vendor: None,
            device: None,
            driver: None,
            pf_name: None,
            pf_pci: pf.into(),
            vf_index: Some(0),
            link_type: None,
            numa_node: Some(numa),
            netdev: None,
            rdma_devices: vec![],
            has_vfs: false,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_numa_node_then_one_pf() {
        let members = vec![
            vf("a1", "pfA", 0),
            vf("b1", "pfB", 1),
            vf("b2", "pfB", 1),
            vf("c1", "pfC", 1),
            vf("c2", "pfC", 1),
            vf("c3", "pfC", 1),
        ];
        let all = ids(&["a1", "b1", "b2", "c1", "c2", "c3"]);
        // NUMA 1 has the most room; on it, pfC can hold all three.
        assert_eq!(preferred(&members, &all, &[], 3), ids(&["c1", "c2", "c3"]));
        // must-include b1 pulls the choice to NUMA 1 and pfB first.
        assert_eq!(preferred(&members, &all, &ids(&["b1"]), 2), ids(&["b1", "b2"]));
        assert_eq!(preferred(&members, &all, &ids(&["a1"]), 2), ids(&["a1", "c1"]));
        assert_eq!(
            preferred(&members, &all, &ids(&["a1", "b1"]), 2),
            ids(&["a1", "b1"])
        );
        assert_eq!(preferred(&members, &ids(&["a1", "zz"]), &[], 1), ids(&["a1"]));
    }
}
