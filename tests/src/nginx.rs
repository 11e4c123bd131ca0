//! Throwaway nginx instances: Debian's nginx binary, our config, workers
//! running unprivileged as in production.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{TempDir, free_port};

/// A running nginx (master and two workers as `nobody`), stopped on drop.
pub struct Nginx {
    dir: TempDir,
    port: u16,
    conf: PathBuf,
}

/// Processes whose parent is `ppid`, with their titles.
pub(crate) fn children(ppid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised comm: state ppid ...
            let after = &stat[stat.rfind(')')? + 2..];
            let parent: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (parent == ppid).then_some(())?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).into_owned()))
        })
        .collect()
}

/// The master pid nginx wrote to `dir/nginx.pid`, once written.
pub(crate) fn pid_in(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("nginx.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The worker processes of `master`, by pid.
pub(crate) fn workers_of(master: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = children(master)
        .into_iter()
        .filter(|(_, title)| title.contains("worker process"))
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Nginx {
    /// Starts nginx with `http_extra` inside `http {}` (upstream blocks) and
    /// `locations` inside its one loopback `server {}`. `{dir}` in either is
    /// replaced by the instance's directory.
    pub fn start(http_extra: &str, locations: &str) -> Self {
        Self::start_with_connections(1024, http_extra, locations)
    }

    /// An nginx whose `location /` proxies to 127.0.0.1:`port`, with `extra`
    /// directives in the location.
    pub fn proxying_to(port: u16, extra: &str) -> Self {
        Self::start(
            "",
            &format!("location / {{ {extra} proxy_pass http://127.0.0.1:{port}; }}"),
        )
    }

    /// [`Nginx::start`] sized for `connections` concurrent connections per
    /// worker (descriptor limit and listen backlog to match).
    pub fn start_with_connections(connections: u32, http_extra: &str, locations: &str) -> Self {
        Self::start_with_nofile(connections * 3, connections, http_extra, locations)
    }

    /// [`Nginx::start_with_connections`] with the workers' descriptor limit
    /// (`worker_rlimit_nofile`) given: below what `connections` need, a
    /// worker runs out of descriptors under load.
    pub fn start_with_nofile(
        nofile: u32,
        connections: u32,
        http_extra: &str,
        locations: &str,
    ) -> Self {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display().to_string();
        let conf = dir.path().join("nginx.conf");
        let backlog = connections.max(511);
        let text = format!(
            "user nobody nogroup;\n\
             worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             worker_rlimit_nofile {nofile};\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               {http_extra}\n\
               server {{\n\
                 listen 127.0.0.1:{port} backlog={backlog};\n\
                 {locations}\n\
               }}\n\
             }}\n"
        )
        .replace("{dir}", &d);
        std::fs::write(&conf, text).expect("write nginx.conf");
        let nginx = Self { dir, port, conf };
        let out = nginx.command(&[]).output().expect("run nginx");
        assert!(
            out.status.success(),
            "nginx failed to start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until("nginx workers", Duration::from_secs(10), || {
            nginx.try_master_pid().is_some() && nginx.workers().len() == 2
        });
        nginx
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(self.dir.path())
            .args(args);
        cmd
    }

    /// Its configuration as `nginx -T` prints it, saved in its directory
    /// as an operator saves one for `explain --config`; returns the path.
    pub fn save_dump(&self) -> PathBuf {
        let out = self.command(&["-T", "-q"]).output().expect("run nginx -T");
        assert!(
            out.status.success(),
            "nginx -T failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir().join("nginx-T.txt");
        std::fs::write(&path, &out.stdout).expect("save nginx -T");
        path
    }

    /// The port of its loopback server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (config, logs, sockets of the test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn try_master_pid(&self) -> Option<u32> {
        crate::nginx::pid_in(self.dir.path())
    }

    /// The master's pid.
    pub fn master_pid(&self) -> u32 {
        self.try_master_pid().expect("nginx pid file")
    }

    /// Pids of the current workers.
    pub fn workers(&self) -> Vec<u32> {
        self.try_master_pid()
            .map(crate::nginx::workers_of)
            .unwrap_or_default()
    }

    /// `nginx -s reload`, returning once two new workers replaced the old.
    pub fn reload(&self) -> Vec<u32> {
        let old = self.workers();
        let status = self
            .command(&["-s", "reload"])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("nginx -s reload");
        assert!(status.success(), "nginx -s reload failed");
        wait_until("new workers after reload", Duration::from_secs(10), || {
            let now = self.workers();
            now.len() == 2 && now.iter().all(|p| !old.contains(p))
        });
        self.workers()
    }

    /// Writes `files` (paths relative to its directory, parents created),
    /// then reloads: a configuration split over included files.
    pub fn write_and_reload(&self, files: &[(&str, &str)]) -> Vec<u32> {
        for (name, text) in files {
            let path = self.dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create config directory");
            }
            std::fs::write(&path, text).expect("write config file");
        }
        self.reload()
    }

    /// GETs `path` through this nginx; returns the status code.
    pub fn get(&self, path: &str) -> u16 {
        crate::http::get(self.port, path)
    }

    /// Lines of its error log containing `needle`.
    pub fn error_log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(master) = self.try_master_pid() else {
            return;
        };
        let _ = self
            .command(&["-s", "stop"])
            .stderr(std::process::Stdio::null())
            .status();
        let start = Instant::now();
        while Path::new(&format!("/proc/{master}")).exists()
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left (a stuck worker) goes now.
        for (pid, _) in children(master) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // SAFETY: plain kill(2).
        unsafe { libc::kill(master as i32, libc::SIGKILL) };
    }
}
