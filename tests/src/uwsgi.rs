//! Debian's uWSGI (`uwsgi-core` with its Python 3 plugin) serving a WSGI
//! application over the uwsgi protocol on loopback: a master and its
//! workers, as nginx's `uwsgi_pass` reaches them.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TempDir, free_port};

/// A running uWSGI; stopped (SIGTERM: it dies on term) on drop.
pub struct Uwsgi {
    dir: TempDir,
    child: Child,
    port: u16,
}

impl Uwsgi {
    /// `processes` workers on 127.0.0.1 serving `app` (Python source of a
    /// module defining the WSGI callable `application`).
    pub fn start(app: &str, processes: u32) -> Self {
        let dir = TempDir::new("uwsgi");
        std::fs::write(dir.path().join("app.py"), app).expect("write app.py");
        let port = free_port();
        let child = Command::new("uwsgi")
            .args(["--plugins", "python3", "--master", "--die-on-term"])
            .args(["--socket", &format!("127.0.0.1:{port}")])
            .args(["--processes", &processes.to_string()])
            .arg("--chdir")
            .arg(dir.path())
            .args(["--wsgi-file", "app.py"])
            .arg("--logto")
            .arg(dir.path().join("uwsgi.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start uwsgi (run `cargo xtask test`: it installs Debian's uwsgi-core)");
        let u = Self { dir, child, port };
        let start = Instant::now();
        while u.log().matches("spawned uWSGI worker").count() < processes as usize
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "uwsgi did not start its {processes} workers: {}",
                u.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        u
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("uwsgi.log")).unwrap_or_default()
    }
}

impl Drop for Uwsgi {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child, libc::SIGTERM);
    }
}
