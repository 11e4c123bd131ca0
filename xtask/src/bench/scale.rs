//! `cargo xtask bench --scale`: the tracer on a busy host. Clients that
//! close every connection drive nginx (a new upstream connection per
//! request) while the host holds 1,000 and then 100,000 idle sockets; then
//! 10,000 exchanges wait at once. Measures the tracer's CPU per 10,000
//! exchanges/s, its peak RSS, how late its lines reach stdout after the
//! kernel's record (p99) and the records it lost; writes its section of
//! BENCHMARKS.md (between markers, kept by the full `cargo xtask bench`).
use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ngx_trace_tests::{free_port, http::get, idle::IdleConnections, nginx::Nginx};
use serde_json::Value;

/// Seconds of load before the churn runs are measured.
const WARM_UP_S: u64 = 3;

/// Marks this section in BENCHMARKS.md.
const BEGIN: &str = "<!-- scale: begin -->";
const END: &str = "<!-- scale: end -->";

/// Listeners that never accept, for the in-flight run: the kernel completes
/// each handshake and acknowledges each request, and nobody answers. Each
/// queues up to `somaxconn` (4,096) connections.
const HOLDERS: usize = 4;

/// A path to a section of `text` between [`BEGIN`] and [`END`], markers
/// included; empty when it has none.
fn section(text: &str) -> &str {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => &text[b..e + END.len()],
        _ => "",
    }
}

/// `text` with its scale section replaced by `new` (added at the end when
/// it has none).
fn with_section(text: &str, new: &str) -> String {
    let old = section(text);
    if old.is_empty() {
        return format!("{}\n\n{new}\n", text.trim_end());
    }
    text.replacen(old, new, 1)
}

/// The report of a full `cargo xtask bench` (which rewrites BENCHMARKS.md)
/// with the scale section of the `old` file kept.
pub fn kept(old: &str, report: String) -> String {
    let keep = section(old);
    if keep.is_empty() {
        report
    } else {
        with_section(&report, keep)
    }
}

