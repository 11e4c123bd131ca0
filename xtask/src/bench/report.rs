//! The sections of BENCHMARKS.md computed from several measurements: BPF
//! time per variant with its per-program table, not-upstream sockets, the
//! building blocks against the tracer on the same hooks, the tracer's own
//! cost, and the summary table (the README's "Overhead" table).
use std::fmt::Write as _;

use anyhow::Result;

use super::{
    bpf_stats::{BlockSample, BpfComparison, BpfSample, spread_of},
    floor::{Block, HOT_HOOKS},
    modes::{Mode, TRACED_MODES},
    runner::TracerCost,
    spread::Spread,
};

/// `samples`' BPF time per request with its spread, then ns per run and
/// runs per request (medians): one summary cell.
fn bpf_cell(samples: &[BpfSample]) -> String {
    format!(
        "{} ns ({:.0} ns per run, {:.1} runs per request)",
        spread_of(samples, BpfSample::ns_per_request).show(0),
        spread_of(samples, BpfSample::ns_per_run).median,
        spread_of(samples, BpfSample::runs_per_request).median
    )
}

/// Per-program table of `sample`: runs, runs per request, ns per run
/// (programs that did not run left out).
fn program_table(sample: &BpfSample) -> String {
    let rows: Vec<String> = sample
        .progs
        .iter()
        .filter(|p| p.runs > 0)
        .map(|p| {
            format!(
                "| {} | {} | {:.2} | {:.0} |",
                p.name,
                p.runs,
                p.runs as f64 / sample.requests.max(1) as f64,
                p.ns as f64 / p.runs as f64
            )
        })
        .collect();
    format!(
        "| program | runs | runs per request | ns per run |\n| --- | --- | --- | --- |\n{}\n",
        rows.join("\n")
    )
}

/// The BPF-time section of one variant.
pub(super) fn write_bpf_comparison(
    report: &mut String,
    variant: &str,
    seconds: u64,
    comparison: &BpfComparison,
) -> Result<()> {
    let rounds = comparison.ngx.len();
    writeln!(
        report,
        "### {variant}\n\n\
         {rounds} runs of {seconds} s each of ngx-trace (defaults), of the bpftrace script and of \
         ngx-trace --no-request-path (no request copy), in turn.\n\
         Cells: median [min–max over the runs].\n\n\
         | tracer | BPF time per proxied request (ns) | program runs per proxied request | ns per program run | req/s |\n\
         | --- | --- | --- | --- | --- |"
    )?;
    for (label, samples) in [
        (Mode::Default.label(), &comparison.ngx),
        (Mode::Bpftrace.label(), &comparison.bpftrace),
        (Mode::NoRequestPath.label(), &comparison.no_request),
    ] {
        writeln!(
            report,
            "| {label} | {} | {} | {} | {:.0} |",
            spread_of(samples, BpfSample::ns_per_request).show(0),
            spread_of(samples, BpfSample::runs_per_request).show(1),
            spread_of(samples, BpfSample::ns_per_run).show(0),
            spread_of(samples, |s| s.rps).median
        )?;
    }
    let all = BpfSample::combine(&comparison.ngx);
    writeln!(
        report,
        "\nBPF time per proxied request, bpftrace script over ngx-trace (per round): **{}** times.\n\n\
         The request copy (one per exchange: the start of each request written upstream), \
         ngx-trace (defaults) less ngx-trace --no-request-path per round: **{} ns** of BPF time \
         per proxied request ({} times the BPF time without it).\n\n\
         ngx-trace (defaults) per program, over its {rounds} runs ({} requests; {} runs, \
         **{:.0} ns per run** on average, **{:.1} runs** and **{:.0} ns of BPF time per proxied request**):\n\n{}",
        comparison.bpftrace_over_ngx().show(2),
        comparison.copy_ns().show(0),
        comparison.ngx_over_no_request().show(3),
        all.requests,
        all.total_runs(),
        all.ns_per_run(),
        all.runs_per_request(),
        all.ns_per_request(),
        program_table(&all)
    )?;
    Ok(())
}

/// The section on sockets that are not upstreams.
pub(super) fn write_not_upstream(
    report: &mut String,
    seconds: u64,
    sample: &BpfSample,
) -> Result<()> {
    writeln!(
        report,
        "## BPF time on not-upstream sockets: wrk → back nginx directly, front traced and idle\n\n\
         ngx-trace (defaults) traces the keepalive variant's front nginx only (`--pid` of its master), \
         which serves nothing, while `wrk -t2 -c32` drives the back nginx directly on its own port for \
         {seconds} s: every socket event its hooks see is on a socket that is not an upstream (wrk's and \
         the back nginx's).\n\n\
         {:.0} requests/s ({} requests); all programs: {} runs, {} ns of BPF time, \
         **{:.1} ns per run** on average ({:.1} runs per request served).\n\n{}",
        sample.rps,
        sample.requests,
        sample.total_runs(),
        sample.total_ns(),
        sample.ns_per_run(),
        sample.runs_per_request(),
        program_table(sample)
    )?;
    Ok(())
}

