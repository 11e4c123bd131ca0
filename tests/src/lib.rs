//! Harness for ngx-trace's integration tests (and `cargo xtask demo`): real
//! nginx instances, real backends, real faults, and the real tracer binary.
//! Everything a helper starts or changes is undone when it is dropped, also
//! when a test fails.

pub mod backend;
pub mod firewall;
pub mod http;
pub mod nginx;
pub mod php_fpm;
pub mod tracer;

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

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether this kernel lets tracing programs use socket-local storage
/// (Linux 5.11+), which adopting connections opened before start needs.
pub fn kernel_has_sk_storage_for_tracing() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ngx_trace_common::sk_storage_for_tracing(release.trim())
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
