//! Listening sockets asked of the kernel by `NETLINK_SOCK_DIAG`, filtered
//! there: a dump restricted to the LISTEN state walks only the listening
//! hash (no established or TIME_WAIT socket), and a port filter is applied
//! by the kernel too, so the cost grows with the listeners, never with the
//! host's connections (unlike reading `/proc/net/tcp`).
//!
//! A netlink socket sees the network namespace of the process that opened
//! it: these answers hold for processes that share ours ([`same_netns`]).
use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` (the kernel's TCP state numbering, also used for UNIX).
const TCP_LISTEN: u32 = 10;
/// `UDIAG_SHOW_NAME` (linux/unix_diag.h): attach the bound path.
const UDIAG_SHOW_NAME: u32 = 1;
/// `UNIX_DIAG_NAME`: the attribute holding the bound path.
const UNIX_DIAG_NAME: u16 = 0;
/// At most this many listeners are kept from one dump: a hostile process
/// can open many; what is past it is dropped (the dump is still read to
/// its end).
const MAX_LISTENERS: usize = 4096;

/// `struct inet_diag_sockid` (linux/inet_diag.h): ports and addresses in
/// network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "the kernel's layout, every field included")]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "the kernel's layout, every field included")]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`, the head of each answer.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "the kernel's layout, every field included")]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `struct unix_diag_req`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "the kernel's layout, every field included")]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// `struct unix_diag_msg`, the head of each answer.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "the kernel's layout, every field included")]
struct UnixDiagMsg {
    family: u8,
    kind: u8,
    state: u8,
    pad: u8,
    ino: u32,
    cookie: [u32; 2],
}

const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);
const _: () = assert!(size_of::<UnixDiagReq>() == 24);
const _: () = assert!(size_of::<UnixDiagMsg>() == 16);

/// A listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpListener {
    /// The address it is bound to (maybe the wildcard).
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its inode (the N of `socket:[N]` in its holders' fd links).
    pub inode: u64,
    /// Connections waiting for `accept()` (`sk_ack_backlog`).
    pub queued: u32,
    /// The backlog it was given (`sk_max_ack_backlog`).
    pub backlog: u32,
}

impl TcpListener {
    /// Whether connections to `ip` reach it: bound to `ip`, to the
    /// wildcard, or (an IPv6 socket) to `ip` mapped into IPv6.
    pub fn accepts(&self, ip: IpAddr) -> bool {
        let mapped = match (self.ip, ip) {
            (IpAddr::V6(bound), IpAddr::V4(v4)) => bound.to_ipv4_mapped() == Some(v4),
            _ => false,
        };
        self.ip == ip || self.ip.is_unspecified() || mapped
    }
}

/// A listening UNIX socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListener {
    /// The path it is bound to; an abstract name starts with `@`.
    pub path: String,
    /// Its inode.
    pub inode: u64,
}

/// The listening TCP sockets (IPv4 and IPv6) of this network namespace on
/// `port`, or on every port when `None`.
pub fn tcp_listeners(port: Option<u16>) -> io::Result<Vec<TcpListener>> {
    let mut found = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut req = InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1 << TCP_LISTEN,
            ..Default::default()
        };
        req.id.sport = port.unwrap_or(0).to_be_bytes();
        req.id.cookie = [u32::MAX; 2]; // INET_DIAG_NOCOOKIE
        dump(as_bytes(&req), |payload| {
            let Some(msg) = read_struct::<InetDiagMsg>(payload) else {
                return;
            };
            let ip = match msg.family as i32 {
                libc::AF_INET => IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(&msg.id.src[..4]).unwrap_or_default(),
                )),
                libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(msg.id.src)),
                _ => return,
            };
            if u32::from(msg.state) == TCP_LISTEN && found.len() < MAX_LISTENERS {
                found.push(TcpListener {
                    ip,
                    port: u16::from_be_bytes(msg.id.sport),
                    inode: u64::from(msg.inode),
                    queued: msg.rqueue,
                    backlog: msg.wqueue,
                });
            }
        })
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("sock_diag dump of listening TCP sockets: {e}"),
            )
        })?;
    }
    Ok(found)
}

