//! The processes serving a local upstream (a UNIX socket, or a TCP port on
//! this host): the holders of its listening socket, found in `/proc`.
//! Children forked by a listener's holder later (a PHP-FPM or gunicorn
//! master respawning workers) are recognised by their parent.
//!
//! Looked up in user space, once per upstream and then at most every
//! [`REFRESH`], never by the kernel: a crashed backend is gone by the time
//! its connection fails, so the holders are known before.
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    net::IpAddr,
    time::{Duration, Instant},
};

use ngx_trace_common::{AF_INET, AF_INET6, AF_UNIX, UpstreamAddr};

/// How long a lookup stays good.
const REFRESH: Duration = Duration::from_secs(10);

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags: a listening socket.
const UNIX_LISTENING: u32 = 0x10000;

/// The listening sockets' inodes of UNIX socket `path`, from the text of
/// `/proc/net/unix`.
pub fn unix_listeners(text: &str, path: &str) -> BTreeSet<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            (flags & UNIX_LISTENING != 0 && *cols.get(7)? == path).then_some(())?;
            cols.get(6)?.parse().ok()
        })
        .collect()
}

/// An address column of `/proc/net/tcp{,6}` (`0100007F:1F90`): the IP (each
/// 32-bit word printed in host order) and port.
fn parse_tcp_addr(column: &str) -> Option<(IpAddr, u16)> {
    let (hex, port) = column.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for w in 0..hex.len() / 8 {
        let word = u32::from_str_radix(hex.get(w * 8..w * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some((ip, port))
}

/// The rows (split into columns) of listening sockets that accept
/// connections to `ip`:`port` (bound to it, or to the wildcard), in the
/// text of `/proc/net/tcp` or `tcp6`.
fn listener_rows(text: &str, ip: IpAddr, port: u16) -> impl Iterator<Item = Vec<&str>> {
    text.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (*cols.get(3)? == "0A").then_some(())?;
        let (bound, bound_port) = parse_tcp_addr(cols.get(1)?)?;
        let v4_in_v6 = |b: IpAddr| match (b, ip) {
            (IpAddr::V6(b6), IpAddr::V4(v4)) => b6.to_ipv4_mapped() == Some(v4),
            _ => false,
        };
        (bound_port == port && (bound == ip || bound.is_unspecified() || v4_in_v6(bound)))
            .then_some(cols)
    })
}

/// The listening sockets' inodes that accept connections to `ip`:`port`,
/// from the text of `/proc/net/tcp` or `tcp6`.
pub fn tcp_listeners(text: &str, ip: IpAddr, port: u16) -> BTreeSet<u64> {
    listener_rows(text, ip, port)
        .filter_map(|cols| cols.get(9)?.parse().ok())
        .collect()
}

/// A listener's accept queue: connections waiting for `accept()`, and the
/// backlog it was given (`tx_queue:rx_queue` of a listening row is
/// backlog:queued).
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

/// The fullest accept queue among the listeners of `ip`:`port`, from the
/// text of `/proc/net/tcp` or `tcp6`.
pub fn accept_queue_in(text: &str, ip: IpAddr, port: u16) -> Option<AcceptQueue> {
    listener_rows(text, ip, port)
        .filter_map(|cols| {
            let (tx, rx) = cols.get(4)?.split_once(':')?;
            Some(AcceptQueue {
                queued: u64::from_str_radix(rx, 16).ok()?,
                backlog: u64::from_str_radix(tx, 16).ok()?,
            })
        })
        .max_by_key(|q| q.queued.saturating_sub(q.backlog))
}

/// The accept queue of the local listener of TCP upstream `addr`, in the
/// network namespace of process `pid` (nginx's worker); `None` for an
/// upstream elsewhere or without a listener.
pub fn accept_queue(pid: u32, addr: &UpstreamAddr) -> Option<AcceptQueue> {
    let ip = ip_of(addr)?;
    let port = u16::from_be(addr.port_be);
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|file| {
            let text = fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
            accept_queue_in(&text, ip, port)
        })
        .max_by_key(|q| q.queued.saturating_sub(q.backlog))
}

/// How long an accept queue read stays good: a burst of connect timeouts
/// (thousands a second when a backend stops accepting) reads
/// `/proc/<pid>/net/tcp` once a second per worker and upstream, not once
/// each.
const ACCEPT_QUEUE_FOR: Duration = Duration::from_secs(1);

/// [`accept_queue`] reads, kept for [`ACCEPT_QUEUE_FOR`].
#[derive(Default)]
pub struct AcceptQueues {
    read: HashMap<(u32, UpstreamAddr), (Instant, Option<AcceptQueue>)>,
}

