//! The three ways `ngx-trace explain` runs: live (tracing, and following
//! the error logs of the traced nginx, or the one given with `--follow`),
//! after the fact (a log and a recording), and from the log alone (the
//! causes each line allows).
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};

use crate::{
    commands::session::Session,
    diagnosis::log_join::{self, ExplainEvent, Join, Tally, Trace},
    exit::{self, UserError},
    nginx::configs::{ConfigRead, Configs},
    nginx::errorlog::{self, LogLine},
    nginx::localtime,
    nginx::logfollow::{self, LineCutter, Logs},
    notice::notice,
    report::output::{Output, Text},
    report::recording,
    slow::{self, Side},
};

/// Lines read before the first nginx record that make a file "not an nginx
/// error log".
const PROBE_LINES: usize = 50;
/// How long a line read live waits for the events of its exchange: nginx
/// writes the line as the failure happens, the kernel's record of an
/// answered exchange is drained within 100 ms.
const LINE_WAIT: Duration = Duration::from_millis(1500);
/// How long exchanges are kept for lines still to come.
const KEEP: Duration = Duration::from_secs(30);
/// How much later lines are read before an explained line is printed: its
/// retry is judged against the lines of the next seconds.
const SETTLE: Duration = Duration::from_secs(3);
/// How often new error logs are looked for (a new nginx instance).
const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// Explains `log` (`-`: standard input) with the recording `from`, or with
/// no trace at all (`None`).
pub fn offline(log: &Path, from: Option<&Path>, config: Option<&Path>, json: bool) -> Result<()> {
    let out = Output::new(json);
    let (mut trace, join) = match from {
        Some(path) => {
            let (rec, bad) = recording::load(path)?;
            if bad > 0 {
                notice(&format!(
                    "{bad} lines of {} are not events: skipped",
                    path.display()
                ));
            }
            let mut trace = Trace::default();
            for event in rec.events {
                trace.add(event);
            }
            let join = Join {
                utc_offset_s: rec.utc_offset_s,
                since: Some(rec.started),
                pid_map: BTreeMap::new(),
                config: config_file(config),
            };
            (trace, join)
        }
        None => (
            Trace::default(),
            Join {
                utc_offset_s: localtime::utc_offset_s(None),
                since: None,
                pid_map: BTreeMap::new(),
                config: config_file(config),
            },
        ),
    };
    let reader: Box<dyn BufRead> = if log == Path::new("-") {
        Box::new(BufReader::new(io::stdin()))
    } else {
        Box::new(BufReader::new(File::open(log).with_context(|| {
            format!("failed to open the error log {}", log.display())
        })?))
    };
    let mut tally = Tally::default();
    let mut probed = 0;
    let mut records = false;
    // Lines explained, printed once the lines of the next seconds are too
    // (a retry is told from the next request by the lines they explain).
    let mut pending: VecDeque<(LogLine, ExplainEvent)> = VecDeque::new();
    for line in lossy_lines(reader) {
        let line = line.with_context(|| format!("failed to read {}", log.display()))?;
        match errorlog::parse(&line) {
            None => {
                tally.unparsed();
                if !records && !line.trim().is_empty() {
                    probed += 1;
                    if probed >= PROBE_LINES {
                        return Err(not_an_error_log(log, probed).into());
                    }
                }
            }
            Some(parsed) => {
                records = true;
                if !parsed.is_upstream() {
                    tally.other(&parsed);
                    continue;
                }
                let now = parsed.time(join.utc_offset_s);
                let e = log_join::explain(&parsed, &mut trace, &join);
                pending.push_back((parsed, e));
                let settled = pending
                    .iter()
                    .take_while(|(l, _)| {
                        matches!((l.time(join.utc_offset_s), now), (Some(t), Some(n)) if t + SETTLE < n)
                    })
                    .count();
                if settled > 0 {
                    let done: Vec<_> = pending.drain(..settled).collect();
                    print_explained(done, &trace, &mut tally, &out)?;
                }
            }
        }
    }
    if !records && probed > 0 {
        return Err(not_an_error_log(log, probed).into());
    }
    print_explained(pending.into_iter().collect(), &trace, &mut tally, &out)?;
    let summary = tally.to_event();
    out.event(&summary, || Text::Lines(tally.to_text()))?;
    Ok(())
}

fn not_an_error_log(log: &Path, lines: usize) -> UserError {
    UserError::new(
        exit::USAGE,
        format!(
            "{} is not an nginx error log: none of its first {lines} lines has nginx's \
             `YYYY/MM/DD HH:MM:SS [level] PID#TID: ` form (an access log? give the file \
             of the error_log directive)",
            log.display()
        ),
    )
}

/// The configuration in a saved `nginx -T` dump (`--config`), else none.
fn config_file(path: Option<&Path>) -> crate::nginx::nginx_conf::Config {
    let Some(path) = path else {
        return Default::default();
    };
    let configs = Configs::load(Some(path), &BTreeSet::new());
    configs.config().clone()
}

