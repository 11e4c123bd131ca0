//! The kernel's rate limit on host-wide sources: fatal signals and failed
//! exits of processes other than traced nginx ones. Any process on the
//! host can make them as fast as it likes (a loop of `kill()` or of
//! `fork(); _exit(1)`), and they share the ring buffer with nginx's
//! records: past the limit they are dropped in the kernel and counted
//! ([`crate::LOST_FATES_LIMITED`]), so a noisy neighbour costs the reader
//! at most a fixed rate, and never the records of nginx's failures.
//!
//! A token bucket per CPU and per source, kept as one number (the generic
//! cell rate algorithm): when the bucket is full again. One load, one
//! compare, one store per record; no division in the kernel.

/// Records one CPU may send per second for one source, on average. A real
/// host's backends die far less often; a flood of them is not news.
pub const FATES_PER_SECOND: u64 = 1000;
/// Records one CPU may send back to back after a quiet spell.
pub const FATES_BURST: u64 = 1000;
/// Time one record takes from the bucket, ns.
const INTERVAL_NS: u64 = 1_000_000_000 / FATES_PER_SECOND;

/// Whether a record at `now_ns` fits the bucket whose state is
/// `full_at_ns` (when the bucket is full again; 0 for a bucket never
/// used): `Some(new state)` when it does, `None` when it is over the
/// limit (the state is unchanged: a dropped record takes nothing).
#[inline(always)]
pub fn admit(full_at_ns: u64, now_ns: u64) -> Option<u64> {
    let from = if full_at_ns > now_ns {
        full_at_ns
    } else {
        now_ns
    };
    // Room for one more while the debt stays within the burst.
    if from - now_ns > (FATES_BURST - 1) * INTERVAL_NS {
        return None;
    }
    Some(from + INTERVAL_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000 * MS;

    /// Records admitted out of `n` made evenly over `span_ns` from `start`,
    /// with the bucket's state before and after.
    fn offer(state: &mut u64, start: u64, span_ns: u64, n: u64) -> u64 {
        let mut admitted = 0;
        for i in 0..n {
            if let Some(next) = admit(*state, start + span_ns * i / n) {
                *state = next;
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn a_burst_takes_the_bucket_then_the_rate_is_the_limit() {
        let mut state = 0;
        // 10,000 at once (a kill loop's first millisecond): the burst only.
        assert_eq!(offer(&mut state, SECOND, 0, 10_000), FATES_BURST);
        // Then 5,000/s for 10 s: 1,000/s get through, within one record.
        let admitted = offer(&mut state, SECOND, 10 * SECOND, 50_000);
        assert!(
            (10 * FATES_PER_SECOND - 1..=10 * FATES_PER_SECOND + 1).contains(&admitted),
            "{admitted} admitted at 5,000/s for 10 s"
        );
    }

    #[test]
    fn a_rate_under_the_limit_loses_nothing_and_a_quiet_second_refills() {
        let mut state = 0;
        // 900/s for a minute: every one.
        assert_eq!(offer(&mut state, SECOND, 60 * SECOND, 54_000), 54_000);
        // Emptied at once, then after a quiet second a full burst again.
        let now = 62 * SECOND;
        offer(&mut state, now, 0, 5_000);
        assert_eq!(admit(state, now + MS / 2), None, "empty bucket");
        assert_eq!(offer(&mut state, now + SECOND, 0, 5_000), FATES_BURST);
    }

    #[test]
    fn a_dropped_record_takes_nothing_from_the_bucket() {
        let mut state = 0;
        offer(&mut state, SECOND, 0, FATES_BURST);
        let full = state;
        assert_eq!(admit(full, SECOND), None);
        // One interval later exactly one more fits, however many were
        // refused meanwhile.
        let one_more = admit(full, SECOND + INTERVAL_NS).expect("one interval later");
        assert_eq!(admit(one_more, SECOND + INTERVAL_NS), None, "and only one");
    }
}