/// `sample` with the programs on the hot hooks only (those of
/// [`HOT_HOOKS`], by name): the programs the building blocks stand for.
fn hot_hooks_only(sample: &BpfSample) -> BpfSample {
    BpfSample {
        progs: sample
            .progs
            .iter()
            .filter(|p| HOT_HOOKS.contains(&p.name.as_str()))
            .cloned()
            .collect(),
        ..sample.clone()
    }
}

/// The empty program's ns per run among `blocks`; NaN if not measured.
pub(super) fn empty_ns_per_run(blocks: &[BlockSample]) -> f64 {
    blocks
        .iter()
        .find(|b| b.block == Block::Empty)
        .and_then(|b| b.sample.as_ref().ok())
        .map_or(f64::NAN, BpfSample::ns_per_run)
}

/// ns per run of each hot hook's program in `sample`, e.g.
/// `sock_send_length 37, sock_recv_length 38, sk_data_ready 36`.
fn per_hook(sample: &BpfSample) -> String {
    HOT_HOOKS
        .iter()
        .map(|hook| {
            let (ns, runs) = sample
                .progs
                .iter()
                .filter(|p| p.name == *hook)
                .fold((0, 0), |(ns, runs), p| (ns + p.ns, runs + p.runs));
            if runs == 0 {
                format!("{hook} –")
            } else {
                format!("{hook} {:.0}", ns as f64 / runs as f64)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one-sentence conclusion of the building-blocks section: what an
/// empty program costs per run on these hooks, and what ngx-trace spends
/// over it (left out when `ngx_ns` is NaN: not measured).
fn floor_conclusion(empty_ns: f64, ngx_ns: f64) -> String {
    if empty_ns.is_nan() {
        return "The empty program was not measured: no floor to compare with.".to_string();
    }
    let ngx = if ngx_ns.is_nan() {
        String::new()
    } else {
        format!(
            " (ngx-trace spends {:.1} ns per run over it on these hooks)",
            ngx_ns - empty_ns
        )
    };
    format!(
        "An empty program costs {empty_ns:.1} ns per run here: what any program on a host-wide \
         hook costs every socket event of every process, with BPF statistics on{ngx}."
    )
}

/// The building-blocks section: what a run of a program costs at all on
/// the hot hooks, next to ngx-trace's figure there from `not_upstream`.
pub(super) fn write_building_blocks(
    report: &mut String,
    seconds: u64,
    blocks: &[BlockSample],
    not_upstream: &BpfSample,
) -> Result<()> {
    writeln!(
        report,
        "## What a run costs at all: building blocks on the same hooks\n\n\
         Tiny hand-assembled programs, loaded with plain bpf(2) calls, one per hook on {hooks} \
         (the hooks every socket on the host runs), nothing else attached; the same load as the \
         not-upstream run (`wrk -t2 -c32` → back nginx directly, {seconds} s), one wrk run per \
         block, with BPF statistics on, read as for the tracer. With BPF_ENABLE_STATS on, every \
         run includes the statistics' two clock reads. The runs follow each other: the run-to-run \
         noise of this machine (a few ns per run) applies between rows.\n\n\
         | what runs | runs | ns per run (average over the three hooks) | over the empty program (ns) |\n\
         | --- | --- | --- | --- |",
        hooks = HOT_HOOKS.map(|h| format!("`{h}`")).join(", ")
    )?;
    let empty = empty_ns_per_run(blocks);
    // Runs, ns per run with the per-hook figures, excess over the empty
    // program; dashes where nothing ran.
    let cell = |s: &BpfSample| {
        if s.total_runs() == 0 {
            return ("0".to_string(), "–".to_string(), "–".to_string());
        }
        (
            s.total_runs().to_string(),
            format!("{:.1} ({})", s.ns_per_run(), per_hook(s)),
            if empty.is_nan() {
                "–".to_string()
            } else {
                format!("{:+.1}", s.ns_per_run() - empty)
            },
        )
    };
    for b in blocks {
        let (runs, ns, over) = match &b.sample {
            Ok(s) if b.block == Block::Empty => {
                let (runs, ns, _) = cell(s);
                (runs, ns, "–".to_string())
            }
            Ok(s) => cell(s),
            Err(why) => (
                "–".to_string(),
                format!("not measured: {}", why.replace(['\n', '|'], " ")),
                "–".to_string(),
            ),
        };
        writeln!(report, "| {} | {runs} | {ns} | {over} |", b.block.label())?;
    }
    let ngx = hot_hooks_only(not_upstream);
    let (runs, ns, over) = cell(&ngx);
    writeln!(
        report,
        "| ngx-trace (defaults), not-upstream: its programs on these three hooks, from the \
         section above | {runs} | {ns} | {over} |\n\n\
         The hash lookup is what the tracer's state design pays on each upstream event (3 per \
         keepalive request); holding the state in socket-local storage would save it there. The \
         socket-storage load is all ngx-trace's filter does on a socket that is not an upstream.\n\n\
         {}\n",
        floor_conclusion(
            empty,
            if ngx.total_runs() == 0 {
                f64::NAN
            } else {
                ngx.ns_per_run()
            }
        )
    )?;
    Ok(())
}

/// A tracer's own cost over the traced runs of one mode and variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct CostSummary {
    /// Mean requests/s (exchanges/s) of the runs.
    pub(super) rps: f64,
    /// CPU, % of one core.
    pub(super) cpu_pct: f64,
    /// CPU per 10k exchanges/s, % of one core.
    pub(super) cpu_per_10k: f64,
    /// Peak RSS, MB.
    pub(super) rss_mb: f64,
    /// Lost events, all runs.
    pub(super) lost: u64,
}

pub(super) fn cost_summary(
    costs: &[(Mode, &str, TracerCost)],
    mode: Mode,
    variant: &str,
) -> CostSummary {
    let runs: Vec<&TracerCost> = costs
        .iter()
        .filter(|(m, v, _)| *m == mode && *v == variant)
        .map(|(_, _, c)| c)
        .collect();
    let cpu_pct = runs.iter().map(|c| c.cpu_s).sum::<f64>()
        / runs.iter().map(|c| c.wall_s).sum::<f64>()
        * 100.0;
    let rps = runs.iter().map(|c| c.rps).sum::<f64>() / runs.len() as f64;
    CostSummary {
        rps,
        cpu_pct,
        cpu_per_10k: cpu_pct / (rps / 10_000.0),
        rss_mb: runs.iter().map(|c| c.rss_kb).max().unwrap_or(0) as f64 / 1024.0,
        lost: runs.iter().map(|c| c.lost).sum(),
    }
}

/// Everything measured for one variant.
pub(super) struct VariantResults<'a> {
    pub(super) name: &'a str,
    /// BPF time per proxied request ngx-trace should stay under, ns.
    pub(super) bpf_ns_target: f64,
    /// Throughput ratio to no tracer, per traced mode.
    pub(super) throughput: Vec<(Mode, Spread)>,
    pub(super) bpf: BpfComparison,
}

impl VariantResults<'_> {
    pub(super) fn throughput(&self, mode: Mode) -> Spread {
        self.throughput
            .iter()
            .find(|(m, _)| *m == mode)
            .map_or(Spread::of(&[]), |(_, s)| *s)
    }
}

/// A table row: `label`, then one cell per variant.
fn row(label: &str, cells: impl Iterator<Item = String>) -> String {
    format!("| {label} | {} |", cells.collect::<Vec<_>>().join(" | "))
}

/// The summary table (the README's "Overhead" table, computed).
pub(super) fn write_summary(
    report: &mut String,
    results: &[VariantResults],
    costs: &[(Mode, &str, TracerCost)],
    not_upstream: &BpfSample,
) -> Result<()> {
    writeln!(
        report,
        "## Summary\n\nMedian [min–max] over the ABBA pairs (throughput) or the runs (BPF time).\n\n{}\n{}",
        row("", results.iter().map(|r| r.name.to_string())),
        row("---", results.iter().map(|_| "---".to_string()))
    )?;
    for mode in TRACED_MODES {
        writeln!(
            report,
            "{}",
            row(
                &format!("throughput, {}", mode.label()),
                results.iter().map(|r| r.throughput(mode).show(3))
            )
        )?;
    }
    let cost = |r: &VariantResults, f: fn(&CostSummary) -> String| {
        format!(
            "{} / {} / {}",
            f(&cost_summary(costs, Mode::Default, r.name)),
            f(&cost_summary(costs, Mode::AllJson, r.name)),
            f(&cost_summary(costs, Mode::Metrics, r.name))
        )
    };
    let rows = [
        row(
            "BPF time per proxied request, ngx-trace (defaults)",
            results.iter().map(|r| bpf_cell(&r.bpf.ngx)),
        ),
        row(
            "BPF time per proxied request, bpftrace script",
            results.iter().map(|r| bpf_cell(&r.bpf.bpftrace)),
        ),
        row(
            "BPF time per request, bpftrace script over ngx-trace",
            results
                .iter()
                .map(|r| format!("{} times", r.bpf.bpftrace_over_ngx().show(2))),
        ),
        row(
            "tracer CPU per 10k exchanges/s (defaults / `--all --json` / `--metrics-listen`)",
            results
                .iter()
                .map(|r| cost(r, |c| format!("{:.2}%", c.cpu_per_10k))),
        ),
        row(
            "tracer peak RSS (defaults / `--all --json` / `--metrics-listen`)",
            results
                .iter()
                .map(|r| cost(r, |c| format!("{:.1} MB", c.rss_mb))),
        ),
        row(
            "lost events at the top rate (defaults / `--all --json` / `--metrics-listen`)",
            results.iter().map(|r| cost(r, |c| c.lost.to_string())),
        ),
    ];
    writeln!(
        report,
        "{}\n\nNot-upstream sockets (wrk → back nginx directly, front traced and idle): \
         {:.1} ns per program run on average, {:.1} runs per request, at {:.0} requests/s.\n",
        rows.join("\n"),
        not_upstream.ns_per_run(),
        not_upstream.runs_per_request(),
        not_upstream.rps
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        bpf_stats::tests::{prog, sample},
        spread::tests::point,
        targets::{Figures, targets, write_targets},
    };

    #[test]
    fn program_table_leaves_out_idle_programs() {
        let table = program_table(&sample(
            10,
            vec![prog(1, "busy", 2000, 20), prog(2, "idle", 0, 0)],
        ));
        assert!(table.contains("| busy | 20 | 2.00 | 100 |"), "{table}");
        assert!(!table.contains("idle"), "{table}");
    }

    #[test]
    fn tracer_cost_over_runs_of_one_mode_and_variant() {
        let run = |cpu_s, rss_kb, lost, rps| TracerCost {
            cpu_s,
            wall_s: 5.0,
            rss_kb,
            lost,
            rps,
        };
        let costs = [
            (Mode::Default, "keepalive", run(0.1, 1024, 0, 40_000.0)),
            (Mode::Default, "keepalive", run(0.3, 2048, 2, 60_000.0)),
            (Mode::AllJson, "keepalive", run(5.0, 9999, 9, 1.0)),
            (Mode::Default, "new", run(5.0, 9999, 9, 1.0)),
        ];
        let c = cost_summary(&costs, Mode::Default, "keepalive");
        assert_eq!(c.rps, 50_000.0);
        assert!((c.cpu_pct - 4.0).abs() < 1e-9);
        assert!((c.cpu_per_10k - 0.8).abs() < 1e-9);
        assert_eq!((c.rss_mb, c.lost), (2.0, 2));
    }

    #[test]
    fn bpf_and_summary_sections_render() {
        let run = |ns, runs| sample(3000, vec![prog(1, "tcp_probe", ns, runs)]);
        let comparison = BpfComparison {
            ngx: vec![run(3_000_000, 60_000), run(3_300_000, 60_000)],
            bpftrace: vec![run(9_000_000, 90_000), run(9_900_000, 90_000)],
            no_request: vec![run(2_700_000, 57_000), run(3_000_000, 57_000)],
        };
        let mut report = String::new();
        write_bpf_comparison(&mut report, "keepalive", 3, &comparison).unwrap();
        assert!(
            report.contains(
                "| ngx-trace (defaults) | 1100 [1000–1100] | 20.0 [20.0–20.0] | 55 [50–55] | 1000 |"
            ),
            "{report}"
        );
        assert!(report.contains("**3.00 [3.00–3.00]** times"), "{report}");
        assert!(report.contains("**100 [100–100] ns**"), "{report}");
        assert!(
            report.contains("| tcp_probe | 120000 | 20.00 | 52 |"),
            "{report}"
        );
        let not_upstream = run(900_000, 30_000);
        write_not_upstream(&mut report, 3, &not_upstream).unwrap();
        assert!(report.contains("**30.0 ns per run**"), "{report}");
        let results = [VariantResults {
            name: "keepalive",
            bpf_ns_target: 500.0,
            throughput: vec![(Mode::Default, point(0.9))],
            bpf: comparison,
        }];
        let cost = TracerCost {
            cpu_s: 0.1,
            wall_s: 5.0,
            rss_kb: 25_000,
            lost: 0,
            rps: 40_000.0,
        };
        let costs = [
            (Mode::Default, "keepalive", cost),
            (Mode::AllJson, "keepalive", cost),
        ];
        write_summary(&mut report, &results, &costs, &not_upstream).unwrap();
        let f = Figures::new(7, &results, &costs, &not_upstream, 37.25);
        write_targets(&mut report, &targets(&f)).unwrap();
        assert!(
            report.contains("| BPF time per proxied request, ngx-trace (defaults) | 1100 [1000–1100] ns (55 ns per run, 20.0 runs per request) |"),
            "{report}"
        );
        assert!(
            report.contains("| throughput, bpftrace script | NaN [NaN–NaN] |"),
            "{report}"
        );
        assert!(report.ends_with("Met: 2 of 5.\n"), "{report}");
        assert!(
            report.contains(
                "| 10.0 runs per request it serves, 30.0 ns each (an empty program on the same \
                 hooks: 37.2 ns) | **missed** |"
            ),
            "{report}"
        );
    }

    #[test]
    fn hot_hooks_only_keeps_the_three_hooks() {
        let s = sample(
            100,
            vec![
                prog(1, "sock_send_length", 600, 10),
                prog(2, "sys_enter_close", 9000, 10),
                prog(3, "sk_data_ready", 400, 10),
            ],
        );
        let hot = hot_hooks_only(&s);
        assert_eq!(hot.requests, 100);
        assert_eq!((hot.total_ns(), hot.total_runs()), (1000, 20));
        assert_eq!(
            per_hook(&hot),
            "sock_send_length 60, sock_recv_length –, sk_data_ready 40"
        );
    }

    #[test]
    fn floor_conclusion_says_what_a_run_costs_and_what_ngx_trace_adds() {
        let both = floor_conclusion(37.04, 58.0);
        assert_eq!(
            both,
            "An empty program costs 37.0 ns per run here: what any program on a host-wide hook \
             costs every socket event of every process, with BPF statistics on (ngx-trace \
             spends 21.0 ns per run over it on these hooks)."
        );
        assert!(floor_conclusion(f64::NAN, 28.0).contains("not measured"));
        assert!(floor_conclusion(37.0, f64::NAN).ends_with("with BPF statistics on."));
    }

    #[test]
    fn building_blocks_section_renders() {
        let hooks = |ns: [u64; 3]| {
            sample(
                1000,
                HOT_HOOKS
                    .iter()
                    .zip(ns)
                    .map(|(h, ns)| prog(0, h, ns, 1000))
                    .collect(),
            )
        };
        let blocks = [
            BlockSample {
                block: Block::Empty,
                sample: Ok(hooks([36_000, 38_000, 37_000])),
            },
            BlockSample {
                block: Block::HashLookup,
                sample: Ok(hooks([50_000, 52_000, 51_000])),
            },
            BlockSample {
                block: Block::SkStorageLoad,
                sample: Err("the kernel refused\nit | badly".to_string()),
            },
        ];
        let mut not_upstream = hooks([60_000, 58_000, 56_000]);
        not_upstream
            .progs
            .push(prog(0, "sys_enter_close", 999_999, 1));
        let mut report = String::new();
        write_building_blocks(&mut report, 3, &blocks, &not_upstream).unwrap();
        assert!(
            report.starts_with("## What a run costs at all: building blocks on the same hooks\n"),
            "{report}"
        );
        assert!(
            report.contains(
                "| 3000 | 37.0 (sock_send_length 36, sock_recv_length 38, sk_data_ready 37) | – |"
            ),
            "{report}"
        );
        assert!(
            report.contains(
                "| 3000 | 51.0 (sock_send_length 50, sock_recv_length 52, sk_data_ready 51) | +14.0 |"
            ),
            "{report}"
        );
        assert!(
            report.contains("| – | not measured: the kernel refused it   badly | – |"),
            "{report}"
        );
        // The tracer's row: its three hot programs only.
        assert!(
            report.contains(
                "| 3000 | 58.0 (sock_send_length 60, sock_recv_length 58, sk_data_ready 56) | +21.0 |"
            ),
            "{report}"
        );
        assert!(
            report.contains("An empty program costs 37.0 ns per run here: what any program"),
            "{report}"
        );
        assert_eq!(empty_ns_per_run(&blocks), 37.0);
        // No tracer sample: dashes, not a figure of 0.
        let mut report = String::new();
        write_building_blocks(&mut report, 3, &blocks, &BpfSample::default()).unwrap();
        assert!(report.contains("section above | 0 | – | – |"), "{report}");
        assert!(empty_ns_per_run(&blocks[1..]).is_nan());
    }
}
