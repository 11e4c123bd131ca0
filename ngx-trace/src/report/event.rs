//! The events ngx-trace prints: the JSON Lines schema and the text lines.
use serde::Serialize;

use crate::{
    diagnosis::fates::{FateFacts, PeerFacts},
    diagnosis::timings::Timings,
    diagnosis::verdict::Explanation,
    kernel::records::{Facts, Transport},
    kernel::request_head::Request,
};

/// TCP facts of an upstream event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TcpFacts {
    /// SYNs retransmitted while connecting.
    pub syn_retransmits: u32,
    /// Data retransmitted during the exchange (exchanges only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    /// Data the upstream's own socket retransmitted during the exchange
    /// (the response lost on its way back): seen only for an upstream on
    /// this host, shown when there were some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_retransmits: Option<u32>,
    /// Smoothed RTT, µs (when a segment came from the upstream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtt_us: Option<u32>,
}

/// `{"event":"upstream",...}`: one connect attempt or exchange of a worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamEvent {
    /// Always `"upstream"`.
    pub event: &'static str,
    /// When it ended, RFC 3339 UTC with microseconds.
    pub time: String,
    /// The nginx worker.
    pub worker_pid: u32,
    /// `127.0.0.1:3999`, `[::1]:8080` or `unix:/path`.
    pub upstream: String,
    /// `tcp` or `unix`.
    pub transport: &'static str,
    /// See [`crate::diagnosis::verdict::Outcome`].
    pub outcome: &'static str,
    /// The errno nginx prints, or null.
    pub errno: Option<u32>,
    /// The text nginx writes to its error log, when it writes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_error: Option<String>,
    /// See [`crate::diagnosis::verdict::Verdict`].
    pub verdict: &'static str,
    /// One sentence with the numbers.
    pub evidence: String,
    /// Phase durations.
    pub timings_us: Timings,
    /// TCP facts (TCP upstreams only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpFacts>,
    /// Whether the exchange ran on a kept-alive connection (exchanges only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused: Option<bool>,
    /// Response bytes nginx read (exchanges only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    /// The backend process holding the other end of a local upstream's
    /// connection, when it died or was signalled during the exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerFacts>,
    /// The request it served (left out when the kernel copied none, or its
    /// protocol is not readable: gRPC, TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// The `location` that passed it upstream, when the configuration and
    /// the request's path decide it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationRef>,
    /// The locations it may have come from, when they do not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub location_candidates: Vec<String>,
    /// Shown in text output only.
    #[serde(skip)]
    pub meaning: &'static str,
}

impl UpstreamEvent {
    /// The event for an explained connect attempt or exchange.
    pub fn new(
        time: String,
        ex: &Facts,
        transport: Transport,
        upstream: &str,
        e: Explanation,
    ) -> Self {
        // A connect attempt that failed carries no exchange facts.
        let connecting = !ex.connected;
        Self {
            event: "upstream",
            time,
            worker_pid: ex.worker_pid,
            upstream: upstream.to_string(),
            transport: transport.as_str(),
            outcome: e.outcome.as_str(),
            errno: e.errno,
            nginx_error: e.nginx_error,
            verdict: e.verdict.as_str(),
            evidence: e.evidence,
            timings_us: e.timings,
            tcp: (transport == Transport::Tcp).then_some(TcpFacts {
                syn_retransmits: ex.syn_retransmits,
                retransmits: (!connecting).then_some(ex.retransmits),
                peer_retransmits: (ex.peer_retransmits > 0).then_some(ex.peer_retransmits),
                srtt_us: ex.srtt_us,
            }),
            reused: (!connecting).then_some(ex.reused),
            response_bytes: (!connecting).then_some(ex.resp_bytes),
            peer: None,
            request: None,
            location: None,
            location_candidates: Vec::new(),
            meaning: e.meaning,
        }
    }

