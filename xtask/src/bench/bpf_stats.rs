//! BPF time, with the kernel's BPF statistics on (BPF_ENABLE_STATS): the
//! programs a tracer holds (from /proc/PID/fdinfo), their run time and run
//! count from bpftool over a wrk run, samples and their comparisons; the
//! runs that take them, for the tracers and for the building blocks of
//! [`floor`].
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use ngx_trace_tests::nginx::Nginx;

use super::{
    floor::{self, Block},
    modes::Mode,
    runner::{Bench, Sysctl, wrk},
    spread::Spread,
};

/// Run time and run count of one BPF program, since it was loaded or over
/// a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ProgStats {
    id: u64,
    pub(super) name: String,
    pub(super) ns: u64,
    pub(super) runs: u64,
}

/// The programs among `ids` in `bpftool prog show --json` output.
fn parse_prog_stats(json: &[u8], ids: &[u64]) -> Result<Vec<ProgStats>> {
    let progs: Vec<serde_json::Value> =
        serde_json::from_slice(json).context("bpftool printed no JSON list of programs")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64()?;
            ids.contains(&id).then(|| ProgStats {
                id,
                name: p["name"].as_str().unwrap_or("?").to_string(),
                ns: p["run_time_ns"].as_u64().unwrap_or(0),
                runs: p["run_cnt"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

/// BPF run time and count of the programs `ids`, from bpftool (the kernel
/// counts them while `kernel.bpf_stats_enabled` is 1).
fn bpf_stats(ids: &[u64]) -> Result<Vec<ProgStats>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("failed to run bpftool")?;
    parse_prog_stats(&out.stdout, ids)
}

/// `after` minus `before`, per program id; a program missing from `before`
/// (loaded in between) counts from zero.
fn stats_delta(before: &[ProgStats], after: &[ProgStats]) -> Vec<ProgStats> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            ProgStats {
                ns: a.ns.saturating_sub(b.map_or(0, |b| b.ns)),
                runs: a.runs.saturating_sub(b.map_or(0, |b| b.runs)),
                ..a.clone()
            }
        })
        .collect()
}

/// The program id in the text of one `/proc/PID/fdinfo/FD`: BPF program
/// fds and BPF link fds both show `prog_id:`, other fds do not.
fn prog_id_in_fdinfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Ids of the BPF programs process `pid` holds through a program or link
/// fd: a tracer's own programs, whatever else loads programs meanwhile
/// (diffing the system's program list before and after the start would
/// count those too). Works for ngx-trace and bpftrace alike, and needs no
/// bpftool built with pid support.
fn prog_ids_held_by(pid: u32) -> Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        // An fd closed since the listing has no fdinfo any more: skipped.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = prog_id_in_fdinfo(&text)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// What a tracer's BPF programs cost during one wrk run (or several,
/// combined).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct BpfSample {
    /// Requests wrk completed.
    pub(super) requests: u64,
    /// wrk's requests/s.
    pub(super) rps: f64,
    /// Per program, over the run.
    pub(super) progs: Vec<ProgStats>,
}

impl BpfSample {
    pub(super) fn total_ns(&self) -> u64 {
        self.progs.iter().map(|p| p.ns).sum()
    }

    pub(super) fn total_runs(&self) -> u64 {
        self.progs.iter().map(|p| p.runs).sum()
    }

    /// BPF time per program run, ns, averaged over all programs.
    pub(super) fn ns_per_run(&self) -> f64 {
        self.total_ns() as f64 / self.total_runs().max(1) as f64
    }

    /// BPF time per request wrk completed, ns.
    pub(super) fn ns_per_request(&self) -> f64 {
        self.total_ns() as f64 / self.requests.max(1) as f64
    }

    /// Program runs per request wrk completed.
    pub(super) fn runs_per_request(&self) -> f64 {
        self.total_runs() as f64 / self.requests.max(1) as f64
    }

    /// Several runs as one: requests and each program's time and runs
    /// summed (programs matched by name: each run loads them anew, under
    /// new ids), requests/s averaged.
    pub(super) fn combine(samples: &[BpfSample]) -> BpfSample {
        let mut progs: Vec<ProgStats> = Vec::new();
        for p in samples.iter().flat_map(|s| &s.progs) {
            match progs.iter_mut().find(|q| q.name == p.name) {
                Some(q) => {
                    q.ns += p.ns;
                    q.runs += p.runs;
                }
                None => progs.push(ProgStats { id: 0, ..p.clone() }),
            }
        }
        BpfSample {
            requests: samples.iter().map(|s| s.requests).sum(),
            rps: samples.iter().map(|s| s.rps).sum::<f64>() / samples.len().max(1) as f64,
            progs,
        }
    }
}

