//! How late the tracer's lines are: when each arrived (the harness stamps
//! it, [`crate::tracer::RECEIVED_US`]), against the kernel's time in the
//! event and nginx's time in its access log.
use serde_json::Value;

/// When the event's line arrived at the harness, seconds since the epoch.
pub fn received_s(event: &Value) -> f64 {
    event[crate::tracer::RECEIVED_US]
        .as_u64()
        .unwrap_or_else(|| panic!("an event without its arrival time: {event}")) as f64
        / 1e6
}

/// The event's `time` (RFC 3339, the kernel's time of the outcome), seconds
/// since the epoch.
pub fn event_time_s(event: &Value) -> f64 {
    let text = event["time"]
        .as_str()
        .unwrap_or_else(|| panic!("an event without `time`: {event}"));
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("`time` is not RFC 3339 ({e}): {event}"))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a time after the epoch")
        .as_secs_f64()
}

/// Pairs the `logged` times of some failures (nginx's `$msec`) with the
/// times the tracer's lines for them arrived (`received`), both sorted,
/// earliest with earliest; returns the pairs (logged, received) where the
/// line came more than `allowance` seconds after nginx logged: the lines
/// that were late. Lines missing altogether are not in it: counts are
/// compared apart.
pub fn late(logged: &[f64], received: &[f64], allowance: f64) -> Vec<(f64, f64)> {
    let mut logged = logged.to_vec();
    let mut received = received.to_vec();
    logged.sort_by(f64::total_cmp);
    received.sort_by(f64::total_cmp);
    logged
        .into_iter()
        .zip(received)
        .filter(|(l, r)| r - l > allowance)
        .collect()
}
