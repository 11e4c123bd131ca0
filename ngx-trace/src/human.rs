//! Numbers and errors as a person reads them, and as nginx prints them.

/// `1.5 ms`, `1.50 s`: the unit a person expects for the size.
pub fn human_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else {
        format!("{:.1} ms", us as f64 / 1e3)
    }
}

/// A duration in µs, short, with a unit that fits it (loopback connects
/// take microseconds, timeouts seconds).
pub fn short_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..10_000 => format!("{:.2} ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// One unit for a set of durations (µs, ms or s, chosen by the largest),
/// so values printed one under another compare digit for digit. Decimals
/// down to 10 µs in ms and 1 ms in s: the small values of a block whose
/// largest is seconds still read as more than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Whole microseconds: loopback connects, UNIX sockets.
    Micros,
    /// Milliseconds, two decimals.
    Millis,
    /// Seconds, three decimals.
    Seconds,
}

impl Unit {
    /// The unit that prints `max_us` with 1 to 3 digits before the point.
    pub fn for_max(max_us: u64) -> Self {
        match max_us {
            0..1_000 => Self::Micros,
            1_000..1_000_000 => Self::Millis,
            _ => Self::Seconds,
        }
    }

    /// `us` in this unit, with its symbol.
    pub fn format(self, us: u64) -> String {
        match self {
            Self::Micros => format!("{us} µs"),
            Self::Millis => format!("{:.2} ms", us as f64 / 1e3),
            Self::Seconds => format!("{:.3} s", us as f64 / 1e6),
        }
    }
}

/// `1 retransmit`, `2 retransmits`.
pub fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The C library's text for `errno`, as nginx prints it.
pub fn strerror(errno: u32) -> String {
    let text = std::io::Error::from_raw_os_error(errno as i32).to_string();
    match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_switch_to_seconds_at_one_second() {
        assert_eq!(human_us(92), "0.1 ms");
        assert_eq!(human_us(999_949), "999.9 ms");
        assert_eq!(human_us(1_000_000), "1.00 s");
        assert_eq!(human_us(60_000_000), "60.00 s");
    }

    #[test]
    fn durations_are_short_with_the_unit_that_fits() {
        assert_eq!(short_us(22), "22 µs");
        assert_eq!(short_us(1_840), "1.84 ms");
        assert_eq!(short_us(300_412), "300.4 ms");
        assert_eq!(short_us(2_100_000), "2.10 s");
    }

    #[test]
    fn errno_texts_are_glibcs() {
        assert_eq!(strerror(111), "Connection refused");
        assert_eq!(strerror(110), "Connection timed out");
        assert_eq!(strerror(11), "Resource temporarily unavailable");
        assert_eq!(plural(1, "SYN retransmit"), "1 SYN retransmit");
        assert_eq!(plural(0, "retransmit"), "0 retransmits");
    }
}
