//! `cargo xtask demo`: a throwaway nginx with broken upstreams on loopback,
//! traffic to each, and ngx-trace watching; everything removed at the end.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ngx_trace_tests::{
    backend::{HttpBackend, UnixSocketFile},
    free_port,
    nginx::Nginx,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Runs the demo for `seconds` (or until Ctrl-C) with the tracer at `bin`.
pub fn run(bin: &Path, seconds: u64) -> Result<()> {
    // Ctrl-C reaches the tracer too (same process group); we stay to clean up.
    // SAFETY: installing an async-signal-safe handler that only stores a flag.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let refused = free_port();
    let healthy = HttpBackend::start();
    let nginx = Nginx::start(
        "",
        &format!(
            "location /healthy {{ proxy_pass http://127.0.0.1:{}; }}\n\
             location /stopped-backend {{ proxy_pass http://127.0.0.1:{refused}; }}\n\
             location /ipv6-stopped {{ proxy_pass http://[::1]:{refused}; }}\n\
             location /php-missing {{ proxy_pass http://unix:{{dir}}/php-fpm.sock; }}\n\
             location /wrong-owner {{ proxy_pass http://unix:{{dir}}/gunicorn.sock; }}\n\
             location /crashed {{ proxy_pass http://unix:{{dir}}/node.sock; }}",
            healthy.port()
        ),
    );
    let _root_only = UnixSocketFile::listening(&nginx.dir().join("gunicorn.sock"), 0o600);
    let _stale = UnixSocketFile::stale(&nginx.dir().join("node.sock"));
    eprintln!(
        "xtask: demo nginx (master {}) on 127.0.0.1:{} with one healthy and five broken upstreams; \
         tracing for {seconds} s (Ctrl-C stops)",
        nginx.master_pid(),
        nginx.port()
    );
    let mut tracer = crate::as_root(bin)
        .args(["--all", "--duration", &seconds.to_string(), "--pid"])
        .arg(nginx.master_pid().to_string())
        .spawn()
        .context("failed to start ngx-trace")?;
    std::thread::sleep(Duration::from_millis(800));
    let paths = [
        "/healthy",
        "/stopped-backend",
        "/ipv6-stopped",
        "/php-missing",
        "/wrong-owner",
        "/crashed",
    ];
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds.saturating_sub(1).max(1));
    'traffic: while start.elapsed() < deadline {
        for path in paths {
            if INTERRUPTED.load(Ordering::SeqCst) {
                break 'traffic;
            }
            nginx.get(path);
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(tracer.id() as i32, libc::SIGTERM) };
    }
    let status = tracer.wait().context("failed to wait for ngx-trace")?;
    drop(nginx);
    if !status.success() {
        anyhow::bail!("ngx-trace exited with {status}");
    }
    Ok(())
}
