//! A live `ngx-trace` subcommand (`explain`, `tune`) run to its own end
//! (`--duration`), its stderr readable while it runs; killed on drop.
use std::{
    io::Read as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::tracer::binary;

/// A running `ngx-trace <args>`.
pub struct LiveRun {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

/// What a finished run said.
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its whole stdout.
    pub stdout: String,
    /// Its whole stderr.
    pub stderr: String,
}

impl Finished {
    /// Its stdout lines as JSON values (each must be one).
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("ngx-trace printed a line that is not JSON ({e}): {l}")
                })
            })
            .collect()
    }
}

impl LiveRun {
    /// Starts `ngx-trace <args>`.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ngx-trace");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = out.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("stderr");
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            stdout: Some(stdout),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until its stderr contains every one of
    /// `needles`; fails, with its stderr, if it ends or the time is up.
    pub fn wait_for_stderr(&mut self, needles: &[&str], timeout: Duration) {
        let start = Instant::now();
        while !needles.iter().all(|n| self.stderr().contains(n)) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ngx-trace ended ({status}) before saying {needles:?}: {}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "ngx-trace did not say {needles:?} in {timeout:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for it to end by itself, then returns all it
    /// said; fails (killing it) if it is still running.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for ngx-trace") {
                break status;
            }
            assert!(
                start.elapsed() < timeout,
                "ngx-trace still running after {timeout:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Its pipes close with it: the readers end.
        let stdout = self
            .stdout
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
