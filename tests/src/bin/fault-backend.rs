//! A tiny HTTP backend in a process of its own, for the tests that kill it,
//! OOM-kill it or watch it hang up: the fault must hit a real separate
//! process, as it does in production, not a thread of the test.
//!
//! ```text
//! fault-backend (--tcp 127.0.0.1:PORT | --unix PATH) (--hold | --alloc-mib N | --close)
//! ```
//!
//! Each connection gets a thread (named `fault-backend`, so every task of
//! the process has that comm) that reads one request's headers, prints
//! `request`, then:
//! - `--hold`: keeps the connection open without answering, for ever;
//! - `--alloc-mib N`: allocates N MiB and touches every page, then answers
//!   `200` if still alive (in a memory cgroup with a lower limit it is not);
//! - `--close`: closes the connection without answering (and goes on
//!   serving others).
//!
//! Prints `ready` once listening. The UNIX socket is made mode 0666: nginx
//! workers run as nobody.
use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    time::Duration,
};

/// What to do with each request.
#[derive(Clone, Copy)]
enum Mode {
    Hold,
    AllocMib(usize),
    Close,
}

/// Where to listen.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

const USAGE: &str =
    "usage: fault-backend (--tcp 127.0.0.1:PORT | --unix PATH) (--hold | --alloc-mib N | --close)";

fn usage(why: &str) -> ! {
    eprintln!("fault-backend: {why}\n{USAGE}");
    std::process::exit(2);
}

/// A line for the harness, flushed at once: it waits for these.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The harness may be gone already (a failed test): nothing to tell then.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn parse_args() -> (Listener, Mode) {
    let mut listener = None;
    let mut mode = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--tcp" => {
                let addr = value();
                let l = TcpListener::bind(&addr)
                    .unwrap_or_else(|e| usage(&format!("cannot listen on {addr}: {e}")));
                listener = Some(Listener::Tcp(l));
            }
            "--unix" => {
                let path = value();
                // A file left by an earlier run would make bind fail.
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path)
                    .unwrap_or_else(|e| usage(&format!("cannot listen on {path}: {e}")));
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                    .unwrap_or_else(|e| usage(&format!("cannot chmod {path}: {e}")));
                listener = Some(Listener::Unix(l));
            }
            "--hold" => mode = Some(Mode::Hold),
            "--close" => mode = Some(Mode::Close),
            "--alloc-mib" => {
                let n = value();
                let mib = n
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--alloc-mib {n}: not a number")));
                mode = Some(Mode::AllocMib(mib));
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    (
        listener.unwrap_or_else(|| usage("no --tcp or --unix")),
        mode.unwrap_or_else(|| usage("no mode")),
    )
}

/// Reads up to the blank line ending the request's headers (nginx sends no
/// body here); false if the peer left first.
fn read_request(conn: &mut impl Read) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Allocates `mib` MiB and writes one byte per page, so that every page is
/// really charged to the process (and its memory cgroup).
fn allocate(mib: usize) -> Vec<u8> {
    let mut memory = vec![0u8; mib << 20];
    // Calloc'd memory is mapped lazily: only a write charges a page. The
    // black boxes keep the optimiser from dropping the writes of a buffer
    // nobody reads.
    let buf = std::hint::black_box(&mut memory);
    for i in (0..buf.len()).step_by(4096) {
        buf[i] = 1;
    }
    std::hint::black_box(&memory);
    memory
}

fn serve(mut conn: impl Read + Write, mode: Mode) {
    if !read_request(&mut conn) {
        return;
    }
    say("request");
    match mode {
        Mode::Hold => loop {
            // The connection stays open as long as this thread lives.
            std::thread::sleep(Duration::from_secs(3600));
        },
        Mode::AllocMib(mib) => {
            let memory = allocate(mib);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
            drop(memory);
        }
        // Dropping the connection closes it: a FIN, no answer.
        Mode::Close => {}
    }
}

/// Serves `conn` in a thread of its own, named like the process.
fn spawn(conn: impl Read + Write + Send + 'static, mode: Mode) {
    std::thread::Builder::new()
        .name("fault-backend".into())
        .spawn(move || serve(conn, mode))
        .expect("spawn a connection thread");
}

fn main() {
    let (listener, mode) = parse_args();
    say("ready");
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().map(|(conn, _)| spawn(conn, mode)),
            Listener::Unix(l) => l.accept().map(|(conn, _)| spawn(conn, mode)),
        };
        if let Err(e) = accepted {
            eprintln!("fault-backend: accept: {e}");
            // Out of descriptors, say: let it pass instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
