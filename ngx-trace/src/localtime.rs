//! The local time a process writes its logs in: nginx's error log has no
//! zone, so its lines are put on UTC with the offset of nginx's own time
//! zone (its `TZ`, else the `/etc/localtime` of its root, which differs
//! from the host's in a container). The C library does the zone rules: the
//! offset comes from `date +%z` run with that zone.
use std::process::Command;

/// Seconds that `pid`'s local time is ahead of UTC now; the host's when
/// `pid` is `None` or its zone cannot be read (0 if even that fails).
pub fn utc_offset_s(pid: Option<u32>) -> i64 {
    let zone = pid.and_then(zone_of);
    let mut date = Command::new("date");
    date.arg("+%z");
    if let Some(zone) = zone {
        date.env("TZ", zone);
    }
    date.output()
        .ok()
        .and_then(|out| parse_offset(&String::from_utf8_lossy(&out.stdout)))
        .unwrap_or(0)
}

/// The `TZ` value that gives `pid`'s zone.
fn zone_of(pid: u32) -> Option<String> {
    if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
        for var in environ.split(|&b| b == 0) {
            if let Some(tz) = var.strip_prefix(b"TZ=") {
                return Some(String::from_utf8_lossy(tz).into_owned());
            }
        }
    }
    let localtime = format!("/proc/{pid}/root/etc/localtime");
    std::path::Path::new(&localtime)
        .exists()
        .then(|| format!(":{localtime}"))
}

/// `+0100` → 3600, `-0530` → -19800.
pub fn parse_offset(text: &str) -> Option<i64> {
    let text = text.trim();
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    Some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_with_their_sign() {
        assert_eq!(parse_offset("+0100\n"), Some(3600));
        assert_eq!(parse_offset("-0530"), Some(-19800));
        assert_eq!(parse_offset("+0000"), Some(0));
        assert_eq!(parse_offset("UTC"), None);
        assert_eq!(parse_offset("+01"), None);
    }

    #[test]
    fn a_process_zone_is_taken_from_its_root() {
        // This test's own process: the host's zone either way.
        let ours = utc_offset_s(Some(std::process::id()));
        assert_eq!(ours, utc_offset_s(None));
    }
}