    /// One line of at most 80 columns where it can: time, worker, upstream
    /// (shortened from the left if need be), outcome, errno, meaning.
    pub fn to_text(&self) -> String {
        let clock = self.time.get(11..23).unwrap_or(&self.time);
        let errno = self.errno.map(|e| format!("({e})")).unwrap_or_default();
        let head = format!("{clock} w{} ", self.worker_pid);
        let tail = format!(" {}{errno} {}", self.outcome, self.meaning);
        let room = 80usize.saturating_sub(head.len() + tail.len()).max(12);
        let Some(request) = &self.request else {
            let upstream = crate::sanitize::shorten_left(&self.upstream, room);
            return format!("{head}{upstream}{tail}");
        };
        // The upstream and the request share the room: the request is
        // shortened first (to 20 columns at least), then a long upstream (a
        // UNIX path); an address is kept whole (24 columns hold an IPv6
        // one), the line a little past 80 if need be.
        let upstream_len = self.upstream.chars().count();
        let request = request.to_text(room.saturating_sub(upstream_len + 1).max(20));
        let upstream_room = room
            .saturating_sub(request.chars().count() + 1)
            .max(upstream_len.min(24))
            .max(12);
        let upstream = crate::sanitize::shorten_left(&self.upstream, upstream_room);
        format!("{head}{upstream} {request}{tail}")
    }
}

/// A `location` block: `{"name":"= /api/export","file":...,"line":14}`
/// (`name` as written after `location`, modifier included; `server` for a
/// pass at server level).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LocationRef {
    /// As written after `location`.
    pub name: String,
    /// The file of its block.
    pub file: String,
    /// The line its block starts on.
    pub line: u32,
}

/// The name of a `top` row per method and location: `GET /api/`; `?` for
/// what is not known, the candidates `|`-separated when several remain.
pub fn location_row(method: Option<&str>, location: Option<&str>, candidates: &[&str]) -> String {
    let location = match location {
        Some(name) => name.to_string(),
        None if !candidates.is_empty() => candidates.join("|"),
        None => "?".to_string(),
    };
    format!("{} {location}", method.unwrap_or("?"))
}

impl LocationRef {
    /// Where exchanges with `upstream` whose request had `path` came from,
    /// in `config`: the location, or the candidates' names.
    pub fn place(
        config: &crate::nginx::nginx_conf::Config,
        upstream: &str,
        path: Option<&str>,
    ) -> (Option<Self>, Vec<String>) {
        use crate::nginx::nginx_conf::Placed;
        match config.place(upstream, path) {
            Placed::One(l) => (
                Some(Self {
                    name: l.name.clone(),
                    file: l.block_at.0.clone(),
                    line: l.block_at.1,
                }),
                Vec::new(),
            ),
            Placed::Several(ls) => {
                let mut names: Vec<String> = ls.iter().map(|l| l.name.clone()).collect();
                names.dedup();
                (None, names)
            }
            Placed::Unknown => (None, Vec::new()),
        }
    }
}

/// `{"event":"pending",...}`: an exchange still waiting for its first
/// response byte longer than `--slow`, reported once while it waits, and
/// once more if tracing stops before it ends.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PendingEvent {
    /// Always `"pending"`.
    pub event: &'static str,
    /// When this was noticed.
    pub time: String,
    /// The nginx worker.
    pub worker_pid: u32,
    /// The upstream.
    pub upstream: String,
    /// `tcp` or `unix`.
    pub transport: &'static str,
    /// Since the last request byte was written.
    pub waiting_ms: u64,
    /// Whether the upstream's kernel acknowledged the request (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_acked: Option<bool>,
    /// Data retransmitted so far (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    /// The verdict so far.
    pub verdict: &'static str,
    /// One sentence with the numbers.
    pub evidence: String,
    /// The request it serves (as in `upstream` events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// The `location` that passed it upstream (as in `upstream` events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationRef>,
    /// The locations it may have come from (as in `upstream` events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub location_candidates: Vec<String>,
    /// True on the final `pending` event printed when tracing stops while
    /// the exchange still waits for its response (it is then counted in the
    /// summary, as no `upstream` event will follow); false on the ones
    /// printed while it waits.
    pub cut_by_stop: bool,
}

