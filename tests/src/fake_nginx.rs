//! Processes that only pose as nginx: what any local user can start.
//! ngx-trace finds nginx by process name and title, so a perl script run
//! as `nobody`, named `nginx` and titled as a master with a `-c` of its
//! choosing, is an nginx to it. Stopped on drop.
use std::{
    io::Read as _,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use crate::nginx::children;

/// The fake: it renames itself (the title with `$0`, the process name
/// through `/proc/self/comm`, after `$0`, which perl also copies into the
/// name), forks a "worker" that does the same, and both wait until their
/// stdin closes: when the harness drops them, or when the test dies.
const SCRIPT: &str = r#"
$0 = shift @ARGV;
sub pose {
    open my $comm, '>', '/proc/self/comm' or die "cannot open /proc/self/comm: $!\n";
    print $comm 'nginx';
    close $comm or die "cannot rename itself nginx: $!\n";
}
pose();
defined(my $worker = fork) or die "cannot fork: $!\n";
if ($worker == 0) { $0 = 'nginx: worker process'; pose(); }
1 while <STDIN>;
"#;

/// The uid and gid of user `nobody` (Debian: 65534, group `nogroup`).
pub fn nobody() -> (u32, u32) {
    // SAFETY: a NUL-terminated name; the entry is read at once, before any
    // other getpw* call of this thread.
    let entry = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    assert!(!entry.is_null(), "no user `nobody` on this host");
    // SAFETY: non-null, pointing to the C library's static entry.
    let entry = unsafe { &*entry };
    (entry.pw_uid, entry.pw_gid)
}

/// A fake nginx master (perl as `nobody`) and its fake worker.
pub struct FakeNginx {
    child: Child,
    stdin: Option<ChildStdin>,
    worker: Option<u32>,
}

/// The text of `/proc/<pid>/<file>`, empty when gone.
fn proc_text(pid: u32, file: &str) -> String {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A title as `/proc/<pid>/cmdline` holds it, padding NULs dropped.
fn title(pid: u32) -> String {
    proc_text(pid, "cmdline")
        .trim_end_matches('\0')
        .replace('\0', " ")
}

/// Whether `pid` runs with every uid (real, effective, saved, fs) `uid`.
fn runs_as(pid: u32, uid: u32) -> bool {
    proc_text(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().all(|id| id == uid.to_string()))
}

impl FakeNginx {
    /// Starts a fake master titled `nginx: master process /usr/sbin/nginx
    /// -c <config>`, as `nobody` without supplementary groups; returns once
    /// both processes look like nginx in `/proc` (name `nginx`, the
    /// master's and a worker's title, `nobody`). Its environment is gone
    /// from `/proc/<pid>/environ`: perl writes a long `$0` over it.
    pub fn claiming(config: &Path) -> Self {
        let wanted = format!(
            "nginx: master process /usr/sbin/nginx -c {}",
            config.display()
        );
        let mut child = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .args(["perl", "-e", SCRIPT, &wanted])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start perl through setpriv (util-linux, perl-base)");
        let stdin = child.stdin.take();
        // Held from here: a fake that never looks right is stopped too.
        let mut fake = Self {
            child,
            stdin,
            worker: None,
        };
        // setpriv executes perl in its own process: the child is the master.
        let master = fake.child.id();
        let (nobody, _) = nobody();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = fake.child.try_wait() {
                let mut said = String::new();
                if let Some(mut err) = fake.child.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                panic!("the fake nginx exited with {status}: {said}");
            }
            let worker = children(master)
                .into_iter()
                .find(|(pid, t)| {
                    t.starts_with("nginx: worker process")
                        && proc_text(*pid, "comm").trim_end() == "nginx"
                })
                .map(|(pid, _)| pid);
            if let Some(worker) = worker
                && proc_text(master, "comm").trim_end() == "nginx"
                && title(master) == wanted
                && runs_as(master, nobody)
                && runs_as(worker, nobody)
            {
                fake.worker = Some(worker);
                return fake;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the fake nginx {master} does not look like nginx: name `{}`, title `{}`",
                proc_text(master, "comm").trim_end(),
                title(master)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The fake master's pid.
    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// The fake worker's pid.
    pub fn worker_pid(&self) -> u32 {
        self.worker.expect("a started fake has its worker")
    }
}

impl Drop for FakeNginx {
    fn drop(&mut self) {
        // The worker first: it waits on stdin until that closes, so its
        // pid is still its own. One not found yet ends when stdin closes.
        if let Some(worker) = self.worker {
            // SAFETY: plain kill(2) on the fake worker.
            unsafe { libc::kill(worker as i32, libc::SIGKILL) };
        }
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
