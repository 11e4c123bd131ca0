//! The events ngx-trace prints: the JSON Lines schema and the text lines.
use serde::Serialize;

use ngx_trace_common::{Exchange, FLAG_CONNECTED, FLAG_REUSED};

use crate::{
    classify::{Explanation, Timings},
    records::Transport,
};

/// TCP facts of an upstream event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TcpFacts {
    /// SYNs retransmitted while connecting.
    pub syn_retransmits: u32,
    /// Data retransmitted during the exchange (exchanges only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
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
    /// See [`crate::classify::Outcome`].
    pub outcome: &'static str,
    /// The errno nginx prints, or null.
    pub errno: Option<u32>,
    /// The text nginx writes to its error log, when it writes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_error: Option<String>,
    /// See [`crate::classify::Verdict`].
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
    /// Shown in text output only.
    #[serde(skip)]
    pub meaning: &'static str,
}

impl UpstreamEvent {
    /// The event for an explained connect attempt or exchange.
    pub fn new(
        time: String,
        ex: &Exchange,
        transport: Transport,
        upstream: &str,
        e: Explanation,
    ) -> Self {
        // A connect attempt that failed carries no exchange facts.
        let connecting = ex.flags & FLAG_CONNECTED == 0;
        Self {
            event: "upstream",
            time,
            worker_pid: ex.tgid,
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
                srtt_us: (ex.srtt_us != 0).then_some(ex.srtt_us),
            }),
            reused: (!connecting).then_some(ex.flags & FLAG_REUSED != 0),
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
        let upstream = shorten_left(&self.upstream, room);
        format!("{head}{upstream}{tail}")
    }
}

/// `{"event":"pending",...}`: an exchange still waiting for its first
/// response byte longer than `--slow`, reported once while it waits.
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
}

impl PendingEvent {
    /// One text line.
    pub fn to_text(&self) -> String {
        let clock = self.time.get(11..23).unwrap_or(&self.time);
        format!(
            "{clock} w{} {} pending {} ms: {}",
            self.worker_pid, self.upstream, self.waiting_ms, self.evidence
        )
    }
}

/// `s` itself if it has at most `max` characters, else `…` and its end.
fn shorten_left(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_string();
    }
    let keep: String = s.chars().skip(count - (max - 1)).collect();
    format!("…{keep}")
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{
        END_CONNECT_SOCKET_ERROR, END_RESPONSE_DONE, FLAG_RESET_SEEN, UpstreamAddr,
    };
    use serde_json::json;

    use super::*;
    use crate::classify::explain;

    fn event(ex: &Exchange, transport: Transport, upstream: &str) -> UpstreamEvent {
        let e = explain(ex, transport, upstream, 1_000_000);
        UpstreamEvent::new(
            "2026-11-26T07:12:33.123456Z".into(),
            ex,
            transport,
            upstream,
            e,
        )
    }

    fn refused() -> UpstreamEvent {
        let mut ex = Exchange::new(4243, 17, 1_000_000_000, UpstreamAddr::ZERO);
        ex.end = END_CONNECT_SOCKET_ERROR;
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
        ex.end = END_RESPONSE_DONE;
        ex.end_ns = ex.resp_last_read_ns;
        ex.srtt_us = 25;
        let v = serde_json::to_value(event(&ex, Transport::Tcp, "127.0.0.1:8080")).unwrap();
        assert_eq!(v["outcome"], "ok");
        assert_eq!(v["verdict"], "healthy");
        assert_eq!(v["errno"], serde_json::Value::Null);
        assert!(v.get("nginx_error").is_none());
        assert_eq!(
            v["timings_us"],
            json!({"request_acked": 30, "first_byte": 100_000, "nginx_read_delay": 15, "total": 100_030})
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
        ex.end = END_RESPONSE_DONE;
        ex.end_ns = 60_000;
        let v = serde_json::to_value(event(&ex, Transport::Unix, "unix:/run/php/php8.2-fpm.sock"))
            .unwrap();
        assert!(v.get("tcp").is_none());
        assert_eq!(v["transport"], "unix");
        assert_eq!(v["reused"], false);
        assert_eq!(v["timings_us"]["connect"], 12);
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
    }
}
