//! What one measurement runs: the back nginx and the two fronts, wrk and
//! its output, a tracer started and stopped (never left behind, even
//! frozen), a sysctl put back, the metrics scraper, the tracer's own CPU,
//! memory and lost events, and the ABBA runs of a mode against no tracer.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ngx_trace_tests::{TempDir, nginx::Nginx};

use super::{modes::Mode, spread::Spread};

/// One wrk run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Load {
    pub(super) rps: f64,
    p99_us: f64,
    /// Requests completed in the run (wrk's "N requests in").
    pub(super) requests: u64,
}

/// What a traced run measured of the tracer itself.
#[derive(Default, Clone, Copy, Debug)]
pub(super) struct TracerCost {
    pub(super) cpu_s: f64,
    pub(super) wall_s: f64,
    pub(super) rss_kb: u64,
    pub(super) lost: u64,
    pub(super) rps: f64,
}

pub(super) struct Bench {
    pub(super) bin: PathBuf,
    pub(super) script: PathBuf,
    /// Seconds per wrk run.
    pub(super) seconds: u64,
    /// ABBA pairs per mode and variant; also BPF-time runs per tracer and
    /// variant.
    pub(super) pairs: usize,
    pub(super) dir: TempDir,
    /// Where `--metrics-listen` serves in [`Mode::Metrics`] runs.
    pub(super) metrics_port: u16,
}

fn parse_duration_us(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        _ => return None,
    })
}

/// Runs wrk against `port` and reads requests/s and p99 latency.
pub(super) fn wrk(port: u16, seconds: u64) -> Result<Load> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "--latency"])
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("failed to run wrk (cargo xtask bench installs it)")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Requests/s, p99 latency and request count from wrk's `--latency` output.
fn parse_wrk(text: &str) -> Result<Load> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {text}"))?;
    let p99_us = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_duration_us(v.trim()))
        .with_context(|| format!("wrk printed no 99% latency: {text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("wrk printed no request count: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("wrk saw errors: {text}");
    }
    Ok(Load {
        rps,
        p99_us,
        requests,
    })
}

