//! Per-upstream outcome counts, printed when tracing stops.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{capped::NameCap, diagnosis::verdict::Outcome, report::output::Text};

/// Upstreams counted by name; later ones are counted under `other` (a few
/// hundred bytes each: this bounds the summary whatever the traced
/// processes connect to).
pub const MAX_UPSTREAMS: usize = 256;

/// `{"event":"summary",...}`: outcome counts per upstream, printed once
/// when tracing stops.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryEvent {
    /// Always `"summary"`.
    pub event: &'static str,
    /// One entry per upstream seen, in name order.
    pub upstreams: Vec<UpstreamSummary>,
    /// Distinct upstreams counted under `other`, past the first
    /// [`MAX_UPSTREAMS`].
    pub folded_upstreams: u64,
}

/// The counts of one upstream in a [`SummaryEvent`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamSummary {
    /// The upstream, as nginx names it.
    pub upstream: String,
    /// Connect attempts and exchanges counted: the sum of `outcomes` and
    /// `cut_by_stop`.
    pub total: u64,
    /// Count per outcome (its JSON spelling); outcomes never seen are left out.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Exchanges still waiting for their answer (or connecting) when tracing
    /// stopped: each was reported by a final `pending` event.
    pub cut_by_stop: u64,
}

/// Outcome counts per upstream, for at most [`MAX_UPSTREAMS`] names (the
/// rest under `other`).
#[derive(Debug)]
pub struct Summary {
    counts: BTreeMap<String, BTreeMap<Outcome, u64>>,
    /// Exchanges in flight when tracing stopped, per upstream.
    cut: BTreeMap<String, u64>,
    names: NameCap,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            counts: BTreeMap::new(),
            cut: BTreeMap::new(),
            names: NameCap::new(MAX_UPSTREAMS),
        }
    }
}

