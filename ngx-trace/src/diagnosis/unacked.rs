//! Whether a waiting exchange's request is acknowledged, asked of the
//! kernel for that one socket: no hook runs on a pure ACK, so the kernel's
//! record may not know yet.
//!
//! The worker's socket fd is copied here (`pidfd_getfd`, through one pidfd
//! kept per worker), checked to be a TCP socket connected to the exchange's
//! upstream, and asked `SIOCOUTQ`: for TCP, bytes written and not yet
//! acknowledged (`write_seq - snd_una`). A few syscalls per exchange,
//! whatever the host's number of sockets, and in any network namespace.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use ngx_trace_common::{AF_INET, AF_INET6, UpstreamAddr};

use crate::{
    nginx::adopt::{is_socket, sockfs_dev},
    notice::notice,
};

/// At most this many sockets are asked about per pass of `pending`
/// reports; past it the fact is left unknown, and counted.
pub const LOOKUPS_PER_PASS: usize = 64;

/// At most this many workers' pidfds are kept (then all are let go).
const MAX_PIDFDS: usize = 1024;

/// Asks workers' sockets how much they have not had acknowledged.
#[derive(Default)]
pub struct Unacked {
    /// One pidfd per worker asked about.
    pidfds: HashMap<u32, OwnedFd>,
    /// Lookups made in this pass.
    used: usize,
    /// Lookups skipped for [`LOOKUPS_PER_PASS`], in all.
    skipped: u64,
    /// Whether the kernel refused to copy a worker's fd (said once; no
    /// lookup is tried after).
    denied: bool,
    /// The socket filesystem's device, once known.
    sockfs: Option<Option<u64>>,
}

impl Unacked {
    /// Starts a pass of `pending` reports: [`LOOKUPS_PER_PASS`] lookups
    /// more.
    pub fn new_pass(&mut self) {
        self.used = 0;
    }

    /// Lets go of the pidfd of worker `pid`, which exited.
    pub fn forget_worker(&mut self, pid: u32) {
        self.pidfds.remove(&pid);
    }

    /// Lookups skipped for the per-pass cap, in all.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes that fd `fd` of worker `pid`, a TCP connection to `addr`, has
    /// written and its peer not yet acknowledged; `None` when it cannot be
    /// told (the fd is gone or is another socket now, the kernel refuses
    /// the copy, or this pass asked enough).
    pub fn get(&mut self, pid: u32, fd: u32, addr: &UpstreamAddr) -> Option<u64> {
        if self.denied {
            return None;
        }
        if self.used >= LOOKUPS_PER_PASS {
            self.skipped += 1;
            if self.skipped == 1 {
                notice(&format!(
                    "more than {LOOKUPS_PER_PASS} exchanges became pending at once: whether \
                     the rest had their requests acknowledged is left to what the kernel \
                     recorded (counted; the total is said at the end)"
                ));
            }
            return None;
        }
        self.used += 1;
        // Only a socket is copied: closing the copy of anything else could
        // wait on the session's task (a FUSE file's flush). The link is
        // read without opening anything (one that cannot be read is left to
        // the copy, whose refusal is said); the copy is checked again after.
        let not_socket = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|link| {
            use std::os::unix::ffi::OsStrExt as _;
            !link.as_os_str().as_bytes().starts_with(b"socket:[")
        });
        if not_socket {
            return None;
        }
        let copy = match self.copy_fd(pid, fd) {
            Ok(copy) => copy,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                self.denied = true;
                notice(&format!(
                    "the kernel refused to copy a socket of nginx worker {pid} ({e}; \
                     Yama ptrace_scope 3, or CAP_SYS_PTRACE missing): whether a waiting \
                     request is acknowledged is left to what the kernel recorded"
                ));
                return None;
            }
            Err(_) => return None, // the worker or its fd is gone
        };
        let sockfs = *self.sockfs.get_or_insert_with(sockfs_dev);
        unacked_of(copy.as_fd(), addr, sockfs)
    }

    /// A copy of fd `fd` of worker `pid`, through its kept pidfd (opened
    /// again once if the kept one is of a process that exited).
    fn copy_fd(&mut self, pid: u32, fd: u32) -> io::Result<OwnedFd> {
        for fresh in [false, true] {
            if fresh || !self.pidfds.contains_key(&pid) {
                if self.pidfds.len() >= MAX_PIDFDS {
                    self.pidfds.clear();
                }
                self.pidfds.insert(pid, pidfd_open(pid)?);
            }
            match pidfd_getfd(self.pidfds[&pid].as_fd(), fd) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && !fresh => {
                    self.pidfds.remove(&pid);
                }
                other => return other,
            }
        }
        Err(io::Error::from_raw_os_error(libc::ESRCH))
    }
}

