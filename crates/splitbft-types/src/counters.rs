//! Named event counters: every rejected input is counted by reason (STYLE "safety in the small").

use std::collections::BTreeMap;

/// Counters keyed by a static name.
#[derive(Clone, Debug, Default)]
pub struct Counters(BTreeMap<&'static str, u64>);

impl Counters {
    /// Adds one to `name`.
    pub fn bump(&mut self, name: &'static str) {
        *self.0.entry(name).or_default() += 1;
    }

    /// Adds `by` to `name`.
    pub fn add(&mut self, name: &'static str, by: u64) {
        *self.0.entry(name).or_default() += by;
    }

    /// Current value of `name`.
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// All counters, sorted by name.
    pub fn to_vec(&self) -> Vec<(String, u64)> {
        self.0.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }
}
