//! nginx in a mount namespace of its own, as in a container: its
//! configuration lives on a tmpfs mounted only there, so the host's view of
//! the same path is an empty directory. What ngx-trace reads of it must come
//! through the master's own root (`/proc/<master>/root`).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    TempDir, free_port,
    nginx::{children, wait_until},
};

/// A running nginx (master and two workers as `nobody`) in its own mount
/// namespace; stopped on drop (its tmpfs goes with the namespace).
pub struct NamespacedNginx {
    dir: TempDir,
    conf_dir: PathBuf,
    port: u16,
}

impl NamespacedNginx {
    /// Starts nginx with `http_extra` inside `http {}` and `locations`
    /// inside its one loopback `server {}`, and `files` (paths relative to
    /// the configuration directory) beside its `nginx.conf`. `{dir}` is
    /// replaced by the instance's directory (logs, pid file: shared with
    /// the host), `{conf}` by its configuration directory (a tmpfs in the
    /// namespace only). Asserts the configuration is absent from the host's
    /// view and present in the master's.
    pub fn start(http_extra: &str, locations: &str, files: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("mntns-nginx");
        let d = dir.path().display().to_string();
        let conf_dir = dir.path().join("conf");
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(&conf_dir).expect("create the mount point");
        let port = free_port();
        let text = format!(
            "user nobody nogroup;\n\
             worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               {http_extra}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 {locations}\n\
               }}\n\
             }}\n"
        );
        let expand = |t: &str| {
            t.replace("{dir}", &d)
                .replace("{conf}", &conf_dir.display().to_string())
        };
        let all = std::iter::once(("nginx.conf", text.as_str())).chain(files.iter().copied());
        for (name, body) in all {
            let path = stage.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create a staged config directory");
            }
            std::fs::write(&path, expand(body)).expect("write a staged config file");
        }
        // Inside the new namespace: the tmpfs over the (empty) directory,
        // the staged files moved onto it (gone from the host's disk), then
        // nginx, which forks its master there.
        let script = "mount -t tmpfs -o mode=0755 ngx-trace-conf \"$1\" \
                      && cp -R \"$2\"/. \"$1\"/ && rm -rf \"$2\" \
                      && exec nginx -c \"$1\"/nginx.conf -p \"$3\"/";
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(&conf_dir)
            .arg(&stage)
            .arg(dir.path())
            .output()
            .expect("run unshare (util-linux)");
        let nginx = Self {
            dir,
            conf_dir,
            port,
        };
        assert!(
            out.status.success(),
            "nginx in a new mount namespace failed to start ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until("namespaced nginx workers", Duration::from_secs(10), || {
            nginx.try_master_pid().is_some() && nginx.workers().len() == 2
        });
        let main = nginx.conf_dir.join("nginx.conf");
        assert!(
            !main.exists() && !stage.exists(),
            "{} is visible from the host: the mount namespace did not hide it",
            main.display()
        );
        let theirs = format!("/proc/{}/root{}", nginx.master_pid(), main.display());
        assert!(
            Path::new(&theirs).is_file(),
            "{theirs} missing: nginx's own view lacks its configuration"
        );
        nginx
    }

    /// The port of its loopback server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (logs and pid file, on the host's disk).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its configuration directory, as nginx sees it inside its namespace
    /// (an empty directory in the host's view).
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
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

    /// GETs `path` through this nginx; returns the status code.
    pub fn get(&self, path: &str) -> u16 {
        crate::http::get(self.port, path)
    }
}

impl Drop for NamespacedNginx {
    fn drop(&mut self) {
        let Some(master) = self.try_master_pid() else {
            return;
        };
        // `nginx -s stop` would look for a configuration the host cannot
        // see: the signal it sends instead.
        // SAFETY: plain kill(2).
        unsafe { libc::kill(master as i32, libc::SIGTERM) };
        let start = Instant::now();
        while Path::new(&format!("/proc/{master}")).exists()
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (pid, _) in children(master) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // SAFETY: plain kill(2).
        unsafe { libc::kill(master as i32, libc::SIGKILL) };
    }
}