/// The p-th percentile (0..=100) of `values`, sorting them; 0 when empty.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// CPU time of every live thread of `pid`, s, from the scheduler's own
/// accounting (`schedstat`, ns): tick sampling misses short bursts.
fn cpu_s(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// Seconds since the epoch of an RFC 3339 UTC time as ngx-trace prints it
/// (`2026-11-26T07:22:44.422674Z`).
fn rfc3339_s(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a tracer's stdout said, each line stamped on arrival.
#[derive(Default)]
struct Heard {
    /// Arrival minus the event's `time` (the kernel's record), s, for every
    /// event with a time.
    delays: Vec<f64>,
    /// `count` of every `lost` event.
    lost: u64,
    /// `pending` events (not cut by the stop).
    pending: u64,
    /// `upstream` events.
    upstream: u64,
}

/// ngx-trace on one nginx, its stdout read and stamped by a thread.
struct Traced {
    child: Child,
    reader: Option<JoinHandle<Heard>>,
    pending: Arc<AtomicU64>,
}

impl Traced {
    /// Starts `bin --json --interval 0 --pid <master>`; returns once it is
    /// attached (its first `workers` event).
    fn start(bin: &Path, nginx: &Nginx) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["--json", "--interval", "0", "--pid"])
            .arg(nginx.master_pid().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("failed to start {}", bin.display()))?;
        let stdout = child.stdout.take().context("the tracer's stdout")?;
        let attached = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicU64::new(0));
        let (flag, count) = (attached.clone(), pending.clone());
        let reader = std::thread::spawn(move || {
            let mut heard = Heard::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let arrived = now_s();
                let Ok(e) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(t) = e["time"].as_str().and_then(rfc3339_s) {
                    heard.delays.push(arrived - t);
                }
                match e["event"].as_str() {
                    Some("workers") => flag.store(true, Ordering::SeqCst),
                    Some("lost") => heard.lost += e["count"].as_u64().unwrap_or(0),
                    Some("pending") if e["cut_by_stop"] == false => {
                        heard.pending += 1;
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("upstream") => heard.upstream += 1,
                    _ => {}
                }
            }
            heard
        });
        let traced = Self {
            child,
            reader: Some(reader),
            pending,
        };
        let start = Instant::now();
        while !attached.load(Ordering::SeqCst) {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("ngx-trace did not attach within 60 s (its stderr is above)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(traced)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then everything it said.
    fn stop(mut self) -> Result<Heard> {
        // SAFETY: plain kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().context("wait for ngx-trace")?;
        if !status.success() {
            bail!("ngx-trace exited with {status}");
        }
        self.reader
            .take()
            .context("the tracer's reader")?
            .join()
            .map_err(|_| anyhow::anyhow!("the tracer's reader panicked"))
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One measurement's figures.
struct Row {
    label: String,
    /// Exchanges per second nginx proxied (or in flight, for that run).
    exchanges: f64,
    /// Tracer CPU, % of one core per 10,000 exchanges/s (or in all, for the
    /// in-flight run).
    cpu_pct: f64,
    peak_rss_mb: f64,
    p99_delay_ms: f64,
    lines: usize,
    lost: u64,
}

/// Raises our soft descriptor limit to the hard one: the in-flight run holds
/// one client socket per exchange.
fn raise_nofile() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            bail!("getrlimit(RLIMIT_NOFILE) failed");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
            bail!("setrlimit(RLIMIT_NOFILE) to the hard limit failed");
        }
    }
    Ok(limit.rlim_cur)
}

/// wrk with clients that close every connection; returns requests/s.
fn wrk_closing(port: u16, seconds: u64) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "--latency", "-H", "Connection: close"])
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}/ok"))
        .output()
        .context("failed to run wrk (cargo xtask bench installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        bail!("wrk saw errors: {text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {text}"))
}

/// Churn with `sockets` idle sockets on the host: wrk on `/ok` for
/// `seconds`, and a steady trickle of refused connects (`/refused`), each
/// printed, for the delay to stdout.
fn churn(bin: &Path, front: &Nginx, sockets: usize, seconds: u64) -> Result<Row> {
    let idle = IdleConnections::spread(sockets / 2);
    let traced = Traced::start(bin, front)?;
    let port = front.port();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let trickle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            get(port, "/refused");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // A warm-up first: what the tracer does once (start-up adoption, the
    // first lookup of the upstream's serving processes) is not a cost per
    // exchange.
    wrk_closing(port, WARM_UP_S)?;
    let (cpu0, t0) = (cpu_s(traced.pid()), Instant::now());
    let rps = wrk_closing(port, seconds)?;
    let (cpu1, wall) = (cpu_s(traced.pid()), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let _ = trickle.join();
    std::thread::sleep(Duration::from_millis(500));
    let hwm = ngx_trace_tests::proc_stats::status_kib(traced.pid(), "VmHWM");
    let mut heard = traced.stop()?;
    drop(idle);
    Ok(Row {
        label: format!("{sockets} sockets, churn"),
        exchanges: rps,
        cpu_pct: (cpu1 - cpu0) / wall * 100.0 / (rps / 10_000.0).max(1e-9),
        peak_rss_mb: hwm as f64 / 1024.0,
        p99_delay_ms: percentile(&mut heard.delays, 99.0) * 1e3,
        lines: heard.delays.len(),
        lost: heard.lost,
    })
}

/// `n` exchanges waiting at once on listeners that never answer, held for
/// `seconds` after they are all reported pending (or 30 s).
fn in_flight(bin: &Path, front: &Nginx, hold_port: u16, n: usize, seconds: u64) -> Result<Row> {
    let traced = Traced::start(bin, front)?;
    let (cpu0, t0) = (cpu_s(traced.pid()), Instant::now());
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", hold_port))
            .with_context(|| format!("client {i} of {n} could not connect to nginx"))?;
        c.write_all(b"GET /hold HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .with_context(|| format!("client {i} of {n} could not send its request"))?;
        clients.push(c);
    }
    let start = Instant::now();
    while (traced.pending.load(Ordering::SeqCst) as usize) < n
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, wall) = (cpu_s(traced.pid()), t0.elapsed().as_secs_f64());
    let hwm = ngx_trace_tests::proc_stats::status_kib(traced.pid(), "VmHWM");
    drop(clients);
    std::thread::sleep(Duration::from_secs(3));
    let mut heard = traced.stop()?;
    Ok(Row {
        label: format!("{n} in flight ({} reported pending)", heard.pending),
        exchanges: n as f64,
        cpu_pct: (cpu1 - cpu0) / wall * 100.0,
        peak_rss_mb: hwm as f64 / 1024.0,
        p99_delay_ms: percentile(&mut heard.delays, 99.0) * 1e3,
        lines: heard.delays.len(),
        lost: heard.lost,
    })
}

/// The section for BENCHMARKS.md.
fn render(rows: &[Row], command: &str, seconds: u64) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "{BEGIN}")?;
    writeln!(s, "## Scale: a busy host\n")?;
    writeln!(
        s,
        "`{command}`: wrk with clients that close every connection (`Connection: close`, \
         2 threads, 32 connections, {seconds} s) on a location that opens a new upstream \
         connection per request, plus 100 refused connects per second (each printed), \
         while `idle-conns` processes hold idle loopback connections (two sockets each); \
         then exchanges waiting at once on listeners that never answer. ngx-trace runs \
         with `--json --interval 0 --pid <master>`. CPU is all its threads' (schedstat), \
         per 10,000 exchanges/s for churn (measured after a {WARM_UP_S} s warm-up: \
         start-up adoption and the first lookup of the backend's processes are once, \
         not per exchange; RSS includes them), in all for the in-flight run; RSS is `VmHWM`; \
         the delay is a line's arrival on stdout minus its `time` (the kernel's record).\n"
    )?;
    writeln!(
        s,
        "| run | exchanges/s (in flight) | tracer CPU, % of a core | peak RSS, MB | \
         delay to stdout p99, ms | timed lines | lost |"
    )?;
    writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |")?;
    for r in rows {
        writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {} |",
            r.label, r.exchanges, r.cpu_pct, r.peak_rss_mb, r.p99_delay_ms, r.lines, r.lost
        )?;
    }
    writeln!(
        s,
        "\nTargets: the same CPU within the noise at 1,000 and 100,000 sockets; RSS under \
         64 MB; p99 delay under 1 s; no record lost."
    )?;
    write!(s, "{END}")?;
    Ok(s)
}

