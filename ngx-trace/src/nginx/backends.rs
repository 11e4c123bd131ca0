//! The processes serving a local upstream (a UNIX socket, or a TCP port on
//! this host): the holders of its listening socket, found in `/proc`.
//! Children forked by a listener's holder later (a PHP-FPM or gunicorn
//! master respawning workers) are recognised by their parent.
//!
//! Looked up in user space, once per upstream and then at most every
//! [`REFRESH`], never by the kernel: a crashed backend is gone by the time
//! its connection fails, so the holders are known before. The lookup runs
//! on the side thread (`slow`), in the network namespace of the worker
//! that connects, and walks the host's processes under a time budget.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
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

/// The IP of a TCP upstream.
fn ip_of(addr: &UpstreamAddr) -> Option<IpAddr> {
    match addr.family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&addr.data[..4]).ok()?)),
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(&addr.data[..16]).ok()?)),
        _ => None,
    }
}

/// The addresses of this host's interfaces (of our network namespace).
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

/// The listening sockets of one worker's network namespace, as far as
/// asked: from `sock_diag` in ours (the kernel walks its listeners only),
/// else from `/proc/<worker>/net/*` (a whole table, read once per lookup).
struct Namespace {
    worker: u32,
    ours: bool,
    /// `/proc/<worker>/net/<file>` texts read so far.
    texts: HashMap<&'static str, String>,
    /// sock_diag's TCP listeners by port, asked so far.
    tcp: HashMap<u16, Vec<crate::kernel::sock_diag::TcpListener>>,
}

impl Namespace {
    fn of(worker: u32) -> Self {
        Self {
            worker,
            ours: crate::kernel::sock_diag::same_netns(worker),
            texts: HashMap::new(),
            tcp: HashMap::new(),
        }
    }

    fn text(&mut self, file: &'static str) -> &str {
        let worker = self.worker;
        self.texts.entry(file).or_insert_with(|| {
            fs::read_to_string(format!("/proc/{worker}/net/{file}")).unwrap_or_default()
        })
    }

    /// The inodes of the listeners serving `addr` here. `local` are our
    /// interfaces' addresses: a listener on the wildcard serves an address
    /// only if the address is this host's (else the upstream is elsewhere,
    /// on the same port); in another namespace, whose interfaces are not
    /// ours, only loopback is taken as its own, beside exact binds.
    fn listeners(&mut self, addr: &UpstreamAddr, local: &[IpAddr]) -> BTreeSet<u64> {
        if addr.family == AF_UNIX {
            let (_, name) = crate::kernel::records::upstream_name(addr);
            let path = name.trim_start_matches("unix:").to_string();
            if self.ours {
                return crate::kernel::sock_diag::unix_listeners(Some(&path))
                    .unwrap_or_default()
                    .iter()
                    .map(|l| l.inode)
                    .collect();
            }
            return unix_listeners(self.text("unix"), &path);
        }
        let Some(ip) = ip_of(addr) else {
            return BTreeSet::new();
        };
        let port = u16::from_be(addr.port_be);
        let wildcard_ok = ip.is_loopback() || (self.ours && local.contains(&ip));
        if self.ours {
            let listeners = self.tcp.entry(port).or_insert_with(|| {
                crate::kernel::sock_diag::tcp_listeners(Some(port)).unwrap_or_default()
            });
            return listeners
                .iter()
                .filter(|l| l.port == port && (l.ip == ip || (wildcard_ok && l.accepts(ip))))
                .map(|l| l.inode)
                .collect();
        }
        let mut inodes = BTreeSet::new();
        for file in ["tcp", "tcp6"] {
            let text = self.text(file);
            if wildcard_ok {
                inodes.extend(tcp_listeners(text, ip, port));
            } else {
                inodes.extend(listener_rows(text, ip, port).filter_map(|cols| {
                    let (bound, _) = parse_tcp_addr(cols.get(1)?)?;
                    (bound == ip).then_some(())?;
                    cols.get(9)?.parse::<u64>().ok()
                }));
            }
        }
        inodes
    }
}

/// Who serves each looked-up upstream: its address, its listening
/// sockets' inodes and the processes holding them (empty: not local, or
/// nothing listens).
pub type Found = Vec<(UpstreamAddr, BTreeSet<u64>, BTreeSet<u32>)>;

/// What an earlier lookup found of an upstream: its listeners' inodes and
/// their holders.
type Known = HashMap<UpstreamAddr, (BTreeSet<u64>, BTreeSet<u32>)>;