/// Lines of `reader`, invalid UTF-8 replaced (a log may hold any bytes),
/// each at most [`logfollow::MAX_LINE`] bytes (a longer one is cut and
/// marked: a file with no newline cannot fill the memory).
fn lossy_lines(mut reader: Box<dyn BufRead>) -> impl Iterator<Item = io::Result<String>> {
    let mut cutter = LineCutter::default();
    let mut ready = VecDeque::new();
    let mut ended = false;
    std::iter::from_fn(move || {
        loop {
            if let Some(line) = ready.pop_front() {
                return Some(Ok(line));
            }
            if ended {
                return None;
            }
            let buf = match reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(e)),
            };
            if buf.is_empty() {
                // The last line may lack its newline.
                ended = true;
                ready.extend(cutter.finish());
                continue;
            }
            let n = buf.len();
            ready.extend(cutter.push(buf));
            reader.consume(n);
        }
    })
}

/// Adds nginx's retries to lines explained, counts and prints them.
fn print_explained(
    mut done: Vec<(LogLine, ExplainEvent)>,
    trace: &Trace,
    tally: &mut Tally,
    out: &Output,
) -> io::Result<()> {
    log_join::add_retries(trace, &mut done);
    for (line, e) in &done {
        tally.add(line, e);
        // Several lines: the log line, then the explanation under it.
        out.event(e, || Text::Lines(e.to_text()))?;
    }
    Ok(())
}

/// Live explanation, driven by the tracing loop.
pub struct Live {
    given: Option<PathBuf>,
    logs: Logs,
    waiting: VecDeque<(Instant, LogLine)>,
    trace: Trace,
    join: Join,
    tally: Tally,
    out: Output,
    discovered_at: Option<Instant>,
    configs: Option<Configs>,
    config_file: Option<PathBuf>,
    traced_seen: BTreeSet<u32>,
    /// The side thread finding logs, configurations and namespace pids
    /// (`None` when it could not start: then done here).
    side: Option<Side<LiveDone>>,
    /// A look for logs is under way on the side thread.
    discovering: bool,
    /// Side jobs skipped, as last said.
    skipped_said: u64,
}

/// What live explanation's side work gives back.
enum LiveDone {
    /// The error logs the traced processes hold open.
    Logs(Vec<logfollow::Found>, bool),
    /// After the traced set changed: the configuration read again, and
    /// the processes' pids in their namespaces.
    Traced(Option<ConfigRead>, BTreeMap<u32, u32>),
}

impl Live {
    /// Explains the log at `given` (else the traced instances' error logs)
    /// as it is written, printing JSON if `json`.
    pub fn new(given: Option<PathBuf>, config_file: Option<PathBuf>, json: bool) -> Self {
        Self {
            given,
            logs: Logs::default(),
            waiting: VecDeque::new(),
            trace: Trace::live(),
            join: Join {
                utc_offset_s: 0,
                since: None,
                pid_map: BTreeMap::new(),
                config: Default::default(),
            },
            configs: None,
            config_file,
            traced_seen: BTreeSet::new(),
            tally: Tally::default(),
            out: Output::new(json),
            discovered_at: None,
            side: Side::start("ngx-trace-explain").ok(),
            discovering: false,
            skipped_said: 0,
        }
    }

    fn discover(&mut self, traced: &BTreeSet<u32>) {
        if self.given.is_some()
            || self
                .discovered_at
                .is_some_and(|at| at.elapsed() < DISCOVER_EVERY)
        {
            return;
        }
        self.discovered_at = Some(Instant::now());
        // Reading every descriptor of every traced process: on the side
        // thread, one look at a time.
        if self.discovering {
            return;
        }
        let pids = traced.clone();
        self.discovering = self.run(slow::once(move || {
            LiveDone::Logs(logfollow::discover(&pids), !pids.is_empty())
        }));
    }

    /// Gives `job` to the side thread (whether it took it), or does it
    /// here when there is none.
    fn run(&mut self, mut job: Box<dyn slow::Job<LiveDone>>) -> bool {
        match self.side.as_mut() {
            Some(side) => side.submit(job),
            None => {
                if let Some(done) = job.step(Instant::now()) {
                    self.take(done);
                }
                false
            }
        }
    }

    /// Takes what the side thread found.
    fn side_work(&mut self) {
        let Some(side) = &self.side else {
            return;
        };
        let done: Vec<LiveDone> = side.results().collect();
        let skipped = side.skipped();
        for d in done {
            self.take(d);
        }
        if skipped > self.skipped_said {
            self.skipped_said = skipped;
            notice(&format!(
                "{skipped} looks for logs or configurations skipped so far: the side thread is \
                 behind (tried again later)"
            ));
        }
    }

    fn take(&mut self, done: LiveDone) {
        match done {
            LiveDone::Logs(found, any_traced) => {
                self.discovering = false;
                self.found_logs(found, any_traced);
            }
            LiveDone::Traced(read, pid_map) => {
                if let (Some(configs), Some(read)) = (self.configs.as_mut(), read) {
                    configs.apply(read);
                    self.join.config = configs.config().clone();
                }
                self.join.pid_map = pid_map;
            }
        }
    }

