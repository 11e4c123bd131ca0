//! From kernel facts to what a user acts on: outcome, verdict, the line
//! nginx writes to its error log, and the evidence.
use ngx_trace_common::{
    END_CONNECT_ABANDONED, END_CONNECT_SOCKET_ERROR, END_CONNECT_SYSCALL_ERROR, END_CONNECTED,
};

use crate::records::Transport;

/// What happened to one upstream connection attempt or exchange.
#[expect(dead_code, reason = "exchange outcomes arrive with exchange timing")]
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
#[expect(dead_code, reason = "backend_slow arrives with exchange timing")]
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

/// How a connect attempt ended, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectEnd {
    /// `connect()` itself returned the error.
    SyscallError(u32),
    /// The socket reported the error later (RST, ICMP, kernel timeout).
    SocketError(u32),
    /// nginx closed the socket while the SYN was unanswered.
    Abandoned,
    /// Connected.
    Connected,
}

impl ConnectEnd {
    /// From the record's `end` and `errno` fields; `None` for an unknown `end`.
    pub fn from_record(end: u32, errno: u32) -> Option<Self> {
        match end {
            END_CONNECT_SYSCALL_ERROR => Some(Self::SyscallError(errno)),
            END_CONNECT_SOCKET_ERROR => Some(Self::SocketError(errno)),
            END_CONNECT_ABANDONED => Some(Self::Abandoned),
            END_CONNECTED => Some(Self::Connected),
            _ => None,
        }
    }
}

/// Kernel facts about one connect attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectFacts {
    /// TCP or UNIX.
    pub transport: Transport,
    /// The upstream as nginx names it.
    pub upstream: String,
    /// How it ended.
    pub end: ConnectEnd,
    /// From `connect()` to the outcome, µs.
    pub elapsed_us: u64,
    /// SYNs retransmitted (TCP).
    pub syn_retransmits: u32,
    /// A reset arrived while connecting (TCP).
    pub reset_seen: bool,
}

/// The explanation of one connect attempt.
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
}

const ETIMEDOUT: u32 = 110;

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
        (104, _) => (Reset, BackendAborted, "reset while connecting"),
        _ => (Unreachable, Network, "unexpected connect error"),
    }
}

fn ms(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else {
        format!("{:.1} ms", us as f64 / 1e3)
    }
}

