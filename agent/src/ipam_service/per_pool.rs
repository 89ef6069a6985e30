//! One async lock per pool: the requests for a pool that come while one of them does the pool's
//! one-time work (the start of its walk, its first list of claims, its registration) wait for
//! that answer instead of each doing it again, and other pools' requests do not wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct PerPool<T>(Mutex<HashMap<String, Arc<tokio::sync::Mutex<T>>>>);

impl<T> Default for PerPool<T> {
    fn default() -> Self {
        PerPool(Mutex::new(HashMap::new()))
    }
}

impl<T: Default> PerPool<T> {
    /// `pool`'s lock (made on first use).
    pub fn of(&self, pool: &str) -> Arc<tokio::sync::Mutex<T>> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(pool.to_string()).or_default().clone()
    }
}
