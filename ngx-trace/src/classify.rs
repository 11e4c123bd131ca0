//! From kernel facts to what a user acts on: outcome, verdict, the line
//! nginx writes to its error log, the phase timings, and the evidence.
//!
//! Verdict rules for an exchange on an established connection (the README
//! repeats them):
//! - `backend_aborted`: the upstream reset the connection or closed it before
//!   any response byte;
//! - `network`: SYNs or data were retransmitted, or the request went unacknowledged
//!   for [`ACK_LATE_US`] or more, or the smoothed RTT is at least half the
//!   wait for the first byte;
//! - `backend_slow`: none of that, and the first byte came after `slow` or
//!   never;
//! - `healthy` otherwise.
use ngx_trace_common::{
    END_CONNECT_ABANDONED, END_CONNECT_SOCKET_ERROR, END_CONNECT_SYSCALL_ERROR, END_NGINX_CLOSED,
    END_PEER_CLOSED, END_PEER_RESET, END_RESPONSE_DONE, Exchange, FLAG_RESET_SEEN,
};

use crate::records::Transport;

/// What happened to one upstream connection attempt or exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Connected (and, for exchanges, answered).
    Ok,
    /// Nothing listens (RST to the SYN; UNIX socket without listener).
    Refused,
    /// UNIX socket file missing.
    NotFound,
    /// Socket mode or owner, LSM, or local firewall.
    PermissionDenied,
    /// UNIX listen backlog full.
    BacklogFull,
    /// No local address or port free.
    AddrUnavailable,
    /// No route to the upstream.
    Unreachable,
    /// No answer to the SYN before nginx gave up.
    ConnectTimeout,
    /// Reset by the upstream.
    Reset,
    /// The upstream closed before answering.
    ClosedEarly,
    /// nginx gave up waiting for the response.
    NoResponse,
}

impl Outcome {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::NotFound => "not_found",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::BacklogFull => "backlog_full",
            Outcome::AddrUnavailable => "addr_unavailable",
            Outcome::Unreachable => "unreachable",
            Outcome::ConnectTimeout => "connect_timeout",
            Outcome::Reset => "reset",
            Outcome::ClosedEarly => "closed_early",
            Outcome::NoResponse => "no_response",
        }
    }
}

/// Whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong.
    Healthy,
    /// The backend is not running or not listening.
    BackendDown,
    /// Permissions: socket mode or owner, SELinux/AppArmor, firewall rule.
    Permission,
    /// The backend is up but cannot accept more.
    BackendOverloaded,
    /// The backend took too long.
    BackendSlow,
    /// Packets lost, no route, or no answer.
    Network,
    /// nginx's host ran out of something (ports, memory, descriptors).
    ProxyResources,
    /// The backend reset or closed the connection.
    BackendAborted,
}

impl Verdict {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::BackendDown => "backend_down",
            Verdict::Permission => "permission",
            Verdict::BackendOverloaded => "backend_overloaded",
            Verdict::BackendSlow => "backend_slow",
            Verdict::Network => "network",
            Verdict::ProxyResources => "proxy_resources",
            Verdict::BackendAborted => "backend_aborted",
        }
    }
}

/// A request counts as unacknowledged when no ACK came within this long:
/// above Linux's delayed-ACK timer (40 ms) and at its minimum RTO (200 ms),
/// so a late ACK means loss, not a busy backend.
pub const ACK_LATE_US: u64 = 200_000;

/// Phase durations of a connect attempt or exchange, µs; unknown ones are
/// `None`, and left out of the JSON `timings_us` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timings {
    /// `connect()` to handshake done (or to the connect's failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<u64>,
    /// Last request byte written to its acknowledgement (TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_acked: Option<u64>,
    /// Last request byte written to the first response byte in the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<u64>,
    /// First response byte in the kernel to nginx reading it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_read_delay: Option<u64>,
    /// Exchange start (connect, or first request byte when reused) to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