/// Median and range of `figure` over `samples`.
pub(super) fn spread_of(samples: &[BpfSample], figure: fn(&BpfSample) -> f64) -> Spread {
    Spread::of(&samples.iter().map(figure).collect::<Vec<_>>())
}

/// ngx-trace (defaults), the bpftrace script and ngx-trace without the
/// request copy under the same load, one sample of each per round.
#[derive(Default)]
pub(super) struct BpfComparison {
    pub(super) ngx: Vec<BpfSample>,
    pub(super) bpftrace: Vec<BpfSample>,
    /// ngx-trace --no-request-path.
    pub(super) no_request: Vec<BpfSample>,
}

impl BpfComparison {
    /// The request copy's BPF time per proxied request, per round: ngx-trace
    /// (defaults) less ngx-trace --no-request-path, ns.
    pub(super) fn copy_ns(&self) -> Spread {
        let deltas: Vec<f64> = self
            .ngx
            .iter()
            .zip(&self.no_request)
            .map(|(n, w)| n.ns_per_request() - w.ns_per_request())
            .collect();
        Spread::of(&deltas)
    }

    /// ngx-trace's BPF time per proxied request over that without the
    /// copy, per round.
    pub(super) fn ngx_over_no_request(&self) -> Spread {
        let ratios: Vec<f64> = self
            .ngx
            .iter()
            .zip(&self.no_request)
            .map(|(n, w)| n.ns_per_request() / w.ns_per_request())
            .collect();
        Spread::of(&ratios)
    }

    /// bpftrace's BPF time per proxied request over ngx-trace's, per round:
    /// how many times less BPF time ngx-trace spends.
    pub(super) fn bpftrace_over_ngx(&self) -> Spread {
        let ratios: Vec<f64> = self
            .ngx
            .iter()
            .zip(&self.bpftrace)
            .map(|(n, b)| b.ns_per_request() / n.ns_per_request())
            .collect();
        Spread::of(&ratios)
    }
}

/// One building block's run on the hot hooks.
pub(super) struct BlockSample {
    pub(super) block: Block,
    /// The sample, or why there is none.
    pub(super) sample: std::result::Result<BpfSample, String>,
}

impl Bench {
    /// BPF time of `mode`'s tracer, started on `front`, while wrk drives
    /// `port`, with the kernel's BPF statistics on. The programs counted are
    /// those the tracer process holds (see [`prog_ids_held_by`]), so BPF
    /// programs that anything else loads meanwhile do not count.
    pub(super) fn measure_bpf(&self, mode: Mode, front: &Nginx, port: u16) -> Result<BpfSample> {
        // Declared before the tracer, so that on a failure the tracer is
        // stopped first and the sysctl restored then, as below.
        let mut stats_enabled = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
        let mut tracer = self
            .start(mode, front)?
            .context("BPF time is measured with a tracer")?;
        let before = bpf_stats(&prog_ids_held_by(tracer.pid())?)?;
        if before.is_empty() {
            bail!(
                "{} (pid {}) holds no BPF program after its start",
                mode.label(),
                tracer.pid()
            );
        }
        let load = wrk(port, self.seconds)?;
        // The ids again: a program loaded after the first look counts from 0.
        let after = bpf_stats(&prog_ids_held_by(tracer.pid())?)?;
        tracer.stop();
        stats_enabled.restore()?;
        Ok(BpfSample {
            requests: load.requests,
            rps: load.rps,
            progs: stats_delta(&before, &after),
        })
    }

    /// ngx-trace (defaults), the bpftrace script and ngx-trace without the
    /// request copy in turn on `front`, one run each per round for
    /// `self.pairs` rounds, the order reversed every other round (ABC CBA)
    /// so that drift cancels.
    pub(super) fn bpf_comparison(&self, variant: &str, front: &Nginx) -> Result<BpfComparison> {
        let mut comparison = BpfComparison::default();
        for round in 0..self.pairs {
            let order = if round % 2 == 0 {
                [Mode::Default, Mode::Bpftrace, Mode::NoRequestPath]
            } else {
                [Mode::NoRequestPath, Mode::Bpftrace, Mode::Default]
            };
            for mode in order {
                eprintln!(
                    "xtask bench: BPF time, {variant}, {} run {}/{}",
                    mode.label(),
                    round + 1,
                    self.pairs
                );
                let sample = self.measure_bpf(mode, front, front.port())?;
                match mode {
                    Mode::Bpftrace => comparison.bpftrace.push(sample),
                    Mode::NoRequestPath => comparison.no_request.push(sample),
                    _ => comparison.ngx.push(sample),
                }
            }
        }
        Ok(comparison)
    }

