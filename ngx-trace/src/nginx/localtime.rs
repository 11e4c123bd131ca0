//! The local time a process writes its logs in: nginx's error log has no
//! zone, so its lines are put on UTC with the offset of nginx's own time
//! zone (its `TZ`, else the `/etc/localtime` of its root, which differs
//! from the host's in a container). The zone is read as data, as the C
//! library would find it, with the process's own rights inside its root
//! (`confined`): a zone file named by a traced process is parsed, never
//! handed to a program run as root.
use jiff::{Timestamp, tz::TimeZone};

use crate::nginx::confined::Process;

/// Bytes of a zone file read at most (real ones are a few KiB).
const MAX_ZONE_FILE: u64 = 1 << 20;

/// Where the C library looks for zone names.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Seconds that `pid`'s local time is ahead of UTC now; this process's
/// own when `pid` is `None`; 0 when its zone cannot be read.
pub fn utc_offset_s(pid: Option<u32>) -> i64 {
    let pid = pid.unwrap_or_else(std::process::id);
    let tz = std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|environ| tz_variable(&environ));
    let zone = Process::open(pid).ok().and_then(|process| {
        process
            .with_reader(|reader| zone(tz.as_deref(), |path| reader.read(path, MAX_ZONE_FILE).ok()))
            .ok()
            .flatten()
    });
    zone.map_or(0, |z| i64::from(z.to_offset(Timestamp::now()).seconds()))
}

/// The value of `TZ` in an environment block (`NAME=value\0...`).
fn tz_variable(environ: &[u8]) -> Option<String> {
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"TZ="))
        .map(|tz| String::from_utf8_lossy(tz).into_owned())
}

/// The zone `TZ` gives, as glibc reads it: unset, `/etc/localtime`; empty,
/// UTC; `:file` or a name, that file (a relative one under the zone
/// directory); else a POSIX rule (`CET-1CEST,M3.5.0,M10.5.0/3`). `read`
/// gives a file's bytes. `None` when nothing fits.
fn zone(tz: Option<&str>, read: impl Fn(&str) -> Option<Vec<u8>>) -> Option<TimeZone> {
    let file = |name: &str| {
        let path = if name.starts_with('/') {
            name.to_string()
        } else {
            format!("{ZONEINFO}/{name}")
        };
        TimeZone::tzif(name, &read(&path)?).ok()
    };
    match tz {
        None => file("/etc/localtime"),
        Some("") => Some(TimeZone::UTC),
        Some(name) => match name.strip_prefix(':') {
            Some(name) => file(name),
            None => file(name).or_else(|| TimeZone::posix(name).ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    fn offset_at(zone: &TimeZone, time: &str) -> i32 {
        zone.to_offset(time.parse().unwrap()).seconds()
    }

    #[test]
    fn tz_names_rules_and_files_give_their_offsets() {
        let paris = zone(Some("Europe/Paris"), read).expect("tzdata's Europe/Paris");
        assert_eq!(offset_at(&paris, "2026-01-15T12:00:00Z"), 3600);
        assert_eq!(offset_at(&paris, "2026-07-15T12:00:00Z"), 7200);
        let colon = zone(Some(":/usr/share/zoneinfo/Asia/Kolkata"), read).unwrap();
        assert_eq!(offset_at(&colon, "2026-01-15T12:00:00Z"), 19800);
        let rule = zone(Some("EST5EDT,M3.2.0,M11.1.0"), read).unwrap();
        assert_eq!(offset_at(&rule, "2026-01-15T12:00:00Z"), -5 * 3600);
        assert_eq!(offset_at(&rule, "2026-07-15T12:00:00Z"), -4 * 3600);
        assert_eq!(zone(Some(""), read), Some(TimeZone::UTC));
        assert!(zone(Some(":/etc/passwd"), read).is_none());
        assert!(zone(Some("no such zone!"), read).is_none());
    }

    #[test]
    fn the_tz_variable_is_found_in_an_environment_block() {
        assert_eq!(
            tz_variable(b"HOME=/\0TZ=Europe/Paris\0LANG=C\0").as_deref(),
            Some("Europe/Paris")
        );
        assert_eq!(tz_variable(b"HOME=/\0XTZ=1\0"), None);
    }

    #[test]
    fn this_process_zone_is_read_from_its_root() {
        let expected = zone(std::env::var("TZ").ok().as_deref(), read)
            .map_or(0, |z| i64::from(z.to_offset(Timestamp::now()).seconds()));
        assert_eq!(utc_offset_s(Some(std::process::id())), expected);
        assert_eq!(utc_offset_s(None), expected);
    }
}
