//! nginx's access log with the facts the scale tests compare the tracer
//! with: when each request ended, its status and its upstream.
use std::path::Path;

/// An `http {}` snippet defining the `timed` log format [`entries`] reads.
pub const TIMED_FORMAT: &str = "log_format timed '$msec $status \"$upstream_addr\" \
     $upstream_status $request_time $uri';";

/// A `server {}` directive logging every request to `{dir}/timed.log` in
/// the `timed` format (`{dir}` is replaced by
/// [`crate::nginx::Nginx::start`]). Not at the `http {}` level: the
/// harness's `access_log off` there would cancel it.
pub const TIMED_LOG: &str = "access_log {dir}/timed.log timed;";

/// One request as nginx logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When nginx logged it (`$msec`), seconds since the epoch.
    pub msec: f64,
    /// Its status (`499` when the client left).
    pub status: u16,
    /// `$upstream_addr`: `127.0.0.1:PORT`, or empty when no upstream was
    /// tried.
    pub upstream: String,
    /// `$request_time`, seconds.
    pub request_time: f64,
    /// `$uri`.
    pub uri: String,
}

/// Parses one line of the [`TIMED_LOG`] format.
pub fn parse(line: &str) -> Option<Entry> {
    let (msec, rest) = line.split_once(' ')?;
    let (status, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('"')?;
    let (upstream, rest) = rest.split_once('"')?;
    let mut fields = rest.split_whitespace();
    let _upstream_status = fields.next()?;
    let request_time = fields.next()?.parse().ok()?;
    let uri = fields.next()?.to_string();
    Some(Entry {
        msec: msec.parse().ok()?,
        status: status.parse().ok()?,
        upstream: if upstream == "-" {
            String::new()
        } else {
            upstream.to_string()
        },
        request_time,
        uri,
    })
}

/// Every entry of `{dir}/timed.log`; fails on a line it cannot read.
pub fn entries(dir: &Path) -> Vec<Entry> {
    let path = dir.join("timed.log");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| parse(l).unwrap_or_else(|| panic!("not a `timed` access log line: {l}")))
        .collect()
}

/// The tracer's outcome for an exchange nginx logged with `status`, where
/// the tests' locations make it unambiguous: 200 `ok`, 504 `no_response`
/// (a read timeout), 499 `client_closed`, 502 `refused` (nobody listens).
pub fn outcome_of(status: u16) -> Option<&'static str> {
    match status {
        200 => Some("ok"),
        504 => Some("no_response"),
        499 => Some("client_closed"),
        502 => Some("refused"),
        _ => None,
    }
}