fn span_us(from_ns: u64, to_ns: u64) -> Option<u64> {
    (from_ns != 0 && to_ns >= from_ns).then(|| (to_ns - from_ns) / 1000)
}

/// The phase timings the kernel's timestamps give.
pub fn timings(ex: &Exchange) -> Timings {
    let connecting = matches!(
        ex.end,
        END_CONNECT_SYSCALL_ERROR | END_CONNECT_SOCKET_ERROR | END_CONNECT_ABANDONED
    );
    Timings {
        connect: if connecting {
            span_us(ex.start_ns, ex.end_ns)
        } else {
            (ex.connect_ns != 0).then_some(ex.connect_ns / 1000)
        },
        request_acked: span_us(ex.req_last_ns, ex.acked_ns),
        first_byte: span_us(ex.req_last_ns, ex.resp_kernel_ns),
        nginx_read_delay: span_us(ex.resp_kernel_ns, ex.resp_first_read_ns),
        total: span_us(ex.start_ns, ex.end_ns),
    }
}

/// The explanation of one connect attempt or exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// What happened.
    pub outcome: Outcome,
    /// Whose fault.
    pub verdict: Verdict,
    /// The errno nginx prints, if any.
    pub errno: Option<u32>,
    /// The text nginx writes to its error log for it, if it writes one.
    pub nginx_error: Option<String>,
    /// A few words a person reads at a glance.
    pub meaning: &'static str,
    /// One sentence with the numbers behind the verdict.
    pub evidence: String,
    /// Phase durations.
    pub timings: Timings,
}

const ETIMEDOUT: u32 = 110;
const ECONNRESET: u32 = 104;

/// The C library's text for `errno`, as nginx prints it.
pub fn strerror(errno: u32) -> String {
    let text = std::io::Error::from_raw_os_error(errno as i32).to_string();
    match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// Outcome, verdict and meaning of a connect error.
fn connect_error(transport: Transport, errno: u32) -> (Outcome, Verdict, &'static str) {
    use Outcome::*;
    use Verdict::*;
    match (errno, transport) {
        (111, Transport::Tcp) => (Refused, BackendDown, "backend not listening"),
        (111, Transport::Unix) => (Refused, BackendDown, "socket file left, nobody listening"),
        (2, _) => (NotFound, BackendDown, "socket file missing"),
        (13 | 1, Transport::Unix) => (
            PermissionDenied,
            Permission,
            "socket permissions or SELinux/AppArmor",
        ),
        (13 | 1, Transport::Tcp) => (PermissionDenied, Permission, "firewall or LSM rule"),
        (11, _) => (BacklogFull, BackendOverloaded, "listen backlog full"),
        (99 | 98, _) => (AddrUnavailable, ProxyResources, "no free local port"),
        (105 | 12 | 23 | 24, _) => (AddrUnavailable, ProxyResources, "out of buffers or fds"),
        (101 | 113 | 100 | 112, _) => (Unreachable, Network, "no route to upstream"),
        (ETIMEDOUT, _) => (ConnectTimeout, Network, "no answer to SYN"),
        (ECONNRESET, _) => (Reset, BackendAborted, "reset while connecting"),
        _ => (Unreachable, Network, "unexpected connect error"),
    }
}

/// `1.5 ms`, `1.50 s`: the unit a person expects for the size.
pub fn human_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else {
        format!("{:.1} ms", us as f64 / 1e3)
    }
}

fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Explains a connect attempt or an exchange. `slow_us` is the first-byte
/// wait from which a backend counts as slow (`--slow`).
pub fn explain(ex: &Exchange, transport: Transport, upstream: &str, slow_us: u64) -> Explanation {
    let t = timings(ex);
    match ex.end {
        END_CONNECT_SYSCALL_ERROR | END_CONNECT_SOCKET_ERROR | END_CONNECT_ABANDONED => {
            explain_connect(ex, transport, upstream, t)
        }
        _ => explain_exchange(ex, transport, slow_us, t),
    }
}

