//! Kernel timestamps (CLOCK_MONOTONIC) to wall-clock time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Now on the kernel programs' clock (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Converts `bpf_ktime_get_ns()` values to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, measured once.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset between the two clocks now.
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    /// The wall-clock time of a kernel timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// RFC 3339 in UTC with microseconds: `2026-11-26T07:12:33.123456Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_677_153_123_456);
        assert_eq!(rfc3339_micros(t), "2026-11-26T07:12:33.123456Z");
    }

    #[test]
    fn kernel_now_maps_to_wall_now() {
        let clock = Clock::new();
        let mono_now = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let skew = clock
            .wall(mono_now)
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }
}
