//! The verdict rules: from kernel facts to what a user acts on (outcome,
//! verdict, the line nginx writes to its error log, and the evidence).
//!
//! Verdict rules for an exchange on an established connection (the README
//! repeats them):
//! - `client_aborted`: nginx closed the upstream connection, still waiting,
//!   because its client went away (nginx logs 499, no error line);
//! - `backend_aborted`: the upstream reset the connection or closed it before
//!   any response byte;
//! - `network`: SYNs or data were retransmitted (by nginx's socket, or by a
//!   local upstream's), or the request went unacknowledged
//!   for [`ACK_LATE_US`] or more, or the smoothed RTT is at least half the
//!   wait for the first byte;
//! - `backend_slow`: none of that, and the first byte came after `slow` or
//!   never;
//! - `healthy` otherwise.
use ngx_trace_common::End;

use crate::{
    diagnosis::timings::{Timings, span_us, timings},
    human::{human_us, plural, strerror},
    kernel::records::{Finished, Transport},
};

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
    /// nginx gave up waiting for the response (its read timeout).
    NoResponse,
    /// nginx closed the upstream connection because its client went away.
    ClientClosed,
    /// The worker ran out of file descriptors (or the host did): `socket()`
    /// or `connect()` failed with EMFILE or ENFILE.
    FdLimit,
    /// The nginx worker died with the exchange in flight.
    WorkerDied,
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
            Outcome::ClientClosed => "client_closed",
            Outcome::FdLimit => "fd_limit",
            Outcome::WorkerDied => "worker_died",
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
    /// The client went away before the answer; nothing wrong upstream.
    ClientAborted,
    /// The backend process holding the connection died (crash, OOM kill,
    /// killed by a signal, its supervisor's timeout).
    BackendCrashed,
    /// The nginx worker died (crash, OOM kill, killed by a signal).
    ProxyCrashed,
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
            Verdict::ClientAborted => "client_aborted",
            Verdict::BackendCrashed => "backend_crashed",
            Verdict::ProxyCrashed => "proxy_crashed",
        }
    }
}

/// A request counts as unacknowledged when no ACK came within this long:
/// above Linux's delayed-ACK timer (40 ms) and at its minimum RTO (200 ms),
/// so a late ACK means loss, not a busy backend.
pub const ACK_LATE_US: u64 = 200_000;

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

/// `ETIMEDOUT`: a connect or an established connection timed out.
pub const ETIMEDOUT: u32 = 110;
const ECONNRESET: u32 = 104;

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
        (24, _) => (FdLimit, ProxyResources, "worker out of file descriptors"),
        (23, _) => (FdLimit, ProxyResources, "host out of file descriptors"),
        (105 | 12, _) => (AddrUnavailable, ProxyResources, "out of buffers or memory"),
        (101 | 113 | 100 | 112, _) => (Unreachable, Network, "no route to upstream"),
        (ETIMEDOUT, _) => (ConnectTimeout, Network, "no answer to SYN"),
        (ECONNRESET, _) => (Reset, BackendAborted, "reset while connecting"),
        _ => (Unreachable, Network, "unexpected connect error"),
    }
}

/// Explains a connect attempt or an exchange. `slow_us` is the first-byte
/// wait from which a backend counts as slow (`--slow`).
pub fn explain(x: &Finished, transport: Transport, upstream: &str, slow_us: u64) -> Explanation {
    let t = timings(x);
    if x.client_left && x.end.is_nginx_giving_up() {
        return explain_client_left(x, transport, t);
    }
    if x.end == End::WorkerDied {
        return explain_worker_died(x, transport, t);
    }
    if x.end.is_connect_failure() {
        explain_connect(x, transport, upstream, t)
    } else {
        explain_exchange(x, transport, slow_us, t)
    }
}