/// Explains a connect attempt.
pub fn explain_connect(facts: &ConnectFacts) -> Explanation {
    let elapsed = ms(facts.elapsed_us);
    let retransmits = match facts.syn_retransmits {
        1 => "1 SYN retransmit".to_string(),
        n => format!("{n} SYN retransmits"),
    };
    match facts.end {
        ConnectEnd::Connected => Explanation {
            outcome: Outcome::Ok,
            verdict: Verdict::Healthy,
            errno: None,
            nginx_error: None,
            meaning: "connected",
            evidence: match facts.transport {
                Transport::Tcp => format!("handshake done in {elapsed}, {retransmits}"),
                Transport::Unix => format!("connect() returned 0 in {elapsed}"),
            },
        },
        ConnectEnd::Abandoned => Explanation {
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
        },
        ConnectEnd::SyscallError(errno) | ConnectEnd::SocketError(errno) => {
            let (outcome, verdict, meaning) = connect_error(facts.transport, errno);
            let text = strerror(errno);
            let nginx_error = match facts.end {
                ConnectEnd::SyscallError(_) => format!(
                    "connect() to {} failed ({errno}: {text}) while connecting to upstream",
                    facts.upstream
                ),
                _ => format!("connect() failed ({errno}: {text}) while connecting to upstream"),
            };
            let evidence = match (facts.end, facts.reset_seen) {
                (ConnectEnd::SocketError(111), true) => {
                    format!("RST in reply to SYN after {elapsed}")
                }
                (ConnectEnd::SocketError(_), _) => {
                    format!("socket error {errno} ({text}) after {elapsed} and {retransmits}")
                }
                _ => format!("connect() returned {errno} ({text}) after {elapsed}"),
            };
            Explanation {
                outcome,
                verdict,
                errno: Some(errno),
                nginx_error: Some(nginx_error),
                meaning,
                evidence,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(transport: Transport, upstream: &str, end: ConnectEnd) -> ConnectFacts {
        ConnectFacts {
            transport,
            upstream: upstream.into(),
            end,
            elapsed_us: 85,
            syn_retransmits: 0,
            reset_seen: false,
        }
    }

    #[test]
    fn tcp_refused_reads_like_nginx_error_log() {
        let mut f = facts(
            Transport::Tcp,
            "127.0.0.1:3999",
            ConnectEnd::SocketError(111),
        );
        f.reset_seen = true;
        let e = explain_connect(&f);
        assert_eq!(
            (e.outcome, e.verdict, e.errno),
            (Outcome::Refused, Verdict::BackendDown, Some(111))
        );
        // Exactly what Debian's nginx 1.22 logs for a stopped backend.
        assert_eq!(
            e.nginx_error.unwrap(),
            "connect() failed (111: Connection refused) while connecting to upstream"
        );
        assert_eq!(e.evidence, "RST in reply to SYN after 0.1 ms");
    }

    #[test]
    fn unix_errors_name_the_socket_like_nginx() {
        let sock = "unix:/var/run/php/php8.1-fpm.sock";
        let e = explain_connect(&facts(Transport::Unix, sock, ConnectEnd::SyscallError(2)));
        assert_eq!(
            (e.outcome, e.verdict),
            (Outcome::NotFound, Verdict::BackendDown)
        );
        assert_eq!(
            e.nginx_error.unwrap(),
            "connect() to unix:/var/run/php/php8.1-fpm.sock failed (2: No such file or directory) while connecting to upstream"
        );
        let e = explain_connect(&facts(Transport::Unix, sock, ConnectEnd::SyscallError(13)));
        assert_eq!(
            (e.outcome, e.verdict),
            (Outcome::PermissionDenied, Verdict::Permission)
        );
        assert_eq!(e.meaning, "socket permissions or SELinux/AppArmor");
        let e = explain_connect(&facts(Transport::Unix, sock, ConnectEnd::SyscallError(1)));
        assert_eq!(e.outcome, Outcome::PermissionDenied);
        let e = explain_connect(&facts(Transport::Unix, sock, ConnectEnd::SyscallError(111)));
        assert_eq!(
            (e.outcome, e.verdict),
            (Outcome::Refused, Verdict::BackendDown)
        );
        let e = explain_connect(&facts(Transport::Unix, sock, ConnectEnd::SyscallError(11)));
        assert_eq!(
            (e.outcome, e.verdict),
            (Outcome::BacklogFull, Verdict::BackendOverloaded)
        );
        assert!(
            e.nginx_error
                .unwrap()
                .contains("(11: Resource temporarily unavailable)")
        );
    }

    #[test]
    fn local_and_network_errors() {
        let up = "10.0.0.9:80";
        let e = explain_connect(&facts(Transport::Tcp, up, ConnectEnd::SyscallError(99)));
        assert_eq!(
            (e.outcome, e.verdict),
            (Outcome::AddrUnavailable, Verdict::ProxyResources)
        );
        assert!(
            e.nginx_error
                .unwrap()
                .contains("(99: Cannot assign requested address)")
        );
        for errno in [101, 113] {
            let e = explain_connect(&facts(Transport::Tcp, up, ConnectEnd::SocketError(errno)));
            assert_eq!(
                (e.outcome, e.verdict),
                (Outcome::Unreachable, Verdict::Network)
            );
        }
        let e = explain_connect(&facts(Transport::Tcp, up, ConnectEnd::SocketError(113)));
        assert_eq!(
            e.nginx_error.unwrap(),
            "connect() failed (113: No route to host) while connecting to upstream"
        );
    }

    #[test]
    fn nginx_giving_up_on_a_syn_is_a_connect_timeout() {
        let mut f = facts(Transport::Tcp, "127.0.0.1:3998", ConnectEnd::Abandoned);
        f.elapsed_us = 2_001_000;
        f.syn_retransmits = 1;
        let e = explain_connect(&f);
        assert_eq!(
            (e.outcome, e.verdict, e.errno),
            (Outcome::ConnectTimeout, Verdict::Network, Some(110))
        );
        assert_eq!(
            e.nginx_error.unwrap(),
            "upstream timed out (110: Connection timed out) while connecting to upstream"
        );
        assert_eq!(
            e.evidence,
            "no SYN-ACK after 2.00 s and 1 SYN retransmit; nginx closed the socket"
        );
    }

    #[test]
    fn a_made_connection_is_healthy_and_has_no_error() {
        let e = explain_connect(&facts(
            Transport::Tcp,
            "127.0.0.1:80",
            ConnectEnd::Connected,
        ));
        assert_eq!(
            (e.outcome, e.verdict, e.errno),
            (Outcome::Ok, Verdict::Healthy, None)
        );
        assert!(e.nginx_error.is_none());
    }

    #[test]
    fn unknown_end_codes_are_refused() {
        assert_eq!(
            ConnectEnd::from_record(END_CONNECT_SYSCALL_ERROR, 2),
            Some(ConnectEnd::SyscallError(2))
        );
        assert_eq!(ConnectEnd::from_record(99, 0), None);
    }
}