fn explain_connect(ex: &Exchange, transport: Transport, upstream: &str, t: Timings) -> Explanation {
    let elapsed = human_us(t.connect.unwrap_or(0));
    let retransmits = plural(ex.syn_retransmits, "SYN retransmit");
    if ex.end == END_CONNECT_ABANDONED {
        return Explanation {
            outcome: Outcome::ConnectTimeout,
            verdict: Verdict::Network,
            errno: Some(ETIMEDOUT),
            nginx_error: Some(
                "upstream timed out (110: Connection timed out) while connecting to upstream"
                    .into(),
            ),
            meaning: "no answer to SYN",
            evidence: format!(
                "no SYN-ACK after {elapsed} and {retransmits}; nginx closed the socket"
            ),
            timings: t,
        };
    }
    let errno = ex.errno;
    let (outcome, verdict, meaning) = connect_error(transport, errno);
    let text = strerror(errno);
    let (nginx_error, evidence) = if ex.end == END_CONNECT_SYSCALL_ERROR {
        (
            format!(
                "connect() to {upstream} failed ({errno}: {text}) while connecting to upstream"
            ),
            format!("connect() returned {errno} ({text}) after {elapsed}"),
        )
    } else {
        let evidence = if errno == 111 && ex.flags & FLAG_RESET_SEEN != 0 {
            format!("RST in reply to SYN after {elapsed}")
        } else {
            format!("socket error {errno} ({text}) after {elapsed} and {retransmits}")
        };
        (
            format!("connect() failed ({errno}: {text}) while connecting to upstream"),
            evidence,
        )
    };
    Explanation {
        outcome,
        verdict,
        errno: Some(errno),
        nginx_error: Some(nginx_error),
        meaning,
        evidence,
        timings: t,
    }
}

/// Whether retransmissions, an unacknowledged request or the RTT account for
/// a wait of `waited_us`; the reason, for the evidence.
fn network_reason(
    ex: &Exchange,
    transport: Transport,
    t: &Timings,
    waited_us: u64,
) -> Option<String> {
    if transport != Transport::Tcp {
        return None;
    }
    if ex.retransmits > 0 {
        return Some(plural(ex.retransmits, "retransmit"));
    }
    if ex.syn_retransmits > 0 {
        return Some(plural(ex.syn_retransmits, "SYN retransmit"));
    }
    match t.request_acked {
        None if waited_us >= ACK_LATE_US => {
            return Some(format!(
                "request not acknowledged for {}",
                human_us(waited_us)
            ));
        }
        Some(ack) if ack >= ACK_LATE_US => {
            return Some(format!("request acknowledged only after {}", human_us(ack)));
        }
        _ => {}
    }
    let srtt = u64::from(ex.srtt_us);
    (srtt > 0 && srtt * 2 >= waited_us && waited_us >= ACK_LATE_US)
        .then(|| format!("smoothed RTT {}", human_us(srtt)))
}