/// Whether process `pid` exists (`kill(pid, 0)`: no `/proc` read).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let sent = unsafe { libc::kill(pid as libc::pid_t, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// One lookup of the serving processes of some upstreams, done on the
/// side thread (`slow`) in steps: the listeners first, then the walk of
/// every process's descriptors, resumed where it stopped at each turn.
pub struct Lookup {
    /// The upstreams, each with a worker that connects to it (whose
    /// network namespace it is seen from).
    asked: Vec<(UpstreamAddr, u32)>,
    /// Their listeners' inodes, once read.
    wanted: Option<Vec<(UpstreamAddr, BTreeSet<u64>)>>,
    /// The processes to walk, once listed, and the next to look at.
    pids: Option<Vec<u32>>,
    next: usize,
    /// The holders found so far, by inode.
    found: HashMap<u64, BTreeSet<u32>>,
    /// What earlier lookups found: an upstream whose listeners are the same
    /// sockets, all of whose holders are alive, is answered from it without
    /// the walk (which costs in proportion to the host's descriptors).
    known: Known,
    /// The upstreams answered from `known`, once decided.
    reused: Option<HashSet<UpstreamAddr>>,
}

impl Lookup {
    /// A lookup of `asked`: upstreams, each with a worker connecting to it.
    pub fn new(asked: Vec<(UpstreamAddr, u32)>) -> Self {
        Self {
            asked,
            wanted: None,
            pids: None,
            next: 0,
            found: HashMap::new(),
            known: HashMap::new(),
            reused: None,
        }
    }

    /// Whether what was known of `addr` still holds for `inodes`: the same
    /// listening sockets, every holder alive (a master forking new children
    /// keeps holding them; `serves` accepts a holder's children).
    fn still_known(&self, addr: &UpstreamAddr, inodes: &BTreeSet<u64>) -> bool {
        self.known.get(addr).is_some_and(|(before, holders)| {
            before == inodes && !holders.is_empty() && holders.iter().all(|&p| alive(p))
        })
    }

    fn done(&mut self) -> Found {
        self.wanted
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(addr, inodes)| {
                let reused = self.reused.as_ref().is_some_and(|r| r.contains(&addr));
                let holders = match self.known.get(&addr) {
                    Some((_, holders)) if reused => holders.clone(),
                    _ => inodes
                        .iter()
                        .filter_map(|i| self.found.get(i))
                        .flatten()
                        .copied()
                        .collect(),
                };
                (addr, inodes, holders)
            })
            .collect()
    }
}

impl crate::slow::Job<Found> for Lookup {
    fn step(&mut self, until: Instant) -> Option<Found> {
        let wanted = self.wanted.get_or_insert_with(|| {
            let local = local_ips();
            let mut spaces: HashMap<u32, Namespace> = HashMap::new();
            self.asked
                .iter()
                .map(|(addr, worker)| {
                    let space = spaces
                        .entry(*worker)
                        .or_insert_with(|| Namespace::of(*worker));
                    (*addr, space.listeners(addr, &local))
                })
                .collect()
        });
        let wanted = wanted.clone();
        if self.reused.is_none() {
            let reused = wanted
                .iter()
                .filter(|(addr, inodes)| self.still_known(addr, inodes))
                .map(|(addr, _)| *addr)
                .collect();
            self.reused = Some(reused);
        }
        let reused = self.reused.clone().unwrap_or_default();
        let all: BTreeSet<u64> = wanted
            .iter()
            .filter(|(addr, _)| !reused.contains(addr))
            .flat_map(|(_, i)| i.iter().copied())
            .collect();
        if all.is_empty() {
            return Some(self.done());
        }
        let pids = self.pids.get_or_insert_with(|| {
            fs::read_dir("/proc")
                .map(|procs| {
                    procs
                        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                        .collect()
                })
                .unwrap_or_default()
        });
        // At least one process a turn: each turn moves on.
        while let Some(&pid) = pids.get(self.next) {
            self.next += 1;
            for (inode, _) in crate::kernel::proc_net::socket_fds(pid) {
                if all.contains(&inode) {
                    self.found.entry(inode).or_default().insert(pid);
                }
            }
            if self.next < pids.len() && Instant::now() >= until {
                return None;
            }
        }
        Some(self.done())
    }
}

/// What is known of one upstream's serving processes.
#[derive(Debug, Clone)]
struct Served {
    /// When they were looked up.
    at: Instant,
    /// Its listening sockets' inodes.
    inodes: BTreeSet<u64>,
    /// The processes holding its listening socket (empty: not local, or
    /// nothing listens).
    holders: BTreeSet<u32>,
}

/// Most upstreams whose serving processes are kept.
const SERVED_MAX: usize = 4096;

/// The serving processes of the local upstreams seen, as last looked up
/// (on the side thread: reading this never waits for `/proc`).
#[derive(Debug, Default)]
pub struct Backends {
    served: HashMap<UpstreamAddr, Served>,
    /// Upstreams being looked up now.
    asked: HashSet<UpstreamAddr>,
}

impl Backends {
    /// The upstreams among `addrs` (each with a worker connecting to it)
    /// never looked up or not for [`REFRESH`], and not being looked up:
    /// taken as being looked up from now.
    pub fn stale<'a>(
        &mut self,
        addrs: impl Iterator<Item = (&'a UpstreamAddr, u32)>,
    ) -> Vec<(UpstreamAddr, u32)> {
        let mut stale = Vec::new();
        for (addr, worker) in addrs {
            if self.asked.contains(addr)
                || self
                    .served
                    .get(addr)
                    .is_some_and(|s| s.at.elapsed() < REFRESH)
            {
                continue;
            }
            self.asked.insert(*addr);
            stale.push((*addr, worker));
        }
        stale
    }