impl Summary {
    /// The key of `upstream` (itself or `other`) and its counts, made if new.
    fn entry<'a>(&mut self, upstream: &'a str) -> (&'a str, &mut BTreeMap<Outcome, u64>) {
        // Look up by &str first: no allocation per exchange.
        let key = self.names.key(upstream, self.counts.contains_key(upstream));
        if !self.counts.contains_key(key) {
            self.counts.insert(key.to_string(), BTreeMap::new());
        }
        let outcomes = self.counts.get_mut(key).expect("inserted above");
        (key, outcomes)
    }

    /// Counts one outcome for `upstream`.
    pub fn add(&mut self, upstream: &str, outcome: Outcome) {
        *self.entry(upstream).1.entry(outcome).or_default() += 1;
    }

    /// Counts an exchange of `upstream` still in flight when tracing stopped.
    pub fn add_cut_by_stop(&mut self, upstream: &str) {
        let key = self.entry(upstream).0;
        if let Some(n) = self.cut.get_mut(key) {
            *n += 1;
        } else {
            self.cut.insert(key.to_string(), 1);
        }
    }

    /// The `summary` event of the counts so far.
    pub fn to_event(&self) -> SummaryEvent {
        let upstreams = self
            .counts
            .iter()
            .map(|(upstream, outcomes)| {
                let cut_by_stop = self.cut.get(upstream).copied().unwrap_or(0);
                UpstreamSummary {
                    upstream: upstream.clone(),
                    total: outcomes.values().sum::<u64>() + cut_by_stop,
                    outcomes: outcomes.iter().map(|(o, n)| (o.as_str(), *n)).collect(),
                    cut_by_stop,
                }
            })
            .collect();
        SummaryEvent {
            event: "summary",
            upstreams,
            folded_upstreams: self.names.folded(),
        }
    }

    /// A table: one line per upstream with its counts (one row each, so
    /// that a newline in an upstream's name is escaped, not a new row).
    pub fn to_text(&self) -> Text {
        if self.counts.is_empty() {
            return Text::Line("summary: no upstream connection seen".into());
        }
        let mut rows = vec![String::from("summary (outcomes per upstream):")];
        for (upstream, outcomes) in &self.counts {
            let mut parts: Vec<String> = outcomes
                .iter()
                .map(|(o, n)| format!("{} {n}", o.as_str()))
                .collect();
            if let Some(cut) = self.cut.get(upstream) {
                parts.push(format!("cut by stop {cut}"));
            }
            rows.push(format!("  {upstream:<30} {}", parts.join(", ")));
        }
        if let Some(folded) = self.names.folded_text("upstreams") {
            rows.push(format!("  ({folded})"));
        }
        Text::Rows(rows)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn three_upstreams() -> Summary {
        let mut s = Summary::default();
        s.add("127.0.0.1:3999", Outcome::Refused);
        s.add("127.0.0.1:3999", Outcome::Refused);
        s.add("127.0.0.1:3999", Outcome::Ok);
        s.add("unix:/run/php.sock", Outcome::NotFound);
        s
    }

    #[test]
    fn counts_per_upstream_and_outcome() {
        let s = three_upstreams();
        let e = s.to_event();
        assert_eq!(e.upstreams[0].upstream, "127.0.0.1:3999");
        assert_eq!(e.upstreams[0].total, 3);
        assert_eq!(e.upstreams[0].outcomes["refused"], 2);
        assert_eq!(e.upstreams[1].outcomes["not_found"], 1);
        let text = s.to_text().raw().into_owned();
        assert!(text.contains("127.0.0.1:3999"));
        assert!(text.contains("ok 1, refused 2"), "{text}");
    }

    #[test]
    fn a_hostile_upstream_name_stays_in_its_row() {
        let mut s = three_upstreams();
        s.add(
            "unix:/run/\x1b]52;c;aGk=\x07\n  127.0.0.1:1 ok 9.sock",
            Outcome::Refused,
        );
        let shown = s.to_text().escaped().into_owned();
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert!(
            shown.contains("\\x1b]52;c;aGk=\\x07\\n  127.0.0.1:1"),
            "{shown}"
        );
    }

    #[test]
    fn json_schema_of_a_summary() {
        let mut s = three_upstreams();
        s.add_cut_by_stop("unix:/run/php.sock");
        assert_eq!(
            serde_json::to_value(s.to_event()).unwrap(),
            json!({
                "event": "summary",
                "upstreams": [
                    {
                        "upstream": "127.0.0.1:3999",
                        "total": 3,
                        "outcomes": {"ok": 1, "refused": 2},
                        "cut_by_stop": 0,
                    },
                    {
                        "upstream": "unix:/run/php.sock",
                        "total": 2,
                        "outcomes": {"not_found": 1},
                        "cut_by_stop": 1,
                    },
                ],
                "folded_upstreams": 0,
            })
        );
    }

    #[test]
    fn an_empty_summary_has_no_upstreams() {
        assert_eq!(
            serde_json::to_value(Summary::default().to_event()).unwrap(),
            json!({"event": "summary", "upstreams": [], "folded_upstreams": 0})
        );
    }

    #[test]
    fn upstreams_past_the_cap_fold_into_other_with_exact_totals() {
        let mut s = Summary::default();
        for i in 0..10_000 {
            let name = format!("unix:/tmp/hostile/{i}.sock");
            s.add(&name, Outcome::Refused);
            s.add(&name, Outcome::Ok);
        }
        s.add_cut_by_stop("unix:/tmp/hostile/9999.sock");
        s.add_cut_by_stop("unix:/tmp/hostile/0.sock");
        let e = s.to_event();
        assert_eq!(e.upstreams.len(), MAX_UPSTREAMS + 1);
        assert_eq!(e.folded_upstreams, 10_000 - MAX_UPSTREAMS as u64);
        assert_eq!(e.upstreams.iter().map(|u| u.total).sum::<u64>(), 20_002);
        let other = e.upstreams.iter().find(|u| u.upstream == "other").unwrap();
        assert_eq!(other.outcomes["refused"], 10_000 - MAX_UPSTREAMS as u64);
        assert_eq!(other.cut_by_stop, 1);
        let zero = e
            .upstreams
            .iter()
            .find(|u| u.upstream == "unix:/tmp/hostile/0.sock");
        assert_eq!(zero.unwrap().cut_by_stop, 1);
        let text = s.to_text().raw().into_owned();
        assert!(
            text.ends_with("(9744 further upstreams (past the first 256) counted as \"other\")"),
            "{text}"
        );
    }
}