    /// Follows the logs found; says so once when there are none.
    fn found_logs(&mut self, found: Vec<logfollow::Found>, any_traced: bool) {
        self.logs.update(found);
        if self.logs.is_empty() && any_traced {
            notice(
                "no error log found among the files nginx holds open (error_log to stderr or \
                 syslog?): give it as `ngx-trace explain LOG --follow`",
            );
            // Say it once, then look again quietly.
            self.discovered_at = Some(Instant::now() + Duration::from_secs(60));
        }
    }
}

impl crate::commands::trace::Watcher for Live {
    /// Tracing has started: the clock of the traced nginx, the logs.
    fn start(&mut self, session: &Session) -> Result<()> {
        self.join.since = Some(SystemTime::now());
        self.join.utc_offset_s = localtime::utc_offset_s(session.traced().first().copied());
        let configs = Configs::load(self.config_file.as_deref(), session.traced());
        self.join.config = configs.config().clone();
        self.configs = Some(configs);
        self.join.pid_map = namespace_pids(session.traced());
        self.traced_seen = session.traced().clone();
        if let Some(path) = self.given.clone() {
            // Never through a symbolic link, never a FIFO or a device: the
            // log's directory may be writable by nginx's user.
            self.logs.follow_path(path.clone()).map_err(|e| {
                UserError::new(
                    exit::USAGE,
                    format!(
                        "cannot follow {}: {e}: give nginx's error log itself (a regular file, \
                         not a symbolic link to it)",
                        path.display()
                    ),
                )
            })?;
        }
        if self.given.is_none() {
            // At start, before the first lines: here.
            self.discovered_at = Some(Instant::now());
            let traced = session.traced();
            self.found_logs(logfollow::discover(traced), !traced.is_empty());
        }
        Ok(())
    }

    /// Takes the new events and lines, and explains the lines whose
    /// exchanges have had time to arrive (all of them when `all`).
    fn tick(&mut self, session: &Session, all: bool) -> io::Result<()> {
        for event in session.output().take_captured() {
            self.trace.add(event);
        }
        self.side_work();
        self.discover(session.traced());
        if self.traced_seen != *session.traced() {
            // New processes (a reload, a restart): the configuration may be
            // new, and their pids need mapping (a pid's own never changes).
            // Read on the side thread; skipped (and counted) when it is
            // behind, then tried at the next change.
            let traced = session.traced().clone();
            let file = self.config_file.clone();
            let configs = self.configs.is_some();
            let job = slow::once(move || {
                let read = configs.then(|| Configs::read(file.as_deref(), &traced));
                LiveDone::Traced(read, namespace_pids(&traced))
            });
            if self.run(job) || self.side.is_none() {
                self.traced_seen = session.traced().clone();
            }
        }
        let now = Instant::now();
        for raw in self.logs.read_lines() {
            if let Some(line) = errorlog::parse(&raw) {
                if line.is_upstream() {
                    self.waiting.push_back((now, line));
                } else {
                    self.tally.other(&line);
                }
            } else {
                self.tally.unparsed();
            }
        }
        let mut done = Vec::new();
        while let Some((read_at, _)) = self.waiting.front() {
            if !all && read_at.elapsed() < LINE_WAIT {
                break;
            }
            let Some((_, line)) = self.waiting.pop_front() else {
                break;
            };
            let e = log_join::explain(&line, &mut self.trace, &self.join);
            done.push((line, e));
        }
        print_explained(done, &self.trace, &mut self.tally, &self.out)?;
        if let Some(old) = SystemTime::now().checked_sub(KEEP) {
            self.trace.forget_before(old);
        }
        Ok(())
    }

    /// Tracing stops: the lines left, then the summary.
    fn finish(&mut self, session: &Session) -> io::Result<()> {
        self.tick(session, true)?;
        self.tally.trace_dropped(self.trace.dropped());
        let summary = self.tally.to_event();
        self.out
            .event(&summary, || Text::Lines(self.tally.to_text()))
    }
}

/// Each traced process's pid in its own namespace (`NSpid`'s last value),
/// to the host's: a containerised nginx logs the former.
fn namespace_pids(traced: &BTreeSet<u32>) -> BTreeMap<u32, u32> {
    traced
        .iter()
        .filter_map(|&pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            (inner != pid).then_some((inner, pid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(bytes: Vec<u8>) -> Vec<String> {
        // A small buffer: lines arrive in pieces, as from a pipe.
        let reader = io::BufReader::with_capacity(7, io::Cursor::new(bytes));
        lossy_lines(Box::new(reader))
            .collect::<io::Result<_>>()
            .unwrap()
    }

    #[test]
    fn log_lines_are_read_whole_and_bounded() {
        assert_eq!(lines_of(b"a\r\nb\n\xffc".to_vec()), ["a", "b", "\u{fffd}c"]);
        // A file with no newline cannot fill the memory.
        let lines = lines_of(vec![b'x'; 5 * logfollow::MAX_LINE]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with(logfollow::CUT_MARK));
        assert_eq!(
            lines[0].len(),
            logfollow::MAX_LINE + logfollow::CUT_MARK.len()
        );
    }
}