/// nginx closed the upstream connection, still waiting, because its client
/// went away: nginx answers 499 and writes no error line (only an `info`
/// one), and the wait says nothing about the backend: no first-byte time,
/// and the session keeps it out of the latency histograms but for a
/// completed connect.
fn explain_client_left(x: &Finished, transport: Transport, t: Timings) -> Explanation {
    let f = &x.facts;
    let (evidence, timings) = if x.end == End::ConnectAbandoned {
        (
            format!(
                "client left {} into the connect; nginx closed the upstream socket (499)",
                human_us(t.connect.unwrap_or(0))
            ),
            Timings {
                total: t.total,
                ..Timings::default()
            },
        )
    } else {
        let waited = span_us(f.req_last_ns, x.end_ns).unwrap_or(0);
        let mut facts = Vec::new();
        if transport == Transport::Tcp {
            facts.push(ack_fact(f, &t));
        }
        facts.push(format!(
            "client left after {} without a response; nginx closed the upstream connection (499)",
            human_us(waited)
        ));
        (
            facts.join(", "),
            Timings {
                connect: t.connect,
                request_acked: t.request_acked,
                total: t.total,
                ..Timings::default()
            },
        )
    };
    Explanation {
        outcome: Outcome::ClientClosed,
        verdict: Verdict::ClientAborted,
        errno: None,
        nginx_error: None,
        meaning: "client left before the answer",
        evidence,
        timings,
    }
}

/// The worker died with the exchange in flight: nginx wrote no upstream
/// line (its master logs the worker's death), the client got no answer or
/// a cut one, and the wait says nothing about the backend.
fn explain_worker_died(x: &Finished, transport: Transport, t: Timings) -> Explanation {
    let f = &x.facts;
    let mut facts = Vec::new();
    if !f.connected {
        facts.push(format!(
            "the worker died {} into the connect",
            human_us(t.connect.unwrap_or(0))
        ));
    } else {
        if transport == Transport::Tcp {
            facts.push(ack_fact(f, &t));
        }
        facts.push(format!(
            "the worker died {} after the request, no response read",
            human_us(span_us(f.req_last_ns, x.end_ns).unwrap_or(0))
        ));
    }
    Explanation {
        outcome: Outcome::WorkerDied,
        verdict: Verdict::ProxyCrashed,
        errno: None,
        nginx_error: None,
        meaning: "nginx worker died mid-exchange",
        evidence: facts.join(", "),
        timings: Timings {
            connect: (f.connected && f.connect_ns != 0).then_some(f.connect_ns / 1000),
            request_acked: t.request_acked,
            total: t.total,
            ..Timings::default()
        },
    }
}

