//! Latency histograms per upstream and phase, for tuning
//! `proxy_connect_timeout` and `proxy_read_timeout` from real numbers.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    capped::{NameCap, OTHER},
    diagnosis::timings::Timings,
    human::Unit,
};

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
/// Upstreams given histograms of their own; later ones are counted under
/// `other`. A phase's histogram grows with the largest value it holds, up to
/// 188 KB for an hour: 64 names of 3 phases stay under 40 MB whatever the
/// traced processes connect to.
pub const MAX_UPSTREAMS: usize = 64;
/// Width of the longest bar.
const BAR_WIDTH: f64 = 40.0;

const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

/// `{"event":"histogram",...}`: the latency percentiles of one upstream and
/// phase, cumulative since start.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistogramEvent {
    /// Always `"histogram"`.
    pub event: &'static str,
    /// The upstream, as nginx names it.
    pub upstream: String,
    /// `connect`, `first_byte` or `total` (see [`Phase`]).
    pub phase: &'static str,
    /// Values recorded.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest value, µs (to 3 significant digits, as every value here).
    pub max_us: u64,
    /// On the `other` upstream's events only: how many distinct upstreams
    /// it counts (those past the first [`MAX_UPSTREAMS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded_upstreams: Option<u64>,
}

impl HistogramEvent {
    /// The event for the histogram `h` of `upstream`'s `phase`.
    pub fn new(upstream: &str, phase: Phase, h: &Histogram<u64>) -> Self {
        Self {
            event: "histogram",
            upstream: upstream.to_string(),
            phase: phase.as_str(),
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            folded_upstreams: None,
        }
    }
}

/// Histograms (1 µs to 1 h, 3 significant digits) per upstream and phase,
/// for at most [`MAX_UPSTREAMS`] upstreams (the rest are `other`).
pub struct Histograms {
    by: BTreeMap<String, BTreeMap<Phase, Histogram<u64>>>,
    names: NameCap,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            by: BTreeMap::new(),
            names: NameCap::new(MAX_UPSTREAMS),
        }
    }
}

impl Histograms {
    /// Records the known phases of one exchange of `upstream`.
    pub fn record(&mut self, upstream: &str, t: &Timings) {
        let phases = [
            (Phase::Connect, t.connect),
            (Phase::FirstByte, t.first_byte),
            (Phase::Total, t.total),
        ];
        if phases.iter().all(|(_, v)| v.is_none()) {
            return;
        }
        // Look up by &str first: no allocation per exchange.
        let key = self.names.key(upstream, self.by.contains_key(upstream));
        if !self.by.contains_key(key) {
            self.by.insert(key.to_string(), BTreeMap::new());
        }
        let Some(by_phase) = self.by.get_mut(key) else {
            return;
        };
        for (phase, value) in phases {
            let Some(us) = value else { continue };
            // Auto-resizing: a histogram costs what its largest value needs
            // (a few KB for milliseconds), not the 188 KB of an hour.
            let h = by_phase.entry(phase).or_insert_with(|| {
                let mut h = Histogram::new(3).expect("valid histogram precision");
                h.auto(true);
                h
            });
            // `record` resizes (`saturating_record` would clamp to the
            // current size instead); it fails only if memory runs out.
            let us = us.clamp(1, HIGHEST_US);
            if h.record(us).is_err() {
                h.saturating_record(us);
            }
        }
    }