/// CPU time of `pid`'s main thread, s, from the scheduler's own accounting
/// (`schedstat`, in ns): tick sampling misses a process that runs in short
/// bursts, as the tracer does.
fn proc_cpu_s(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn proc_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A tracer (ngx-trace or bpftrace) the bench started. It cannot outlive the
/// bench, even frozen: dropping it (a failed step, a panic) stops it as
/// [`Tracer::stop`] does. (nginx instances stop with their own `Drop`, and
/// wrk always runs to its end under `Command::output`.)
pub(super) struct Tracer {
    child: Child,
    /// Where its stdout goes.
    out: PathBuf,
    /// Reaped already: its pid may belong to another process now.
    reaped: bool,
}

impl Tracer {
    /// How long a tracer may take to exit after SIGTERM before SIGKILL.
    const GRACE: Duration = Duration::from_secs(20);

    pub(super) fn new(child: Child, out: PathBuf) -> Self {
        Self {
            child,
            out,
            reaped: false,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`, unless the child is gone.
    pub(super) fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: plain kill(2) on our own child, not reaped yet, so its
            // pid is still ours.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Wakes it if frozen, asks it to stop (SIGTERM: ngx-trace then prints
    /// its summary and lost counts) and waits; SIGKILL after [`Self::GRACE`].
    pub(super) fn stop(&mut self) {
        if self.reaped {
            return;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let asked = Instant::now();
        while asked.elapsed() < Self::GRACE {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                // Exited, or cannot be waited for (then nothing more to do).
                Ok(Some(_)) | Err(_) => {
                    self.reaped = true;
                    return;
                }
            }
        }
        eprintln!(
            "xtask bench: tracer {} ignored SIGTERM for {:?}, killing it",
            self.pid(),
            Self::GRACE
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sysctl changed by the bench; dropping it puts the previous value back,
/// so that a failed step does not leave the host changed.
pub(super) struct Sysctl {
    path: String,
    /// The value to restore; `None` once restored.
    old: Option<String>,
}

impl Sysctl {
    /// Sets `key` to `value`, remembering its current value.
    pub(super) fn set(key: &str, value: &str) -> Result<Self> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let old = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        std::fs::write(&path, value).with_context(|| format!("write {path}"))?;
        Ok(Self {
            path,
            old: Some(old.trim().to_string()),
        })
    }

    /// Puts the previous value back.
    pub(super) fn restore(&mut self) -> Result<()> {
        if let Some(old) = self.old.take() {
            std::fs::write(&self.path, &old)
                .with_context(|| format!("failed to restore {} to {old}", self.path))?;
        }
        Ok(())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("xtask bench: {e:#}: write it by hand");
        }
    }
}

/// Lost-event count in a tracer output file (JSON or text).
pub(super) fn lost_in(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                (v["event"] == "lost").then(|| v["count"].as_u64().unwrap_or(0))
            } else {
                l.strip_prefix("lost ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            }
        })
        .sum()
}

impl Bench {
    /// One measured run of `mode`.
    fn run(&self, mode: Mode, front: &Nginx) -> Result<(Load, TracerCost)> {
        let tracer = self.start(mode, front)?;
        let cpu0 = tracer.as_ref().map_or(0.0, |t| proc_cpu_s(t.pid()));
        let started = Instant::now();
        let scraper = (mode == Mode::Metrics).then(|| Scraper::start(self.metrics_port));
        let load = wrk(front.port(), self.seconds)?;
        if let Some(scraper) = scraper {
            scraper.finish()?;
        }
        let mut cost = TracerCost {
            rps: load.rps,
            ..TracerCost::default()
        };
        if let Some(mut tracer) = tracer {
            cost.wall_s = started.elapsed().as_secs_f64();
            cost.cpu_s = proc_cpu_s(tracer.pid()) - cpu0;
            cost.rss_kb = proc_hwm_kb(tracer.pid());
            tracer.stop();
            cost.lost = lost_in(&tracer.out);
        }
        Ok((load, cost))
    }

    /// `self.pairs` ABBA quads (none, traced, traced, none) of `mode`
    /// against no tracer on `front`.
    pub(super) fn abba(&self, variant: &str, front: &Nginx, mode: Mode) -> Result<Abba> {
        let (mut thr, mut p99, mut base) = (Vec::new(), Vec::new(), Vec::new());
        let mut costs = Vec::new();
        for pair in 0..self.pairs {
            eprintln!(
                "xtask bench: {variant}, {} pair {}/{}",
                mode.label(),
                pair + 1,
                self.pairs
            );
            let (a1, _) = self.run(Mode::None, front)?;
            let (b1, c1) = self.run(mode, front)?;
            let (b2, c2) = self.run(mode, front)?;
            let (a2, _) = self.run(Mode::None, front)?;
            let none_rps = (a1.rps + a2.rps) / 2.0;
            thr.push((b1.rps + b2.rps) / 2.0 / none_rps);
            p99.push((b1.p99_us + b2.p99_us) / (a1.p99_us + a2.p99_us));
            base.push(none_rps);
            costs.push(c1);
            costs.push(c2);
        }
        Ok(Abba {
            throughput: Spread::of(&thr),
            p99: Spread::of(&p99),
            untraced_rps: Spread::of(&base).median,
            costs,
        })
    }
}

/// Scrapes `/metrics` every second, as Prometheus would, while wrk runs.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl Scraper {
    fn start(port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let r = ngx_trace_tests::http::fetch(
                    "127.0.0.1",
                    port,
                    "/metrics",
                    &["Accept: application/openmetrics-text;version=1.0.0"],
                );
                if r.status == 200 && r.body.ends_with("# EOF\n") {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (ok, failed)
        });
        Self { stop, thread }
    }

    /// Stops scraping; fails unless every scrape succeeded.
    fn finish(self) -> Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the metrics scraper panicked"))?;
        if failed > 0 || ok == 0 {
            bail!("scraping ngx-trace's /metrics: {ok} answers, {failed} failures");
        }
        Ok(())
    }
}

/// `pairs` ABBA quads of one mode against no tracer.
pub(super) struct Abba {
    /// Traced over untraced requests/s, per quad.
    pub(super) throughput: Spread,
    /// Traced over untraced p99 latency, per quad.
    pub(super) p99: Spread,
    /// Median untraced requests/s.
    pub(super) untraced_rps: f64,
    /// The tracer's own cost, per traced run.
    pub(super) costs: Vec<TracerCost>,
}

/// The back nginx and the two fronts (name, BPF-time target in ns, nginx)
/// every measurement drives.
pub(super) fn setup_nginx() -> (Nginx, Vec<(&'static str, f64, Nginx)>) {
    let back = Nginx::start(
        "",
        "location / { access_log {dir}/access.log; return 200 \"ok\\n\"; }",
    );
    let variants = vec![
        (
            "keepalive",
            500.0,
            Nginx::start(
                &format!(
                    "upstream back {{ server 127.0.0.1:{}; keepalive 64; }}",
                    back.port()
                ),
                "location / { proxy_pass http://back; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }",
            ),
        ),
        (
            "new connection per request",
            2000.0,
            Nginx::start(
                "",
                &format!(
                    "location / {{ proxy_pass http://127.0.0.1:{}; }}",
                    back.port()
                ),
            ),
        ),
    ];
    (back, variants)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.34us  300.12us   8.00ms   90.00%
    Req/Sec    26.50k     1.20k   28.00k    70.00%
  Latency Distribution
     50%  560.00us
     75%  700.00us
     90%  900.00us
     99%    1.50ms
  158346 requests in 3.00s, 23.01MB read
Requests/sec:  52764.12
Transfer/sec:      7.67MB
";

    #[test]
    fn wrk_output_gives_rate_p99_and_request_count() {
        let load = parse_wrk(WRK).unwrap();
        assert_eq!(load.requests, 158_346);
        assert!((load.rps - 52_764.12).abs() < 1e-6);
        assert!((load.p99_us - 1500.0).abs() < 1e-6);
    }

    #[test]
    fn wrk_errors_or_missing_figures_fail() {
        let errors = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 3\nRequests/sec",
        );
        assert!(parse_wrk(&errors).is_err());
        assert!(parse_wrk(&WRK.replace(" requests in ", " reqs in ")).is_err());
        assert!(parse_wrk("").is_err());
    }

    #[test]
    fn durations_in_any_wrk_unit() {
        assert_eq!(parse_duration_us("850.00us"), Some(850.0));
        assert_eq!(parse_duration_us("1.50ms"), Some(1500.0));
        assert_eq!(parse_duration_us("2.00s"), Some(2e6));
        assert_eq!(parse_duration_us("3m"), None);
    }

    #[test]
    fn lost_counts_in_json_and_text() {
        let dir = TempDir::new("bench-lost");
        let path = dir.path().join("out");
        std::fs::write(
            &path,
            "{\"event\":\"lost\",\"count\":3}\n{\"event\":\"upstream\"}\nlost 4 events\nupstream 1\n",
        )
        .unwrap();
        assert_eq!(lost_in(&path), 7);
    }
}
