//! Latency histograms per upstream and phase, for tuning
//! `proxy_connect_timeout` and `proxy_read_timeout` from real numbers.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::classify::{Timings, human_us};

/// The phases histograms are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// `connect()` to handshake done.
    Connect,
    /// Last request byte to first response byte.
    FirstByte,
    /// Whole exchange.
    Total,
}

impl Phase {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::FirstByte => "first_byte",
            Phase::Total => "total",
        }
    }
}

/// Highest value tracked: one hour in µs; larger values are clamped to it.
const HIGHEST_US: u64 = 3_600_000_000;
/// Width of the longest bar.
const BAR_WIDTH: f64 = 40.0;

const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

/// Histograms (1 µs to 1 h, 3 significant digits) per upstream and phase.
#[derive(Default)]
pub struct Histograms {
    by: BTreeMap<String, BTreeMap<Phase, Histogram<u64>>>,
}

impl Histograms {
    /// Records the known phases of one exchange of `upstream`.
    pub fn record(&mut self, upstream: &str, t: &Timings) {
        for (phase, value) in [
            (Phase::Connect, t.connect),
            (Phase::FirstByte, t.first_byte),
            (Phase::Total, t.total),
        ] {
            let Some(us) = value else { continue };
            // Look up by &str first: no allocation per exchange.
            if !self.by.contains_key(upstream) {
                self.by.insert(upstream.to_string(), BTreeMap::new());
            }
            let Some(phases) = self.by.get_mut(upstream) else {
                continue;
            };
            let h = phases.entry(phase).or_insert_with(|| {
                Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
            });
            h.saturating_record(us.clamp(1, HIGHEST_US));
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// One `{"event":"histogram",...}` object per upstream and phase.
    pub fn to_json(&self) -> Vec<Value> {
        self.by
            .iter()
            .flat_map(|(upstream, phases)| {
                phases.iter().map(move |(phase, h)| (upstream, phase, h))
            })
            .map(|(upstream, phase, h)| {
                json!({
                    "event": "histogram",
                    "upstream": upstream,
                    "phase": phase.as_str(),
                    "count": h.len(),
                    "p50_us": h.value_at_quantile(0.5),
                    "p90_us": h.value_at_quantile(0.9),
                    "p99_us": h.value_at_quantile(0.99),
                    "p999_us": h.value_at_quantile(0.999),
                    "max_us": h.max(),
                })
            })
            .collect()
    }

    /// Per upstream and phase: the count, then one bar per percentile on a
    /// log scale shared by the phase's values, so shapes compare at a glance.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (upstream, phases) in &self.by {
            text.push_str(&format!("{upstream}\n"));
            for (phase, h) in phases {
                Self::phase_text(&mut text, *phase, h);
            }
        }
        text
    }

    fn phase_text(text: &mut String, phase: Phase, h: &Histogram<u64>) {
        text.push_str(&format!("  {:<10} n={}\n", phase.as_str(), h.len()));
        let scale = ((h.max() + 1) as f64).ln().max(1.0);
        for (name, pct) in PERCENTILES {
            let v = if pct >= 100.0 {
                h.max()
            } else {
                h.value_at_percentile(pct)
            };
            let len = (((v + 1) as f64).ln() / scale * BAR_WIDTH).round() as usize;
            text.push_str(&format!(
                "    {name:<5} {:>9} {}\n",
                human_us(v),
                "█".repeat(len.max(1))
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_byte(us: u64) -> Timings {
        Timings {
            first_byte: Some(us),
            total: Some(us + 200),
            ..Timings::default()
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histograms::default();
        // 1000 exchanges: first byte 1 ms .. 1000 ms.
        for ms in 1..=1000 {
            h.record("127.0.0.1:8080", &first_byte(ms * 1000));
        }
        let events = h.to_json();
        let fb = events.iter().find(|e| e["phase"] == "first_byte").unwrap();
        assert_eq!(fb["count"], 1000);
        let p50 = fb["p50_us"].as_u64().unwrap();
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        let p99 = fb["p99_us"].as_u64().unwrap();
        assert!((989_000..=991_000).contains(&p99), "{p99}");
        // 3 significant digits: max within 0.1%.
        let max = fb["max_us"].as_u64().unwrap();
        assert!((999_000..=1_001_000).contains(&max), "{max}");
        assert!(
            events.iter().all(|e| e["phase"] != "connect"),
            "no connect recorded"
        );
    }

    #[test]
    fn an_hour_long_wait_is_kept_and_longer_is_clamped() {
        let mut h = Histograms::default();
        h.record("u", &first_byte(3_600_000_000));
        h.record("u", &first_byte(10_000_000_000));
        let fb = &h.to_json()[0];
        assert_eq!(fb["count"], 2);
        assert!(fb["max_us"].as_u64().unwrap() >= 3_599_000_000);
    }

    #[test]
    fn text_has_a_bar_per_percentile_longest_for_max() {
        let mut h = Histograms::default();
        for us in [100, 200, 400, 100_000] {
            h.record("unix:/run/php/php8.2-fpm.sock", &first_byte(us));
        }
        let text = h.to_text();
        assert!(
            text.starts_with("unix:/run/php/php8.2-fpm.sock\n  first_byte n=4\n"),
            "{text}"
        );
        let bar = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .map(|l| l.matches('█').count())
                .unwrap()
        };
        assert!(bar("max") > bar("p50"), "{text}");
        assert_eq!(bar("max"), 40, "{text}");
    }
}
