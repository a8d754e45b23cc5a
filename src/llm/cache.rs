//! Recent expansions, so the same idea sent twice costs one LLM call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ExpandKind;

/// Recent expansions keyed by (kind, prompt), so a member re-sending the same idea gets
/// the same text without another LLM call.
pub(super) struct ExpansionCache {
    ttl: Duration,
    capacity: usize,
    pub(super) entries: HashMap<(ExpandKind, String), (Instant, String)>,
}

impl ExpansionCache {
    pub(super) fn new(ttl: Duration, capacity: usize) -> Self {
        ExpansionCache {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    pub(super) fn get(&mut self, kind: ExpandKind, prompt: &str, now: Instant) -> Option<String> {
        let key = (kind, prompt.to_string());
        match self.entries.get(&key) {
            Some((at, text)) if now.duration_since(*at) < self.ttl => Some(text.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub(super) fn put(&mut self, kind: ExpandKind, prompt: &str, text: &str, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.duration_since(*at) < ttl);
        }
        if self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries
            .insert((kind, prompt.to_string()), (now, text.to_string()));
    }
}
