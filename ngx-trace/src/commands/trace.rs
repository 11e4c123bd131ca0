//! The tracing run every live command shares: checks, load and attach,
//! the nginx processes to trace, then the loop that pumps the ring buffer
//! into the session and ticks it (and a [`Watcher`], for `top`, `tune` and
//! live `explain`) until a stop.
use std::{collections::BTreeSet, io, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::TraceArgs,
    commands::check,
    commands::session::Session,
    kernel::{clock, config, drain, hooks, preflight, programs::Kernel},
    nginx::{adopt, configs, localtime, procs},
    notice::notice,
    report::{metrics, metrics_file, metrics_http, output::Output, recording},
};

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
pub async fn trace(args: TraceArgs, mut live: Option<Box<dyn Watcher>>) -> Result<()> {
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
    let (config, request_copy) = config::config(
        &config::Wanted {
            comm: &args.comm,
            follow_new_instances: args.pid.is_none(),
            request_copy: !args.no_request_path,
        },
        &tracefs,
    )?;
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