impl PendingEvent {
    /// One text line.
    pub fn to_text(&self) -> String {
        let clock = self.time.get(11..23).unwrap_or(&self.time);
        let state = if self.cut_by_stop {
            "pending cut by stop after"
        } else {
            "pending"
        };
        let request = self
            .request
            .as_ref()
            .map(|r| format!(" {}", r.to_text(40)))
            .unwrap_or_default();
        format!(
            "{clock} w{} {}{request} {state} {} ms: {}",
            self.worker_pid, self.upstream, self.waiting_ms, self.evidence
        )
    }
}

/// `{"event":"workers","pids":[...]}`: the traced workers, printed at start
/// and whenever the set changes; empty while waiting for nginx.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkersEvent {
    /// Always `"workers"`.
    pub event: &'static str,
    /// The worker pids, ascending.
    pub pids: Vec<u32>,
}

impl WorkersEvent {
    /// The event for the worker set `pids` (ascending).
    pub fn new(pids: Vec<u32>) -> Self {
        Self {
            event: "workers",
            pids,
        }
    }

    /// One text line; an empty set says ngx-trace waits for nginx.
    pub fn to_text(&self) -> String {
        if self.pids.is_empty() {
            return "no nginx worker running: waiting for nginx to start".into();
        }
        let list: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        format!("tracing nginx workers {}", list.join(" "))
    }
}

/// `{"event":"worker_exit",...}`: an nginx worker died with exchanges in
/// flight, or of a signal (each exchange it took with it is an `upstream`
/// event with outcome `worker_died`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerExitEvent {
    /// Always `"worker_exit"`.
    pub event: &'static str,
    /// When it died.
    pub time: String,
    /// The worker.
    pub worker_pid: u32,
    /// How it died (`core_dumped` always set: it has exited).
    #[serde(flatten)]
    pub fate: FateFacts,
    /// Exchanges in flight it took with it.
    pub in_flight: u32,
    /// The line nginx's master writes to the error log for it.
    pub nginx_error: String,
    /// One sentence.
    pub evidence: String,
}

impl WorkerExitEvent {
    /// One text line.
    pub fn to_text(&self) -> String {
        let clock = self.time.get(11..23).unwrap_or(&self.time);
        format!(
            "{clock} w{} worker_exit {}: {}; {} in flight lost",
            self.worker_pid,
            self.fate.fate,
            self.evidence,
            crate::human::plural(self.in_flight, "exchange")
        )
    }
}

/// `{"event":"lost",...}`: records dropped since the last report, with the
/// running totals per cause so a reader can tell which limit was hit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LostEvent {
    /// Always `"lost"`.
    pub event: &'static str,
    /// Records lost since the last `lost` event.
    pub count: u64,
    /// Running total: records the kernel dropped because the ring buffer was full.
    pub ring_buffer_full: u64,
    /// Running total: state the kernel dropped because a bounded map was full.
    pub map_full: u64,
    /// Running total: records user space could not decode.
    pub undecodable: u64,
    /// Running total: times the kernel skipped one of ngx-trace's programs
    /// (its recursion guard for that CPU was held). Not in `count`: each may
    /// be an event missed, most are hooks on sockets of other processes.
    pub hooks_skipped: u64,
    /// Running total: facts about processes other than traced nginx ones
    /// (fatal signals, failed exits) the kernel dropped over its per-CPU
    /// rate limit. Not in `count`: not nginx records, but a backend's end
    /// may be among them.
    pub fates_limited: u64,
}

