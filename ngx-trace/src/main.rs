//! ngx-trace: explains nginx upstream failures from inside the kernel.
//!
//! The pipeline, top to bottom: preflight checks (`preflight`, `tracefs`)
//! → load and attach (`kernel`) → ring-buffer pump (here) → typed decode
//! (`records`) → join and judge (`session`: `verdict`, `timings`, `human`)
//! → print (`event`, `output`) and count (`summary`, `histogram`,
//! `metrics`, served by `metrics_http`).

mod accept_queue;
mod adopt;
mod backends;
mod btf;
mod capped;
mod causes;
mod check;
mod cli;
mod clock;
mod configs;
mod confined;
#[cfg(test)]
mod contract;
mod dns;
mod drain;
mod errorlog;
mod event;
mod exit;
mod explain;
mod explain_mode;
mod fates;
mod fold;
#[cfg(test)]
mod fuzz;
mod held;
mod histogram;
mod hooks;
mod human;
mod kernel;
mod kretprobe;
mod load_error;
mod localtime;
mod location_match;
mod logfollow;
mod metrics;
mod metrics_file;
mod metrics_http;
mod nginx_conf;
mod nginx_files;
mod output;
mod peer_wait;
mod preflight;
mod proc_net;
mod procs;
mod recording;
mod records;
mod request_head;
mod reservoir;
mod sanitize;
mod session;
mod slow;
mod sock_diag;
mod summary;
mod syscall_regs;
mod timings;
mod top;
mod tracefs;
mod tune;
mod unacked;
mod verdict;
mod version;
mod writer;

use std::{
    collections::BTreeSet,
    io::{self, IsTerminal as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser as _;
use ngx_trace_common::{Config, StructOffsets, SyscallRegs};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Cli, Mode, TraceArgs},
    exit::UserError,
    explain_mode::Live,
    kernel::Kernel,
    output::{Output, notice},
    session::Session,
};

