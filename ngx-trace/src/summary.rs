//! Per-upstream outcome counts, printed when tracing stops.
use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::classify::Outcome;

/// Outcome counts per upstream.
#[derive(Debug, Default)]
pub struct Summary {
    counts: BTreeMap<String, BTreeMap<Outcome, u64>>,
}

impl Summary {
    /// Counts one outcome for `upstream`.
    pub fn add(&mut self, upstream: &str, outcome: Outcome) {
        // Look up by &str first: no allocation per exchange.
        if !self.counts.contains_key(upstream) {
            self.counts.insert(upstream.to_string(), BTreeMap::new());
        }
        if let Some(outcomes) = self.counts.get_mut(upstream) {
            *outcomes.entry(outcome).or_default() += 1;
        }
    }

    /// `{"event":"summary","upstreams":[{"upstream":..,"total":N,"outcomes":{..}}]}`
    pub fn to_json(&self) -> Value {
        let upstreams: Vec<Value> = self
            .counts
            .iter()
            .map(|(upstream, outcomes)| {
                let map: serde_json::Map<String, Value> = outcomes
                    .iter()
                    .map(|(o, n)| (o.as_str().to_string(), json!(n)))
                    .collect();
                json!({
                    "upstream": upstream,
                    "total": outcomes.values().sum::<u64>(),
                    "outcomes": map,
                })
            })
            .collect();
        json!({"event": "summary", "upstreams": upstreams})
    }

    /// A table: one line per upstream with its counts.
    pub fn to_text(&self) -> String {
        if self.counts.is_empty() {
            return "summary: no upstream connection seen\n".into();
        }
        let mut text = String::from("summary (outcomes per upstream):\n");
        for (upstream, outcomes) in &self.counts {
            let parts: Vec<String> = outcomes
                .iter()
                .map(|(o, n)| format!("{} {n}", o.as_str()))
                .collect();
            text.push_str(&format!("  {upstream:<30} {}\n", parts.join(", ")));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_upstream_and_outcome() {
        let mut s = Summary::default();
        s.add("127.0.0.1:3999", Outcome::Refused);
        s.add("127.0.0.1:3999", Outcome::Refused);
        s.add("127.0.0.1:3999", Outcome::Ok);
        s.add("unix:/run/php.sock", Outcome::NotFound);
        let v = s.to_json();
        assert_eq!(v["upstreams"][0]["upstream"], "127.0.0.1:3999");
        assert_eq!(v["upstreams"][0]["total"], 3);
        assert_eq!(v["upstreams"][0]["outcomes"]["refused"], 2);
        assert_eq!(v["upstreams"][1]["outcomes"]["not_found"], 1);
        let text = s.to_text();
        assert!(text.contains("127.0.0.1:3999"));
        assert!(text.contains("ok 1, refused 2"), "{text}");
    }
}
