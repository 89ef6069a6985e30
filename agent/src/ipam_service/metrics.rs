//! The IPAM service's Prometheus metrics (names are stable; README lists them): every verb's count
//! by CNI result code and its latency, and per pool what its writer did — addresses handed out and
//! given back, claims it could not serve (no free address, pool not in use), writes that lost to
//! another agent, and how many requests rode in one write.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    /// The CNI error code, `0` for success.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct IpamMetrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter<u64, AtomicU64>>,
    pub duration: Family<VerbLabel, Histogram, fn() -> Histogram>,
    pub allocated: Family<PoolLabel, Counter<u64, AtomicU64>>,
    pub released: Family<PoolLabel, Counter<u64, AtomicU64>>,
    pub exhausted: Family<PoolLabel, Counter<u64, AtomicU64>>,
    pub refused: Family<PoolLabel, Counter<u64, AtomicU64>>,
    pub claim_misses: Family<PoolLabel, Counter<u64, AtomicU64>>,
}

impl IpamMetrics {
    pub fn new() -> IpamMetrics {
        let mut registry = Registry::with_prefix("spiderpool_agent_ipam");
        let m = IpamMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            allocated: Family::default(),
            released: Family::default(),
            exhausted: Family::default(),
            refused: Family::default(),
            claim_misses: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Plugin requests by verb and CNI result code (0: success)",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a plugin request's arrival to its answer, by verb",
            m.duration.clone(),
        );
        registry.register("allocated", "Addresses handed out, by pool", m.allocated.clone());
        registry.register("released", "Addresses given back, by pool", m.released.clone());
        registry.register(
            "pool_exhausted",
            "Claims a pool could not serve because it had no free address",
            m.exhausted.clone(),
        );
        registry.register(
            "pool_refused",
            "Claims a pool could not serve because it is not in use (its addresses are another pool's)",
            m.refused.clone(),
        );
        registry.register(
            "claim_misses",
            "SpiderIPClaims not created because the address was claimed already (another was tried)",
            m.claim_misses.clone(),
        );
        IpamMetrics { registry, ..m }
    }

    pub fn pool(pool: &str) -> PoolLabel {
        PoolLabel { pool: pool.into() }
    }

    /// One plugin request answered.
    pub fn observe(&self, verb: &str, code: u32, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                code: code.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&VerbLabel { verb: verb.into() })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for IpamMetrics {
    fn default() -> Self {
        IpamMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        let m = IpamMetrics::new();
        m.observe("ADD", 0, 0.004);
        m.observe("ADD", 18, 0.02);
        m.allocated.get_or_create(&IpamMetrics::pool("p")).inc();
        m.claim_misses.get_or_create(&IpamMetrics::pool("p")).inc();
        let text = m.render();
        for line in [
            r#"spiderpool_agent_ipam_requests_total{verb="ADD",code="0"} 1"#,
            r#"spiderpool_agent_ipam_requests_total{verb="ADD",code="18"} 1"#,
            r#"spiderpool_agent_ipam_request_duration_seconds_count{verb="ADD"} 2"#,
            r#"spiderpool_agent_ipam_allocated_total{pool="p"} 1"#,
            r#"spiderpool_agent_ipam_claim_misses_total{pool="p"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
