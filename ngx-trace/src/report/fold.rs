//! Folding of repeated failures in the text output: at thousands of
//! refusals a second one line each scrolls faster than anyone reads, and
//! hides the line that matters. The first failure of a kind (same
//! upstream, outcome and verdict) is printed at once; the ones that follow
//! within [`WINDOW_NS`] are counted, and printed as one line with the count
//! when the window ends. JSON output, the summary and the histograms are
//! not folded: they count every exchange.
//!
//! Each line is a [`Text::Line`]: one event, so the sink escapes any
//! newline in it (a socket path's) instead of starting a line with it.
use std::collections::HashMap;

use crate::report::output::Text;

/// How long a kind's repeats are folded into one line.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// Bound on the kinds followed at once (each is an upstream, outcome and
/// verdict: a host with more is rare; past it, windows end early).
const MAX_KINDS: usize = 4096;

/// What identifies a failure kind.
pub type Kind = (String, &'static str, &'static str);

/// One kind's current window.
struct Window {
    start_ns: u64,
    folded: u64,
    /// The text of the latest folded failure.
    last: String,
}

/// The windows of the kinds seen lately.
#[derive(Default)]
pub struct Folding {
    windows: HashMap<Kind, Window>,
}

impl Folding {
    /// Takes a failure of `kind` that ended at `now_ns`: `Some(line)` to
    /// print now: the failure itself when it is the first of its kind, or
    /// the line of the kind's window that just ended (this failure then
    /// starts the next window, folded); `None` when it is folded.
    pub fn admit(&mut self, kind: Kind, now_ns: u64, text: String) -> Option<Text> {
        if let Some(w) = self.windows.get_mut(&kind) {
            if now_ns.saturating_sub(w.start_ns) < WINDOW_NS {
                w.folded += 1;
                w.last = text;
                return None;
            }
            if w.folded > 0 {
                // Still failing: the past second's line, and fold on.
                let line = format!("{} ×{} in 1 s", w.last, w.folded);
                *w = Window {
                    start_ns: now_ns,
                    folded: 1,
                    last: text,
                };
                return Some(Text::Line(line));
            }
        }
        if self.windows.len() >= MAX_KINDS {
            // Far more kinds than any incident has: forget the windows with
            // nothing folded (the others' lines come at their second's end).
            self.windows.retain(|_, w| w.folded > 0);
        }
        self.windows.insert(
            kind,
            Window {
                start_ns: now_ns,
                folded: 0,
                last: String::new(),
            },
        );
        Some(Text::Line(text))
    }

    /// The lines of the windows ended by `now_ns` (all of them when
    /// `now_ns` is `u64::MAX`): one per window that folded failures, which
    /// starts the kind's next window (failures still coming are folded
    /// again, one line a second); a window with nothing folded ends, so that
    /// the kind's next failure prints at once.
    pub fn due(&mut self, now_ns: u64) -> Vec<Text> {
        let mut lines = Vec::new();
        self.windows.retain(|_, w| {
            let age = now_ns.saturating_sub(w.start_ns);
            if age < WINDOW_NS {
                return true;
            }
            if w.folded == 0 {
                return false;
            }
            lines.push(Text::Line(format!("{} ×{} in 1 s", w.last, w.folded)));
            w.start_ns = now_ns;
            w.folded = 0;
            now_ns != u64::MAX
        });
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(upstream: &str) -> Kind {
        (upstream.to_string(), "refused", "backend_down")
    }

    const S: u64 = WINDOW_NS;

    fn raw(lines: Vec<Text>) -> Vec<String> {
        lines.iter().map(|t| t.raw().into_owned()).collect()
    }

    #[test]
    fn a_burst_prints_its_first_failure_then_one_line_a_second() {
        let mut f = Folding::default();
        let mut printed = Vec::new();
        // 2000 refusals over 2.5 s.
        for i in 0..2000u64 {
            let now = 10 * S + i * (S * 5 / 4000);
            if let Some(line) = f.admit(kind("a:1"), now, format!("refused #{i}")) {
                printed.push(line.raw().into_owned());
            }
            if i % 40 == 0 {
                printed.extend(raw(f.due(now)));
            }
        }
        printed.extend(raw(f.due(20 * S)));
        printed.extend(raw(f.due(u64::MAX)));
        assert_eq!(printed[0], "refused #0");
        // The first, then one folded line per second that had repeats.
        assert!(printed.len() <= 4, "{printed:?}");
        // Every failure is in a line: itself, or a count.
        let counted: u64 = printed
            .iter()
            .map(|l| match l.split_once(" ×") {
                Some((_, n)) => n.split(' ').next().unwrap().parse::<u64>().unwrap(),
                None => 1,
            })
            .sum();
        assert_eq!(counted, 2000, "{printed:?}");
        assert_eq!(
            printed.iter().filter(|l| !l.contains('×')).count(),
            1,
            "{printed:?}"
        );
        assert!(printed[1].starts_with("refused #"), "{printed:?}");
        assert!(printed[1].ends_with(" in 1 s"), "{printed:?}");
    }

    #[test]
    fn a_late_look_loses_no_count() {
        let mut f = Folding::default();
        assert!(f.admit(kind("a:1"), S, "1".into()).is_some());
        assert!(f.admit(kind("a:1"), S + 5, "2".into()).is_none());
        // No look at the windows before the next failure, 1.5 s later.
        let line = f.admit(kind("a:1"), 2 * S + S / 2, "3".into());
        assert_eq!(line, Some(Text::Line("2 ×1 in 1 s".into())));
        assert_eq!(raw(f.due(4 * S)), ["3 ×1 in 1 s"]);
    }

    #[test]
    fn a_new_kind_is_printed_at_once_among_a_burst() {
        let mut f = Folding::default();
        assert!(f.admit(kind("a:1"), S, "a".into()).is_some());
        assert!(f.admit(kind("a:1"), S + 1, "a".into()).is_none());
        assert_eq!(
            f.admit(kind("b:2"), S + 2, "b".into()),
            Some(Text::Line("b".into()))
        );
        let other_verdict = ("a:1".to_string(), "refused", "network");
        assert!(f.admit(other_verdict, S + 3, "icmp".into()).is_some());
    }

    #[test]
    fn a_lone_failure_after_a_quiet_second_prints_at_once() {
        let mut f = Folding::default();
        assert!(f.admit(kind("a:1"), S, "1".into()).is_some());
        assert!(f.due(3 * S).is_empty());
        assert!(f.admit(kind("a:1"), 3 * S + 1, "2".into()).is_some());
    }

    #[test]
    fn a_folded_line_with_a_newline_in_its_path_prints_as_one_line() {
        let mut f = Folding::default();
        let hostile = "w1 unix:/run/x\n12:00:00.000 w1 127.0.0.1:80 ok refused".to_string();
        let first = f.admit(kind("unix:/run/x"), S, hostile.clone()).unwrap();
        assert!(f.admit(kind("unix:/run/x"), S + 1, hostile).is_none());
        for line in [first].into_iter().chain(f.due(3 * S)) {
            let shown = line.escaped();
            assert_eq!(shown.lines().count(), 1, "{shown}");
            assert!(shown.contains("unix:/run/x\\n12:00"), "{shown}");
        }
    }
}