fn main() {
    let mode = match Cli::try_parse() {
        Ok(cli) => cli.mode(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ngx-trace: failed to start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let result = match mode {
        Mode::Trace(args) => runtime.block_on(trace(args, None)),
        Mode::Explain(args) => match (&args.log, args.follow) {
            (Some(log), false) => no_export(&args.trace, "explain LOG").and_then(|()| {
                explain_mode::offline(
                    log,
                    args.from.as_deref(),
                    args.trace.config.as_deref(),
                    args.trace.json,
                )
            }),
            _ => {
                let live = Live::new(args.log.clone(), args.trace.config.clone(), args.trace.json);
                runtime.block_on(trace(args.trace, Some(Box::new(live))))
            }
        },
        Mode::Generate(what) => cli::generate(&what).map_err(anyhow::Error::from),
        Mode::Top(args) => {
            if io::stdout().is_terminal() {
                runtime.block_on(trace(args, Some(Box::new(top::Top::new()))))
            } else {
                output::notice(
                    "stdout is not a terminal: printing one line per failure instead of the \
                     live view",
                );
                runtime.block_on(trace(args, None))
            }
        }
        Mode::Tune(args) => match &args.from {
            Some(from) => no_export(&args.trace, "tune --from").and_then(|()| {
                tune::from_recording(
                    from,
                    args.trace.config.as_deref(),
                    &args.trace.comm,
                    args.false_timeout_rate,
                    args.trace.json,
                )
            }),
            None => {
                let watcher = tune::TuneLive::new(
                    args.false_timeout_rate,
                    args.trace.config.clone(),
                    args.trace.json,
                );
                runtime.block_on(trace(args.trace, Some(Box::new(watcher))))
            }
        },
    };
    match result {
        Ok(()) => std::process::exit(exit::OK),
        Err(err) => {
            if is_broken_pipe(&err) {
                std::process::exit(exit::OK);
            }
            // Errors can quote what a traced process chose (a path, a
            // name): escaped like every other line for the terminal.
            eprintln!("ngx-trace: {}", sanitize::line(&format!("{err:#}")));
            std::process::exit(exit::code_of(&err));
        }
    }
}

/// Fails when export options are given to `mode`, which traces nothing.
fn no_export(args: &TraceArgs, mode: &str) -> Result<()> {
    if args.metrics_listen.is_some() || args.metrics_file.is_some() {
        return Err(UserError::new(
            exit::USAGE,
            format!(
                "--metrics-listen and --metrics-file export what tracing measures: `{mode}` \
                 traces nothing (drop them, or trace with `ngx-trace --record FILE` and export \
                 meanwhile)"
            ),
        )
        .into());
    }
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// This kernel's release (`uname -r`), empty when unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}

/// The kernel configuration for these arguments and this kernel, and how
/// requests are copied (what `--check` says; `Err`: why they are not).
fn config(args: &TraceArgs, root: &std::path::Path) -> Result<(Config, Result<String, String>)> {
    let mut comm = [0u8; 16];
    comm[..args.comm.len()].copy_from_slice(args.comm.as_bytes());
    let btf = btf::Btf::from_sys_fs().map_err(|e| UserError::new(exit::KERNEL, e))?;
    let (syscall, request_copy) = if args.no_request_path {
        (SyscallRegs::OFF, Err("off (--no-request-path)".to_string()))
    } else {
        match syscall_regs::syscall_regs(&btf) {
            Ok(regs) => (
                regs,
                Ok(format!(
                    "from the registers of the call writing an exchange's first bytes \
                     (struct pt_regs at task_struct.stack + {} or {})",
                    regs.regs_at[0], regs.regs_at[1]
                )),
            ),
            Err(why) => (SyscallRegs::OFF, Err(format!("not copied: {why}"))),
        }
    };
    let config = Config {
        offsets: tracefs::read_offsets(root)?,
        structs: struct_offsets(&btf)?,
        follow_new_instances: u32::from(args.pid.is_none()),
        sk_storage: u32::from(ngx_trace_common::sk_storage_for_tracing(&kernel_release())),
        comm,
        syscall,
    };
    Ok((config, request_copy))
}

/// Offsets of the kernel struct fields the programs read, from this
/// kernel's BTF; a field this kernel lacks, or one of another size than the
/// programs read, is named.
fn struct_offsets(btf: &btf::Btf) -> Result<StructOffsets> {
    let kernel_error = |e: String| UserError::new(exit::KERNEL, e);
    let field = |strukt: &str, name: &str, size: u32| -> Result<u32> {
        let member = btf.member(strukt, name).map_err(kernel_error)?;
        if member.size != size {
            return Err(kernel_error(format!(
                "struct {strukt} member `{name}` has {} bytes on this kernel, expected {size}: \
                 an unsupported kernel layout, please report it with `uname -r`",
                member.size
            ))
            .into());
        }
        Ok(member.offset)
    };
    Ok(StructOffsets {
        tcp_snd_una: field("tcp_sock", "snd_una", 4)?,
        tcp_write_seq: field("tcp_sock", "write_seq", 4)?,
        tcp_srtt_us: field("tcp_sock", "srtt_us", 4)?,
        tcp_delivered_mstamp: field("tcp_sock", "delivered_mstamp", 8)?,
        sk_bpf_storage: field("sock", "sk_bpf_storage", 8)?,
        sk_family: field("sock_common", "skc_family", 2)?,
        task_files: field("task_struct", "files", 8)?,
        files_fdt: field("files_struct", "fdt", 8)?,
        fdtable_max_fds: field("fdtable", "max_fds", 4)?,
        fdtable_fd: field("fdtable", "fd", 8)?,
        file_private_data: field("file", "private_data", 8)?,
        socket_type: field("socket", "type", 2)?,
        socket_sk: field("socket", "sk", 8)?,
        sk_err: field("sock", "sk_err", 4)?,
        sk_state: field("sock_common", "skc_state", 1)?,
        task_flags: field("task_struct", "flags", 4)?,
        task_exit_code: field("task_struct", "exit_code", 4)?,
        task_tgid: field("task_struct", "tgid", 4)?,
        task_real_parent: field("task_struct", "real_parent", 8)?,
        task_comm: field("task_struct", "comm", 16)?,
        sk_peer_pid: field("sock", "sk_peer_pid", 8)?,
        // A flexible (or one-element) array: only its start matters.
        pid_numbers: btf.member("pid", "numbers").map_err(kernel_error)?.offset,
        task_cgroups: field("task_struct", "cgroups", 8)?,
        css_set_subsys: btf
            .member("css_set", "subsys")
            .map_err(kernel_error)?
            .offset,
        memory_cgrp_id: memory_cgrp_id(btf),
        css_parent: field("cgroup_subsys_state", "parent", 8)?,
        memcg_memory: btf
            .member("mem_cgroup", "memory")
            .map_err(kernel_error)?
            .offset,
        page_counter_usage: field("page_counter", "usage", 8)?,
        page_counter_max: field("page_counter", "max", 8)?,
        sk_num: field("sock_common", "skc_num", 2)?,
        sk_dport: field("sock_common", "skc_dport", 2)?,
        sk_rcv_saddr: field("sock_common", "skc_rcv_saddr", 4)?,
        sk_v6_rcv_saddr: field("sock_common", "skc_v6_rcv_saddr", 16)?,
        sighand: kernel::sighand_offsets(btf),
    })
}

/// The memory controller's index among the kernel's cgroup subsystems:
/// the enumerator `memory_cgrp_id` in its BTF (recent kernels leave
/// controllers out of `/proc/cgroups`: its rows are no index);
/// `u32::MAX` when the kernel has none (OOM kills then name no limit).
fn memory_cgrp_id(btf: &btf::Btf) -> u32 {
    btf.enum_value("memory_cgrp_id")
        .ok()
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or(u32::MAX)
}

/// Something that runs beside tracing on the events it captures instead of
/// printing them (live `explain`, `tune`).
pub trait Watcher {
    /// Tracing has started.
    fn start(&mut self, session: &Session) -> Result<()>;
    /// About four times a second (`all`: tracing stops, take everything).
    fn tick(&mut self, session: &Session, all: bool) -> io::Result<()>;
    /// Tracing has stopped.
    fn finish(&mut self, session: &Session) -> io::Result<()>;
    /// Whether it asks tracing to stop (`q` in `top`).
    fn wants_stop(&self) -> bool {
        false
    }
}

/// Traces; with `live`, hands the events to it instead of printing them.
async fn trace(args: TraceArgs, mut live: Option<Box<dyn Watcher>>) -> Result<()> {
    // Taken from the start: a stop asked for while the programs load (some
    // seconds on a slow host) ends the run cleanly once they are attached,
    // with its summary, instead of killing it half attached.
    let stops = Stops {
        sigterm: signal(SignalKind::terminate()).context("failed to handle SIGTERM")?,
        sigint: signal(SignalKind::interrupt()).context("failed to handle SIGINT")?,
    };
    preflight::check_privileges()?;
    if let Some(file) = &args.metrics_file {
        metrics::check_file(file)?;
    }
    if let Some(path) = &args.record {
        // Said before anything loads; the file is created (never reused)
        // once tracing starts.
        recording::check_new(path)?;
    }
    // Bound before anything loads: a port in use fails at once.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(metrics_http::bind(addr).await?),
        None => None,
    };
    if let Some(pid) = args.pid {
        // Fail before loading anything when the pid is wrong.
        procs::instance_of(pid, &args.comm)?;
    }
    let tracefs = preflight::tracefs_root()?;
    let avoid = args.avoid();
    hooks::check_available(&tracefs, &avoid)?;
    let (config, request_copy) = config(&args, &tracefs)?;
    let (mut kernel, events) = Kernel::attach(&config, &tracefs, &avoid)?;
    // Programs are attached first, then processes listed: a process forked
    // in between is seen by both, never by neither.
    let mut initial: BTreeSet<u32> = match args.pid {
        Some(pid) => procs::instance_of(pid, &args.comm)?,
        None => procs::all_instances(&args.comm),
    };
    let mut workers = BTreeSet::new();
    let mut untraced = BTreeSet::new();
    for &pid in &initial {
        let worker = procs::is_worker(pid);
        if !kernel.trace_pid(pid, worker)? {
            untraced.insert(pid);
        } else if worker {
            workers.insert(pid);
        }
    }
    if !untraced.is_empty() {
        initial.retain(|pid| !untraced.contains(pid));
        notice(&format!(
            "the kernel's set of traced processes is full: {} processes named {} left \
             untraced (counted as lost to a full map); is something else naming itself {}?",
            untraced.len(),
            args.comm,
            args.comm
        ));
    }
    if args.check {
        return check::report(&kernel, &tracefs, &initial, &request_copy);
    }
    if let Err(why) = &request_copy
        && !args.no_request_path
    {
        notice(&format!(
            "requests' methods and paths are {why}: exchanges carry no `request`, and a \
             `location` only where one location passes to their upstream"
        ));
    }
    for chosen in &kernel.chosen {
        for (target, why) in &chosen.skipped {
            notice(&format!(
                "{} is not seen through {target} ({why}): the sockets only it covers are missed",
                chosen.capability
            ));
        }
    }
    let (adopted, failure) = match kernel.without_marks {
        None => adopt::kept_alive(&mut kernel, &workers),
        Some(why) => (0, Some(why.to_string())),
    };
    if let Some(failure) = failure {
        notice(&format!(
            "could not adopt every kept-alive upstream connection opened before start \
             ({adopted} adopted; {failure}): the others are reported from their next connection"
        ));
    }
    if !args.json {
        notice(&format!(
            "attached {} programs in {} ms",
            kernel.attached(),
            kernel.attach_time.as_millis()
        ));
    }
    let mut out = if live.is_some() {
        Output::capturing()
    } else {
        Output::new(args.json)
    };
    if let Some(path) = &args.record {
        out = record_to(out, path, initial.first().copied())?;
    }
    let mut session = Session::new(out, args.all, args.slow.saturating_mul(1000), initial);
    let mut metrics_file = None;
    if metrics_listener.is_some() || args.metrics_file.is_some() {
        let configs = configs::Configs::load(args.config.as_deref(), session.traced());
        let metrics = metrics::Metrics::new(
            &metrics::instance_configs(&configs),
            args.metrics_max_servers,
            args.metrics_file.clone(),
        )?;
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                notice(&format!("serving metrics at http://{addr}/metrics"));
            }
            tokio::spawn(metrics_http::serve(listener, metrics.registry()));
        }
        // Written from its own thread: a slow disk never stalls the drain.
        metrics_file = metrics
            .file()
            .map(|path| metrics_file::MetricsFile::start(metrics.registry(), path.to_path_buf()))
            .transpose()?;
        session.export(metrics, configs);
    } else {
        // The locations exchanges served come from it.
        session.configure(configs::Configs::load(
            args.config.as_deref(),
            session.traced(),
        ));
    }
    session.refresh_workers()?;
    if let Some(live) = live.as_mut() {
        live.start(&session)?;
    }

    pump(
        &mut kernel,
        events,
        &mut session,
        &args,
        stops,
        live.as_mut(),
    )
    .await?;
    session.finish(kernel.conns(), clock::monotonic_ns())?;
    session.output().flush_record()?;
    if let Some(file) = metrics_file {
        file.finish();
    }
    if let Some(live) = live.as_mut() {
        live.finish(&session)?;
    }
    Ok(())
}

