//! `cargo xtask bench --runs-per-request`: ngx-trace's program runs per
//! proxied request on each kernel (in a VM but the host's; counts, not
//! times), and the by-kernel section of BENCHMARKS.md between its
//! markers, which the full bench keeps.
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use ngx_trace_tests::TempDir;

use super::{
    bpf_stats::ProgStats,
    modes::Mode,
    runner::{Bench, setup_nginx},
};

/// Program runs per proxied request of ngx-trace (defaults) on the running
/// kernel, per variant and program, one wrk run of `seconds` each with BPF
/// statistics on: what `--runs-per-request` collects from each kernel,
/// written as JSON to `out`.
pub fn runs_here(bin: &Path, workspace: &Path, seconds: u64, out: &Path) -> Result<()> {
    let bench = Bench {
        bin: bin.to_path_buf(),
        script: workspace.join("bench/ngx-trace.bt"),
        seconds,
        pairs: 1,
        dir: TempDir::new("bench-runs"),
        metrics_port: ngx_trace_tests::free_port(),
    };
    let (_back, variants) = setup_nginx();
    let mut list = Vec::new();
    for (variant, _, front) in &variants {
        eprintln!("xtask bench: program runs per request, {variant}");
        let sample = bench.measure_bpf(Mode::Default, front, front.port())?;
        let progs = runs_by_name(&sample.progs);
        list.push(serde_json::json!({
            "variant": variant,
            "requests": sample.requests,
            "runs": progs,
        }));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let json = serde_json::json!({ "kernel": kernel.trim(), "variants": list });
    std::fs::write(out, json.to_string())
        .with_context(|| format!("failed to write {}", out.display()))
}

/// Runs per program name. The kernel keeps 15 characters of a name, so a
/// kprobe and its kretprobe (`unix_stream_sendmsg_kprobe`, `..._kretprobe`)
/// share one: their runs are summed under `name (N programs)`.
fn runs_by_name(progs: &[ProgStats]) -> serde_json::Map<String, serde_json::Value> {
    let mut sums: Vec<(String, u64, usize)> = Vec::new();
    for p in progs.iter().filter(|p| p.runs > 0) {
        match sums.iter_mut().find(|(name, _, _)| *name == p.name) {
            Some((_, runs, n)) => {
                *runs += p.runs;
                *n += 1;
            }
            None => sums.push((p.name.clone(), p.runs, 1)),
        }
    }
    sums.into_iter()
        .map(|(name, runs, n)| {
            let label = if n > 1 {
                format!("{name} ({n} programs)")
            } else {
                name
            };
            (label, runs.into())
        })
        .collect()
}

/// Marks the by-kernel section in BENCHMARKS.md: `cargo xtask bench`
/// keeps it, `--runs-per-request` replaces it.
const RUNS_BEGIN: &str = "<!-- runs-per-request by kernel: begin -->";
const RUNS_END: &str = "<!-- runs-per-request by kernel: end -->";

/// The by-kernel section of `benchmarks` (a BENCHMARKS.md), markers
/// included; empty when there is none.
pub(super) fn runs_section(benchmarks: &str) -> &str {
    let (Some(begin), Some(end)) = (benchmarks.find(RUNS_BEGIN), benchmarks.find(RUNS_END)) else {
        return "";
    };
    if end < begin {
        return "";
    }
    &benchmarks[begin..end + RUNS_END.len()]
}

/// `benchmarks` with its by-kernel section replaced by `section` (added
/// at the end when it has none).
pub(super) fn with_runs_section(benchmarks: &str, section: &str) -> String {
    let old = runs_section(benchmarks);
    if old.is_empty() {
        return format!("{}\n\n{section}\n", benchmarks.trim_end());
    }
    benchmarks.replacen(old, section, 1)
}

/// One kernel's counts, as `runs_here` wrote them.
struct KernelRuns {
    /// The run's name (`6.1+kprobes`).
    name: String,
    /// Its JSON.
    json: serde_json::Value,
}

/// Renders the by-kernel section: per variant, program runs per proxied
/// request on each kernel, per program and in total.
fn render_runs(runs: &[KernelRuns], seconds: u64, command: &str) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "{RUNS_BEGIN}\n## Program runs per proxied request, by kernel\n\n\
         Counts, not times (the kernels other than the host's run in emulated VMs, where\n\
         timings mean nothing): ngx-trace (defaults), one wrk run of {seconds} s per variant with\n\
         BPF statistics on, on each kernel booted as `cargo xtask test --kernel` boots it.\n\
         Reproduce: `{command}`.\n"
    )?;
    let variants: Vec<String> = runs
        .first()
        .and_then(|r| r.json["variants"].as_array())
        .map(|v| {
            v.iter()
                .filter_map(|x| x["variant"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for variant in &variants {
        let per_kernel: Vec<(&KernelRuns, &serde_json::Value)> = runs
            .iter()
            .filter_map(|r| {
                let v = r.json["variants"]
                    .as_array()?
                    .iter()
                    .find(|x| x["variant"] == variant.as_str())?;
                Some((r, v))
            })
            .collect();
        let mut programs: Vec<String> = Vec::new();
        for (_, v) in &per_kernel {
            for name in v["runs"].as_object().into_iter().flat_map(|m| m.keys()) {
                if !programs.contains(name) {
                    programs.push(name.clone());
                }
            }
        }
        programs.sort();
        writeln!(out, "### {variant}\n")?;
        let heads: Vec<String> = per_kernel
            .iter()
            .map(|(r, _)| format!("{} ({})", r.name, r.json["kernel"].as_str().unwrap_or("?")))
            .collect();
        writeln!(out, "| program | {} |", heads.join(" | "))?;
        writeln!(out, "| --- |{}", " --- |".repeat(heads.len()))?;
        let per_request = |v: &serde_json::Value, runs: u64| {
            runs as f64 / v["requests"].as_u64().unwrap_or(0).max(1) as f64
        };
        for program in &programs {
            let cells: Vec<String> = per_kernel
                .iter()
                .map(|(_, v)| match v["runs"][program.as_str()].as_u64() {
                    Some(n) => format!("{:.2}", per_request(v, n)),
                    None => "–".into(),
                })
                .collect();
            writeln!(out, "| {program} | {} |", cells.join(" | "))?;
        }
        let totals: Vec<String> = per_kernel
            .iter()
            .map(|(_, v)| {
                let total: u64 = v["runs"]
                    .as_object()
                    .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
                    .unwrap_or(0);
                format!(
                    "**{:.1}** ({} requests)",
                    per_request(v, total),
                    v["requests"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        writeln!(out, "| all programs | {} |\n", totals.join(" | "))?;
    }
    write!(out, "{RUNS_END}")?;
    Ok(out)
}

/// `cargo xtask bench --runs-per-request K,...`: counts on each kernel
/// (in a VM but `host`), then the by-kernel section of BENCHMARKS.md.
pub fn runs_per_request(
    xtask: &Path,
    bin: &Path,
    workspace: &Path,
    kernels: &[String],
    seconds: u64,
) -> Result<()> {
    let mut runs = Vec::new();
    for name in kernels {
        let results = workspace.join("target/vm-bench").join(name);
        let json = results.join("runs.json");
        let command = format!(
            "{} bench --runs-here {} --seconds {seconds} --bin {}",
            crate::vm::sh_quote(&xtask.display().to_string()),
            "\"$R/runs.json\"",
            crate::vm::sh_quote(&bin.display().to_string())
        );
        crate::vm::run_command(name, &command, &results, Duration::from_secs(1800))?;
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("{name}: no counts in {}", json.display()))?;
        runs.push(KernelRuns {
            name: name.clone(),
            json: serde_json::from_str(&text)
                .with_context(|| format!("{name}: {} is not JSON", json.display()))?,
        });
    }
    let command = format!(
        "cargo xtask bench --runs-per-request {} --seconds {seconds}",
        kernels.join(",")
    );
    let section = render_runs(&runs, seconds, &command)?;
    let path = workspace.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_runs_section(&old, &section))
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("{section}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::bpf_stats::tests::prog;

    #[test]
    fn programs_sharing_a_truncated_name_are_summed() {
        let runs = runs_by_name(&[
            prog(1, "unix_stream_sen", 10, 4),
            prog(2, "unix_stream_sen", 10, 4),
            prog(3, "sock_def_readab", 10, 3),
            prog(4, "idle", 0, 0),
        ]);
        assert_eq!(runs["unix_stream_sen (2 programs)"], 8);
        assert_eq!(runs["sock_def_readab"], 3);
        assert!(!runs.contains_key("idle"));
    }

    #[test]
    fn the_by_kernel_section_is_kept_and_replaced() {
        let runs = [
            KernelRuns {
                name: "host".into(),
                json: serde_json::json!({"kernel": "6.18.4", "variants": [
                    {"variant": "keepalive", "requests": 100,
                     "runs": {"sock_send_length": 200, "sk_data_ready": 100}}]}),
            },
            KernelRuns {
                name: "6.1+kprobes".into(),
                json: serde_json::json!({"kernel": "6.1.0-56-cloud-amd64", "variants": [
                    {"variant": "keepalive", "requests": 50,
                     "runs": {"inet_sendmsg_kp": 100, "inet_sendmsg_kr": 100}}]}),
            },
        ];
        let section = render_runs(
            &runs,
            3,
            "cargo xtask bench --runs-per-request host,6.1+kprobes",
        )
        .unwrap();
        assert!(section.starts_with(RUNS_BEGIN) && section.ends_with(RUNS_END));
        assert!(
            section.contains("| program | host (6.18.4) | 6.1+kprobes (6.1.0-56-cloud-amd64) |"),
            "{section}"
        );
        assert!(
            section.contains("| inet_sendmsg_kp | – | 2.00 |"),
            "{section}"
        );
        assert!(
            section.contains("| sock_send_length | 2.00 | – |"),
            "{section}"
        );
        assert!(
            section.contains("| all programs | **3.0** (100 requests) | **4.0** (50 requests) |"),
            "{section}"
        );
        // Added at the end, then replaced in place; a full bench keeps it.
        let doc = with_runs_section("# ngx-trace benchmarks\n\ntext\n", &section);
        assert_eq!(runs_section(&doc), section);
        let newer = with_runs_section(&doc, &format!("{RUNS_BEGIN}\nnew\n{RUNS_END}"));
        assert!(
            newer.contains("\nnew\n") && !newer.contains("inet_sendmsg_kp"),
            "{newer}"
        );
        assert!(newer.starts_with("# ngx-trace benchmarks\n\ntext\n"));
        assert_eq!(runs_section("no section"), "");
    }
}
