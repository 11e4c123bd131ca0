//! Whether a local TCP upstream whose connect timed out has a full accept
//! queue: its kernel then drops new SYNs, as a lossy network would.
//!
//! Asked of the kernel by port (`sock_diag`, LISTEN sockets only: the cost
//! grows with the listeners, not with the host's connections), when nginx
//! shares our network namespace. Otherwise its namespace's listeners cannot
//! be asked one by one (that would need `setns`), and the evidence is the
//! rise of that namespace's `TcpExt: ListenOverflows` counter, one small
//! file.
use std::{
    collections::HashMap,
    fs,
    net::IpAddr,
    time::{Duration, Instant},
};

use ngx_trace_common::{AF_INET, AF_INET6, UpstreamAddr};

use crate::{human::human_us, kernel::sock_diag, notice::notice};

/// A listener's accept queue: connections waiting for `accept()`, and the
/// backlog it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueue {
    /// Waiting for `accept()`.
    pub queued: u64,
    /// The most it holds.
    pub backlog: u64,
}

impl AcceptQueue {
    /// Whether the kernel drops new SYNs to it (`sk_acceptq_is_full`).
    pub fn is_full(&self) -> bool {
        self.queued > self.backlog
    }
}

/// What says a backend does not accept fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overloaded {
    /// Its listener's accept queue is full now.
    Full(AcceptQueue),
    /// nginx runs in another network namespace, where listeners dropped
    /// `dropped` connection attempts for a full accept queue during the
    /// last `over`: maybe this backend's, maybe another's.
    Overflowed {
        /// The rise of `TcpExt: ListenOverflows`.
        dropped: u64,
        /// Since the previous reading.
        over: Duration,
    },
}

