//! A real PHP-FPM (Debian's php-fpm) serving a pool on a UNIX socket, with
//! scripts of the test's choosing; stopped on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::TempDir;

/// A PHP-FPM master and its pool.
pub struct PhpFpm {
    dir: TempDir,
    child: Child,
}

/// The php-fpm binary Debian installs (`php-fpm8.2` on bookworm).
fn binary() -> PathBuf {
    let found = std::fs::read_dir("/usr/sbin")
        .expect("list /usr/sbin")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("php-fpm"))
        .max();
    PathBuf::from("/usr/sbin")
        .join(found.expect("php-fpm is not installed: run `cargo xtask test`"))
}

impl PhpFpm {
    /// Starts a static pool of `children` workers (as nobody) listening on
    /// `<dir>/php.sock` with a listen backlog of `backlog`, serving `scripts`
    /// (name, PHP source) from `<dir>/www`.
    pub fn start(children: u32, backlog: u32, scripts: &[(&str, &str)]) -> Self {
        Self::start_with(children, backlog, scripts, "")
    }

    /// [`PhpFpm::start`] with `pool_extra` (lines such as
    /// `request_terminate_timeout = 2s`) added to the pool's section.
    pub fn start_with(
        children: u32,
        backlog: u32,
        scripts: &[(&str, &str)],
        pool_extra: &str,
    ) -> Self {
        let dir = TempDir::new("php-fpm");
        let d = dir.path().display().to_string();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).expect("create www");
        for (name, source) in scripts {
            std::fs::write(www.join(name), source).expect("write script");
        }
        let conf = format!(
            "[global]\n\
             pid = {d}/php-fpm.pid\n\
             error_log = {d}/php-fpm.log\n\
             daemonize = no\n\
             [pool]\n\
             user = nobody\n\
             group = nogroup\n\
             listen = {d}/php.sock\n\
             listen.owner = nobody\n\
             listen.group = nogroup\n\
             listen.mode = 0666\n\
             listen.backlog = {backlog}\n\
             pm = static\n\
             pm.max_children = {children}\n\
             {pool_extra}\n"
        );
        let conf_path = dir.path().join("php-fpm.conf");
        std::fs::write(&conf_path, conf).expect("write php-fpm.conf");
        let child = Command::new(binary())
            .arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start php-fpm");
        let fpm = Self { dir, child };
        let start = Instant::now();
        while !fpm.socket().exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "php-fpm did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fpm
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("php.sock")
    }

    /// The directory its scripts are in (for SCRIPT_FILENAME).
    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The master's pid (it runs in the foreground: our child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its children.
        crate::stop_child(&mut self.child, libc::SIGQUIT);
    }
}
