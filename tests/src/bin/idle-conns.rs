//! Holds N idle established TCP connections on loopback, both ends in this
//! process (2N sockets, 2N descriptors): the socket table of a busy host,
//! for the scale test and the scale bench (`src/idle.rs` starts several,
//! since one process may hold at most the hard `RLIMIT_NOFILE`).
//!
//! ```text
//! idle-conns N
//! ```
//!
//! Prints `ready N` once all N are established and accepted, then holds them
//! until its stdin closes (the harness dropping it, or dying).
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

/// Pending connections the listener may queue: the accept thread keeps up,
/// but a burst of connects must not fill the queue (`somaxconn` caps it).
const BACKLOG: i32 = 4096;

fn fail(what: &str) -> ! {
    eprintln!("idle-conns: {what}");
    std::process::exit(2);
}

/// Raises the soft descriptor limit to the hard one (no capability needed),
/// and fails unless `needed` descriptors fit under it.
fn raise_nofile(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        fail("getrlimit(RLIMIT_NOFILE) failed");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        fail("setrlimit(RLIMIT_NOFILE) to the hard limit failed");
    }
    if limit.rlim_cur < needed {
        fail(&format!(
            "{needed} descriptors needed, the hard RLIMIT_NOFILE is {}: ask for fewer \
             connections per process",
            limit.rlim_cur
        ));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail("usage: idle-conns N"));
    // Two descriptors per connection, plus the listener, stdio and slack.
    raise_nofile(2 * n as u64 + 32);
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| fail(&format!("cannot listen on 127.0.0.1: {e}")));
    // listen(2) again on a listening socket only changes its backlog.
    // SAFETY: a valid listening socket.
    unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    let addr = listener.local_addr().expect("listener address");
    let acceptor = std::thread::spawn(move || {
        let mut accepted = Vec::with_capacity(n);
        while accepted.len() < n {
            match listener.accept() {
                Ok((conn, _)) => accepted.push(conn),
                Err(e) => fail(&format!("accept failed after {}: {e}", accepted.len())),
            }
        }
        accepted
    });
    let mut connected: Vec<TcpStream> = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect(addr) {
            Ok(conn) => connected.push(conn),
            Err(e) => fail(&format!("connect {i} of {n} to {addr} failed: {e}")),
        }
    }
    let accepted = acceptor.join().expect("accept thread");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready {}", accepted.len());
        let _ = out.flush();
    }
    // Hold every socket until the harness lets go.
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(k) if k > 0) {}
    drop((connected, accepted));
}