fn explain_connect(x: &Finished, transport: Transport, upstream: &str, t: Timings) -> Explanation {
    let elapsed = human_us(t.connect.unwrap_or(0));
    let retransmits = plural(x.facts.syn_retransmits, "SYN retransmit");
    if x.end == End::ConnectAbandoned {
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
    let errno = x.errno.unwrap_or(0);
    let (outcome, mut verdict, mut meaning) = connect_error(transport, errno);
    let text = strerror(errno);
    // A TCP refusal without a reset came as ICMP port unreachable: what a
    // firewall's REJECT sends (a host with nothing on the port sends RST).
    let icmp_refusal = errno == 111
        && transport == Transport::Tcp
        && x.end == End::ConnectSocketError
        && !x.facts.reset_seen;
    if icmp_refusal {
        verdict = Verdict::Network;
        meaning = "rejected by a firewall (ICMP)";
    }
    let (nginx_error, evidence) = if x.end == End::SocketFailed {
        // nginx had not passed the address yet: its line names none.
        (
            format!("socket() failed ({errno}: {text}) while connecting to upstream"),
            format!("socket() returned {errno} ({text}) before any connect"),
        )
    } else if x.end == End::ConnectSyscallError {
        (
            format!(
                "connect() to {upstream} failed ({errno}: {text}) while connecting to upstream"
            ),
            format!("connect() returned {errno} ({text}) after {elapsed}"),
        )
    } else {
        let evidence = if errno == 111 && x.facts.reset_seen {
            format!("RST in reply to SYN after {elapsed}")
        } else if icmp_refusal {
            format!(
                "ICMP port unreachable in reply to SYN after {elapsed}, no RST: a firewall's REJECT"
            )
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
        // A socket that could not be made was never connected: no timings.
        timings: if x.end == End::SocketFailed {
            Timings::default()
        } else {
            t
        },
    }
}

/// `2 retransmits by the upstream`: segments a local upstream's socket
/// sent again (its response, lost on the way back).
fn peer_retransmits(count: u32) -> String {
    format!("{} by the upstream", plural(count, "retransmit"))
}

/// What the evidence says of the request's acknowledgement (TCP).
fn ack_fact(f: &crate::kernel::records::Facts, t: &Timings) -> String {
    match t.request_acked {
        Some(ack) => format!("request acked after {}", human_us(ack)),
        None if f.acked_live => "request acked".to_string(),
        None => "request not acked".to_string(),
    }
}

/// Whether retransmissions, an unacknowledged request or the RTT account for
/// a wait of `waited_us`; the reason, for the evidence.
fn network_reason(
    f: &crate::kernel::records::Facts,
    transport: Transport,
    t: &Timings,
    waited_us: u64,
) -> Option<String> {
    if transport != Transport::Tcp {
        return None;
    }
    if f.retransmits > 0 {
        return Some(plural(f.retransmits, "retransmit"));
    }
    if f.peer_retransmits > 0 {
        return Some(peer_retransmits(f.peer_retransmits));
    }
    if f.syn_retransmits > 0 {
        return Some(plural(f.syn_retransmits, "SYN retransmit"));
    }
    match t.request_acked {
        None if waited_us >= ACK_LATE_US && !f.acked_live => {
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
    let srtt = u64::from(f.srtt_us.unwrap_or(0));
    (srtt > 0 && srtt * 2 >= waited_us && waited_us >= ACK_LATE_US)
        .then(|| format!("smoothed RTT {}", human_us(srtt)))
}

fn explain_exchange(x: &Finished, transport: Transport, slow_us: u64, t: Timings) -> Explanation {
    let ex = &x.facts;
    // How long the request waited for its answer (or until the end).
    let waited = t
        .first_byte
        .or_else(|| span_us(ex.req_last_ns, x.end_ns))
        .unwrap_or(0);
    let mut facts = Vec::new();
    if transport == Transport::Tcp {
        facts.push(ack_fact(ex, &t));
        facts.push(plural(ex.retransmits, "retransmit"));
        if ex.peer_retransmits > 0 {
            facts.push(peer_retransmits(ex.peer_retransmits));
        }
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
    let (outcome, verdict, errno, nginx_error, meaning) = match x.end {
        End::ResponseDone => {
            let lost = ex.retransmits + ex.syn_retransmits + ex.peer_retransmits > 0;
            let (verdict, meaning) = if network.is_some() && (waited >= slow_us || lost) {
                (Verdict::Network, "slowed by the network")
            } else if waited >= slow_us {
                (Verdict::BackendSlow, "backend slow to answer")
            } else {
                (Verdict::Healthy, "answered")
            };
            (Outcome::Ok, verdict, None, None, meaning)
        }
        End::PeerClosed => (
            Outcome::ClosedEarly,
            Verdict::BackendAborted,
            None,
            Some(format!(
                "upstream prematurely closed connection {read_phase}"
            )),
            "backend closed without answering",
        ),
        End::NginxClosed => {
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
        End::PeerReset if x.errno == Some(ETIMEDOUT) => (
            Outcome::NoResponse,
            Verdict::Network,
            Some(ETIMEDOUT),
            Some(format!(
                "recv() failed (110: Connection timed out) {read_phase}"
            )),
            "connection timed out: network",
        ),
        // A reset, or an error on the established connection. (Connect
        // failures were explained above.)
        _ => {
            let errno = x.errno.unwrap_or(ECONNRESET);
            (
                Outcome::Reset,
                Verdict::BackendAborted,
                Some(errno),
                // Reset before the request's write was seen: nginx's write
                // may have failed (`writev() failed ... while sending`) as
                // well as its read; no line is predicted.
                (ex.req_first_ns != 0)
                    .then(|| format!("recv() failed ({errno}: {}) {read_phase}", strerror(errno))),
                "backend reset the connection",
            )
        }
    };
    if matches!(x.end, End::PeerClosed | End::PeerReset) {
        // What tells a stale kept-alive connection, and a body cut short.
        if let Some(idle) = t.idle_before {
            facts.push(format!(
                "kept-alive connection idle {} before the request",
                human_us(idle)
            ));
        }
        if ex.resp_bytes > 0 {
            facts.push(format!("{} response bytes before the end", ex.resp_bytes));
        }
    }
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
    use ngx_trace_common::{Exchange, FLAG_CONNECTED, FLAG_RESET_SEEN, FLAG_REUSED, UpstreamAddr};

    use crate::kernel::records::finished;

    use super::*;

    const MS: u64 = 1_000_000;
    const SLOW: u64 = 1_000_000;

    /// A connect attempt started at t=1 s that ended `after_ns` later.
    fn connect(end: End, errno: u32, after_ns: u64) -> Exchange {
        let mut e = Exchange::new(4243, 17, 1_000 * MS, UpstreamAddr::ZERO);
        e.end = end.code();
        e.errno = errno;
        e.end_ns = e.start_ns + after_ns;
        e
    }

    /// An exchange as the kernel records it: connected in 0.1 ms, request
    /// written over 0.05 ms, acked `ack` after, first byte `first` after
    /// the request, read at once, ended `end_after` after the request.
    fn exchange(end: End, ack: Option<u64>, first: Option<u64>, end_after: u64) -> Exchange {
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
        e.end = end.code();
        e.end_ns = e.req_last_ns + end_after;
        e
    }

    /// The explanation of a kernel record, decoded as user space does.
    fn explained(e: &Exchange, transport: Transport, upstream: &str) -> Explanation {
        explain(
            &finished(e).expect("a valid record"),
            transport,
            upstream,
            SLOW,
        )
    }

    fn tcp(e: &Exchange) -> Explanation {
        explained(e, Transport::Tcp, "127.0.0.1:3999")
    }

    #[test]
    fn a_worker_out_of_descriptors_is_fd_limit_with_nginx_socket_line() {
        // What Debian's nginx logs when worker_rlimit_nofile is reached.
        let x = tcp(&connect(End::SocketFailed, 24, 0));
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::FdLimit, Verdict::ProxyResources, Some(24))
        );
        assert_eq!(
            x.nginx_error.unwrap(),
            "socket() failed (24: Too many open files) while connecting to upstream"
        );
        assert_eq!(x.timings, Timings::default(), "nothing was connected");
        // The host's file table full is the same outcome, errno 23.
        let x = tcp(&connect(End::SocketFailed, 23, 0));
        assert_eq!((x.outcome, x.errno), (Outcome::FdLimit, Some(23)));
    }

    #[test]
    fn an_exchange_cut_by_its_workers_death_is_worker_died_never_a_timeout() {
        let e = exchange(End::WorkerDied, Some(50_000), None, 600 * MS);
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::WorkerDied, Verdict::ProxyCrashed, None)
        );
        assert_eq!(x.nginx_error, None, "nginx writes no upstream line for it");
        assert_eq!(
            x.evidence,
            "request acked after 0.1 ms, the worker died 600.0 ms after the request, no \
             response read"
        );
        assert_eq!(x.timings.first_byte, None);
    }

    #[test]
    fn tcp_refused_reads_like_nginx_error_log() {
        let mut e = connect(End::ConnectSocketError, 111, 150_000);
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
        // The same errno without a reset: ICMP from a firewall's REJECT.
        e.flags &= !FLAG_RESET_SEEN;
        let x = tcp(&e);
        assert_eq!(
            (x.outcome, x.verdict, x.errno),
            (Outcome::Refused, Verdict::Network, Some(111))
        );
        assert!(
            x.evidence.starts_with("ICMP port unreachable"),
            "{}",
            x.evidence
        );
    }

    #[test]
    fn unix_errors_name_the_socket_like_nginx() {
        let sock = "unix:/var/run/php/php8.1-fpm.sock";
        let unix = |errno| {
            explained(
                &connect(End::ConnectSyscallError, errno, 20_000),
                Transport::Unix,
                sock,
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
        let x = tcp(&connect(End::ConnectSyscallError, 99, 10_000));
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
            let x = tcp(&connect(End::ConnectSocketError, errno, 3_000 * MS));
            assert_eq!(
                (x.outcome, x.verdict),
                (Outcome::Unreachable, Verdict::Network)
            );
        }
        let x = tcp(&connect(End::ConnectSocketError, 113, 3_000 * MS));
        assert_eq!(
            x.nginx_error.unwrap(),
            "connect() failed (113: No route to host) while connecting to upstream"
        );
    }

    #[test]
    fn nginx_giving_up_on_a_syn_is_a_connect_timeout() {
        let mut e = connect(End::ConnectAbandoned, 0, 2_001 * MS);
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
            End::ResponseDone,
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
                idle_before: None,
                request_write: Some(50),
                longest_read_gap: None,
            }
        );
    }

    #[test]
    fn a_late_first_byte_after_a_prompt_ack_is_backend_slow() {
        let e = exchange(
            End::ResponseDone,
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
        let e = exchange(End::NginxClosed, Some(100_000), None, 60_000 * MS);
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
        let mut e = exchange(End::ResponseDone, Some(210 * MS), Some(212 * MS), 213 * MS);
        e.retransmits = 1;
        let x = tcp(&e);
        assert_eq!(x.verdict, Verdict::Network);
        assert!(x.evidence.starts_with("1 retransmit: "), "{}", x.evidence);
        // A request never acknowledged, and no answer: also the network.
        let e = exchange(End::NginxClosed, None, None, 5_000 * MS);
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
    fn a_local_upstream_resending_its_response_is_the_network_not_a_slow_backend() {
        // 30% loss on loopback: the answer left at once and came back on
        // the backend's retransmission (request acked, nginx resent nothing).
        let mut e = exchange(
            End::ResponseDone,
            Some(100_000),
            Some(1_500 * MS),
            1_501 * MS,
        );
        e.peer_retransmits = 1;
        let x = tcp(&e);
        assert_eq!((x.outcome, x.verdict), (Outcome::Ok, Verdict::Network));
        assert_eq!(
            x.evidence,
            "1 retransmit by the upstream: request acked after 0.1 ms, 0 retransmits, \
             1 retransmit by the upstream, first byte after 1.50 s"
        );
        // The same wait with nothing resent stays the backend's.
        e.peer_retransmits = 0;
        assert_eq!(tcp(&e).verdict, Verdict::BackendSlow);
    }

    #[test]
    fn unix_has_no_tcp_facts_and_a_slow_php_is_backend_slow() {
        let mut e = exchange(End::ResponseDone, None, Some(2_000 * MS), 2_001 * MS);
        e.flags |= FLAG_REUSED;
        let x = explained(&e, Transport::Unix, "unix:/run/php/php8.2-fpm.sock");
        assert_eq!((x.outcome, x.verdict), (Outcome::Ok, Verdict::BackendSlow));
        assert_eq!(x.evidence, "first byte after 2.00 s");
    }

    #[test]
    fn resets_and_early_closes_are_the_backend_aborting() {
        let mut e = exchange(End::PeerReset, Some(50_000), None, 3 * MS);
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
        let e = exchange(End::PeerClosed, Some(50_000), None, 3 * MS);
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
        let mut e = exchange(End::ResponseDone, Some(50_000), Some(2 * MS), 1_300 * MS);
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

    #[test]
    fn a_client_leaving_is_client_aborted_with_no_error_line() {
        // The client left 0.3 s into the wait; nginx closed the upstream.
        let e = exchange(End::NginxClosed, Some(40 * MS), None, 300 * MS);
        let mut x = finished(&e).unwrap();
        x.client_left = true;
        let ex = explain(&x, Transport::Tcp, "127.0.0.1:3999", SLOW);
        assert_eq!(
            (ex.outcome, ex.verdict, ex.errno),
            (Outcome::ClientClosed, Verdict::ClientAborted, None)
        );
        assert_eq!(ex.nginx_error, None, "nginx writes only an info line");
        assert_eq!(
            ex.evidence,
            "request acked after 40.0 ms, client left after 300.0 ms without a response; \
             nginx closed the upstream connection (499)"
        );
        assert_eq!(
            ex.timings.first_byte, None,
            "its wait is not a response time"
        );
        assert_eq!(ex.timings.connect, Some(100));
        assert_eq!(ex.timings.total, Some(100 + 50 + 300_000));
        // The same record without the client leaving is nginx's timeout.
        let x = finished(&e).unwrap();
        assert_eq!(tcp(&e).outcome, Outcome::NoResponse);
        assert!(!x.client_left);
    }

    #[test]
    fn a_client_leaving_during_the_connect_is_not_a_connect_timeout() {
        let e = connect(End::ConnectAbandoned, 0, 3 * MS);
        let mut x = finished(&e).unwrap();
        x.client_left = true;
        let ex = explain(&x, Transport::Tcp, "127.0.0.1:3999", SLOW);
        assert_eq!(
            (ex.outcome, ex.verdict, ex.errno, ex.nginx_error),
            (Outcome::ClientClosed, Verdict::ClientAborted, None, None)
        );
        assert_eq!(ex.timings.connect, None, "no connect finished");
        assert!(
            ex.evidence
                .starts_with("client left 3.0 ms into the connect")
        );
    }

    #[test]
    fn a_client_left_flag_never_changes_an_answer_or_a_backend_fault() {
        for end in [End::ResponseDone, End::PeerClosed, End::PeerReset] {
            let e = exchange(end, Some(40_000), Some(MS), 2 * MS);
            let mut x = finished(&e).unwrap();
            x.client_left = true;
            let ex = explain(&x, Transport::Tcp, "127.0.0.1:3999", SLOW);
            assert_ne!(ex.outcome, Outcome::ClientClosed, "{end:?}");
        }
    }

    #[test]
    fn a_request_seen_acknowledged_live_is_not_the_network() {
        // A pending exchange: no ACK seen by the kernel's hooks (none runs
        // on a pure ACK), but nothing is left unacknowledged on the socket.
        let e = exchange(End::NginxClosed, None, None, 5_000 * MS);
        let mut x = finished(&e).unwrap();
        x.facts.acked_live = true;
        let ex = explain(&x, Transport::Tcp, "127.0.0.1:3999", SLOW);
        assert_eq!(ex.verdict, Verdict::BackendSlow);
        assert_eq!(
            ex.evidence,
            "request acked, 0 retransmits, no response for 5.00 s"
        );
        assert_eq!(ex.timings.request_acked, None, "its time is not known");
        x.facts.acked_live = false;
        let ex = explain(&x, Transport::Tcp, "127.0.0.1:3999", SLOW);
        assert_eq!(ex.verdict, Verdict::Network);
    }

    #[test]
    fn an_answer_before_the_whole_request_was_written_came_at_once() {
        // nginx still uploading a body when the backend answers 413.
        let mut e = exchange(End::ResponseDone, Some(40_000), None, 3 * MS);
        e.resp_kernel_ns = e.req_last_ns - 2 * MS;
        e.resp_first_read_ns = e.req_last_ns + 10_000;
        e.resp_last_read_ns = e.req_last_ns + 20_000;
        let x = tcp(&e);
        assert_eq!(x.timings.first_byte, Some(0));
        assert_eq!((x.outcome, x.verdict), (Outcome::Ok, Verdict::Healthy));
        assert!(
            x.evidence.contains("first byte after 0.0 ms"),
            "{}",
            x.evidence
        );
    }
}