impl AcceptQueues {
    /// [`accept_queue`] of `pid` and `addr`, read at most once a second.
    pub fn get(&mut self, pid: u32, addr: &UpstreamAddr) -> Option<AcceptQueue> {
        let now = Instant::now();
        if let Some((at, queue)) = self.read.get(&(pid, *addr))
            && now.duration_since(*at) < ACCEPT_QUEUE_FOR
        {
            return *queue;
        }
        if self.read.len() >= 4096 {
            self.read
                .retain(|_, (at, _)| now.duration_since(*at) < ACCEPT_QUEUE_FOR);
        }
        let queue = accept_queue(pid, addr);
        self.read.insert((pid, *addr), (now, queue));
        queue
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

/// The addresses of this host's interfaces.
fn local_ips() -> Vec<IpAddr> {
    let mut ips = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; each entry's address is
    // read by its family.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return ips;
        }
        let mut at = list;
        while !at.is_null() {
            let sa = (*at).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        ips.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        ips.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    ips
}

/// The inodes of the listening sockets serving `addr` on this host (empty
/// for an upstream elsewhere).
fn listeners(addr: &UpstreamAddr, local: &[IpAddr]) -> BTreeSet<u64> {
    let read = |file: &str| fs::read_to_string(format!("/proc/net/{file}")).unwrap_or_default();
    if addr.family == AF_UNIX {
        let (_, name) = crate::records::upstream_name(addr);
        return unix_listeners(&read("unix"), name.trim_start_matches("unix:"));
    }
    let Some(ip) = ip_of(addr) else {
        return BTreeSet::new();
    };
    if !ip.is_loopback() && !local.contains(&ip) {
        return BTreeSet::new();
    }
    let port = u16::from_be(addr.port_be);
    let mut inodes = tcp_listeners(&read("tcp"), ip, port);
    inodes.extend(tcp_listeners(&read("tcp6"), ip, port));
    inodes
}

/// The processes holding any of `inodes` open, by inode.
fn holders_of(inodes: &BTreeSet<u64>) -> HashMap<u64, BTreeSet<u32>> {
    let mut found: HashMap<u64, BTreeSet<u32>> = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for pid in procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        for (inode, _) in crate::proc_net::socket_fds(pid) {
            if inodes.contains(&inode) {
                found.entry(inode).or_default().insert(pid);
            }
        }
    }
    found
}

/// What is known of one upstream's serving processes.
#[derive(Debug, Clone)]
struct Served {
    /// When they were looked up.
    at: Instant,
    /// The processes holding its listening socket (empty: not local, or
    /// nothing listens).
    holders: BTreeSet<u32>,
}

/// The serving processes of the local upstreams seen.
#[derive(Debug, Default)]
pub struct Backends {
    served: HashMap<UpstreamAddr, Served>,
    local: Option<(Instant, Vec<IpAddr>)>,
}

impl Backends {
    /// Looks up the serving processes of the upstreams in `addrs` not looked
    /// up for [`REFRESH`], in one pass over `/proc`.
    pub fn refresh<'a>(&mut self, addrs: impl Iterator<Item = &'a UpstreamAddr>) {
        let stale: Vec<UpstreamAddr> = addrs
            .filter(|a| {
                self.served
                    .get(*a)
                    .is_none_or(|s| s.at.elapsed() >= REFRESH)
            })
            .copied()
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        if stale.is_empty() {
            return;
        }
        if self
            .local
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= REFRESH)
        {
            self.local = Some((Instant::now(), local_ips()));
        }
        let local = self
            .local
            .as_ref()
            .map(|(_, ips)| ips.as_slice())
            .unwrap_or(&[]);
        let wanted: Vec<(UpstreamAddr, BTreeSet<u64>)> =
            stale.iter().map(|a| (*a, listeners(a, local))).collect();
        let all: BTreeSet<u64> = wanted.iter().flat_map(|(_, i)| i.iter().copied()).collect();
        let by_inode = if all.is_empty() {
            HashMap::new()
        } else {
            holders_of(&all)
        };
        if self.served.len() > 4096 {
            self.served.clear();
        }
        for (addr, inodes) in wanted {
            let holders = inodes
                .iter()
                .filter_map(|i| by_inode.get(i))
                .flatten()
                .copied()
                .collect();
            self.served.insert(
                addr,
                Served {
                    at: Instant::now(),
                    holders,
                },
            );
        }
    }

    /// Whether `pid` (whose parent is `parent`) serves `addr`: it holds (or
    /// held when last looked up) the upstream's listening socket, or its
    /// parent does.
    pub fn serves(&self, addr: &UpstreamAddr, pid: u32, parent: u32) -> bool {
        self.served
            .get(addr)
            .is_some_and(|s| s.holders.contains(&pid) || s.holders.contains(&parent))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn finds_a_unix_listener_by_path_not_its_connections() {
        // /proc/net/unix with PHP-FPM's listener and one accepted connection.
        let text = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 81234 /run/php/php8.2-fpm.sock
0000000000000000: 00000003 00000000 00000000 0001 03 81299 /run/php/php8.2-fpm.sock
0000000000000000: 00000002 00000000 00010000 0001 01 500 /run/other.sock
";
        assert_eq!(
            unix_listeners(text, "/run/php/php8.2-fpm.sock"),
            BTreeSet::from([81234])
        );
    }

    #[test]
    fn finds_tcp_listeners_bound_to_the_address_or_the_wildcard() {
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 3333 1
";
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(tcp_listeners(text, lo, 8080), BTreeSet::from([1111]));
        assert_eq!(tcp_listeners(text, lo, 80), BTreeSet::from([2222]));
        assert!(tcp_listeners(text, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080).is_empty());
        // tcp6: [::1]:8080 and the v6 wildcard on 80 (accepting IPv4 too).
        let text6 = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1
";
        let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(tcp_listeners(text6, lo6, 8080), BTreeSet::from([4444]));
        assert_eq!(tcp_listeners(text6, lo, 80), BTreeSet::from([5555]));
    }

    #[test]
    fn a_listener_with_more_waiting_than_its_backlog_is_full() {
        // A backend that listen()ed with backlog 1 and stopped accepting: two
        // connections wait (a listener's tx_queue:rx_queue is backlog:queued).
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000001:00000002 00:00000000 00000000     0        0 1111 1
   1: 0100007F:1F91 00000000:0000 0A 00000080:00000000 00:00000000 00000000     0        0 2222 1
";
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let q = accept_queue_in(text, lo, 8080).unwrap();
        assert_eq!((q.queued, q.backlog, q.is_full()), (2, 1, true));
        let idle = accept_queue_in(text, lo, 8081).unwrap();
        assert_eq!((idle.queued, idle.backlog, idle.is_full()), (0, 128, false));
        assert!(accept_queue_in(text, lo, 9).is_none());
    }
}