impl LostEvent {
    /// The event for `count` records lost since the last report, with the
    /// running totals per cause since start.
    pub fn new(
        count: u64,
        ring_buffer_full: u64,
        map_full: u64,
        undecodable: u64,
        hooks_skipped: u64,
        fates_limited: u64,
    ) -> Self {
        Self {
            event: "lost",
            count,
            ring_buffer_full,
            map_full,
            undecodable,
            hooks_skipped,
            fates_limited,
        }
    }

    /// One text line.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "lost {} events (so far: ring buffer full {}, map full {}, undecodable {})",
            self.count, self.ring_buffer_full, self.map_full, self.undecodable
        );
        if self.hooks_skipped > 0 {
            text.push_str(&format!(
                "; the kernel skipped ngx-trace's hooks {} times so far (events may be missing)",
                self.hooks_skipped
            ));
        }
        if self.fates_limited > 0 {
            text.push_str(&format!(
                "; {} signals and exits of other processes over the kernel's rate limit so far",
                self.fates_limited
            ));
        }
        text
    }
}

/// The `event` value of every kind of JSON event, in the order the README
/// documents them; the README schema test checks the README against it.
#[cfg(test)]
pub const EVENT_KINDS: &[&str] = &[
    "upstream",
    "pending",
    "histogram",
    "workers",
    "worker_exit",
    "lost",
    "summary",
];

#[cfg(test)]
mod tests {
    use ngx_trace_common::{
        End, Exchange, FLAG_CONNECTED, FLAG_RESET_SEEN, FLAG_REUSED, UpstreamAddr,
    };
    use serde_json::json;

    use super::*;
    use crate::diagnosis::verdict::explain;

    fn event(ex: &Exchange, transport: Transport, upstream: &str) -> UpstreamEvent {
        let x = crate::kernel::records::finished(ex).expect("a valid record");
        let e = explain(&x, transport, upstream, 1_000_000);
        UpstreamEvent::new(
            "2026-11-26T07:12:33.123456Z".into(),
            &x.facts,
            transport,
            upstream,
            e,
        )
    }

    fn refused() -> UpstreamEvent {
        let mut ex = Exchange::new(4243, 17, 1_000_000_000, UpstreamAddr::ZERO);
        ex.end = End::ConnectSocketError.code();
        ex.errno = 111;
        ex.flags = FLAG_RESET_SEEN;
        ex.end_ns = ex.start_ns + 92_000;
        event(&ex, Transport::Tcp, "127.0.0.1:3999")
    }

    #[test]
    fn json_schema_of_a_refused_connect() {
        let v = serde_json::to_value(refused()).unwrap();
        assert_eq!(
            v,
            json!({
                "event": "upstream",
                "time": "2026-11-26T07:12:33.123456Z",
                "worker_pid": 4243,
                "upstream": "127.0.0.1:3999",
                "transport": "tcp",
                "outcome": "refused",
                "errno": 111,
                "nginx_error": "connect() failed (111: Connection refused) while connecting to upstream",
                "verdict": "backend_down",
                "evidence": "RST in reply to SYN after 0.1 ms",
                "timings_us": {"connect": 92, "total": 92},
                "tcp": {"syn_retransmits": 0},
            })
        );
    }

    #[test]
    fn json_schema_of_a_kept_alive_exchange() {
        let mut ex = Exchange::new(4243, 17, 5_000_000_000, UpstreamAddr::ZERO);
        ex.flags = FLAG_CONNECTED | FLAG_REUSED;
        ex.index = 2;
        ex.req_first_ns = ex.start_ns;
        ex.req_last_ns = ex.start_ns + 10_000;
        ex.acked_ns = ex.req_last_ns + 30_000;
        ex.resp_kernel_ns = ex.req_last_ns + 100_000_000;
        ex.resp_first_read_ns = ex.resp_kernel_ns + 15_000;
        ex.resp_last_read_ns = ex.resp_first_read_ns + 5_000;
        ex.end = End::ResponseDone.code();
        ex.end_ns = ex.resp_last_read_ns;
        ex.srtt_us = 25;
        let v = serde_json::to_value(event(&ex, Transport::Tcp, "127.0.0.1:8080")).unwrap();
        assert_eq!(v["outcome"], "ok");
        assert_eq!(v["verdict"], "healthy");
        assert_eq!(v["errno"], serde_json::Value::Null);
        assert!(v.get("nginx_error").is_none());
        assert_eq!(
            v["timings_us"],
            json!({"request_write": 10, "request_acked": 30, "first_byte": 100_000, "nginx_read_delay": 15, "total": 100_030})
        );
        assert_eq!(
            v["tcp"],
            json!({"syn_retransmits": 0, "retransmits": 0, "srtt_us": 25})
        );
        assert_eq!(v["reused"], true);
    }