fn explain_exchange(ex: &Exchange, transport: Transport, slow_us: u64, t: Timings) -> Explanation {
    // How long the request waited for its answer (or until the end).
    let waited = t
        .first_byte
        .or_else(|| span_us(ex.req_last_ns, ex.end_ns))
        .unwrap_or(0);
    let mut facts = Vec::new();
    if transport == Transport::Tcp {
        facts.push(match t.request_acked {
            Some(ack) => format!("request acked after {}", human_us(ack)),
            None => "request not acked".to_string(),
        });
        facts.push(plural(ex.retransmits, "retransmit"));
    }
    match t.first_byte {
        Some(fb) => facts.push(format!("first byte after {}", human_us(fb))),
        None => facts.push(format!("no response for {}", human_us(waited))),
    }
    if let Some(delay) = t.nginx_read_delay.filter(|&d| d >= slow_us) {
        facts.push(format!(
            "nginx read it {} later (worker busy)",
            human_us(delay)
        ));
    }
    let network = network_reason(ex, transport, &t, waited);
    let read_phase = if ex.resp_first_read_ns == 0 {
        "while reading response header from upstream"
    } else {
        "while reading upstream"
    };
    let (outcome, verdict, errno, nginx_error, meaning) = match ex.end {
        END_RESPONSE_DONE => {
            let lost = ex.retransmits + ex.syn_retransmits > 0;
            let (verdict, meaning) = if network.is_some() && (waited >= slow_us || lost) {
                (Verdict::Network, "slowed by the network")
            } else if waited >= slow_us {
                (Verdict::BackendSlow, "backend slow to answer")
            } else {
                (Verdict::Healthy, "answered")
            };
            (Outcome::Ok, verdict, None, None, meaning)
        }
        END_PEER_CLOSED => (
            Outcome::ClosedEarly,
            Verdict::BackendAborted,
            None,
            Some(format!(
                "upstream prematurely closed connection {read_phase}"
            )),
            "backend closed without answering",
        ),
        END_NGINX_CLOSED => {
            let (verdict, meaning) = if network.is_some() {
                (Verdict::Network, "no response: network")
            } else {
                (Verdict::BackendSlow, "no response: backend slow")
            };
            (
                Outcome::NoResponse,
                verdict,
                Some(ETIMEDOUT),
                Some(format!(
                    "upstream timed out (110: Connection timed out) {read_phase}"
                )),
                meaning,
            )
        }
        END_PEER_RESET if ex.errno == ETIMEDOUT => (
            Outcome::NoResponse,
            Verdict::Network,
            Some(ETIMEDOUT),
            Some(format!(
                "recv() failed (110: Connection timed out) {read_phase}"
            )),
            "connection timed out: network",
        ),
        _ => {
            let errno = if ex.errno == 0 { ECONNRESET } else { ex.errno };
            (
                Outcome::Reset,
                Verdict::BackendAborted,
                Some(errno),
                Some(format!(
                    "recv() failed ({errno}: {}) {read_phase}",
                    strerror(errno)
                )),
                "backend reset the connection",
            )
        }
    };
    let mut evidence = facts.join(", ");
    if let (Verdict::Network, Some(reason)) = (verdict, &network) {
        evidence = format!("{reason}: {evidence}");
    }
    Explanation {
        outcome,
        verdict,
        errno,
        nginx_error,
        meaning,
        evidence,
        timings: t,
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{FLAG_CONNECTED, FLAG_REUSED, UpstreamAddr};

    use super::*;

    const MS: u64 = 1_000_000;
    const SLOW: u64 = 1_000_000;

    /// A connect attempt started at t=1 s that ended `after_ns` later.
    fn connect(end: u32, errno: u32, after_ns: u64) -> Exchange {
        let mut e = Exchange::new(4243, 17, 1_000 * MS, UpstreamAddr::ZERO);
        e.end = end;
        e.errno = errno;
        e.end_ns = e.start_ns + after_ns;
        e
    }

    /// An exchange as the kernel records it: connected in 0.1 ms, request
    /// written over 0.05 ms, acked `ack` after, first byte `first` after
    /// the request, read at once, ended `end_after` after the request.
    fn exchange(end: u32, ack: Option<u64>, first: Option<u64>, end_after: u64) -> Exchange {
        let mut e = Exchange::new(4243, 17, 1_000 * MS, UpstreamAddr::ZERO);
        e.flags = FLAG_CONNECTED;
        e.connect_ns = 100_000;
        e.req_first_ns = e.start_ns + 100_000;
        e.req_last_ns = e.req_first_ns + 50_000;
        if let Some(ack) = ack {
            e.acked_ns = e.req_last_ns + ack;
        }
        if let Some(first) = first {
            e.resp_kernel_ns = e.req_last_ns + first;
            e.resp_first_read_ns = e.resp_kernel_ns + 20_000;
            e.resp_last_read_ns = e.resp_first_read_ns + 30_000;
        }
        e.end = end;
        e.end_ns = e.req_last_ns + end_after;
        e
    }

    fn tcp(e: &Exchange) -> Explanation {
        explain(e, Transport::Tcp, "127.0.0.1:3999", SLOW)
    }

    #[test]
    fn tcp_refused_reads_like_nginx_error_log() {
        let mut e = connect(END_CONNECT_SOCKET_ERROR, 111, 150_000);
        e.flags |= FLAG_RESET_SEEN;
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::Refused, Verdict::BackendDown, Some(111))
        );
        // Exactly what Debian's nginx 1.22 logs for a stopped backend.
        assert_eq!(
            x.nginx_error.unwrap(),
            "connect() failed (111: Connection refused) while connecting to upstream"
        );
        assert_eq!(x.evidence, "RST in reply to SYN after 0.1 ms");
        assert_eq!(x.timings.connect, Some(150));
    }

    #[test]
    fn unix_errors_name_the_socket_like_nginx() {
        let sock = "unix:/var/run/php/php8.1-fpm.sock";
        let unix = |errno| {
            explain(
                &connect(END_CONNECT_SYSCALL_ERROR, errno, 20_000),
                Transport::Unix,
                sock,
                SLOW,
            )
        };
        let x = unix(2);
        assert_eq!(
            (x.outcome, x.verdict),
            (Outcome::NotFound, Verdict::BackendDown)
        );
        assert_eq!(
            x.nginx_error.unwrap(),
            "connect() to unix:/var/run/php/php8.1-fpm.sock failed (2: No such file or directory) while connecting to upstream"
        );
        let x = unix(13);
        assert_eq!(
            (x.outcome, x.verdict),
            (Outcome::PermissionDenied, Verdict::Permission)
        );
        assert_eq!(x.meaning, "socket permissions or SELinux/AppArmor");
        assert_eq!(unix(1).outcome, Outcome::PermissionDenied);
        let x = unix(111);
        assert_eq!(
            (x.outcome, x.verdict),
            (Outcome::Refused, Verdict::BackendDown)
        );
        let x = unix(11);
        assert_eq!(
            (x.outcome, x.verdict),
            (Outcome::BacklogFull, Verdict::BackendOverloaded)
        );
        assert!(
            x.nginx_error
                .unwrap()
                .contains("(11: Resource temporarily unavailable)")
        );
    }

    #[test]
    fn local_and_network_connect_errors() {
        let x = tcp(&connect(END_CONNECT_SYSCALL_ERROR, 99, 10_000));
        assert_eq!(
            (x.outcome, x.verdict),
            (Outcome::AddrUnavailable, Verdict::ProxyResources)
        );
        assert!(
            x.nginx_error
                .unwrap()
                .contains("(99: Cannot assign requested address)")
        );
        for errno in [101, 113] {
            let x = tcp(&connect(END_CONNECT_SOCKET_ERROR, errno, 3_000 * MS));
            assert_eq!(
                (x.outcome, x.verdict),
                (Outcome::Unreachable, Verdict::Network)
            );
        }
        let x = tcp(&connect(END_CONNECT_SOCKET_ERROR, 113, 3_000 * MS));
        assert_eq!(
            x.nginx_error.unwrap(),
            "connect() failed (113: No route to host) while connecting to upstream"
        );
    }

    #[test]
    fn nginx_giving_up_on_a_syn_is_a_connect_timeout() {
        let mut e = connect(END_CONNECT_ABANDONED, 0, 2_001 * MS);
        e.syn_retransmits = 1;
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::ConnectTimeout, Verdict::Network, Some(110))
        );
        assert_eq!(
            x.nginx_error.unwrap(),
            "upstream timed out (110: Connection timed out) while connecting to upstream"
        );
        assert_eq!(
            x.evidence,
            "no SYN-ACK after 2.00 s and 1 SYN retransmit; nginx closed the socket"
        );
    }

    #[test]
    fn a_fast_answer_is_healthy_with_every_phase_timed() {
        let e = exchange(
            END_RESPONSE_DONE,
            Some(40_000),
            Some(2 * MS),
            2 * MS + 50_000,
        );
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::Ok, Verdict::Healthy, None)
        );
        assert!(x.nginx_error.is_none());
        assert_eq!(
            x.timings,
            Timings {
                connect: Some(100),
                request_acked: Some(40),
                first_byte: Some(2_000),
                nginx_read_delay: Some(20),
                total: Some(2_200),
            }
        );
    }

    #[test]
    fn a_late_first_byte_after_a_prompt_ack_is_backend_slow() {
        let e = exchange(
            END_RESPONSE_DONE,
            Some(100_000),
            Some(1_500 * MS),
            1_501 * MS,
        );
        let x = tcp(&e);
        assert_eq!((x.outcome, x.verdict), (Outcome::Ok, Verdict::BackendSlow));
        assert_eq!(
            x.evidence,
            "request acked after 0.1 ms, 0 retransmits, first byte after 1.50 s"
        );
    }

    #[test]
    fn nginx_closing_while_waiting_is_no_response_and_the_504_line() {
        // proxy_read_timeout 60s against a backend that never answers.
        let e = exchange(END_NGINX_CLOSED, Some(100_000), None, 60_000 * MS);
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::NoResponse, Verdict::BackendSlow, Some(110))
        );
        assert_eq!(
            x.nginx_error.unwrap(),
            "upstream timed out (110: Connection timed out) while reading response header from upstream"
        );
        assert_eq!(
            x.evidence,
            "request acked after 0.1 ms, 0 retransmits, no response for 60.00 s"
        );
    }

    #[test]
    fn retransmissions_make_it_the_network() {
        let mut e = exchange(END_RESPONSE_DONE, Some(210 * MS), Some(212 * MS), 213 * MS);
        e.retransmits = 1;
        let x = tcp(&e);
        assert_eq!(x.verdict, Verdict::Network);
        assert!(x.evidence.starts_with("1 retransmit: "), "{}", x.evidence);
        // A request never acknowledged, and no answer: also the network.
        let e = exchange(END_NGINX_CLOSED, None, None, 5_000 * MS);
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict),
            (Outcome::NoResponse, Verdict::Network)
        );
        assert!(
            x.evidence
                .starts_with("request not acknowledged for 5.00 s"),
            "{}",
            x.evidence
        );
    }

    #[test]
    fn unix_has_no_tcp_facts_and_a_slow_php_is_backend_slow() {
        let mut e = exchange(END_RESPONSE_DONE, None, Some(2_000 * MS), 2_001 * MS);
        e.flags |= FLAG_REUSED;
        let x = explain(&e, Transport::Unix, "unix:/run/php/php8.2-fpm.sock", SLOW);
        assert_eq!((x.outcome, x.verdict), (Outcome::Ok, Verdict::BackendSlow));
        assert_eq!(x.evidence, "first byte after 2.00 s");
    }

    #[test]
    fn resets_and_early_closes_are_the_backend_aborting() {
        let mut e = exchange(END_PEER_RESET, Some(50_000), None, 3 * MS);
        e.errno = 104;
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::Reset, Verdict::BackendAborted, Some(104))
        );
        assert_eq!(
            x.nginx_error.unwrap(),
            "recv() failed (104: Connection reset by peer) while reading response header from upstream"
        );
        let e = exchange(END_PEER_CLOSED, Some(50_000), None, 3 * MS);
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::ClosedEarly, Verdict::BackendAborted, None)
        );
        assert_eq!(
            x.nginx_error.unwrap(),
            "upstream prematurely closed connection while reading response header from upstream"
        );
    }

    #[test]
    fn a_busy_worker_reading_late_is_in_the_evidence() {
        let mut e = exchange(END_RESPONSE_DONE, Some(50_000), Some(2 * MS), 1_300 * MS);
        e.resp_first_read_ns = e.resp_kernel_ns + 1_200 * MS;
        let x = tcp(&e);
        assert_eq!(x.timings.nginx_read_delay, Some(1_200_000));
        assert!(
            x.evidence
                .contains("nginx read it 1.20 s later (worker busy)"),
            "{}",
            x.evidence
        );
    }
}
