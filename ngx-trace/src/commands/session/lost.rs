//! The tally of records lost, undecodable or skipped, and when a `lost`
//! event is due: at once for records lost, at most every 10 s for
//! skipped hooks and rate-limited facts alone (they rise in bursts, and
//! one line per second would bury the events).
use std::time::{Duration, Instant};

use ngx_trace_common::{LOST_FATES_LIMITED, LOST_MAP_FULL, LOST_RINGBUF_FULL, LOST_SLOTS};

use crate::report::event::LostEvent;

/// Least time between two reports of hooks skipped alone.
pub(super) const SKIPPED_REPORT_EVERY: Duration = Duration::from_secs(10);

/// What was lost, and what was last reported of it.
#[derive(Debug, Default)]
pub(super) struct LostTally {
    /// Records lost, as last reported.
    reported: u64,
    /// Hooks skipped and facts rate-limited, as last reported, and when.
    skipped_reported: u64,
    skipped_reported_at: Option<Instant>,
    /// Records user space could not decode.
    bad_records: u64,
}

impl LostTally {
    /// Counts a record that did not decode.
    pub(super) fn bad_record(&mut self) {
        self.bad_records += 1;
    }

    /// Records lost so far, as last reported.
    pub(super) fn reported(&self) -> u64 {
        self.reported
    }

    /// Takes the kernel's running totals (`lost` per `LOST_*` slot, and the
    /// times it `skipped` a program) at `now`: the total of records lost
    /// (ring buffer full, map full, undecodable), and the `lost` event due
    /// now, if any (`last`: the session's end, where a rise of skipped
    /// hooks alone is said whatever the time).
    pub(super) fn take(
        &mut self,
        lost: [u64; LOST_SLOTS as usize],
        skipped: u64,
        last: bool,
        now: Instant,
    ) -> (u64, Option<LostEvent>) {
        let limited = lost[LOST_FATES_LIMITED as usize];
        let total =
            lost[LOST_RINGBUF_FULL as usize] + lost[LOST_MAP_FULL as usize] + self.bad_records;
        // `skipped_reported` keeps the sum of both uncounted tallies.
        let skipped = skipped + limited;
        let skip_due = skipped > self.skipped_reported
            && (last
                || self
                    .skipped_reported_at
                    .is_none_or(|at| now.duration_since(at) >= SKIPPED_REPORT_EVERY));
        if total <= self.reported && !skip_due {
            return (total, None);
        }
        let event = LostEvent::new(
            total.saturating_sub(self.reported),
            lost[LOST_RINGBUF_FULL as usize],
            lost[LOST_MAP_FULL as usize],
            self.bad_records,
            skipped - limited,
            limited,
        );
        self.reported = total;
        self.skipped_reported = skipped;
        self.skipped_reported_at = Some(now);
        (total, Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(ring: u64, map: u64, limited: u64) -> [u64; LOST_SLOTS as usize] {
        let mut lost = [0; LOST_SLOTS as usize];
        lost[LOST_RINGBUF_FULL as usize] = ring;
        lost[LOST_MAP_FULL as usize] = map;
        lost[LOST_FATES_LIMITED as usize] = limited;
        lost
    }

    #[test]
    fn lost_records_are_said_at_once_with_the_count_since_the_last_report() {
        let mut tally = LostTally::default();
        let t0 = Instant::now();
        assert_eq!(tally.take(slots(0, 0, 0), 0, false, t0), (0, None));
        let (total, event) = tally.take(slots(3, 1, 0), 0, false, t0);
        assert_eq!(total, 4);
        assert_eq!(event, Some(LostEvent::new(4, 3, 1, 0, 0, 0)));
        tally.bad_record();
        let (total, event) = tally.take(slots(5, 1, 0), 0, false, t0);
        assert_eq!(total, 7, "undecodable records are lost records");
        assert_eq!(event, Some(LostEvent::new(3, 5, 1, 1, 0, 0)));
        assert_eq!(tally.reported(), 7);
        assert_eq!(tally.take(slots(5, 1, 0), 0, false, t0), (7, None));
    }

    #[test]
    fn skipped_hooks_alone_are_said_at_most_every_ten_seconds_and_at_the_end() {
        let mut tally = LostTally::default();
        let t0 = Instant::now();
        let (_, event) = tally.take(slots(0, 0, 2), 5, false, t0);
        assert_eq!(event, Some(LostEvent::new(0, 0, 0, 0, 5, 2)));
        // Rising again within 10 s: not yet.
        let soon = t0 + Duration::from_secs(3);
        assert_eq!(tally.take(slots(0, 0, 2), 9, false, soon), (0, None));
        // ...unless the session ends.
        let (_, event) = tally.take(slots(0, 0, 2), 9, true, soon);
        assert_eq!(event, Some(LostEvent::new(0, 0, 0, 0, 9, 2)));
        // 10 s after the last report: said.
        let later = soon + SKIPPED_REPORT_EVERY;
        let (_, event) = tally.take(slots(0, 0, 4), 9, false, later);
        assert_eq!(event, Some(LostEvent::new(0, 0, 0, 0, 9, 4)));
        // A lost record is said at once, whenever.
        let (total, event) = tally.take(slots(1, 0, 4), 9, false, later);
        assert_eq!((total, event), (1, Some(LostEvent::new(1, 1, 0, 0, 9, 4))));
    }
}