    #[test]
    fn a_unix_exchange_has_no_tcp_facts() {
        let mut ex = Exchange::new(1, 9, 1_000, UpstreamAddr::ZERO);
        ex.flags = FLAG_CONNECTED;
        ex.connect_ns = 12_000;
        ex.req_first_ns = 20_000;
        ex.req_last_ns = 20_000;
        ex.resp_kernel_ns = 50_000;
        ex.resp_first_read_ns = 60_000;
        ex.resp_last_read_ns = 60_000;
        ex.end = End::ResponseDone.code();
        ex.end_ns = 60_000;
        let v = serde_json::to_value(event(&ex, Transport::Unix, "unix:/run/php/php8.2-fpm.sock"))
            .unwrap();
        assert!(v.get("tcp").is_none());
        assert_eq!(v["transport"], "unix");
        assert_eq!(v["reused"], false);
        assert_eq!(v["timings_us"]["connect"], 12);
    }

    fn pending(cut_by_stop: bool) -> PendingEvent {
        PendingEvent {
            event: "pending",
            time: "2026-11-26T07:42:36.211034Z".into(),
            worker_pid: 28929,
            upstream: "127.0.0.1:18082".into(),
            transport: "tcp",
            waiting_ms: 654,
            request_acked: Some(true),
            retransmits: Some(0),
            verdict: "backend_slow",
            evidence: "request acked, 0 retransmits, no response for 654.4 ms".into(),
            request: Some(Request {
                method: "GET".into(),
                path: "/api/export".into(),
                truncated: true,
            }),
            location: Some(LocationRef {
                name: "= /api/export".into(),
                file: "/etc/nginx/conf.d/app.conf".into(),
                line: 14,
            }),
            location_candidates: Vec::new(),
            cut_by_stop,
        }
    }

    #[test]
    fn json_schema_of_a_pending_exchange() {
        assert_eq!(
            serde_json::to_value(pending(false)).unwrap(),
            json!({
                "event": "pending",
                "time": "2026-11-26T07:42:36.211034Z",
                "worker_pid": 28929,
                "upstream": "127.0.0.1:18082",
                "transport": "tcp",
                "waiting_ms": 654,
                "request_acked": true,
                "retransmits": 0,
                "verdict": "backend_slow",
                "evidence": "request acked, 0 retransmits, no response for 654.4 ms",
                "request": {"method": "GET", "path": "/api/export", "truncated": true},
                "location": {
                    "name": "= /api/export",
                    "file": "/etc/nginx/conf.d/app.conf",
                    "line": 14
                },
                "cut_by_stop": false,
            })
        );
        // A UNIX exchange has no TCP facts; cut_by_stop is always there.
        let mut unix = pending(true);
        unix.transport = "unix";
        unix.request_acked = None;
        unix.retransmits = None;
        let v = serde_json::to_value(unix).unwrap();
        assert!(v.get("request_acked").is_none() && v.get("retransmits").is_none());
        assert_eq!(v["cut_by_stop"], true);
    }

