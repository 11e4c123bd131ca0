//! Harness for ngx-trace's integration tests (and `cargo xtask demo`): real
//! nginx instances, real backends, real faults, and the real tracer binary.
//! Everything a helper starts or changes is undone when it is dropped, also
//! when a test fails.

pub mod access_log;
pub mod backend;
pub mod cgroup;
pub mod fake_nginx;
pub mod fault_backend;
pub mod firewall;
pub mod gunicorn;
pub mod http;
pub mod idle;
pub mod lateness;
pub mod live;
pub mod load;
pub mod mount_ns_nginx;
pub mod nginx;
pub mod php_fpm;
pub mod proc_stats;
pub mod prometheus;
pub mod tracer;
pub mod uwsgi;

/// Fails with a clear message unless running as root: kernel tests never
/// skip themselves.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel integration tests load BPF programs, start nginx and change iptables: \
         run them as root through `cargo xtask test`"
    );
}

/// Stops our `child` (a server run in the foreground) with `signal`, its
/// graceful stop, then kills it if it is still there after 5 s.
pub fn stop_child(child: &mut std::process::Child, signal: i32) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback TCP port nothing listens on right now.
/// Never one handed out before in this process: the kernel may give the same
/// port to two binds in a row, and an nginx listening on its own upstream's
/// port proxies to itself (seen once: a "refused" test saw resets).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Why the tracer cannot mark upstream sockets here (and so adopt
/// connections opened before it started), as its `--check` says in the
/// `upstream filter:` line; `None` when it marks them. Not on Linux before
/// 5.11, nor where kprobes stand in for tracepoints
/// (`NGX_TRACE_AVOID_HOOKS`, passed on to the tracer, can force them).
pub fn tracer_without_marks() -> Option<String> {
    let out = std::process::Command::new(tracer::binary())
        .arg("--check")
        .output()
        .expect("run ngx-trace --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ngx-trace --check failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("upstream filter: "))
        .unwrap_or_else(|| panic!("no `upstream filter:` line in --check: {stdout}"));
    let why = line.strip_prefix("the CONNS hash (")?;
    Some(why.split(';').next().unwrap_or(why).to_string())
}

/// Events the tracer said it lost or may have missed: the `count`s of its
/// `lost` events, plus the hooks the kernel skipped (the last running
/// total).
pub fn lost_count(events: &[serde_json::Value]) -> u64 {
    let lost = events.iter().filter(|e| e["event"] == "lost");
    let dropped: u64 = lost.clone().filter_map(|e| e["count"].as_u64()).sum();
    let skipped = lost
        .filter_map(|e| e["hooks_skipped"].as_u64())
        .max()
        .unwrap_or(0);
    dropped + skipped
}

/// Whether `reported` of `expected` events is what a user may accept:
/// all of them, or fewer with at least the difference said lost (a lost
/// count may also include skipped hooks that cost nothing: an upper bound).
/// Never more than expected.
pub fn accounted(reported: u64, lost: u64, expected: u64) -> bool {
    reported <= expected && reported + lost >= expected
}

/// The capabilities of the kernel side (what `--check` lists, one line
/// each, with the mechanism the kernel offers for it).
pub fn capability_names() -> std::collections::BTreeSet<&'static str> {
    ngx_trace_common::PROGRAMS
        .iter()
        .map(|p| p.capability)
        .collect()
}

/// A fresh directory under /tmp, world-traversable (nginx workers run as
/// nobody and must reach sockets inside it), removed on drop.
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// Creates `/tmp/ngx-trace-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        use std::{
            os::unix::fs::PermissionsExt as _,
            sync::atomic::{AtomicU32, Ordering},
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ngx-trace-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
