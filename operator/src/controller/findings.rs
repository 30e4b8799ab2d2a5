//! What a loop beside the reconciles found per system (alerting, shipping):
//! a shared map the reconcile reads, where a put says whether anything
//! changed, so only a change wakes the system.

use std::{collections::HashMap, sync::RwLock};

/// Findings by (namespace, name).
pub struct PerSystem<T>(RwLock<HashMap<(String, String), T>>);

impl<T> Default for PerSystem<T> {
    fn default() -> Self {
        Self(RwLock::new(HashMap::new()))
    }
}

impl<T: Clone + PartialEq> PerSystem<T> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<T> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Stores `findings`; true when they differ from what was there.
    pub(super) fn put(&self, key: (String, String), findings: T) -> bool {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.get(&key) == Some(&findings) {
            return false;
        }
        map.insert(key, findings);
        true
    }

    pub(super) fn retain(&self, keep: impl Fn(&(String, String)) -> bool) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }
}