    /// The lookup of `asked` could not be started (the side thread is
    /// behind): they are stale again.
    pub fn not_asked(&mut self, asked: &[(UpstreamAddr, u32)]) {
        for (addr, _) in asked {
            self.asked.remove(addr);
        }
    }

    /// A lookup of `stale` (from [`Backends::stale`]), which reuses what
    /// was found of them before where it still holds.
    pub fn lookup(&self, stale: Vec<(UpstreamAddr, u32)>) -> Lookup {
        let mut lookup = Lookup::new(stale);
        lookup.known = lookup
            .asked
            .iter()
            .filter_map(|(addr, _)| {
                let s = self.served.get(addr)?;
                Some((*addr, (s.inodes.clone(), s.holders.clone())))
            })
            .collect();
        lookup
    }

    /// Takes a lookup's answer.
    pub fn found(&mut self, found: Found) {
        if self.served.len() + found.len() > SERVED_MAX {
            self.served.clear();
        }
        let at = Instant::now();
        for (addr, inodes, holders) in found {
            self.asked.remove(&addr);
            self.served.insert(
                addr,
                Served {
                    at,
                    inodes,
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

    /// `addr` looked up from this process's namespace in turns of
    /// `budget`: the holders found, and the turns it took.
    fn look_up(addr: UpstreamAddr, budget: Duration) -> (BTreeSet<u32>, usize) {
        use crate::slow::Job as _;
        let mut lookup = Lookup::new(vec![(addr, std::process::id())]);
        for turn in 1..100_000 {
            if let Some(found) = lookup.step(Instant::now() + budget) {
                assert_eq!(found.len(), 1);
                return (found[0].2.clone(), turn);
            }
        }
        panic!("the lookup never ended");
    }

    #[test]
    fn the_same_listeners_with_live_holders_are_not_walked_for_again() {
        use crate::slow::Job as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = listener.local_addr().unwrap();
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.port_be = bound.port().to_be();
        addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        let me = std::process::id();
        let mut backends = Backends::default();
        let stale = backends.stale([(&addr, me)].into_iter());
        let mut first = backends.lookup(stale);
        let found = loop {
            if let Some(found) = first.step(Instant::now() + Duration::from_secs(5)) {
                break found;
            }
        };
        assert!(first.pids.is_some(), "the first lookup walks the processes");
        backends.found(found);
        assert!(backends.serves(&addr, me, 1));
        // Stale again later: the listener and its holder are unchanged.
        backends.served.get_mut(&addr).unwrap().at -= REFRESH;
        let stale = backends.stale([(&addr, me)].into_iter());
        let mut again = backends.lookup(stale);
        let found = again.step(Instant::now()).expect("answered at once");
        assert!(again.pids.is_none(), "no walk of the host's processes");
        assert_eq!(found[0].2, BTreeSet::from([me]));
        // Another listener on the port's address is a new socket: walked.
        drop(listener);
        let _other = std::net::TcpListener::bind(bound).unwrap();
        backends.found(found);
        backends.served.get_mut(&addr).unwrap().at -= REFRESH;
        let stale = backends.stale([(&addr, me)].into_iter());
        let mut walked = backends.lookup(stale);
        let found = loop {
            if let Some(found) = walked.step(Instant::now() + Duration::from_secs(5)) {
                break found;
            }
        };
        assert!(walked.pids.is_some());
        assert_eq!(found[0].2, BTreeSet::from([me]));
    }

    #[test]
    fn a_lookup_finds_the_holders_of_real_listeners_across_turns() {
        let me = std::process::id();
        let dir = std::env::temp_dir().join(format!("ngx-trace-backends-{me}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.sock");
        let _unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_UNIX;
        let p = path.to_str().unwrap().as_bytes();
        addr.data[..p.len()].copy_from_slice(p);
        let (holders, _) = look_up(addr, Duration::from_secs(5));
        assert_eq!(holders, BTreeSet::from([me]));
        // A walk cut into turns of nothing ends with the same answer.
        let (holders, turns) = look_up(addr, Duration::ZERO);
        assert_eq!(holders, BTreeSet::from([me]));
        assert!(turns > 1, "resumed");

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.port_be = tcp.local_addr().unwrap().port().to_be();
        addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(look_up(addr, BUDGET_FOR_TESTS).0, BTreeSet::from([me]));
        // The same port elsewhere is not ours.
        addr.data[..4].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(look_up(addr, BUDGET_FOR_TESTS).0, BTreeSet::new());
        let _ = fs::remove_dir_all(&dir);
    }

    const BUDGET_FOR_TESTS: Duration = Duration::from_millis(200);

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
}