/// Runs the scale scenario (each churn run `seconds` long, at each count of
/// idle `sockets`, then `in_flight` exchanges held for `seconds`) and
/// writes its section of BENCHMARKS.md in `workspace`.
pub fn run(
    bin: &Path,
    workspace: &Path,
    seconds: u64,
    sockets: &[usize],
    in_flight_n: usize,
) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let nofile = raise_nofile()?;
    if in_flight_n as u64 + 256 > nofile {
        bail!(
            "{in_flight_n} exchanges in flight need as many client sockets, the hard \
             RLIMIT_NOFILE is {nofile}: ask for fewer with --in-flight"
        );
    }
    let back = Nginx::start("", "location / { return 200 \"ok\\n\"; }");
    // Listeners nobody accepts from: the in-flight exchanges' upstreams.
    let holders: Vec<TcpListener> = (0..HOLDERS)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0")?;
            // SAFETY: a valid listening socket; listen(2) again only sets
            // the backlog (capped by somaxconn).
            unsafe { libc::listen(l.as_raw_fd(), 65_535) };
            Ok(l)
        })
        .collect::<std::io::Result<_>>()
        .context("failed to listen on 127.0.0.1")?;
    let servers: String = holders
        .iter()
        .map(|l| Ok(format!("server {};", l.local_addr()?)))
        .collect::<std::io::Result<_>>()?;
    let hold_port = free_port();
    // Two workers share 2 × in_flight connections: room for an uneven share
    // under the hard descriptor limit (`reuseport` spreads the clients).
    let per_worker = (in_flight_n as u32 * 2).clamp(4_096, 16_000);
    let front = Nginx::start_with_nofile(
        (nofile as u32).min(19_000),
        per_worker,
        &format!(
            "upstream holders {{ {servers} }}\n\
             server {{ listen 127.0.0.1:{hold_port} reuseport backlog=4096; \
               location /hold {{ proxy_read_timeout 1h; proxy_pass http://holders; }} }}"
        ),
        &format!(
            "location /ok {{ proxy_pass http://127.0.0.1:{}; }}\n\
             location /refused {{ proxy_pass http://127.0.0.1:{}; }}",
            back.port(),
            free_port()
        ),
    );
    let mut rows = Vec::new();
    for &n in sockets {
        eprintln!("xtask bench --scale: churn with {n} idle sockets");
        rows.push(churn(bin, &front, n, seconds)?);
    }
    if in_flight_n > 0 {
        eprintln!("xtask bench --scale: {in_flight_n} exchanges in flight");
        rows.push(in_flight(bin, &front, hold_port, in_flight_n, seconds)?);
    }
    drop(holders);
    let sockets_arg: Vec<String> = sockets.iter().map(usize::to_string).collect();
    let command = format!(
        "cargo xtask bench --scale --sockets {} --in-flight {in_flight_n} --seconds {seconds}",
        sockets_arg.join(",")
    );
    let text = render(&rows, &command, seconds)?;
    let path = workspace.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_section(&old, &text))
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_time_ngx_trace_prints_is_read_to_the_microsecond() {
        // date -u -d 2026-11-26T07:22:44Z +%s
        let t = rfc3339_s("2026-11-26T07:22:44.422674Z").unwrap();
        assert!((t - 1_795_677_764.422_674).abs() < 1e-6, "{t}");
        assert_eq!(rfc3339_s("1970-01-01T00:00:00.000000Z"), Some(0.0));
        assert_eq!(rfc3339_s("2026-11-26 07:22:44"), None);
    }

    #[test]
    fn p99_of_a_hundred_delays_is_the_99th() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [], 99.0), 0.0);
    }

    #[test]
    fn the_scale_section_is_replaced_in_place_and_kept_by_a_full_bench() {
        let old = format!("# Benchmarks\n\n{BEGIN}\nold\n{END}\n\n## Later\n");
        let new = format!("{BEGIN}\nnew\n{END}");
        assert_eq!(
            with_section(&old, &new),
            format!("# Benchmarks\n\n{new}\n\n## Later\n")
        );
        assert_eq!(
            with_section("# Benchmarks\n", &new),
            format!("# Benchmarks\n\n{new}\n")
        );
        let report = "# Benchmarks (new run)\n".to_string();
        assert_eq!(
            kept(&old, report),
            format!("# Benchmarks (new run)\n\n{BEGIN}\nold\n{END}\n")
        );
    }
}
