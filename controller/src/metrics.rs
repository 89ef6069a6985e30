//! Prometheus metrics of the controller, served as text on `/metrics`.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub leader: Gauge<i64, AtomicI64>,
    pub rounds: Counter,
    pub released: Counter,
    pub pool_allocated: Family<PoolLabel, Gauge<i64, AtomicI64>>,
    pub pool_total: Family<PoolLabel, Gauge<i64, AtomicI64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spiderpool_controller");
        let leader = Gauge::default();
        let rounds = Counter::default();
        let released = Counter::default();
        let pool_allocated = Family::default();
        let pool_total = Family::default();
        registry.register("leader", "1 while this replica holds the lease", leader.clone());
        registry.register("gc_rounds", "Garbage-collection rounds run", rounds.clone());
        registry.register(
            "gc_released_ips",
            "Addresses given back to their pools",
            released.clone(),
        );
        registry.register(
            "pool_allocated_ips",
            "Allocated addresses per pool",
            pool_allocated.clone(),
        );
        registry.register("pool_total_ips", "Addresses per pool", pool_total.clone());
        Metrics {
            registry,
            leader,
            rounds,
            released,
            pool_allocated,
            pool_total,
        }
    }

    pub fn set_pool(&self, pool: &str, allocated: i64, total: i64) {
        let label = PoolLabel { pool: pool.into() };
        self.pool_allocated.get_or_create(&label).set(allocated);
        self.pool_total.get_or_create(&label).set(total);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