/// `out`, also recording to `path` (a new file, see [`recording::create`]),
/// its header naming the local time of `nginx` (a traced process), the
/// clock of its log.
fn record_to(out: Output, path: &std::path::Path, nginx: Option<u32>) -> Result<Output> {
    let file = recording::create(path)?;
    let header = recording::Header {
        event: "recording",
        version: 1,
        started: clock::rfc3339_micros(std::time::SystemTime::now()),
        utc_offset_s: localtime::utc_offset_s(nginx),
    };
    out.recording_to(file, &header)
        .with_context(|| format!("failed to write the recording {}", path.display()))
}

/// The signals that stop tracing.
struct Stops {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

/// Records handled per turn of the session's loop at most, so that its
/// timers run between the records of a long backlog.
const RECORDS_PER_TURN: usize = 4096;

/// A timer every `period` from `start`; after a stall it waits a full
/// period (no burst of the passes missed, each of which could stall again).
fn ticks_at(start: tokio::time::Instant, period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// A timer every `period`, its first tick at once (see [`ticks_at`]).
fn ticks(period: Duration) -> tokio::time::Interval {
    ticks_at(tokio::time::Instant::now(), period)
}

/// Handles the records the drain thread (see [`drain`]) hands over until
/// the duration ends or a signal asks to stop, then every record left.
async fn pump(
    kernel: &mut Kernel,
    events: RingBuf<MapData>,
    session: &mut Session,
    args: &TraceArgs,
    stops: Stops,
    mut live: Option<&mut Box<dyn Watcher>>,
) -> Result<()> {
    let Stops {
        mut sigterm,
        mut sigint,
    } = stops;
    let forever = Duration::from_secs(u64::MAX / 4);
    let deadline = tokio::time::sleep(args.duration.unwrap_or(forever));
    tokio::pin!(deadline);
    let mut workers_tick = ticks(Duration::from_millis(200));
    let mut lost_tick = ticks(Duration::from_secs(1));
    let mut pending_tick = ticks(Duration::from_millis(250));
    let mut held_tick = ticks(Duration::from_millis(100));
    let mut explain_tick = ticks(Duration::from_millis(250));
    let interval = match args.interval {
        0 => forever,
        secs => Duration::from_secs(secs),
    };
    let mut histogram_tick = ticks_at(tokio::time::Instant::now() + interval, interval);

    let mut drain = drain::Drain::start(events).context("failed to start the ring-buffer drain")?;
    let outcome: Result<()> = async {
        loop {
            tokio::select! {
                batch = drain.recv(), if drain.wants_batch() => {
                    drain.take(batch)?;
                    drain.handle(RECORDS_PER_TURN, |r| session.record(r))?;
                }
                // Lets the timers and the runtime run between two parts
                // of a long batch.
                () = tokio::task::yield_now(), if drain.has_work() => {
                    drain.handle(RECORDS_PER_TURN, |r| session.record(r))?;
                }
                _ = held_tick.tick() => {
                    session.release_held(clock::monotonic_ns())?;
                }
                _ = workers_tick.tick() => {
                    session.refresh_workers()?;
                }
                _ = lost_tick.tick() => {
                    session.report_lost(kernel.lost()?, kernel.hooks_skipped(), false)?;
                    session.output().flush_record()?;
                }
                _ = explain_tick.tick() => {
                    if let Some(live) = live.as_deref_mut() {
                        live.tick(session, false)?;
                        if live.wants_stop() {
                            break;
                        }
                    }
                }
                _ = pending_tick.tick() => {
                    let gone = session.report_pending(kernel.conns(), clock::monotonic_ns())?;
                    kernel.forget(&gone);
                }
                _ = histogram_tick.tick() => session.report_histograms()?,
                _ = &mut deadline => break,
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    outcome?;
    drain.finish(|r| session.record(r)).await?;
    session.report_lost(kernel.lost()?, kernel.hooks_skipped(), true)?;
    Ok(())
}
