//! A hostile neighbour of nginx on the same host, for
//! `tests/hostile_neighbour.rs`: what any local user can run.
//!
//! ```text
//! neighbour --connect-flood DIR   (run as a file named `nginx`)
//! neighbour --signals
//! ```
//!
//! - `--connect-flood DIR`: creates an epoll instance (the kernel side then
//!   takes it for an nginx worker), then connects as fast as it can, each
//!   time to a new upstream: alternately a TCP address nobody listens on
//!   (`127.1.x.y:1`, refused at once) and a UNIX path that does not exist
//!   (`DIR/<n>.sock`).
//! - `--signals`: sends itself every signal that ends a process by default
//!   (caught, so it lives on), in a loop, while a child of it forks children
//!   that exit with status 1, in a loop.
//!
//! Both die with the process that started them (`PR_SET_PDEATHSIG`), and
//! run until killed.
use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

/// Signals whose default action ends the process.
const FATAL: [i32; 13] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGTERM,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSYS,
];

fn fail(what: &str) -> ! {
    eprintln!("neighbour: {what}");
    std::process::exit(2);
}

/// Dies with its parent, whatever happens to the harness.
fn die_with_parent() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// One non-blocking TCP connect to `addr`, closed at once (refused,
/// in progress or done: the attempt is what counts).
fn tcp_attempt(addr: &libc::sockaddr_in) {
    // SAFETY: plain socket/connect/close with a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return;
        }
        libc::connect(
            fd,
            std::ptr::from_ref(addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        libc::close(fd);
    }
}

fn connect_flood(dir: &Path) -> ! {
    // SAFETY: epoll_create1 has no preconditions; the fd is kept open.
    if unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } < 0 {
        fail("epoll_create1 failed");
    }
    let mut n: u32 = 0;
    loop {
        n = n.wrapping_add(1);
        // 127.1.0.0/16: loopback, where nothing listens on port 1.
        let host = n & 0xffff;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 1u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: (0x7f01_0000 | host).to_be(),
            },
            sin_zero: [0; 8],
        };
        tcp_attempt(&addr);
        let path: PathBuf = dir.join(format!("{n}.sock"));
        let _ = UnixStream::connect(&path);
    }
}

extern "C" fn caught(_: libc::c_int) {}

/// A child that forks children exiting with status 1, for ever.
fn exit_loop() {
    // SAFETY: fork; the child only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return;
    }
    die_with_parent();
    loop {
        // SAFETY: as above; waitpid on our own child.
        unsafe {
            let child = libc::fork();
            if child == 0 {
                libc::_exit(1);
            }
            if child > 0 {
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn signals() -> ! {
    for &sig in &FATAL {
        // SAFETY: installs a handler that does nothing.
        unsafe { libc::signal(sig, caught as *const () as libc::sighandler_t) };
    }
    exit_loop();
    loop {
        for &sig in &FATAL {
            // SAFETY: raise with a caught signal.
            unsafe { libc::raise(sig) };
        }
    }
}

fn main() {
    die_with_parent();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--connect-flood", dir] => connect_flood(Path::new(dir)),
        ["--signals"] => signals(),
        _ => fail("usage: neighbour (--connect-flood DIR | --signals)"),
    }
}
