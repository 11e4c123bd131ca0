//! Debian's gunicorn (a Python WSGI application server) serving a small
//! application on loopback: an arbiter and its sync workers, as a Django
//! or Flask site runs behind nginx.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TempDir, free_port};

/// A running gunicorn; stopped (gracefully, then killed) on drop.
pub struct Gunicorn {
    dir: TempDir,
    child: Child,
    port: u16,
}

impl Gunicorn {
    /// `workers` sync workers on 127.0.0.1 serving `app` (Python source of
    /// a module defining the WSGI callable `application`); the arbiter
    /// ends a worker silent for `timeout_s` seconds (`--timeout`).
    pub fn start(app: &str, workers: u32, timeout_s: u32) -> Self {
        let dir = TempDir::new("gunicorn");
        std::fs::write(dir.path().join("app.py"), app).expect("write app.py");
        let port = free_port();
        let child = Command::new("gunicorn")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--workers", &workers.to_string()])
            .args(["--timeout", &timeout_s.to_string()])
            .args(["--graceful-timeout", "1"])
            .arg("--chdir")
            .arg(dir.path())
            .arg("--error-logfile")
            .arg(dir.path().join("gunicorn.log"))
            .args(["--log-level", "info", "app:application"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gunicorn (run `cargo xtask test`: it installs Debian's gunicorn)");
        let g = Self { dir, child, port };
        let start = Instant::now();
        while g.worker_pids().len() < workers as usize
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gunicorn did not start its {workers} workers: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The arbiter's pid (it runs in the foreground: our child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }

    /// The pids of the workers it booted, in order (`Booting worker with
    /// pid: N`).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter_map(|l| l.split("Booting worker with pid: ").nth(1))
            .filter_map(|pid| pid.trim().parse().ok())
            .collect()
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        // SIGTERM: graceful stop of the arbiter and its workers.
        crate::stop_child(&mut self.child, libc::SIGTERM);
    }
}