/// A pidfd of process `pid` (Linux 5.3+).
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the fd is owned here.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A copy, in this process, of fd `fd` of the process of `pidfd` (Linux
/// 5.6+; needs the right to ptrace it, which root has).
fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the fd is owned here.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as i32) })
}

/// `SIOCOUTQ` of `sock` if it is a TCP socket connected to `addr` (so not
/// another file the worker opened under the same fd number since).
fn unacked_of(sock: BorrowedFd<'_>, addr: &UpstreamAddr, sockfs: Option<u64>) -> Option<u64> {
    if !is_socket(sock, sockfs) {
        return None;
    }
    let mut protocol: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd, and an int with its length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&mut protocol as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || protocol != libc::IPPROTO_TCP {
        return None;
    }
    // SAFETY: all-zero is a valid `sockaddr_storage`, filled by the kernel.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a valid fd, and a buffer with its length.
    let rc = unsafe {
        libc::getpeername(
            sock.as_raw_fd(),
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 || !is_peer(&peer, addr) {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: a valid fd; SIOCOUTQ (== TIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return None;
    }
    u64::try_from(queued).ok()
}

/// Whether `peer` (from `getpeername`) is the upstream `addr`, an IPv4
/// one maybe mapped into IPv6.
fn is_peer(peer: &libc::sockaddr_storage, addr: &UpstreamAddr) -> bool {
    match i32::from(peer.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a `sockaddr_in` for AF_INET.
            let sin =
                unsafe { &*(peer as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            addr.family == AF_INET
                && sin.sin_port == addr.port_be
                && sin.sin_addr.s_addr.to_ne_bytes() == addr.data[..4]
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a `sockaddr_in6` for AF_INET6.
            let sin6 =
                unsafe { &*(peer as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let same_ip = match addr.family {
                AF_INET6 => sin6.sin6_addr.s6_addr == addr.data[..16],
                AF_INET => ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.octets() == addr.data[..4]),
                _ => false,
            };
            sin6.sin6_port == addr.port_be && same_ip
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        net::{SocketAddr, TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    fn upstream_of(to: SocketAddr) -> UpstreamAddr {
        let mut addr = UpstreamAddr::ZERO;
        addr.port_be = to.port().to_be();
        match to {
            SocketAddr::V4(v4) => {
                addr.family = AF_INET;
                addr.data[..4].copy_from_slice(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                addr.family = AF_INET6;
                addr.data[..16].copy_from_slice(&v6.ip().octets());
            }
        }
        addr
    }

    /// pidfd_getfd: Linux 5.6+, and a sandbox may forbid it.
    fn copies_work() -> bool {
        let probe = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let me = pidfd_open(std::process::id());
        match me.and_then(|p| pidfd_getfd(p.as_fd(), probe.as_raw_fd() as u32)) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skipped: pidfd_getfd unavailable here ({e})");
                false
            }
        }
    }

    #[test]
    fn loopback_acknowledges_at_once_until_the_peer_stops_reading() {
        if !copies_work() {
            return;
        }
        // The peer never reads: loopback still acknowledges at once.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let client = TcpStream::connect(to).unwrap();
        let _server = listener.accept().unwrap();
        (&client).write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let me = std::process::id();
        let fd = client.as_raw_fd() as u32;
        let mut probe = Unacked::default();
        probe.new_pass();
        assert_eq!(probe.get(me, fd, &upstream_of(to)), Some(0));
        // The same fd asked for another upstream: another connection now.
        let mut other = upstream_of(to);
        other.port_be = (to.port() ^ 1).to_be();
        assert_eq!(probe.get(me, fd, &other), None, "another peer");
        assert_eq!(
            probe.get(me, 0, &upstream_of(to)),
            None,
            "stdin is no socket"
        );
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            probe.get(me, file.as_raw_fd() as u32, &upstream_of(to)),
            None
        );
        // A closed fd.
        let closed = TcpStream::connect(to).unwrap();
        let closed_fd = closed.as_raw_fd() as u32;
        drop(closed);
        drop(file);
        assert_eq!(probe.get(me, closed_fd, &upstream_of(to)), None);
        assert!(!probe.denied);
        // A worker that exited: its pid answers nothing.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert_eq!(probe.get(gone, fd, &upstream_of(to)), None);
        probe.forget_worker(me);
        assert_eq!(probe.get(me, fd, &upstream_of(to)), Some(0), "opened again");
        // Once the peer's receive buffer is full, what is written more
        // waits unacknowledged.
        client.set_nonblocking(true).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while let Ok(n) = (&client).write(&chunk) {
            written += n;
            assert!(written < 256 << 20, "the peer's buffer never filled");
        }
        let unacked = probe.get(me, fd, &upstream_of(to)).unwrap();
        assert!(
            unacked > 0 && unacked <= written as u64,
            "{unacked} of {written}"
        );
    }

    #[test]
    fn an_ipv6_connection_is_asked_too() {
        if !copies_work() {
            return;
        }
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no ::1 here");
            return;
        };
        let to = listener.local_addr().unwrap();
        let client = TcpStream::connect(to).unwrap();
        let _server = listener.accept().unwrap();
        let mut probe = Unacked::default();
        let fd = client.as_raw_fd() as u32;
        assert_eq!(probe.get(std::process::id(), fd, &upstream_of(to)), Some(0));
    }

    #[test]
    fn lookups_past_the_cap_are_skipped_and_counted() {
        if !copies_work() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let client = TcpStream::connect(to).unwrap();
        let (me, fd) = (std::process::id(), client.as_raw_fd() as u32);
        let mut probe = Unacked::default();
        probe.new_pass();
        for _ in 0..LOOKUPS_PER_PASS {
            assert_eq!(probe.get(me, fd, &upstream_of(to)), Some(0));
        }
        assert_eq!(probe.get(me, fd, &upstream_of(to)), None, "past the cap");
        assert_eq!(probe.get(me, fd, &upstream_of(to)), None);
        assert_eq!(probe.skipped(), 2);
        probe.new_pass();
        assert_eq!(probe.get(me, fd, &upstream_of(to)), Some(0), "a new pass");
    }

    #[test]
    fn a_refused_copy_stops_the_lookups() {
        if !copies_work() {
            return;
        }
        // A process of root's, asked from a thread running as nobody
        // (credentials are per thread for the raw syscall): EPERM.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let probe = std::thread::spawn(move || {
            // SAFETY: changes this thread's credentials only; it ends after.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            let mut probe = Unacked::default();
            let answer = probe.get(pid, 0, &UpstreamAddr::ZERO);
            (rc, answer, probe.denied)
        })
        .join()
        .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        match probe {
            (0, answer, denied) => {
                assert_eq!(answer, None);
                assert!(denied, "EPERM said and remembered");
            }
            (_, _, _) => eprintln!("skipped: cannot change credentials here"),
        }
    }

    #[test]
    fn peers_compare_by_family_port_and_ip() {
        let v4 = |ip: [u8; 4], port: u16| {
            // SAFETY: all-zero is a valid `sockaddr_storage`.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: a `sockaddr_in` fits in a `sockaddr_storage`.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip);
            ss
        };
        let up = upstream_of("127.0.0.1:8080".parse().unwrap());
        assert!(is_peer(&v4([127, 0, 0, 1], 8080), &up));
        assert!(!is_peer(&v4([127, 0, 0, 2], 8080), &up));
        assert!(!is_peer(&v4([127, 0, 0, 1], 8081), &up));
        // SAFETY: all-zero is a valid `sockaddr_storage`.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: a `sockaddr_in6` fits in a `sockaddr_storage`.
        let sin6 =
            unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = 8080u16.to_be();
        sin6.sin6_addr.s6_addr = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        assert!(is_peer(&ss, &up), "IPv4 mapped into IPv6");
        let up6 = upstream_of("[::1]:8080".parse().unwrap());
        assert!(!is_peer(&ss, &up6));
        sin6.sin6_addr.s6_addr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert!(is_peer(&ss, &up6));
    }
}
