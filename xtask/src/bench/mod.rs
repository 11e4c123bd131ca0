//! `cargo xtask bench`: what ngx-trace costs nginx, measured against no
//! tracer and against a bpftrace script, in ABBA order so drift cancels;
//! BPF time per proxied request and per program run (BPF_ENABLE_STATS),
//! also on sockets that are not upstreams, next to what an empty program,
//! a hash lookup and a socket-storage load cost on the same hooks; the
//! targets, met or missed.
//! Writes BENCHMARKS.md.
//!
//! [`run`] takes the measurements in turn and writes the report as it goes.
//! The rest of this folder, in the order a run uses it:
//!
//! - `modes.rs`: the tracing modes compared, and what each one starts;
//! - `runner.rs`: the nginx instances, wrk, the tracer and sysctl guards,
//!   the metrics scraper, the ABBA runs and the tracer's own cost;
//! - `bpf_stats.rs`: BPF time with the kernel's statistics on, per tracer
//!   and per building block, and the samples it gives;
//! - `floor.rs`: the building blocks, tiny programs loaded with plain
//!   bpf(2) on the hot hooks (the kernel's BTF read with
//!   `ngx_trace_common::btf`);
//! - `spread.rs`: a figure measured several times, its median and range;
//! - `report.rs`: the sections computed from several measurements (BPF
//!   time, not-upstream sockets, building blocks, summary);
//! - `targets.rs`: the targets, met or missed, and why the missed ones are;
//! - `runs.rs`: `--runs-per-request`, program runs per request on each
//!   kernel, and its section of BENCHMARKS.md;
//! - `scale.rs`: `--scale`, the tracer on a busy host, and its section.
mod bpf_stats;
mod floor;
mod modes;
mod report;
mod runner;
mod runs;
pub(crate) mod scale;
mod spread;
mod targets;

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Result, bail};
use ngx_trace_tests::TempDir;

pub(crate) use runs::{runs_here, runs_per_request};

use self::{
    modes::{Mode, TRACED_MODES},
    report::{
        VariantResults, cost_summary, empty_ns_per_run, write_bpf_comparison,
        write_building_blocks, write_not_upstream, write_summary,
    },
    runner::{Bench, Tracer, TracerCost, lost_in, setup_nginx, wrk},
    runs::{runs_section, with_runs_section},
    spread::Spread,
    targets::{ANALYSIS, Figures, targets, write_targets},
};

/// Runs the whole benchmark and writes BENCHMARKS.md in `workspace`,
/// keeping its by-kernel section (see [`runs_per_request`]).
pub fn run(bin: &Path, workspace: &Path, pairs: usize, seconds: u64) -> Result<()> {
    if pairs == 0 || seconds == 0 {
        bail!("--pairs and --seconds must be at least 1");
    }
    let bench = Bench {
        bin: bin.to_path_buf(),
        script: workspace.join("bench/ngx-trace.bt"),
        seconds,
        pairs,
        dir: TempDir::new("bench"),
        metrics_port: ngx_trace_tests::free_port(),
    };
    // Name, the BPF time per proxied request ngx-trace should stay under
    // (ns), and the front nginx.
    let (back, variants) = setup_nginx();
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
         Reproduce: `cargo xtask bench --pairs {pairs} --seconds {seconds}` (as root; {pairs} ABBA pairs of \
         {seconds} s wrk runs per mode and variant, then {pairs} runs each of ngx-trace, the bpftrace \
         script and ngx-trace --no-request-path with BPF statistics on per variant, one on \
         not-upstream sockets, and one per building \
         block on the same hooks).\n\n\
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
    let mut throughputs = Vec::new();
    for (variant, _, front) in &variants {
        writeln!(report, "## {variant}\n")?;
        writeln!(
            report,
            "| mode | throughput vs none | p99 latency vs none | untraced req/s |"
        )?;
        writeln!(report, "| --- | --- | --- | --- |")?;
        let mut rows = Vec::new();
        for mode in TRACED_MODES {
            let abba = bench.abba(variant, front, mode)?;
            writeln!(
                report,
                "| {} | {} | {} | {:.0} |",
                mode.label(),
                abba.throughput.show(3),
                abba.p99.show(3),
                abba.untraced_rps
            )?;
            costs.extend(abba.costs.iter().map(|c| (mode, *variant, *c)));
            rows.push((mode, abba.throughput));
        }
        throughputs.push(rows);
        writeln!(report)?;
    }

    // BPF time per proxied request, with the kernel's BPF statistics on.
    writeln!(
        report,
        "## BPF time per proxied request (BPF_ENABLE_STATS)\n\n\
         A tracer's programs are those its process holds (BPF program and link fds, from\n\
         /proc/PID/fdinfo); run time and run count from `bpftool prog show` over the wrk run.\n"
    )?;
    let mut results = Vec::new();
    for ((variant, bpf_ns_target, front), throughput) in variants.iter().zip(throughputs) {
        let bpf = bench.bpf_comparison(variant, front)?;
        write_bpf_comparison(&mut report, variant, seconds, &bpf)?;
        results.push(VariantResults {
            name: variant,
            bpf_ns_target: *bpf_ns_target,
            throughput,
            bpf,
        });
    }
    let not_upstream = bench.not_upstream(&variants[0].2, &back)?;
    write_not_upstream(&mut report, seconds, &not_upstream)?;
    let blocks = bench.building_blocks(&back)?;
    write_building_blocks(&mut report, seconds, &blocks, &not_upstream)?;

    writeln!(report, "## The tracer itself\n")?;
    writeln!(
        report,
        "| mode | variant | exchanges/s | CPU (% of one core) | CPU per 10k exchanges/s | peak RSS | lost events |"
    )?;
    writeln!(report, "| --- | --- | --- | --- | --- | --- | --- |")?;
    for mode in TRACED_MODES {
        for (variant, _, _) in &variants {
            let c = cost_summary(&costs, mode, variant);
            writeln!(
                report,
                "| {} | {variant} | {:.0} | {:.1}% | {:.2}% | {:.1} MB | {} |",
                mode.label(),
                c.rps,
                c.cpu_pct,
                c.cpu_per_10k,
                c.rss_mb,
                c.lost
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
    writeln!(
        report,
        "## Attach time\n\nLoad and attach of all programs (`ngx-trace --check`, 5 runs): median {} ms.\n",
        Spread::of(&attach).show(0)
    )?;

    // Flood: freeze the reader so the ring buffer overfills; every exchange
    // the back nginx served must be either reported or counted as lost. New
    // connections per request, so that no exchange runs on a connection
    // opened before this tracer started (its first exchange would be unseen).
    let (_, _, front) = &variants[1];
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

    write_summary(&mut report, &results, &costs, &not_upstream)?;
    write_targets(
        &mut report,
        &targets(&Figures::new(
            pairs,
            &results,
            &costs,
            &not_upstream,
            empty_ns_per_run(&blocks),
        )),
    )?;
    writeln!(report, "\n{ANALYSIS}")?;
    let path = workspace.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let section = runs_section(&old);
    if !section.is_empty() {
        report = with_runs_section(&report, section);
    }
    let report = scale::kept(&old, report);
    std::fs::write(&path, &report)?;
    eprintln!("xtask bench: wrote BENCHMARKS.md");
    print!("{report}");
    Ok(())
}