impl Overloaded {
    /// Whether it is this very listener that is full (the verdict may then
    /// say so), not only one of the namespace's.
    pub fn is_certain(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// The evidence, as a clause.
    pub fn evidence(&self) -> String {
        match self {
            Self::Full(q) => format!(
                "the local listener's accept queue is full ({} waiting, backlog {}): \
                 its kernel drops new SYNs",
                q.queued, q.backlog
            ),
            Self::Overflowed { dropped, over } => format!(
                "in nginx's network namespace (not ours: its listeners are not read one by \
                 one), listeners dropped {dropped} connection attempts for a full accept \
                 queue in the last {} (TcpExt ListenOverflows), maybe this backend's",
                human_us(over.as_micros() as u64)
            ),
        }
    }
}

/// The fullest accept queue among `listeners` that accept connections to
/// `ip`.
pub fn fullest(listeners: &[sock_diag::TcpListener], ip: IpAddr) -> Option<AcceptQueue> {
    listeners
        .iter()
        .filter(|l| l.accepts(ip))
        .map(|l| AcceptQueue {
            queued: u64::from(l.queued),
            backlog: u64::from(l.backlog),
        })
        .max_by_key(|q| q.queued.saturating_sub(q.backlog))
}

/// `TcpExt: ListenOverflows` in the text of `/proc/<pid>/net/netstat`
/// (pairs of lines: the names, then the values).
pub fn parse_listen_overflows(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let at = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

/// How long a reading stays good: a burst of connect timeouts (thousands a
/// second when a backend stops accepting) asks once a second per worker
/// and upstream, not once each.
const READ_FOR: Duration = Duration::from_secs(1);

/// A `ListenOverflows` rise counts only over this long: older drops say
/// nothing of this connect.
const OVERFLOWS_WINDOW: Duration = Duration::from_secs(120);

/// At most this many readings are kept (then the stale ones are dropped).
const MAX_KEPT: usize = 4096;

/// `ListenOverflows` of one network namespace: when read, its value, and
/// the rise found then.
struct Overflows {
    at: Instant,
    count: u64,
    rise: Option<(u64, Duration)>,
}

impl Overflows {
    /// The rise from this reading to `count`, read at `now`, if any and
    /// within [`OVERFLOWS_WINDOW`].
    fn rise_to(&self, count: u64, now: Instant) -> Option<(u64, Duration)> {
        let over = now.duration_since(self.at);
        (over <= OVERFLOWS_WINDOW && count > self.count).then(|| (count - self.count, over))
    }
}

/// Accept-queue readings, kept for [`READ_FOR`].
#[derive(Default)]
pub struct AcceptQueues {
    read: HashMap<(u32, UpstreamAddr), (Instant, Option<Overloaded>)>,
    /// By network namespace (device, inode of `/proc/<pid>/ns/net`).
    overflows: HashMap<(u64, u64), Overflows>,
    /// Whether a failed `sock_diag` query was said.
    failure_said: bool,
}

impl AcceptQueues {
    /// Why TCP upstream `addr`, as worker `pid` sees it, may not accept
    /// fast enough; `None` when nothing says so (a remote upstream, an
    /// accept queue with room). Asked at most once a second.
    pub fn get(&mut self, pid: u32, addr: &UpstreamAddr) -> Option<Overloaded> {
        let now = Instant::now();
        if let Some((at, found)) = self.read.get(&(pid, *addr))
            && now.duration_since(*at) < READ_FOR
        {
            return *found;
        }
        if self.read.len() >= MAX_KEPT {
            self.read
                .retain(|_, (at, _)| now.duration_since(*at) < READ_FOR);
        }
        let found = self.ask(pid, addr, now);
        self.read.insert((pid, *addr), (now, found));
        found
    }

    fn ask(&mut self, pid: u32, addr: &UpstreamAddr, now: Instant) -> Option<Overloaded> {
        let ip = ip_of(addr)?;
        let port = u16::from_be(addr.port_be);
        if sock_diag::same_netns(pid) {
            return match sock_diag::tcp_listeners(Some(port)) {
                Ok(listeners) => fullest(&listeners, ip)
                    .filter(AcceptQueue::is_full)
                    .map(Overloaded::Full),
                Err(e) => {
                    if !std::mem::replace(&mut self.failure_said, true) {
                        notice(&format!(
                            "accept queues of local backends cannot be read ({e}); \
                             connect timeouts are judged without them (is the kernel's \
                             inet_diag/tcp_diag module available?)"
                        ));
                    }
                    None
                }
            };
        }
        // Another namespace: only its loopback is surely local to it.
        if !ip.is_loopback() {
            return None;
        }
        let (dropped, over) = self.overflow_rise(pid, now)?;
        Some(Overloaded::Overflowed { dropped, over })
    }

    /// The rise of `ListenOverflows` in the network namespace of `pid`
    /// since the previous reading (within [`OVERFLOWS_WINDOW`]), read at
    /// most once a second per namespace.
    fn overflow_rise(&mut self, pid: u32, now: Instant) -> Option<(u64, Duration)> {
        use std::os::unix::fs::MetadataExt as _;
        let ns = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        let ns = (ns.dev(), ns.ino());
        if let Some(seen) = self.overflows.get(&ns)
            && now.duration_since(seen.at) < READ_FOR
        {
            return seen.rise;
        }
        let count =
            parse_listen_overflows(&fs::read_to_string(format!("/proc/{pid}/net/netstat")).ok()?)?;
        let rise = self
            .overflows
            .get(&ns)
            .and_then(|before| before.rise_to(count, now));
        if self.overflows.len() >= MAX_KEPT {
            self.overflows
                .retain(|_, o| now.duration_since(o.at) < OVERFLOWS_WINDOW);
        }
        self.overflows.insert(
            ns,
            Overflows {
                at: now,
                count,
                rise,
            },
        );
        rise
    }
}

/// The IP of a TCP upstream.
fn ip_of(addr: &UpstreamAddr) -> Option<IpAddr> {
    match addr.family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&addr.data[..4]).ok()?)),
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(&addr.data[..16]).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpStream},
        os::fd::AsRawFd as _,
    };

    use super::*;

    /// The head of a real `/proc/net/netstat` (6.x), values shortened.
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled ListenOverflows ListenDrops
TcpExt: 0 0 0 0 0 17 19
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";

    #[test]
    fn listen_overflows_found_by_name() {
        assert_eq!(parse_listen_overflows(NETSTAT), Some(17));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
        assert_eq!(
            parse_listen_overflows("TcpExt: ListenOverflows\nTcpExt: x\n"),
            None
        );
        // The real file of this host parses.
        let text = fs::read_to_string("/proc/self/net/netstat").unwrap();
        assert!(parse_listen_overflows(&text).is_some(), "{text}");
    }

    fn upstream(port: u16) -> UpstreamAddr {
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.port_be = port.to_be();
        addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        addr
    }

    #[test]
    fn a_real_backend_that_stopped_accepting_is_full() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: a valid socket fd; listen() again only resizes the backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        let mut queues = AcceptQueues::default();
        assert_eq!(queues.get(me, &upstream(port)), None, "room in the queue");
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let _clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap())
            .collect();
        // Within a second, the earlier reading stands.
        assert_eq!(queues.get(me, &upstream(port)), None);
        let full = AcceptQueues::default().get(me, &upstream(port)).unwrap();
        assert_eq!(
            full,
            Overloaded::Full(AcceptQueue {
                queued: 2,
                backlog: 1
            })
        );
        assert!(full.is_certain());
        assert!(
            full.evidence()
                .contains("accept queue is full (2 waiting, backlog 1)")
        );
        // Nothing listens on a port of another address.
        let mut elsewhere = upstream(port);
        elsewhere.data[..4].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(AcceptQueues::default().get(me, &elsewhere), None);
    }

    #[test]
    fn overflows_elsewhere_are_worded_as_uncertain() {
        let o = Overloaded::Overflowed {
            dropped: 12,
            over: Duration::from_millis(1500),
        };
        assert!(!o.is_certain());
        let text = o.evidence();
        assert!(text.contains("dropped 12 connection attempts"), "{text}");
        assert!(text.contains("maybe this backend's"), "{text}");
    }

    #[test]
    fn overflow_rise_is_measured_between_readings() {
        let t0 = Instant::now();
        let before = Overflows {
            at: t0,
            count: 40,
            rise: None,
        };
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            before.rise_to(52, later),
            Some((12, Duration::from_secs(2)))
        );
        assert_eq!(before.rise_to(40, later), None, "no rise");
        assert_eq!(before.rise_to(3, later), None, "a counter reset is no rise");
        let stale = t0 + OVERFLOWS_WINDOW + Duration::from_secs(1);
        assert_eq!(before.rise_to(52, stale), None, "older drops say nothing");
        // The real counter of our namespace: no rise without a baseline,
        // and read once a second.
        let me = std::process::id();
        let mut queues = AcceptQueues::default();
        assert_eq!(queues.overflow_rise(me, t0), None, "no baseline yet");
        assert_eq!(queues.overflows.len(), 1);
        assert_eq!(queues.overflow_rise(me, t0), None, "cached");
    }
}
