//! A backend in a process of its own (the `fault-backend` binary of this
//! crate), for faults that must hit a real separate process: killed by a
//! signal, OOM-killed in a memory cgroup, hanging up while alive. Killed
//! and reaped on drop.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use crate::{cgroup::MemoryCgroup, free_port};

/// What a [`FaultBackend`] does with each request, once it has read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Holds the connection without answering, for ever.
    Hold,
    /// Allocates this many MiB and touches every page, then answers 200 if
    /// still alive.
    AllocMib(u32),
    /// Closes the connection without answering, and goes on serving.
    Close,
}

impl Mode {
    fn args(self) -> Vec<String> {
        match self {
            Self::Hold => vec!["--hold".into()],
            Self::AllocMib(mib) => vec!["--alloc-mib".into(), mib.to_string()],
            Self::Close => vec!["--close".into()],
        }
    }
}

/// Where it listens.
enum Address {
    Tcp(u16),
    Unix(PathBuf),
}

/// A running `fault-backend` process.
pub struct FaultBackend {
    child: Child,
    address: Address,
    /// Its stdout, line by line: `ready`, then `request` per request read.
    lines: Receiver<String>,
}

/// The `fault-backend` binary cargo built with the test running: tests are
/// in `target/<profile>/deps/`, binaries one level up. (Only integration
/// tests get `CARGO_BIN_EXE_fault-backend`, not this library.)
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test");
    let dir = exe.parent().expect("the test's directory");
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("fault-backend"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no fault-backend binary beside {} or in its parent directory: cargo builds \
                 it with the integration tests (`cargo test -p ngx-trace-tests`)",
                exe.display()
            )
        })
}

impl FaultBackend {
    /// Starts one listening on 127.0.0.1, on a port never handed out before.
    pub fn start_tcp(mode: Mode) -> Self {
        Self::start(Address::Tcp(free_port()), mode, None)
    }

    /// Starts one listening on `<dir>/fault.sock` (mode 0666: nginx workers
    /// run as nobody).
    pub fn start_unix(dir: &Path, mode: Mode) -> Self {
        Self::start(Address::Unix(dir.join("fault.sock")), mode, None)
    }

    /// [`FaultBackend::start_tcp`], the process moved into `cgroup` before
    /// it serves anything: all it allocates counts against the limit.
    pub fn start_tcp_in(cgroup: &MemoryCgroup, mode: Mode) -> Self {
        Self::start(Address::Tcp(free_port()), mode, Some(cgroup))
    }

    fn start(address: Address, mode: Mode, cgroup: Option<&MemoryCgroup>) -> Self {
        let mut cmd = Command::new(binary());
        match &address {
            Address::Tcp(port) => cmd.arg("--tcp").arg(format!("127.0.0.1:{port}")),
            Address::Unix(path) => cmd.arg("--unix").arg(path),
        };
        let mut child = cmd
            .args(mode.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fault-backend");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let backend = Self {
            child,
            address,
            lines,
        };
        if let Some(cgroup) = cgroup {
            cgroup.add(backend.pid());
        }
        backend.expect_line("ready", Duration::from_secs(10));
        backend
    }

    /// Waits up to `timeout` for the line `want` on its stdout.
    fn expect_line(&self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(e) => panic!(
                    "fault-backend {} did not say `{want}` within {timeout:?} ({e})",
                    self.pid()
                ),
            }
        }
    }

    /// Waits until it has read a request (the next one not waited for yet):
    /// the exchange is then in its hands.
    pub fn wait_for_request(&self, timeout: Duration) {
        self.expect_line("request", timeout);
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its port on 127.0.0.1; panics for a UNIX socket backend.
    pub fn port(&self) -> u16 {
        match &self.address {
            Address::Tcp(port) => *port,
            Address::Unix(path) => panic!("fault-backend on {} has no port", path.display()),
        }
    }

    /// Its socket file; panics for a TCP backend.
    pub fn socket(&self) -> &Path {
        match &self.address {
            Address::Unix(path) => path,
            Address::Tcp(port) => panic!("fault-backend on port {port} has no socket file"),
        }
    }

    /// The upstream as nginx (and so ngx-trace) names it:
    /// `127.0.0.1:PORT` or `unix:/path`.
    pub fn upstream(&self) -> String {
        match &self.address {
            Address::Tcp(port) => format!("127.0.0.1:{port}"),
            Address::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// The URL for nginx's `proxy_pass` to it (a UNIX socket path ends with
    /// a colon there).
    pub fn proxy_pass(&self) -> String {
        match &self.address {
            Address::Tcp(port) => format!("http://127.0.0.1:{port}"),
            Address::Unix(path) => format!("http://unix:{}:", path.display()),
        }
    }

    /// Sends it signal `signal` (from this process: the sender the kernel
    /// records is the test). Panics if it already ended.
    pub fn kill(&mut self, signal: i32) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("fault-backend {} already ended: {status}", self.pid());
        }
        // SAFETY: plain kill(2) on our child, not reaped (so its pid is
        // still its own, even if it ends meanwhile).
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// Whether it still runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to end, and returns how it ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for fault-backend") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "fault-backend {} still runs after {timeout:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FaultBackend {
    fn drop(&mut self) {
        // Child::kill does nothing once the child was reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}