    /// Distinct upstreams counted under `other`.
    pub fn folded(&self) -> u64 {
        self.names.folded()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// One event per upstream and phase, upstreams in name order.
    pub fn to_events(&self) -> Vec<HistogramEvent> {
        self.by
            .iter()
            .flat_map(|(upstream, phases)| {
                let folded = (upstream == OTHER && self.folded() > 0).then(|| self.folded());
                phases.iter().map(move |(phase, h)| HistogramEvent {
                    folded_upstreams: folded,
                    ..HistogramEvent::new(upstream, *phase, h)
                })
            })
            .collect()
    }

    /// Per upstream and phase: the count, then one bar per percentile on a
    /// log scale shared by the phase's values, so shapes compare at a glance.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (upstream, phases) in &self.by {
            // A name on its own line: a newline inside it must not start one.
            text.push_str(&format!("{}\n", crate::sanitize::line(upstream)));
            for (phase, h) in phases {
                Self::phase_text(&mut text, *phase, h);
            }
        }
        if let Some(folded) = self.names.folded_text("upstreams") {
            text.push_str(&format!("({folded})\n"));
        }
        text
    }

    fn phase_text(text: &mut String, phase: Phase, h: &Histogram<u64>) {
        text.push_str(&format!("  {:<10} n={}\n", phase.as_str(), h.len()));
        let scale = ((h.max() + 1) as f64).ln().max(1.0);
        // One unit for the block: a microsecond connect must not read 0.0 ms.
        let unit = Unit::for_max(h.max());
        for (name, pct) in PERCENTILES {
            let v = if pct >= 100.0 {
                h.max()
            } else {
                h.value_at_percentile(pct)
            };
            let len = (((v + 1) as f64).ln() / scale * BAR_WIDTH).round() as usize;
            text.push_str(&format!(
                "    {name:<5} {:>9} {}\n",
                unit.format(v),
                "█".repeat(len.max(1))
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        let events = h.to_events();
        let fb = events.iter().find(|e| e.phase == "first_byte").unwrap();
        assert_eq!(fb.count, 1000);
        assert!((499_000..=501_000).contains(&fb.p50_us), "{fb:?}");
        assert!((989_000..=991_000).contains(&fb.p99_us), "{fb:?}");
        // 3 significant digits: max within 0.1%.
        assert!((999_000..=1_001_000).contains(&fb.max_us), "{fb:?}");
        assert!(
            events.iter().all(|e| e.phase != "connect"),
            "no connect recorded"
        );
    }

    #[test]
    fn a_newline_in_an_upstream_name_starts_no_line() {
        let mut h = Histograms::default();
        h.record("unix:/run/x\n2026/01/01 [error] forged", &first_byte(1000));
        let text = h.to_text();
        assert!(text.lines().all(|l| !l.starts_with("2026/01/01")), "{text}");
        assert!(
            text.contains("unix:/run/x\\n2026/01/01 [error] forged"),
            "{text}"
        );
    }

    #[test]
    fn json_schema_of_a_histogram() {
        let mut h = Histograms::default();
        // Below 2048 µs every value is exact at 3 significant digits.
        for us in [61, 92, 164] {
            let t = Timings {
                connect: Some(us),
                ..Timings::default()
            };
            h.record("127.0.0.1:8080", &t);
        }
        let events = h.to_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            serde_json::to_value(&events[0]).unwrap(),
            json!({
                "event": "histogram",
                "upstream": "127.0.0.1:8080",
                "phase": "connect",
                "count": 3,
                "p50_us": 92,
                "p90_us": 164,
                "p99_us": 164,
                "p999_us": 164,
                "max_us": 164,
            })
        );
    }

    #[test]
    fn an_hour_long_wait_is_kept_and_longer_is_clamped() {
        let mut h = Histograms::default();
        h.record("u", &first_byte(3_600_000_000));
        h.record("u", &first_byte(10_000_000_000));
        let fb = &h.to_events()[0];
        assert_eq!(fb.count, 2);
        assert!(fb.max_us >= 3_599_000_000, "{fb:?}");
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

    #[test]
    fn each_phase_block_has_one_unit_fitting_its_largest_value() {
        let mut h = Histograms::default();
        // A loopback connect of 35 µs and one of 180 µs: no "0.0 ms".
        for us in [35, 180] {
            h.record(
                "127.0.0.1:9",
                &Timings {
                    connect: Some(us),
                    ..Timings::default()
                },
            );
        }
        for us in [4_000, 1_500_000] {
            h.record("127.0.0.1:9", &first_byte(us));
        }
        let text = h.to_text();
        let rows = |phase: &str| -> Vec<String> {
            text.lines()
                .skip_while(|l| !l.trim_start().starts_with(phase))
                .skip(1)
                .take(PERCENTILES.len())
                .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
                .collect()
        };
        assert_eq!(rows("connect"), ["µs"; PERCENTILES.len()], "{text}");
        assert!(text.contains(" 35 µs "), "{text}");
        assert!(text.contains(" 180 µs "), "{text}");
        assert_eq!(rows("first_byte"), ["s"; PERCENTILES.len()], "{text}");
        // The small value of a block in seconds still reads as non-zero.
        assert!(text.contains(" 0.004 s "), "{text}");
        assert!(text.contains(" 1.500 s "), "{text}");
        assert_eq!(Unit::for_max(999_999).format(2_500), "2.50 ms");
    }

    #[test]
    fn upstreams_past_the_cap_fold_into_other_with_exact_totals() {
        let mut h = Histograms::default();
        // A neighbour connecting to a new UNIX path per call.
        for i in 0..1000u64 {
            h.record(&format!("unix:/tmp/n{i}.sock"), &first_byte(1000 + i));
        }
        let events = h.to_events();
        let first_bytes: Vec<_> = events.iter().filter(|e| e.phase == "first_byte").collect();
        assert_eq!(first_bytes.len(), MAX_UPSTREAMS + 1, "{first_bytes:?}");
        assert_eq!(first_bytes.iter().map(|e| e.count).sum::<u64>(), 1000);
        let other = first_bytes.iter().find(|e| e.upstream == "other").unwrap();
        assert_eq!(other.count, 1000 - MAX_UPSTREAMS as u64);
        assert_eq!(other.folded_upstreams, Some(1000 - MAX_UPSTREAMS as u64));
        assert_eq!(h.folded(), 1000 - MAX_UPSTREAMS as u64);
        assert!(
            h.to_text()
                .contains("(936 further upstreams (past the first 64) counted as \"other\")"),
            "{}",
            h.to_text()
        );
        // Only named upstreams' events lack the field.
        assert!(
            first_bytes
                .iter()
                .filter(|e| e.upstream != "other")
                .all(|e| e.folded_upstreams.is_none())
        );
    }

    #[test]
    fn a_histogram_grows_only_to_its_largest_value() {
        let mut h = Histograms::default();
        h.record("127.0.0.1:8080", &first_byte(1000));
        let small = h.by["127.0.0.1:8080"][&Phase::FirstByte].distinct_values();
        h.record("127.0.0.1:8081", &first_byte(3_600_000_000));
        let large = h.by["127.0.0.1:8081"][&Phase::FirstByte].distinct_values();
        // 8 bytes a counter: a few KB for 1 ms, the full 188 KB for an hour.
        assert!(small * 8 < 32 * 1024, "{small} counters for 1 ms");
        assert!(large > 4 * small, "{large} counters for an hour");
    }
}
