//! The real ngx-trace binary, run with `--json`, its events collected.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// The ngx-trace binary under test: `NGX_TRACE_BIN` (set by `cargo xtask
/// test`), else the workspace's newer of its release and debug builds (the
/// older one is likely stale).
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NGX_TRACE_BIN") {
        return PathBuf::from(bin);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .into_iter()
        .map(|profile| target.join(profile).join("ngx-trace"))
        .filter_map(|bin| Some((bin.metadata().ok()?.modified().ok()?, bin)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| {
            panic!("no ngx-trace binary: run the tests through `cargo xtask test`, which builds it")
        })
}

/// The `--avoid-hooks` option that also avoids `extra` (`tp_btf:NAME,...`),
/// keeping what the run avoids already (`NGX_TRACE_AVOID_HOOKS`, which the
/// option would otherwise override): to test a capability's fallback.
pub fn avoiding(extra: &str) -> String {
    match std::env::var("NGX_TRACE_AVOID_HOOKS") {
        Ok(run) if !run.trim().is_empty() => format!("--avoid-hooks={run},{extra}"),
        _ => format!("--avoid-hooks={extra}"),
    }
}

/// The key the harness adds to each event: when its line arrived,
/// microseconds since the epoch.
pub const RECEIVED_US: &str = "_received_us";

fn received_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A running tracer.
pub struct Tracer {
    child: Child,
    lines: Receiver<Value>,
    stderr: Arc<Mutex<String>>,
    /// Every event received so far.
    pub events: Vec<Value>,
}

impl Tracer {
    /// Starts `ngx-trace --json <args>` and waits until it is attached (its
    /// first `workers` event).
    pub fn start(args: &[&str]) -> Self {
        Self::start_keeping(args, |_| true)
    }

    /// [`Tracer::start`], keeping only the `upstream` events whose line
    /// passes `keep`; the others are dropped unparsed, so that a flood of
    /// events the test does not look at (a hostile neighbour's) is read as
    /// fast as the tracer writes it, not at the pace of a debug-built JSON
    /// parser.
    pub fn start_keeping(args: &[&str], keep: impl Fn(&str) -> bool + Send + 'static) -> Self {
        let mut child = Command::new(binary())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ngx-trace");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(r#"{"event":"upstream""#) && !keep(&line) {
                    continue;
                }
                let mut value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("ngx-trace printed a line that is not JSON ({e}): {line}")
                });
                // When the line arrived, for the tests that bound how late a
                // line may be (not a key ngx-trace prints: it starts with `_`).
                if let Some(object) = value.as_object_mut() {
                    object.insert(RECEIVED_US.into(), received_us().into());
                }
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut tracer = Self {
            child,
            lines,
            stderr,
            events: Vec::new(),
        };
        if tracer
            .wait_for(Duration::from_secs(30), |e| e["event"] == "workers")
            .is_none()
        {
            panic!("ngx-trace did not attach; stderr: {}", tracer.stderr());
        }
        tracer
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `ngx-trace --json <args> --pid <master of nginx>`: the tracer
    /// on that instance only.
    pub fn attach_to(nginx: &crate::nginx::Nginx, args: &[&str]) -> Self {
        let master = nginx.master_pid().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--pid", &master]);
        Self::start(&all)
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for an event matching `pred`; every event
    /// received meanwhile is kept in `events`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.events.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits until `n` upstream events matching `pred` arrived (or
    /// `timeout`), then `quiet` more to catch any extra one; returns all
    /// matching upstream events.
    pub fn upstream_events(
        &mut self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let matching = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["event"] == "upstream" && pred(e))
                .cloned()
                .collect()
        };
        let deadline = Instant::now() + timeout;
        while matching(&self.events).len() < n && Instant::now() < deadline {
            self.wait_for(Duration::from_millis(100), |_| false);
        }
        self.wait_for(Duration::from_millis(700), |_| false);
        matching(&self.events)
    }

    /// Stops it with SIGTERM and returns every event, the final summary
    /// included; asserts it exited with status 0.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for ngx-trace");
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.events.push(v);
        }
        assert!(
            status.success(),
            "ngx-trace exited with {status}; stderr: {}",
            self.stderr()
        );
        std::mem::take(&mut self.events)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