/// The listening UNIX sockets of this network namespace that are bound to
/// a name (to `only`, when given: filtered before the cap, so that many
/// other listeners cannot push the one asked for out).
pub fn unix_listeners(only: Option<&str>) -> io::Result<Vec<UnixListener>> {
    let req = UnixDiagReq {
        family: libc::AF_UNIX as u8,
        states: 1 << TCP_LISTEN,
        show: UDIAG_SHOW_NAME,
        ..Default::default()
    };
    let mut found = Vec::new();
    dump(as_bytes(&req), |payload| {
        let Some(msg) = read_struct::<UnixDiagMsg>(payload) else {
            return;
        };
        let name = attributes(&payload[size_of::<UnixDiagMsg>()..])
            .find(|(kind, _)| *kind == UNIX_DIAG_NAME)
            .map(|(_, value)| unix_name(value));
        if let Some(path) = name
            && only.is_none_or(|o| o == path)
            && found.len() < MAX_LISTENERS
        {
            found.push(UnixListener {
                path,
                inode: u64::from(msg.ino),
            });
        }
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("sock_diag dump of listening UNIX sockets: {e}"),
        )
    })?;
    Ok(found)
}

/// A bound UNIX name as the kernel gives it (`sun_path`, maybe with
/// trailing NULs): a path, or `@name` for an abstract one.
fn unix_name(raw: &[u8]) -> String {
    match raw.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        }
    }
}

/// Whether process `pid` is in this process's network namespace (what a
/// netlink answer describes); `false` when it cannot be told.
pub fn same_netns(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    match (
        id(format!("/proc/{pid}/ns/net")),
        id("/proc/self/ns/net".into()),
    ) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}

/// The bytes of a plain `#[repr(C)]` request struct.
fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: the request structs have no padding between fields (sizes
    // checked above) and are fully initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A `T` from the head of `bytes`, if long enough.
fn read_struct<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| {
        // SAFETY: at least size_of::<T>() bytes; T is plain data, valid for
        // any bit pattern; read_unaligned needs no alignment.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

/// `NLMSG_ALIGN` / `RTA_ALIGN`: 4 bytes.
fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The netlink attributes (`struct rtattr`: length, type, value) in
/// `bytes`, as (type, value).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(bytes.get(..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?);
        let value = bytes.get(4..len)?;
        bytes = bytes.get(align4(len)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// Sends `request` as one `SOCK_DIAG_BY_FAMILY` dump and calls `each` with
/// the payload of every answer, until the kernel says it is done.
fn dump(request: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
    // SAFETY: plain syscall; the fd is owned and closed on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Never wait long on the kernel: a dump answers at once.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid fd and a valid `timeval`.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let header = libc::nlmsghdr {
        nlmsg_len: (size_of::<libc::nlmsghdr>() + request.len()) as u32,
        nlmsg_type: SOCK_DIAG_BY_FAMILY,
        nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        nlmsg_seq: 1,
        nlmsg_pid: 0,
    };
    let mut message = as_bytes(&header).to_vec();
    message.extend_from_slice(request);
    // SAFETY: all-zero is a valid `sockaddr_nl`: the kernel (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: a valid fd, buffer and address.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: a valid fd and a buffer of that length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the kernel closed the dump early",
            ));
        }
        if parse_answers(&buf[..n as usize], &mut each)? {
            return Ok(());
        }
    }
}