    /// BPF time on sockets that are not upstreams: ngx-trace (defaults)
    /// traces `front` only, which serves nothing, while wrk drives `back`
    /// directly; every socket event its hooks see is wrk's or `back`'s.
    pub(super) fn not_upstream(&self, front: &Nginx, back: &Nginx) -> Result<BpfSample> {
        eprintln!("xtask bench: BPF time on not-upstream sockets");
        self.measure_bpf(Mode::Default, front, back.port())
    }

    /// BPF time of `block` on the hot hooks while wrk drives `port`, with
    /// the kernel's BPF statistics on; its programs are named after their
    /// hooks in the sample.
    fn measure_block(&self, block: Block, port: u16) -> Result<BpfSample> {
        // Declared before the programs, so that on a failure they are
        // detached first and the sysctl restored then, as below.
        let mut stats_enabled = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
        let attached = floor::attach(block)?;
        let ids: Vec<u64> = attached.progs.iter().map(|(_, id)| *id).collect();
        let before = bpf_stats(&ids)?;
        let load = wrk(port, self.seconds)?;
        let after = bpf_stats(&ids)?;
        let hooks = attached.progs.clone();
        drop(attached);
        stats_enabled.restore()?;
        let mut progs = stats_delta(&before, &after);
        if progs.len() != hooks.len() {
            bail!(
                "bpftool listed {} of the {} programs of the {} block: \
                 is bpftool older than the kernel?",
                progs.len(),
                hooks.len(),
                block.name()
            );
        }
        for p in &mut progs {
            if let Some((hook, _)) = hooks.iter().find(|(_, id)| *id == p.id) {
                p.name = hook.to_string();
            }
        }
        Ok(BpfSample {
            requests: load.requests,
            rps: load.rps,
            progs,
        })
    }

