//! `cargo xtask bench`: what ngx-trace costs nginx, measured against no
//! tracer and against a bpftrace script, in ABBA order so drift cancels.
//! Writes BENCHMARKS.md.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ngx_trace_tests::{TempDir, nginx::Nginx};

/// A tracing mode compared with no tracer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    None,
    Default,
    AllJson,
    Bpftrace,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Default => "ngx-trace (defaults)",
            Mode::AllJson => "ngx-trace --all --json",
            Mode::Bpftrace => "bpftrace script",
        }
    }
}

/// One wrk run.
#[derive(Clone, Copy, Debug)]
struct Load {
    rps: f64,
    p99_us: f64,
}

/// What a traced run measured of the tracer itself.
#[derive(Default, Clone, Copy, Debug)]
struct TracerCost {
    cpu_s: f64,
    wall_s: f64,
    rss_kb: u64,
    lost: u64,
    rps: f64,
}

struct Bench {
    bin: PathBuf,
    script: PathBuf,
    seconds: u64,
    dir: TempDir,
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
fn wrk(port: u16, seconds: u64) -> Result<Load> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "--latency"])
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("failed to run wrk (cargo xtask bench installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
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
    if text.contains("Non-2xx") {
        bail!("wrk saw errors: {text}");
    }
    Ok(Load { rps, p99_us })
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
struct Tracer {
    child: Child,
    /// Where its stdout goes.
    out: PathBuf,
    /// Reaped already: its pid may belong to another process now.
    reaped: bool,
}

impl Tracer {
    /// How long a tracer may take to exit after SIGTERM before SIGKILL.
    const GRACE: Duration = Duration::from_secs(20);

    fn new(child: Child, out: PathBuf) -> Self {
        Self {
            child,
            out,
            reaped: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`, unless the child is gone.
    fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: plain kill(2) on our own child, not reaped yet, so its
            // pid is still ours.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Wakes it if frozen, asks it to stop (SIGTERM: ngx-trace then prints
    /// its summary and lost counts) and waits; SIGKILL after [`Self::GRACE`].
    fn stop(&mut self) {
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
struct Sysctl {
    path: String,
    /// The value to restore; `None` once restored.
    old: Option<String>,
}

impl Sysctl {
    /// Sets `key` to `value`, remembering its current value.
    fn set(key: &str, value: &str) -> Result<Self> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let old = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        std::fs::write(&path, value).with_context(|| format!("write {path}"))?;
        Ok(Self {
            path,
            old: Some(old.trim().to_string()),
        })
    }

    /// Puts the previous value back.
    fn restore(&mut self) -> Result<()> {
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
fn lost_in(path: &Path) -> u64 {
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
    /// Starts `mode`'s tracer on the front nginx (none for [`Mode::None`]).
    fn start(&self, mode: Mode, front: &Nginx) -> Result<Option<Tracer>> {
        let out = self.dir.path().join("tracer.out");
        let file = std::fs::File::create(&out)?;
        let master = front.master_pid().to_string();
        let child = match mode {
            Mode::None => return Ok(None),
            Mode::Default => Command::new(&self.bin)
                .args(["--pid", &master])
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()?,
            Mode::AllJson => Command::new(&self.bin)
                .args(["--all", "--json", "--pid", &master])
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()?,
            Mode::Bpftrace => {
                let workers = front.workers();
                Command::new("bpftrace")
                    .arg(&self.script)
                    .args(workers.iter().map(u32::to_string))
                    .stdout(file)
                    .stderr(Stdio::null())
                    .spawn()?
            }
        };
        // Guarded before waiting, so that nothing below can leak it.
        let tracer = Tracer::new(child, out);
        // Attached well within this (ngx-trace: ~50 ms; bpftrace: ~1 s).
        std::thread::sleep(Duration::from_millis(2500));
        Ok(Some(tracer))
    }

    /// One measured run of `mode`.
    fn run(&self, mode: Mode, front: &Nginx) -> Result<(Load, TracerCost)> {
        let tracer = self.start(mode, front)?;
        let cpu0 = tracer.as_ref().map_or(0.0, |t| proc_cpu_s(t.pid()));
        let started = Instant::now();
        let load = wrk(front.port(), self.seconds)?;
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
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// BPF run time and count per program, from bpftool with BPF statistics on.
fn bpf_stats(ids: &[u64]) -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()?;
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(progs
        .iter()
        .filter(|p| ids.contains(&p["id"].as_u64().unwrap_or(0)))
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("?").to_string(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn program_ids() -> Result<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()?;
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(progs.iter().filter_map(|p| p["id"].as_u64()).collect())
}

/// Runs the whole benchmark and writes BENCHMARKS.md in `workspace`.
pub fn run(bin: &Path, workspace: &Path, pairs: usize, seconds: u64) -> Result<()> {
    let bench = Bench {
        bin: bin.to_path_buf(),
        script: workspace.join("bench/ngx-trace.bt"),
        seconds,
        dir: TempDir::new("bench"),
    };
    let back = Nginx::start(
        "",
        "location / { access_log {dir}/access.log; return 200 \"ok\\n\"; }",
    );
    let variants = [
        (
            "keepalive",
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
            Nginx::start(
                "",
                &format!(
                    "location / {{ proxy_pass http://127.0.0.1:{}; }}",
                    back.port()
                ),
            ),
        ),
    ];
    let mut report = String::new();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()?;
    writeln!(
        report,
        "# ngx-trace benchmarks\n\n\
         Measured {} on {} ({} cores, Linux {}), a shared and noisy machine.\n\
         Reproduce: `cargo xtask bench` (as root; {pairs} ABBA pairs of {seconds} s wrk runs per mode and variant).\n\n\
         Setup: a front nginx (2 workers, unprivileged) proxies to a back nginx (`return 200`), both on\n\
         loopback; `wrk -t2 -c32` drives the front. Each tracing mode is compared with no tracer in\n\
         ABBA order (none, traced, traced, none) repeated {pairs} times; a ratio is the traced mean over the\n\
         untraced mean of its own quad. Cells: median ratio [min–max over the quads].\n",
        String::from_utf8_lossy(&date.stdout).trim(),
        machine,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )?;
    let mut costs: Vec<(Mode, &str, TracerCost)> = Vec::new();
    for (variant, front) in &variants {
        writeln!(report, "## {variant}\n")?;
        writeln!(
            report,
            "| mode | throughput vs none | p99 latency vs none | untraced req/s |"
        )?;
        writeln!(report, "| --- | --- | --- | --- |")?;
        for mode in [Mode::Default, Mode::AllJson, Mode::Bpftrace] {
            let (mut thr, mut p99, mut base) = (Vec::new(), Vec::new(), Vec::new());
            for pair in 0..pairs {
                eprintln!(
                    "xtask bench: {variant}, {} pair {}/{pairs}",
                    mode.label(),
                    pair + 1
                );
                let (a1, _) = bench.run(Mode::None, front)?;
                let (b1, c1) = bench.run(mode, front)?;
                let (b2, c2) = bench.run(mode, front)?;
                let (a2, _) = bench.run(Mode::None, front)?;
                let none_rps = (a1.rps + a2.rps) / 2.0;
                thr.push((b1.rps + b2.rps) / 2.0 / none_rps);
                p99.push((b1.p99_us + b2.p99_us) / (a1.p99_us + a2.p99_us));
                base.push(none_rps);
                costs.push((mode, variant, c1));
                costs.push((mode, variant, c2));
            }
            let (tmin, tmax) = spread(&thr);
            let (pmin, pmax) = spread(&p99);
            writeln!(
                report,
                "| {} | {:.3} [{tmin:.3}–{tmax:.3}] | {:.3} [{pmin:.3}–{pmax:.3}] | {:.0} |",
                mode.label(),
                median(&mut thr),
                median(&mut p99),
                median(&mut base)
            )?;
        }
        writeln!(report)?;
    }

    // BPF time per proxied request, with the kernel's BPF statistics on.
    writeln!(
        report,
        "## BPF time per proxied request (BPF_ENABLE_STATS)\n"
    )?;
    for (variant, front) in &variants {
        let before = program_ids()?;
        // Declared before the tracer, so that on a failure the tracer is
        // stopped first and the sysctl restored then, as below.
        let mut stats_enabled = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
        let tracer = bench.start(Mode::Default, front)?;
        let ours: Vec<u64> = program_ids()?
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        let stats0 = bpf_stats(&ours)?;
        let load = wrk(front.port(), seconds)?;
        let stats1 = bpf_stats(&ours)?;
        if let Some(mut tracer) = tracer {
            tracer.stop();
        }
        stats_enabled.restore()?;
        let requests = load.rps * seconds as f64;
        let mut rows = Vec::new();
        let (mut total_ns, mut total_runs) = (0u64, 0u64);
        for (name, ns1, runs1) in &stats1 {
            let (ns0, runs0) = stats0
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, ns, r)| (*ns, *r));
            let (ns, runs) = (ns1 - ns0, runs1 - runs0);
            total_ns += ns;
            total_runs += runs;
            if runs > 0 {
                rows.push(format!(
                    "| {name} | {runs} | {:.0} |",
                    ns as f64 / runs as f64
                ));
            }
        }
        writeln!(
            report,
            "### {variant}\n\n{:.0} requests in {seconds} s; all programs: {total_runs} runs, \
             **{:.0} ns per run** on average, **{:.0} ns of BPF time per proxied request**.\n\n\
             | program | runs | ns per run |\n| --- | --- | --- |\n{}\n",
            requests,
            total_ns as f64 / total_runs.max(1) as f64,
            total_ns as f64 / requests.max(1.0),
            rows.join("\n")
        )?;
    }

    writeln!(report, "## The tracer itself\n")?;
    writeln!(
        report,
        "| mode | variant | exchanges/s | CPU (% of one core) | CPU per 10k exchanges/s | peak RSS | lost events |"
    )?;
    writeln!(report, "| --- | --- | --- | --- | --- | --- | --- |")?;
    for mode in [Mode::Default, Mode::AllJson, Mode::Bpftrace] {
        for (variant, _) in &variants {
            let runs: Vec<&TracerCost> = costs
                .iter()
                .filter(|(m, v, _)| *m == mode && v == variant)
                .map(|(_, _, c)| c)
                .collect();
            let cpu: f64 = runs.iter().map(|c| c.cpu_s).sum::<f64>()
                / runs.iter().map(|c| c.wall_s).sum::<f64>()
                * 100.0;
            let rps: f64 = runs.iter().map(|c| c.rps).sum::<f64>() / runs.len() as f64;
            let rss = runs.iter().map(|c| c.rss_kb).max().unwrap_or(0);
            let lost: u64 = runs.iter().map(|c| c.lost).sum();
            writeln!(
                report,
                "| {} | {variant} | {rps:.0} | {cpu:.1}% | {:.2}% | {:.1} MB | {lost} |",
                mode.label(),
                cpu / (rps / 10_000.0),
                rss as f64 / 1024.0
            )?;
        }
    }
    writeln!(report)?;

    // Attach time.
    let mut attach = Vec::new();
    for _ in 0..5 {
        let out = Command::new(&bench.bin).arg("--check").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(ms) = text
            .lines()
            .find_map(|l| l.split("attached in ").nth(1))
            .and_then(|r| r.trim_end_matches(" ms").parse::<f64>().ok())
        {
            attach.push(ms);
        }
    }
    let (amin, amax) = spread(&attach);
    writeln!(
        report,
        "## Attach time\n\nLoad and attach of all programs (`ngx-trace --check`, 5 runs): median {:.0} ms [{amin:.0}–{amax:.0}].\n",
        median(&mut attach)
    )?;

    // Flood: freeze the reader so the ring buffer overfills; every exchange
    // the back nginx served must be either reported or counted as lost. New
    // connections per request, so that no exchange runs on a connection
    // opened before this tracer started (its first exchange would be unseen).
    let (_, front) = &variants[1];
    let access = back.dir().join("access.log");
    let served_before = std::fs::read_to_string(&access)
        .unwrap_or_default()
        .lines()
        .count();
    let out = bench.dir.path().join("flood.out");
    let child = Command::new(&bench.bin)
        .args([
            "--all",
            "--json",
            "--interval",
            "0",
            "--pid",
            &front.master_pid().to_string(),
        ])
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    // If wrk fails, dropping the guard wakes the frozen tracer and stops it.
    let mut tracer = Tracer::new(child, out.clone());
    std::thread::sleep(Duration::from_millis(1500));
    tracer.signal(libc::SIGSTOP);
    wrk(front.port(), 2)?;
    tracer.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(1));
    tracer.stop();
    let served = std::fs::read_to_string(&access)
        .unwrap_or_default()
        .lines()
        .count()
        - served_before;
    let text = std::fs::read_to_string(&out)?;
    let reported = text
        .lines()
        .filter(|l| l.contains("\"event\":\"upstream\""))
        .count();
    let lost = lost_in(&out);
    writeln!(
        report,
        "## Overfilled ring buffer\n\nReader frozen (SIGSTOP) for a 2 s wrk run, new-connection variant: the back nginx served \
         {served} requests; ngx-trace reported {reported} exchanges and {lost} lost events \
         ({} {}).\n",
        reported as u64 + lost,
        if reported as u64 + lost == served as u64 {
            "= served: every exchange accounted for"
        } else {
            "!= served"
        }
    )?;
    std::fs::write(workspace.join("BENCHMARKS.md"), &report)?;
    eprintln!("xtask bench: wrote BENCHMARKS.md");
    print!("{report}");
    Ok(())
}