    #[test]
    fn pending_text_says_when_stopping_cut_the_wait() {
        let evidence = "request acked, 0 retransmits, no response for 654.4 ms";
        assert_eq!(
            pending(false).to_text(),
            format!(
                "07:42:36.211 w28929 127.0.0.1:18082 GET /api/export… pending 654 ms: {evidence}"
            )
        );
        assert_eq!(
            pending(true).to_text(),
            format!(
                "07:42:36.211 w28929 127.0.0.1:18082 GET /api/export… pending cut by stop after 654 ms: {evidence}"
            )
        );
    }

    #[test]
    fn json_schema_and_text_of_workers() {
        let e = WorkersEvent::new(vec![18651, 18652]);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"event": "workers", "pids": [18651, 18652]})
        );
        assert_eq!(e.to_text(), "tracing nginx workers 18651 18652");
        let none = WorkersEvent::new(Vec::new());
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            json!({"event": "workers", "pids": []})
        );
        assert_eq!(
            none.to_text(),
            "no nginx worker running: waiting for nginx to start"
        );
    }

    #[test]
    fn json_schema_and_text_of_lost() {
        let e = LostEvent::new(3, 5, 1, 0, 2, 0);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({
                "event": "lost",
                "count": 3,
                "ring_buffer_full": 5,
                "map_full": 1,
                "undecodable": 0,
                "hooks_skipped": 2,
                "fates_limited": 0,
            })
        );
        assert_eq!(
            e.to_text(),
            "lost 3 events (so far: ring buffer full 5, map full 1, undecodable 0); \
             the kernel skipped ngx-trace's hooks 2 times so far (events may be missing)"
        );
        let flood = LostEvent::new(0, 0, 0, 0, 0, 41_000);
        assert_eq!(
            flood.to_text(),
            "lost 0 events (so far: ring buffer full 0, map full 0, undecodable 0); \
             41000 signals and exits of other processes over the kernel's rate limit so far"
        );
    }

    #[test]
    fn text_line_fits_80_columns() {
        let line = refused().to_text();
        assert_eq!(
            line,
            "07:12:33.123 w4243 127.0.0.1:3999 refused(111) backend not listening"
        );
        let mut long = refused();
        long.upstream = format!("unix:/{}/php-fpm.sock", "very/deep/directory".repeat(5));
        long.meaning = "socket file left, nobody listening";
        let line = long.to_text();
        assert_eq!(line.chars().count(), 80, "{line}");
        assert!(
            line.contains("…") && line.contains("php-fpm.sock"),
            "{line}"
        );
        // The request after the upstream, its path shortened from the left.
        let mut with = refused();
        with.request = Some(Request {
            method: "GET".into(),
            path: "/api/export".into(),
            truncated: false,
        });
        assert_eq!(
            with.to_text(),
            "07:12:33.123 w4243 127.0.0.1:3999 GET /api/export refused(111) backend not listening"
        );
        long.request = Some(Request {
            method: "POST".into(),
            path: format!("/reports/{}/export", "nested/".repeat(20)),
            truncated: false,
        });
        // Both shortened, down to their least (the line then runs past 80).
        let line = long.to_text();
        assert!(
            line.contains("php-fpm.sock POST …")
                && line.ends_with("/export refused(111) socket file left, nobody listening"),
            "{line}"
        );
    }

    /// The README's JSON schema section against the typed events.
    mod readme {
        use std::collections::BTreeSet;

        use serde_json::Value;

        use super::*;
        use crate::{
            diagnosis::timings::Timings, diagnosis::verdict::Outcome,
            report::histogram::Histograms, report::summary::Summary,
        };

        const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

        /// Paths of values whose keys are data, not schema: compared as
        /// one leaf.
        const DATA_KEYED: &[&str] = &["upstreams[].outcomes"];

        /// The README's schema section, up to the next section.
        fn schema_section() -> &'static str {
            let start = README
                .find("## JSON Lines schema")
                .expect("README has a `## JSON Lines schema` section");
            let rest = &README[start..];
            let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
            &rest[..end]
        }

        /// Leaf key paths of `v`: `a.b` inside objects, `a[].b` inside
        /// arrays of objects; an array of scalars is one leaf.
        fn key_paths(v: &Value, path: &str, out: &mut BTreeSet<String>) {
            let join = |key: &str| {
                if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                }
            };
            match v {
                Value::Object(map) if !DATA_KEYED.contains(&path) => {
                    for (key, child) in map {
                        key_paths(child, &join(key), out);
                    }
                }
                Value::Array(items) if items.iter().any(Value::is_object) => {
                    for item in items {
                        key_paths(item, &format!("{path}[]"), out);
                    }
                }
                _ => {
                    out.insert(path.to_string());
                }
            }
        }

        fn paths_of(v: &Value) -> BTreeSet<String> {
            let mut out = BTreeSet::new();
            key_paths(v, "", &mut out);
            out
        }

        /// An upstream event with every optional field present. Struct
        /// literals without `..default()` on purpose: a new field does not
        /// compile until it is set here, so the README check sees it.
        fn full_upstream() -> UpstreamEvent {
            let mut e = refused();
            e.nginx_error = Some("upstream timed out".into());
            e.timings_us = Timings {
                connect: Some(61),
                request_acked: Some(0),
                first_byte: Some(1_000_000),
                nginx_read_delay: Some(15),
                total: Some(1_000_412),
                idle_before: Some(4_000_000),
                request_write: Some(12),
                longest_read_gap: Some(350),
            };
            e.tcp = Some(TcpFacts {
                syn_retransmits: 0,
                retransmits: Some(0),
                peer_retransmits: Some(2),
                srtt_us: Some(31),
            });
            e.reused = Some(true);
            e.response_bytes = Some(0);
            e.peer = Some(crate::diagnosis::fates::PeerFacts {
                pid: 4242,
                comm: Some("php-fpm8.2".into()),
                parent_pid: Some(4200),
                parent_comm: Some("php-fpm8.2".into()),
                fate: FateFacts {
                    fate: "killed",
                    signal: Some(15),
                    sender_pid: Some(4200),
                    sender_comm: Some("php-fpm8.2".into()),
                    core_dumped: Some(false),
                    exit_status: Some(0),
                    memory_limit_bytes: Some(64 << 20),
                },
                exit_after_close_us: Some(-3_000),
            });
            e.request = Some(Request {
                method: "GET".into(),
                path: "/api/export".into(),
                truncated: true,
            });
            e.location = Some(LocationRef {
                name: "= /api/export".into(),
                file: "/etc/nginx/conf.d/app.conf".into(),
                line: 14,
            });
            e.location_candidates = vec!["/api/".into(), "/api/reports/".into()];
            e
        }

        /// A serialised event of `kind` with every optional field present.
        fn full_instance(kind: &str) -> Value {
            let v = match kind {
                "upstream" => serde_json::to_value(full_upstream()),
                "pending" => serde_json::to_value(pending(false)),
                "histogram" => {
                    let mut h = Histograms::default();
                    let t = Timings {
                        connect: Some(164),
                        ..Timings::default()
                    };
                    h.record("127.0.0.1:8080", &t);
                    serde_json::to_value(&h.to_events()[0])
                }
                "workers" => serde_json::to_value(WorkersEvent::new(vec![18651])),
                "worker_exit" => serde_json::to_value(WorkerExitEvent {
                    event: "worker_exit",
                    time: "2026-11-27T00:54:55.398885Z".into(),
                    worker_pid: 13665,
                    fate: FateFacts {
                        fate: "killed",
                        signal: Some(9),
                        sender_pid: Some(13745),
                        sender_comm: Some("bash".into()),
                        core_dumped: Some(false),
                        exit_status: Some(1),
                        memory_limit_bytes: Some(64 << 20),
                    },
                    in_flight: 1,
                    nginx_error: "worker process 13665 exited on signal 9".into(),
                    evidence: "nginx worker 13665 killed by SIGKILL from bash pid 13745".into(),
                }),
                "lost" => serde_json::to_value(LostEvent::new(3, 3, 0, 0, 0, 0)),
                "summary" => {
                    let mut s = Summary::default();
                    s.add("127.0.0.1:3999", Outcome::Refused);
                    serde_json::to_value(s.to_event())
                }
                other => panic!("no instance of event kind {other}: add one to full_instance"),
            }
            .unwrap();
            assert_eq!(v["event"], kind, "the {kind} instance says {}", v["event"]);
            v
        }

        /// The keys of the upstream field table (`timings_us.connect`...).
        fn upstream_table_keys() -> BTreeSet<String> {
            schema_section()
                .lines()
                .filter_map(|line| line.strip_prefix("| `"))
                .filter_map(|cell| cell.split('`').next())
                .map(str::to_string)
                .collect()
        }

        /// The examples of the ```json block (upstream events).
        fn upstream_examples() -> Vec<Value> {
            let section = schema_section();
            let start = section.find("```json\n").expect("a ```json example block") + 8;
            let len = section[start..].find("```").expect("the block's end");
            serde_json::Deserializer::from_str(&section[start..start + len])
                .into_iter::<Value>()
                .map(|v| v.expect("the ```json block holds JSON objects"))
                .collect()
        }

        /// The example object of each bullet under "Other events:".
        fn other_examples() -> Vec<Value> {
            let section = schema_section();
            let others = &section[section
                .find("Other events")
                .expect("an `Other events` list")..];
            others
                .lines()
                .filter_map(|line| line.trim_start().strip_prefix("- `"))
                .map(|rest| {
                    let code = rest.split('`').next().unwrap_or_default();
                    serde_json::from_str(code).unwrap_or_else(|e| {
                        panic!("README example `{code}` is not a JSON object: {e}")
                    })
                })
                .collect()
        }

        #[test]
        fn readme_documents_every_event_kind_and_no_other() {
            let mut documented: BTreeSet<String> = other_examples()
                .iter()
                .map(|v| v["event"].as_str().unwrap_or("(no event key)").to_string())
                .collect();
            for example in upstream_examples() {
                assert_eq!(example["event"], "upstream", "{example}");
            }
            if !upstream_table_keys().is_empty() {
                documented.insert("upstream".into());
            }
            let kinds: BTreeSet<String> = EVENT_KINDS.iter().map(|k| k.to_string()).collect();
            assert_eq!(
                documented, kinds,
                "README event kinds (left) differ from EVENT_KINDS (right)"
            );
        }

        #[test]
        fn readme_upstream_table_lists_exactly_the_keys() {
            let serialised = paths_of(&full_instance("upstream"));
            assert_eq!(
                upstream_table_keys(),
                serialised,
                "README upstream field table (left) differs from UpstreamEvent (right)"
            );
            for example in upstream_examples() {
                let extra: Vec<String> = paths_of(&example)
                    .difference(&serialised)
                    .cloned()
                    .collect();
                assert!(
                    extra.is_empty(),
                    "README example has unknown keys {extra:?}"
                );
            }
        }

        #[test]
        fn readme_examples_have_exactly_the_keys_of_each_event() {
            for example in other_examples() {
                let kind = example["event"].as_str().unwrap_or_default();
                assert_eq!(
                    paths_of(&example),
                    paths_of(&full_instance(kind)),
                    "README example of `{kind}` (left) differs from its type (right)"
                );
            }
        }

        #[test]
        fn key_paths_flatten_objects_and_arrays() {
            let v = serde_json::json!({
                "a": 1,
                "b": {"c": null},
                "pids": [1, 2],
                "upstreams": [{"x": 1, "outcomes": {"ok": 1}}],
            });
            let want: BTreeSet<String> =
                ["a", "b.c", "pids", "upstreams[].x", "upstreams[].outcomes"]
                    .into_iter()
                    .map(String::from)
                    .collect();
            assert_eq!(paths_of(&v), want);
        }
    }
}
