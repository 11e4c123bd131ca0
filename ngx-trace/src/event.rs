//! The events ngx-trace prints: the JSON Lines schema and the text lines.
use serde::Serialize;

use crate::{
    classify::{ConnectFacts, Explanation},
    records::Transport,
};

/// Phase durations of an upstream event, µs; unknown ones are left out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timings {
    /// From `connect()` to the handshake's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<u64>,
}

/// TCP facts of an upstream event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TcpFacts {
    /// SYNs retransmitted while connecting.
    pub syn_retransmits: u32,
}

/// `{"event":"upstream",...}`: one connect attempt (or exchange) of a worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamEvent {
    /// Always `"upstream"`.
    pub event: &'static str,
    /// When the outcome was known, RFC 3339 UTC with microseconds.
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
    /// Shown in text output only.
    #[serde(skip)]
    pub meaning: &'static str,
}

impl UpstreamEvent {
    /// The event for an explained connect attempt.
    pub fn connect(time: String, worker_pid: u32, facts: &ConnectFacts, e: Explanation) -> Self {
        Self {
            event: "upstream",
            time,
            worker_pid,
            upstream: facts.upstream.clone(),
            transport: facts.transport.as_str(),
            outcome: e.outcome.as_str(),
            errno: e.errno,
            nginx_error: e.nginx_error,
            verdict: e.verdict.as_str(),
            evidence: e.evidence,
            timings_us: Timings {
                connect: Some(facts.elapsed_us),
            },
            tcp: (facts.transport == Transport::Tcp).then_some(TcpFacts {
                syn_retransmits: facts.syn_retransmits,
            }),
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
    use serde_json::json;

    use super::*;
    use crate::classify::{ConnectEnd, explain_connect};

    fn refused() -> UpstreamEvent {
        let facts = ConnectFacts {
            transport: Transport::Tcp,
            upstream: "127.0.0.1:3999".into(),
            end: ConnectEnd::SocketError(111),
            elapsed_us: 92,
            syn_retransmits: 0,
            reset_seen: true,
        };
        UpstreamEvent::connect(
            "2026-11-26T07:12:33.123456Z".into(),
            4243,
            &facts,
            explain_connect(&facts),
        )
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
                "timings_us": {"connect": 92},
                "tcp": {"syn_retransmits": 0},
            })
        );
    }

    #[test]
    fn a_healthy_unix_connect_has_null_errno_and_no_tcp_facts() {
        let facts = ConnectFacts {
            transport: Transport::Unix,
            upstream: "unix:/run/php/php8.2-fpm.sock".into(),
            end: ConnectEnd::Connected,
            elapsed_us: 12,
            syn_retransmits: 0,
            reset_seen: false,
        };
        let e = UpstreamEvent::connect("t".into(), 1, &facts, explain_connect(&facts));
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["errno"], serde_json::Value::Null);
        assert!(v.get("nginx_error").is_none());
        assert!(v.get("tcp").is_none());
        assert_eq!(v["transport"], "unix");
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