    /// The building blocks of [`floor`] on the hot hooks, under the
    /// load of the not-upstream run (wrk driving `back` directly for as
    /// long), each in its own wrk run, nothing else attached: what running a
    /// program at all costs there, measured as the tracer is. The
    /// socket-storage block depends most on the kernel (BTF, verifier): its
    /// failure is reported in its row rather than ending the bench; the
    /// others are plain enough that failing means the bench cannot run.
    pub(super) fn building_blocks(&self, back: &Nginx) -> Result<Vec<BlockSample>> {
        let mut samples = Vec::new();
        for block in Block::ALL {
            eprintln!(
                "xtask bench: building block on the hot hooks: {}",
                block.name()
            );
            let sample = match self.measure_block(block, back.port()) {
                Ok(sample) => Ok(sample),
                Err(e) if block == Block::SkStorageLoad => {
                    eprintln!("xtask bench: {} block not measured: {e:#}", block.name());
                    Err(format!("{e:#}"))
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "the {} building block could not be measured",
                        block.name()
                    )));
                }
            };
            samples.push(BlockSample { block, sample });
        }
        Ok(samples)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{
        path::PathBuf,
        time::{Duration, Instant},
    };

    use ngx_trace_tests::TempDir;

    use super::*;
    use crate::bench::report::write_building_blocks;

    pub(in crate::bench) fn prog(id: u64, name: &str, ns: u64, runs: u64) -> ProgStats {
        ProgStats {
            id,
            name: name.to_string(),
            ns,
            runs,
        }
    }

    pub(in crate::bench) fn sample(requests: u64, progs: Vec<ProgStats>) -> BpfSample {
        BpfSample {
            requests,
            rps: requests as f64 / 3.0,
            progs,
        }
    }

    #[test]
    fn prog_id_from_program_and_link_fdinfo_only() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nprog_type:\t5\nprog_jited:\t1\n\
                    prog_tag:\ta04f5eef06a7f555\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t0\n\
                    run_cnt:\t0\nrecursion_misses:\t0\nverified_insns:\t20\n";
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nlink_type:\traw_tracepoint\n\
                    link_id:\t7\nprog_tag:\ta04f5eef06a7f555\nprog_id:\t43\ntp_name:\tsock_send_length\n";
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t27\nkey_size:\t0\nmap_id:\t5\n";
        let file = "pos:\t0\nflags:\t0100002\nmnt_id:\t25\nino:\t1234\n";
        assert_eq!(prog_id_in_fdinfo(prog), Some(42));
        assert_eq!(prog_id_in_fdinfo(link), Some(43));
        assert_eq!(prog_id_in_fdinfo(map), None);
        assert_eq!(prog_id_in_fdinfo(file), None);
    }

    #[test]
    fn own_process_holds_no_bpf_program() {
        assert_eq!(
            prog_ids_held_by(std::process::id()).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn bpftool_json_filtered_by_id() {
        let json = br#"[{"id":3,"type":"tracepoint","name":"other","run_time_ns":9,"run_cnt":1},
            {"id":7,"type":"tracepoint","name":"sock_send_length","run_time_ns":2000,"run_cnt":10},
            {"id":8,"type":"tracing","name":"tcp_probe"}]"#;
        assert_eq!(
            parse_prog_stats(json, &[7, 8]).unwrap(),
            vec![
                prog(7, "sock_send_length", 2000, 10),
                prog(8, "tcp_probe", 0, 0)
            ]
        );
        assert!(parse_prog_stats(b"Error: no JSON", &[7]).is_err());
    }

    #[test]
    fn delta_per_id_and_late_programs_from_zero() {
        let before = [prog(1, "a", 100, 10), prog(2, "a", 50, 5)];
        let after = [
            prog(1, "a", 400, 20),
            prog(2, "a", 50, 5),
            prog(3, "b", 70, 7),
        ];
        assert_eq!(
            stats_delta(&before, &after),
            vec![
                prog(1, "a", 300, 10),
                prog(2, "a", 0, 0),
                prog(3, "b", 70, 7)
            ]
        );
    }

    #[test]
    fn sample_figures() {
        let s = sample(
            1000,
            vec![prog(1, "a", 30_000, 150), prog(2, "b", 10_000, 50)],
        );
        assert_eq!((s.total_ns(), s.total_runs()), (40_000, 200));
        assert_eq!(s.ns_per_run(), 200.0);
        assert_eq!(s.ns_per_request(), 40.0);
        assert_eq!(s.runs_per_request(), 0.2);
        // No division by zero.
        assert_eq!(BpfSample::default().ns_per_run(), 0.0);
        assert_eq!(BpfSample::default().runs_per_request(), 0.0);
    }

    #[test]
    fn combine_sums_by_name_across_runs() {
        let a = sample(100, vec![prog(1, "x", 10, 1), prog(2, "y", 20, 2)]);
        let b = sample(300, vec![prog(9, "y", 30, 3), prog(8, "z", 40, 4)]);
        let all = BpfSample::combine(&[a, b]);
        assert_eq!(all.requests, 400);
        assert_eq!(all.rps, 400.0 / 3.0 / 2.0);
        assert_eq!(
            all.progs,
            vec![
                prog(0, "x", 10, 1),
                prog(0, "y", 50, 5),
                prog(0, "z", 40, 4)
            ]
        );
    }

    #[test]
    fn bpftrace_over_ngx_per_round() {
        let ngx = |ns| sample(1000, vec![prog(1, "a", ns, 10)]);
        let c = BpfComparison {
            ngx: vec![ngx(1000), ngx(2000), ngx(4000)],
            bpftrace: vec![ngx(3000), ngx(2000), ngx(20_000)],
            no_request: vec![ngx(900), ngx(1900), ngx(3500)],
        };
        let r = c.bpftrace_over_ngx();
        assert_eq!((r.median, r.min, r.max), (3.0, 1.0, 5.0));
        // The copy, per round: ngx-trace's ns per request less those
        // without it (1 - 0.9, 2 - 1.9, 4 - 3.5).
        let copy = c.copy_ns();
        assert_eq!(
            ((copy.min * 10.0).round(), (copy.max * 10.0).round()),
            (1.0, 5.0)
        );
    }

    /// The building blocks alone, against a throwaway nginx: loads, attaches
    /// and measures each block for 1 s, then checks that nothing stays
    /// attached. Needs root, bpftool and wrk:
    /// `cargo test -p xtask -- --ignored building_blocks_on`.
    #[test]
    #[ignore = "loads BPF programs: needs root, bpftool, wrk and nginx"]
    fn building_blocks_on_a_throwaway_nginx() {
        let back = Nginx::start("", "location / { return 200 \"ok\\n\"; }");
        let bench = Bench {
            bin: PathBuf::new(),
            script: PathBuf::new(),
            seconds: 1,
            pairs: 1,
            dir: TempDir::new("bench-blocks"),
            metrics_port: 0,
        };
        let blocks = bench.building_blocks(&back).unwrap();
        assert_eq!(blocks.len(), 3);
        let mut ids = Vec::new();
        for b in &blocks {
            let s = b.sample.as_ref().unwrap();
            assert_eq!(s.progs.len(), 3, "{:?}", b.block);
            assert!(s.progs.iter().all(|p| p.runs > 0), "{:?}: {s:?}", b.block);
            ids.extend(s.progs.iter().map(|p| p.id));
        }
        // Every fd closed: the programs leave the kernel (freed after an
        // RCU grace period, so not at once).
        let closed = Instant::now();
        while !bpf_stats(&ids).unwrap().is_empty() {
            assert!(
                closed.elapsed() < Duration::from_secs(10),
                "building-block programs still loaded: {:?}",
                bpf_stats(&ids)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut report = String::new();
        write_building_blocks(&mut report, 1, &blocks, &BpfSample::default()).unwrap();
        println!("{report}");
    }
}