/// Calls `each` with the payload of every answer in one datagram of a
/// dump; `Ok(true)` once the kernel says it is done, the kernel's error if
/// it failed.
fn parse_answers(mut datagram: &[u8], each: &mut impl FnMut(&[u8])) -> io::Result<bool> {
    let head = size_of::<libc::nlmsghdr>();
    while let Some(header) = read_struct::<libc::nlmsghdr>(datagram) {
        let len = header.nlmsg_len as usize;
        let Some(payload) = datagram.get(head..len) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated netlink answer",
            ));
        };
        match i32::from(header.nlmsg_type) {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = read_struct::<i32>(payload).unwrap_or(-libc::EIO);
                if errno == 0 {
                    return Ok(true); // an acknowledgement
                }
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => each(payload),
        }
        datagram = datagram.get(align4(len)..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, TcpStream},
        os::fd::AsRawFd as _,
        time::Duration,
    };

    use super::*;

    /// A TCP listener on `ip` with `backlog`, which never accepts.
    fn listen(ip: IpAddr, backlog: i32) -> Option<(std::net::TcpListener, u16)> {
        let listener = std::net::TcpListener::bind((ip, 0)).ok()?;
        // SAFETY: a valid socket fd; listen() again only resizes the backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), backlog) }, 0);
        let port = listener.local_addr().ok()?.port();
        Some((listener, port))
    }

    fn accept_queue_fills(ip: IpAddr) {
        let Some((listener, port)) = listen(ip, 2) else {
            eprintln!("skipped: no {ip} here");
            return;
        };
        // Backlog 2 holds 3: the kernel drops SYNs once queued > backlog.
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| {
                TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2))
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let mine: Vec<TcpListener> = tcp_listeners(Some(port)).unwrap();
        assert_eq!(mine.len(), 1, "only our port: {mine:?}");
        let l = mine[0];
        assert_eq!((l.ip, l.port), (ip, port));
        assert_eq!((l.queued, l.backlog), (3, 2), "{l:?}");
        assert!(l.accepts(ip));
        // Its inode is the one our fd links to.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        assert_eq!(
            link.to_str().unwrap(),
            format!("socket:[{}]", l.inode),
            "the listener's inode"
        );
        drop(clients);
        // Every port: ours is among them.
        let all = tcp_listeners(None).unwrap();
        assert!(all.iter().any(|a| a.port == port && a.inode == l.inode));
    }

    #[test]
    fn a_full_accept_queue_of_a_real_ipv4_listener() {
        accept_queue_fills(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn a_full_accept_queue_of_a_real_ipv6_listener() {
        accept_queue_fills(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn a_port_nothing_listens_on_has_no_listener() {
        // A UDP port, and a connection's own port: not in a LISTEN dump.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let local = client.local_addr().unwrap().port();
        assert!(tcp_listeners(Some(port)).unwrap().is_empty());
        assert!(
            tcp_listeners(Some(local)).unwrap().is_empty(),
            "an established connection's port is not a listener"
        );
    }

    #[test]
    fn wildcard_and_mapped_listeners_accept_their_addresses() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let l = |ip: IpAddr| TcpListener {
            ip,
            port: 80,
            inode: 1,
            queued: 0,
            backlog: 511,
        };
        assert!(l(lo).accepts(lo));
        assert!(!l(lo).accepts(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert!(l(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).accepts(lo));
        assert!(l(IpAddr::V6(Ipv6Addr::UNSPECIFIED)).accepts(lo));
        assert!(l(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())).accepts(lo));
        assert!(!l(IpAddr::V6(Ipv6Addr::LOCALHOST)).accepts(lo));
    }

    #[test]
    fn real_unix_listeners_by_path_and_abstract_name() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let found = unix_listeners(None).unwrap();
        let mine = found
            .iter()
            .find(|l| l.path == path.to_str().unwrap())
            .unwrap_or_else(|| panic!("{path:?} in {found:?}"));
        assert_eq!(link.to_str().unwrap(), format!("socket:[{}]", mine.inode));
        // A connected pair listens on nothing.
        let (_a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(found.iter().all(|l| !l.path.is_empty()));
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(unix_name(b"\0hidden"), "@hidden");
        assert_eq!(unix_name(b"/run/php.sock\0\0"), "/run/php.sock");
    }

    #[test]
    fn this_process_shares_its_own_network_namespace() {
        assert!(same_netns(std::process::id()));
        assert!(!same_netns(u32::MAX), "no such process");
    }

    #[test]
    fn a_kernel_error_answer_is_returned() {
        // nlmsghdr (16 B) of type NLMSG_ERROR, then errno -EPERM.
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&20u32.to_ne_bytes());
        datagram.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        datagram.extend_from_slice(&[0; 10]);
        datagram.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        let err = parse_answers(&datagram, &mut |_| panic!("no payload")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // A length past the datagram is refused, not read.
        datagram[0] = 200;
        assert!(parse_answers(&datagram, &mut |_| ()).is_err());
    }
}
