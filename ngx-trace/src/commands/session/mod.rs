//! One tracing session: turns kernel records into events, follows the set
//! of traced workers, reports lost events, and sums up at the end.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io,
    rc::Rc,
};

use ngx_trace_common::{End, Exchange, Phase, UpstreamAddr};

use crate::{
    diagnosis::accept_queue::AcceptQueues,
    diagnosis::fates::{self, Fact, Fate, FateFacts, FateKind, FateLog, PeerFacts},
    diagnosis::held::Held,
    diagnosis::peer_wait::{PEER_EXIT_WAIT_NS, PeerWait, SIGNALLED_PEER_WAIT_NS},
    diagnosis::timings::Timings,
    diagnosis::unacked::Unacked,
    diagnosis::verdict::{Outcome, Verdict, explain},
    kernel::clock::{Clock, rfc3339_micros},
    kernel::records::{Facts, Finished, ProcessChange, Record, Transport, facts, upstream_name},
    kernel::request_head::Waiting,
    nginx::backends::Backends,
    nginx::configs::Configs,
    nginx::procs,
    notice::notice,
    report::event::{
        LocationRef, LostEvent, PendingEvent, UpstreamEvent, WorkerExitEvent, WorkersEvent,
    },
    report::fold::Folding,
    report::histogram::Histograms,
    report::metrics::{self, Metrics, Route},
    report::output::Output,
    report::summary::Summary,
    slow::{self, Done, Side},
};

/// How long an exchange nginx gave up on waits for the kernel's word that
/// its client had left (a record written microseconds after it, in the same
/// worker thread) before it is judged as nginx's own timeout.
/// Longer than the kernel's window for that close (250 ms), with room for
/// the record's way through the ring buffer.
const CLIENT_GONE_WAIT_NS: u64 = 500_000_000;

/// How long after a worker's exit its exchanges still in the kernel's map
/// are taken as lost with it: its TCP sockets are closed by its exit within
/// milliseconds (the kernel reports those itself), its UNIX ones never are.
const WORKER_SWEEP_WAIT_NS: u64 = 250_000_000;

/// How long a worker that left the worker set still counts as one for its
/// exit record (records arrive within a second; a minute is generous).
const LEFT_WORKER_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// The most workers remembered as left (a reload of many instances).
const MAX_LEFT_WORKERS: usize = 4096;

/// The name of the upstream of a `socket()` that failed: nginx had chosen
/// one, but had not passed its address to the kernel yet.
const UNKNOWN_UPSTREAM: &str = "unknown";

/// An exchange under way at the last look.
#[derive(Debug)]
struct InFlight {
    transport: Transport,
    upstream: Rc<str>,
    /// How long it has waited (ms): to connect, or for its response.
    wait_ms: u64,
    worker: u32,
    /// Its request's first byte (0 while connecting): the request's key.
    req_first_ns: u64,
}

/// What is under way at the last look: how many exchanges, and the longest
/// wait (ms), per upstream and per method and location (as `top` names
/// its rows).
#[derive(Debug, Default)]
pub struct UnderWay {
    /// By upstream name.
    pub by_upstream: BTreeMap<String, (u64, u64)>,
    /// By `METHOD location` (see [`crate::report::event::location_row`]).
    pub by_location: BTreeMap<String, (u64, u64)>,
}

/// A worker that exited, its exchanges being collected.
#[derive(Debug, Clone, Copy)]
struct DeadWorker {
    /// When it exited.
    time_ns: u64,
    /// Exchanges it took with it so far.
    in_flight: u32,
}

/// The soft "Max open files" limit in the text of `/proc/<pid>/limits`.
fn open_files_limit(limits: &str) -> Option<String> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Least time between two reports of hooks skipped alone (they rise in
/// bursts; one line per second would bury the events).
const SKIPPED_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The session's side thread, or `None` (said) when it cannot start.
fn start_side() -> Option<Side<Done>> {
    Side::start("ngx-trace-side")
        .map_err(|e| {
            notice(&format!(
                "cannot start the side thread ({e}): configurations are not read again at a \
                 reload, and crashed backends are not named"
            ));
        })
        .ok()
}

/// Whether `addr` is surely served on this host (a UNIX socket, a
/// loopback address): only there is the process the kernel saw close the
/// connection the backend (a remote FIN arrives in whichever process the
/// CPU was running).
fn on_this_host(addr: &UpstreamAddr) -> bool {
    match addr.family {
        ngx_trace_common::AF_UNIX => true,
        ngx_trace_common::AF_INET => addr.data[0] == 127,
        ngx_trace_common::AF_INET6 => {
            let ip =
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&addr.data[..16]).unwrap_or([0; 16]));
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        _ => false,
    }
}

/// State of a tracing session.
pub struct Session {
    out: Output,
    all: bool,
    /// First-byte wait from which a backend counts as slow, µs.
    slow_us: u64,
    clock: Clock,
    summary: Summary,
    histograms: Histograms,
    /// Exchanges already reported as pending: (sock, exchange index, start).
    pending_shown: HashSet<(u64, u32, u64)>,
    /// Exchanges nginx gave up on, held until the kernel says whether their
    /// client had left (oldest first).
    held: Held,
    /// Exchanges a local backend ended, held for its exit to arrive.
    peer_wait: PeerWait,
    /// Upstream names by address: formatted once, not per exchange.
    names: HashMap<UpstreamAddr, (Transport, Rc<str>)>,
    /// Traced nginx processes (not threads).
    traced: BTreeSet<u32>,
    /// The worker set last printed.
    shown_workers: Option<BTreeSet<u32>>,
    /// Workers that left that set, and when: a dying worker loses its
    /// title (`/proc/PID/cmdline` reads empty once its memory is released)
    /// before its exit record is handled, and is still a worker for it.
    left_workers: BTreeMap<u32, std::time::Instant>,
    /// Lost records already reported.
    lost_reported: u64,
    /// Hooks skipped by the kernel, as last reported, and when.
    skipped_reported: u64,
    skipped_reported_at: Option<std::time::Instant>,
    /// Records user space could not decode.
    bad_records: u64,
    /// Recent signals, OOM kills and exits of processes.
    fates: FateLog,
    /// The processes serving local upstreams.
    backends: Backends,
    /// Workers that exited, until their in-flight exchanges are collected.
    dead_workers: BTreeMap<u32, DeadWorker>,
    /// Descriptor counts of workers whose `socket()` failed, by worker, with
    /// when they were read (a burst of failures reads them once a second).
    fd_counts: HashMap<u32, (std::time::Instant, String)>,
    /// The Prometheus metrics, when exported.
    export: Option<Metrics>,
    /// The traced instances' configuration (groups, locations, timeouts),
    /// when read: the metrics' labels and the exchanges' locations.
    configs: Option<Configs>,
    /// Local listeners' accept queues, read when a connect times out.
    accept_queues: AcceptQueues,
    /// Asks waiting exchanges' sockets whether their requests are
    /// acknowledged.
    unacked: Unacked,
    /// Repeated failures folded in the text output.
    folding: Folding,
    /// The exchanges under way at the last look.
    under_way: Vec<InFlight>,
    /// Whether reading `/proc` failed for want of descriptors (said once).
    short_of_fds_said: bool,
    /// The side thread: configuration reads and backend lookups (`None`
    /// when it could not start: they are not done).
    side: Option<Side<Done>>,
    /// Side jobs skipped as last said, and when.
    side_skipped_said: (u64, Option<std::time::Instant>),
    /// The requests of exchanges not ended yet (the kernel's copy of each
    /// request's start, decoded).
    requests: Waiting,
}

impl Session {
    /// A session printing to `out` (every exchange if `all`, else failed or
    /// slow ones), tracing `traced` at first.
    pub fn new(out: Output, all: bool, slow_us: u64, traced: BTreeSet<u32>) -> Self {
        Self {
            out,
            all,
            slow_us,
            clock: Clock::new(),
            summary: Summary::default(),
            histograms: Histograms::default(),
            pending_shown: HashSet::new(),
            held: Held::default(),
            peer_wait: PeerWait::default(),
            names: HashMap::new(),
            traced,
            shown_workers: None,
            left_workers: BTreeMap::new(),
            lost_reported: 0,
            skipped_reported: 0,
            skipped_reported_at: None,
            bad_records: 0,
            fates: FateLog::default(),
            backends: Backends::default(),
            dead_workers: BTreeMap::new(),
            fd_counts: HashMap::new(),
            export: None,
            configs: None,
            accept_queues: AcceptQueues::default(),
            unacked: Unacked::default(),
            folding: Folding::default(),
            under_way: Vec::new(),
            short_of_fds_said: false,
            side: start_side(),
            side_skipped_said: (0, None),
            requests: Waiting::default(),
        }
    }

    /// Places exchanges in the locations of `configs` (read again when the
    /// traced processes change).
    pub fn configure(&mut self, configs: Configs) {
        self.configs = Some(configs);
    }

    /// Counts into `metrics` too, their groups and timeouts from `configs`
    /// (read again when the traced processes change).
    pub fn export(&mut self, metrics: Metrics, configs: Configs) {
        self.export = Some(metrics);
        self.configs = Some(configs);
    }

    /// The exchanges under way at the last look (4 times a second), per
    /// upstream and per method and location: how many, and the longest
    /// wait so far (ms).
    pub fn under_way(&self) -> UnderWay {
        let mut per = UnderWay::default();
        let count = |rows: &mut BTreeMap<String, (u64, u64)>, name: String, wait_ms: u64| {
            let e = rows.entry(name).or_default();
            e.0 += 1;
            e.1 = e.1.max(wait_ms);
        };
        for x in &self.under_way {
            count(&mut per.by_upstream, x.upstream.to_string(), x.wait_ms);
            let request = self.requests.get(x.worker, x.req_first_ns);
            let (location, candidates) = self.place(&x.upstream, request.map(|r| r.path.as_str()));
            let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
            let row = crate::report::event::location_row(
                request.map(|r| r.method.as_str()),
                location.as_ref().map(|l| l.name.as_str()),
                &candidates,
            );
            count(&mut per.by_location, row, x.wait_ms);
        }
        per
    }

    /// The location an exchange with `upstream` whose request had `path`
    /// came from, or the candidates (none without a configuration).
    fn place(&self, upstream: &str, path: Option<&str>) -> (Option<LocationRef>, Vec<String>) {
        match &self.configs {
            Some(configs) => LocationRef::place(configs.config(), upstream, path),
            None => (None, Vec::new()),
        }
    }

    /// The nginx workers traced now.
    pub fn workers(&self) -> usize {
        self.shown_workers.as_ref().map_or(0, BTreeSet::len)
    }

    /// Records lost so far (as last reported).
    pub fn lost(&self) -> u64 {
        self.lost_reported
    }

    /// Handles one raw ring-buffer record; one that does not decode is
    /// counted and reported with the lost records.
    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match crate::kernel::records::decode(bytes) {
            Ok(Record::Upstream(x)) if x.end.is_nginx_giving_up() => {
                self.held.push(x);
                Ok(())
            }
            Ok(Record::Upstream(x)) => match self.peer_exit_wait(&x) {
                Some(wait_ns) => match self.peer_wait.push(x, wait_ns) {
                    Some(oldest) => self.exchange(&oldest),
                    None => Ok(()),
                },
                None => self.exchange(&x),
            },
            Ok(Record::ClientGone {
                worker_pid,
                first_giveup_ns,
                last_giveup_ns,
                closed_ns,
            }) => self.client_gone(worker_pid, first_giveup_ns..=last_giveup_ns, closed_ns),
            Ok(Record::Fate(entry)) => self.fate(entry),
            Ok(Record::Request {
                worker_pid,
                req_first_ns,
                request,
            }) => {
                if let Some(request) = request {
                    self.requests.insert(worker_pid, req_first_ns, request);
                }
                Ok(())
            }
            Ok(Record::Process(change)) => {
                match change {
                    // Unknown for want of descriptors: taken, the next
                    // look at the workers drops it if it is a thread.
                    ProcessChange::Fork { pid } | ProcessChange::Exec { pid }
                        if procs::process_exists(pid).unwrap_or(true) =>
                    {
                        self.traced.insert(pid);
                    }
                    ProcessChange::Exit { pid } => {
                        self.traced.remove(&pid);
                    }
                    _ => {}
                }
                Ok(())
            }
            Err(_) => {
                self.bad_records += 1;
                Ok(())
            }
        }
    }

    /// How long `x` waits for its peer's exit: `x` ended by its peer's
    /// close or reset, the peer is a local process (the kernel named it),
    /// and no death of it (or of a child of the process named, for a UNIX
    /// listener's creator) is known yet. Longer when it was told to end.
    fn peer_exit_wait(&self, x: &Finished) -> Option<u64> {
        let by_peer = matches!(x.end, End::PeerClosed | End::PeerReset)
            && x.errno != Some(crate::diagnosis::verdict::ETIMEDOUT)
            && on_this_host(&x.facts.addr);
        let peer = x.facts.peer_pid.filter(|_| by_peer)?;
        let mut signalled = false;
        for pid in self.fates.pids_between(x.facts.start_ns, x.end_ns) {
            if pid != peer && self.fates.identity(pid).0 != peer {
                continue;
            }
            match self.fates.fate(pid, x.facts.start_ns, x.end_ns) {
                Some(f) if f.kind.is_death() => return None,
                Some(_) => signalled = true,
                None => {}
            }
        }
        Some(if signalled {
            SIGNALLED_PEER_WAIT_NS
        } else {
            PEER_EXIT_WAIT_NS
        })
    }

    /// Keeps a fact about a process; a worker's exit starts the collection
    /// of the exchanges it took with it, and a process's exit releases the
    /// exchanges held for it (or for its parent) to be judged now.
    fn fate(&mut self, entry: fates::Entry) -> io::Result<()> {
        let exited = matches!(entry.fact, Fact::Exited { .. });
        let (pid, parent) = (entry.pid, entry.parent);
        self.record_fate(entry);
        if exited {
            for x in self.peer_wait.take_for([pid, parent]) {
                self.exchange(&x)?;
            }
        }
        Ok(())
    }

    fn record_fate(&mut self, entry: fates::Entry) {
        if matches!(entry.fact, Fact::Exited { .. }) && self.is_worker(entry.pid) {
            self.left_workers.remove(&entry.pid);
            self.unacked.forget_worker(entry.pid);
            self.dead_workers.insert(
                entry.pid,
                DeadWorker {
                    time_ns: entry.time_ns,
                    in_flight: 0,
                },
            );
        }
        self.fates.add(entry);
    }

    /// Whether `pid` is (was) one of the traced workers.
    fn is_worker(&self, pid: u32) -> bool {
        self.shown_workers
            .as_ref()
            .is_some_and(|workers| workers.contains(&pid))
            || self
                .left_workers
                .get(&pid)
                .is_some_and(|left| left.elapsed() < LEFT_WORKER_KEPT)
            || (self.traced.contains(&pid) && procs::is_worker(pid))
    }

    /// The kernel saw worker `worker_pid` close its client's connection,
    /// the client gone, right after giving up on the exchanges that ended in
    /// `giveups` (one, or every stream of an HTTP/2 connection): they ended
    /// because the client left. (A close long after is not part of nginx's
    /// 499 path: ignored.)
    fn client_gone(
        &mut self,
        worker_pid: u32,
        giveups: std::ops::RangeInclusive<u64>,
        closed_ns: u64,
    ) -> io::Result<()> {
        if closed_ns.saturating_sub(*giveups.end()) > CLIENT_GONE_WAIT_NS {
            return Ok(());
        }
        // Records of exchanges already judged (the worker was descheduled
        // for long) or lost are not found: nothing to correct.
        for mut x in self.held.claim(worker_pid, giveups) {
            x.client_left = true;
            self.exchange(&x)?;
        }
        Ok(())
    }

    /// Judges the held give-ups that ended before `now_ns` minus the wait
    /// for a client-gone record (all of them when `now_ns` is `u64::MAX`).
    pub fn release_held(&mut self, now_ns: u64) -> io::Result<()> {
        while let Some(x) = self.held.pop_due(now_ns, CLIENT_GONE_WAIT_NS) {
            self.exchange(&x)?;
        }
        for x in self.peer_wait.take_due(now_ns) {
            self.exchange(&x)?;
        }
        for line in self.folding.due(now_ns) {
            self.out.text(&line)?;
        }
        Ok(())
    }

    /// The transport and name of an upstream, cached (bounded: cleared when
    /// full, as a neighbour connecting to a new path per call would fill
    /// it; formatting a name again is cheap, holding 65,536 was 16 MB).
    fn name(&mut self, addr: &UpstreamAddr) -> (Transport, Rc<str>) {
        const NAMES_CACHED: usize = 4_096;
        if self.names.len() >= NAMES_CACHED {
            self.names.clear();
        }
        self.names
            .entry(*addr)
            .or_insert_with(|| {
                let (transport, name) = upstream_name(addr);
                (transport, name.into())
            })
            .clone()
    }

    /// Explains, counts and (if it is to be shown) prints a finished exchange.
    fn exchange(&mut self, x: &Finished) -> io::Result<()> {
        let (transport, upstream) = if x.end == End::SocketFailed {
            (upstream_name(&x.facts.addr).0, Rc::from(UNKNOWN_UPSTREAM))
        } else {
            self.name(&x.facts.addr)
        };
        let mut explanation = explain(x, transport, &upstream, self.slow_us);
        let mut peer = None;
        match explanation.outcome {
            Outcome::Reset | Outcome::ClosedEarly => {
                if let Some((facts, sentence, dead)) = self.peer_fate(x) {
                    explanation.evidence = format!("{sentence}; {}", explanation.evidence);
                    if dead {
                        explanation.verdict = Verdict::BackendCrashed;
                        explanation.meaning = "backend process died";
                    }
                    peer = Some(facts);
                }
            }
            Outcome::ConnectTimeout if transport == Transport::Tcp => {
                // A local backend that stopped accepting: its kernel drops
                // SYNs once the accept queue is full, as a lossy network
                // would (the queue is read now; a stuck backend keeps it full).
                if let Some(o) = self.accept_queues.get(x.facts.worker_pid, &x.facts.addr) {
                    if o.is_certain() {
                        explanation.verdict = Verdict::BackendOverloaded;
                        explanation.meaning = "backend's accept queue full";
                    }
                    explanation.evidence = format!("{}; {}", o.evidence(), explanation.evidence);
                }
            }
            Outcome::FdLimit => {
                let count = self.fd_count(x.facts.worker_pid, x.errno.unwrap_or(0));
                explanation.evidence = format!("{}: {count}", explanation.evidence);
            }
            Outcome::WorkerDied => {
                if let Some(dead) = self.dead_workers.get_mut(&x.facts.worker_pid) {
                    dead.in_flight += 1;
                }
            }
            _ => {}
        }
        self.summary.add(&upstream, explanation.outcome);
        let request = self.requests.take(x.facts.worker_pid, x.facts.req_first_ns);
        // A failed socket() made no connect: nothing to time.
        let timings = if x.end == End::SocketFailed {
            Timings::default()
        } else if matches!(
            explanation.outcome,
            Outcome::ClientClosed | Outcome::WorkerDied
        ) {
            // Its wait measures the client's patience (or the worker's
            // death), not the upstream.
            Timings {
                connect: explanation.timings.connect,
                ..Timings::default()
            }
        } else {
            explanation.timings
        };
        if x.end != End::SocketFailed {
            self.histograms.record(&upstream, &timings);
        }
        let (location, location_candidates) =
            self.place(&upstream, request.as_ref().map(|r| r.path.as_str()));
        if let Some(metrics) = &mut self.export {
            let route = Route {
                worker: x.facts.worker_pid,
                server: &upstream,
                transport,
            };
            metrics.exchange(
                metrics::Placed {
                    route,
                    location: location.as_ref().map(|l| l.name.as_str()),
                },
                explanation.outcome,
                explanation.verdict,
                &timings,
                (x.facts.retransmits, x.facts.peer_retransmits),
            );
        }
        let routine = explanation.outcome == Outcome::Ok && explanation.verdict == Verdict::Healthy;
        let shown = !routine || self.all;
        if !shown && !self.out.keeps_everything() {
            return Ok(());
        }
        let time = rfc3339_micros(self.clock.wall(x.end_ns));
        let mut event = UpstreamEvent::new(time, &x.facts, transport, &upstream, explanation);
        event.peer = peer;
        event.location = location;
        event.location_candidates = location_candidates;
        event.request = request;
        if shown && !routine && !self.out.is_json() {
            // Text: repeats of a failure within a second fold into one line.
            self.out.keep(&event)?;
            let kind = (event.upstream.clone(), event.outcome, event.verdict);
            match self.folding.admit(kind, x.end_ns, event.to_text()) {
                Some(line) => self.out.text(&line),
                None => Ok(()),
            }
        } else if shown {
            self.out.event(&event, || event.to_text())
        } else {
            // Recorded for `explain` (a retry that succeeded), not printed.
            self.out.keep(&event)
        }
    }

    /// Where events go.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// The nginx processes traced now.
    pub fn traced(&self) -> &BTreeSet<u32> {
        &self.traced
    }

    /// The backend process that held the other end of a local upstream's
    /// connection, if it died or was signalled during the exchange: its
    /// facts, the sentence for the evidence, and whether it died. Among the
    /// processes something befell during the exchange, one serving the
    /// upstream (holding its listening socket, or a child of one that does);
    /// a death before a mere signal, the latest first.
    fn peer_fate(&mut self, x: &Finished) -> Option<(PeerFacts, String, bool)> {
        let f = &x.facts;
        // A death just after the close counts: it was waited for.
        let until = x.end_ns.saturating_add(SIGNALLED_PEER_WAIT_NS);
        let candidates = self.fates.pids_between(f.start_ns, until);
        if candidates.is_empty() {
            return None;
        }
        // Who serves it as last looked up (never waiting for /proc); never
        // looked up (a crash within the first moments of a new upstream):
        // asked now, for the next time, the kernel's hint serving now.
        self.side_work();
        self.look_up_backends(std::iter::once((&f.addr, f.worker_pid)));
        let fate: Fate = candidates
            .into_iter()
            .filter_map(|pid| {
                let (parent, _) = self.fates.identity(pid);
                // The kernel's word first: the listener's creator (UNIX),
                // the process that closed (TCP on loopback). Only its
                // death may come after the close: another process serving
                // the upstream that dies then is not this exchange's end.
                let hinted =
                    on_this_host(&f.addr) && f.peer_pid.is_some_and(|p| p == pid || p == parent);
                if hinted {
                    self.fates.fate(pid, f.start_ns, until)
                } else if self.backends.serves(&f.addr, pid, parent) {
                    self.fates.fate(pid, f.start_ns, x.end_ns)
                } else {
                    None
                }
            })
            .max_by_key(|fate| (fate.kind.is_death(), fate.time_ns))?;
        let (parent, mut comm) = self.fates.identity(fate.pid);
        if comm.is_empty() {
            comm = procs::status(fate.pid).map(|s| s.name).unwrap_or_default();
        }
        let parent_comm = procs::status(parent).map(|s| s.name).unwrap_or_default();
        let since = if f.req_last_ns != 0 {
            f.req_last_ns
        } else {
            f.start_ns
        };
        let sentence = fates::describe(&fate, &comm, parent, since, x.end_ns);
        let dead = fate.kind.is_death();
        Some((
            PeerFacts::new(&fate, &comm, (parent, &parent_comm), dead, x.end_ns),
            sentence,
            dead,
        ))
    }

    /// What the worker's descriptors were when its `socket()` failed with
    /// `errno` (read now, at most once a second per worker): for EMFILE its
    /// limit (every descriptor below it is in use: counting them would cost
    /// one read per descriptor, a million with a raised limit), or the
    /// host's count for ENFILE.
    fn fd_count(&mut self, pid: u32, errno: u32) -> String {
        if let Some((at, text)) = self.fd_counts.get(&pid)
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return text.clone();
        }
        let text = if errno == 23 {
            let nr = std::fs::read_to_string("/proc/sys/fs/file-nr").unwrap_or_default();
            let fields: Vec<&str> = nr.split_whitespace().collect();
            match (fields.first(), fields.get(2)) {
                (Some(open), Some(max)) => {
                    format!("the host has {open} files open, its limit (fs.file-max) is {max}")
                }
                _ => "the host's file table is full (fs.file-max)".to_string(),
            }
        } else {
            let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
                .ok()
                .and_then(|text| open_files_limit(&text));
            match limit {
                Some(limit) => format!(
                    "the worker holds as many descriptors as its limit, {limit} \
                     (worker_rlimit_nofile)"
                ),
                None => "the worker's descriptor limit could not be read (it is gone)".to_string(),
            }
        };
        if self.fd_counts.len() > 1024 {
            self.fd_counts.clear();
        }
        self.fd_counts
            .insert(pid, (std::time::Instant::now(), text.clone()));
        text
    }

    /// The `pending` event of an exchange still under way at `now_ns`:
    /// waiting for its answer, or still connecting. Judged as if nginx gave
    /// up now: the verdict so far.
    fn pending_event(&mut self, f: &Facts, now_ns: u64, cut_by_stop: bool) -> PendingEvent {
        let (transport, upstream) = self.name(&f.addr);
        let mut f = *f;
        if transport == Transport::Tcp
            && f.connected
            && f.acked_ns == 0
            && let Some(fd) = f.fd
        {
            // No hook runs on a pure ACK: ask the kernel, for this socket
            // alone, whether anything written is still unacknowledged.
            f.acked_live = self.unacked.get(f.worker_pid, fd, &f.addr) == Some(0);
        }
        let f = &f;
        let (end, since) = if f.connected {
            (End::NginxClosed, f.req_last_ns)
        } else {
            (End::ConnectAbandoned, f.start_ns)
        };
        let so_far = Finished {
            facts: *f,
            end,
            errno: None,
            end_ns: now_ns,
            client_left: false,
        };
        let e = explain(&so_far, transport, &upstream, self.slow_us);
        let tcp = transport == Transport::Tcp;
        let request = self.requests.get(f.worker_pid, f.req_first_ns).cloned();
        let (location, location_candidates) =
            self.place(&upstream, request.as_ref().map(|r| r.path.as_str()));
        PendingEvent {
            event: "pending",
            time: rfc3339_micros(self.clock.wall(now_ns)),
            worker_pid: f.worker_pid,
            upstream: upstream.to_string(),
            transport: transport.as_str(),
            waiting_ms: now_ns.saturating_sub(since) / 1_000_000,
            // A waiting exchange's ACK time is not known yet: only whether.
            request_acked: tcp.then_some(f.acked_live || e.timings.request_acked.is_some()),
            retransmits: tcp.then_some(f.retransmits),
            verdict: e.verdict.as_str(),
            evidence: e.evidence,
            request,
            location,
            location_candidates,
            cut_by_stop,
        }
    }

    /// Reports, once each, the exchanges in `conns` (the kernel's in-flight
    /// state) that have waited `--slow` or longer for their first byte;
    /// looks up who serves the upstreams in flight; reports the exchanges
    /// of workers that died as lost with them, and returns their sockets,
    /// for the kernel to forget.
    pub fn report_pending(
        &mut self,
        conns: impl Iterator<Item = (u64, Exchange)>,
        now_ns: u64,
    ) -> io::Result<Vec<u64>> {
        let conns: Vec<(u64, Exchange)> = conns.collect();
        self.side_work();
        self.look_up_backends(conns.iter().map(|(_, ex)| (&ex.addr, ex.tgid)));
        let forget = self.collect_dead_workers(&conns, now_ns)?;
        let under_way: Vec<InFlight> = conns
            .iter()
            .filter(|(sk, _)| !forget.contains(sk))
            .filter_map(|(_, ex)| facts(ex).ok())
            .filter(|f| !f.connected || f.waiting_for_response())
            .map(|f| {
                let since = if f.connected {
                    f.req_last_ns
                } else {
                    f.start_ns
                };
                let (transport, upstream) = self.name(&f.addr);
                InFlight {
                    transport,
                    upstream,
                    wait_ms: now_ns.saturating_sub(since) / 1_000_000,
                    worker: f.worker_pid,
                    req_first_ns: f.req_first_ns,
                }
            })
            .collect();
        if let Some(metrics) = &mut self.export {
            metrics.set_pending(under_way.iter().map(|x| Route {
                worker: x.worker,
                server: &x.upstream,
                transport: x.transport,
            }));
        }
        self.under_way = under_way;
        let mut still_waiting = HashSet::new();
        self.unacked.new_pass();
        for (sk, ex) in conns {
            if forget.contains(&sk) {
                continue;
            }
            let Ok(f) = facts(&ex) else { continue };
            if !f.waiting_for_response() {
                continue;
            }
            let key = (sk, f.index, f.req_first_ns);
            let waited_us = now_ns.saturating_sub(f.req_last_ns) / 1000;
            if waited_us < self.slow_us {
                continue;
            }
            still_waiting.insert(key);
            if self.pending_shown.contains(&key) {
                continue;
            }
            let event = self.pending_event(&f, now_ns, false);
            self.out.event(&event, || event.to_text())?;
        }
        // Forget exchanges that ended, keeping the set bounded.
        self.pending_shown = still_waiting;
        Ok(forget)
    }

    /// For each worker that exited at least [`WORKER_SWEEP_WAIT_NS`] before
    /// `now_ns` (all of them when `now_ns` is `u64::MAX`): its exchanges
    /// still in `conns` (UNIX ones, whose close no hook sees) ended with it,
    /// an answered one done; then its `worker_exit` event, when it died of a
    /// signal, failed, or took exchanges with it. Returns the sockets to
    /// forget.
    fn collect_dead_workers(
        &mut self,
        conns: &[(u64, Exchange)],
        now_ns: u64,
    ) -> io::Result<Vec<u64>> {
        let due: Vec<(u32, DeadWorker)> = self
            .dead_workers
            .iter()
            .filter(|(_, d)| d.time_ns.saturating_add(WORKER_SWEEP_WAIT_NS) <= now_ns)
            .map(|(&pid, &d)| (pid, d))
            .collect();
        let mut forget = Vec::new();
        for (pid, dead) in due {
            for (sk, ex) in conns.iter().filter(|(_, ex)| ex.tgid == pid) {
                forget.push(*sk);
                let Ok(f) = facts(ex) else { continue };
                let end = if f.phase == Phase::Receiving && f.req_first_ns != 0 {
                    End::ResponseDone
                } else if f.waiting_for_response() || f.phase == Phase::Idle && !f.connected {
                    End::WorkerDied
                } else {
                    continue;
                };
                let x = Finished {
                    facts: f,
                    end,
                    errno: None,
                    end_ns: if end == End::ResponseDone {
                        f.resp_last_read_ns
                    } else {
                        dead.time_ns
                    },
                    client_left: false,
                };
                self.exchange(&x)?;
            }
            let in_flight = self
                .dead_workers
                .remove(&pid)
                .map_or(dead.in_flight, |d| d.in_flight);
            self.worker_exit(pid, dead.time_ns, in_flight)?;
        }
        Ok(forget)
    }

    /// Prints the `worker_exit` event of worker `pid`, which exited at
    /// `time_ns` with `in_flight` exchanges, unless it ended quietly (status
    /// 0, nothing in flight: a reload or a stop).
    fn worker_exit(&mut self, pid: u32, time_ns: u64, in_flight: u32) -> io::Result<()> {
        let from = time_ns.saturating_sub(60_000_000_000);
        let Some(fate) = self.fates.fate(pid, from, time_ns) else {
            return Ok(());
        };
        if in_flight == 0 && fate.kind == FateKind::Exited && fate.exit_status == Some(0) {
            return Ok(());
        }
        let nginx_error = match fate.signal.filter(|_| fate.kind != FateKind::Exited) {
            Some(signal) => format!(
                "worker process {pid} exited on signal {signal}{}",
                if fate.core_dumped {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            None => format!(
                "worker process {pid} exited with code {}",
                fate.exit_status.unwrap_or(0)
            ),
        };
        let event = WorkerExitEvent {
            event: "worker_exit",
            time: rfc3339_micros(self.clock.wall(time_ns)),
            worker_pid: pid,
            fate: FateFacts::of(&fate, true),
            in_flight,
            nginx_error,
            evidence: format!("nginx worker {pid} {}", fates::what_befell(&fate)),
        };
        self.out.event(&event, || event.to_text())
    }

    /// Prints the latency histograms (cumulative since start).
    pub fn report_histograms(&self) -> io::Result<()> {
        if self.histograms.is_empty() {
            return Ok(());
        }
        if self.out.is_json() {
            for event in self.histograms.to_events() {
                self.out.event(&event, String::new)?;
            }
            Ok(())
        } else {
            let text = self.histograms.to_text();
            self.out.text(&format!(
                "latency per upstream and phase:\n{}",
                text.trim_end()
            ))
        }
    }

    /// Takes what the side thread has done: configurations read again (put
    /// in effect), backend lookups. Says, at most every 10 s, how many side
    /// jobs were skipped because it was behind.
    fn side_work(&mut self) {
        let Some(side) = &self.side else {
            return;
        };
        for done in side.results() {
            match done {
                Done::Configs(read) => {
                    if let Some(configs) = &mut self.configs {
                        configs.apply(read);
                        if let Some(metrics) = &mut self.export {
                            metrics.set_configs(&metrics::instance_configs(configs));
                        }
                    }
                }
                Done::Backends(found) => self.backends.found(found),
            }
        }
        let skipped = side.skipped();
        let (said, at) = self.side_skipped_said;
        if skipped > said && at.is_none_or(|at| at.elapsed() >= SKIPPED_REPORT_EVERY) {
            self.side_skipped_said = (skipped, Some(std::time::Instant::now()));
            notice(&format!(
                "{skipped} side jobs skipped so far (configuration reads, backend lookups; \
                 {} turns over their {} ms budget): the side thread is behind; they are tried \
                 again later, records are not lost",
                side.resumed(),
                slow::BUDGET.as_millis()
            ));
        }
    }

    /// Asks the side thread who serves the upstreams in `addrs` (each with
    /// a worker connecting to it) not looked up lately.
    fn look_up_backends<'a>(&mut self, addrs: impl Iterator<Item = (&'a UpstreamAddr, u32)>) {
        let Some(side) = self.side.as_mut() else {
            return;
        };
        let stale = self.backends.stale(addrs);
        if stale.is_empty() {
            return;
        }
        if !side.submit(slow::map(
            self.backends.lookup(stale.clone()),
            Done::Backends,
        )) {
            self.backends.not_asked(&stale);
        }
    }

    /// Prints the worker set if it changed since last printed. Workers are
    /// told from the master by their title, which a new worker sets a moment
    /// after fork, hence a periodic check rather than one per fork.
    /// Returns whether the set changed.
    pub fn refresh_workers(&mut self) -> io::Result<bool> {
        // Out of descriptors (EMFILE, ENFILE), /proc says nothing about a
        // process: it stays as it was, rather than count as gone for good.
        let mut short_of_fds = None;
        self.traced.retain(|&pid| match procs::process_exists(pid) {
            Ok(exists) => exists,
            Err(e) => {
                short_of_fds = Some(e);
                true
            }
        });
        let shown = self.shown_workers.as_ref();
        let workers: BTreeSet<u32> = self
            .traced
            .iter()
            .copied()
            .filter(|&pid| {
                procs::has_worker_title(pid).unwrap_or_else(|e| {
                    short_of_fds = Some(e);
                    shown.is_some_and(|shown| shown.contains(&pid))
                })
            })
            .collect();
        if let Some(e) = short_of_fds
            && !self.short_of_fds_said
        {
            self.short_of_fds_said = true;
            notice(&format!(
                "failed to read /proc ({e}): the traced processes are kept as they were until \
                 it can be read again"
            ));
        }
        if self.shown_workers.as_ref() == Some(&workers) {
            return Ok(false);
        }
        let event = WorkersEvent::new(workers.iter().copied().collect());
        self.out.event(&event, || event.to_text())?;
        if workers.is_empty() && self.out.is_json() {
            // Text mode said it on stdout already.
            notice("no nginx worker running: waiting for nginx to start");
        }
        if let Some(configs) = &self.configs {
            // A reload forks new workers: read its configuration again
            // (read at start already for the first set; workers leaving
            // change nothing).
            if let Some(shown) = &self.shown_workers
                && workers.difference(shown).next().is_some()
            {
                // Read on the side thread; put in effect by `side_work`.
                let file = configs.file().map(std::path::Path::to_path_buf);
                let traced = self.traced.clone();
                if let Some(side) = self.side.as_mut() {
                    side.submit(slow::once(move || {
                        Done::Configs(Configs::read(file.as_deref(), &traced))
                    }));
                }
            }
        }
        if let Some(metrics) = &mut self.export {
            // A worker's master names its instance, whose groups label
            // its exchanges.
            let masters: BTreeMap<u32, u32> = workers
                .iter()
                .filter_map(|&worker| Some((worker, procs::status(worker)?.ppid)))
                .collect();
            metrics.set_masters(&masters);
            metrics.set_traced_workers(workers.len());
        }
        let now = std::time::Instant::now();
        if let Some(shown) = &self.shown_workers {
            self.left_workers
                .extend(shown.difference(&workers).map(|&pid| (pid, now)));
        }
        // A worker that left without an exit record (lost, or a pid reused)
        // is forgotten in time; the bound holds a mass reload's workers.
        self.left_workers
            .retain(|_, left| now.duration_since(*left) < LEFT_WORKER_KEPT);
        while self.left_workers.len() > MAX_LEFT_WORKERS {
            self.left_workers.pop_first();
        }
        self.shown_workers = Some(workers);
        Ok(true)
    }

    /// Reports records lost since the last call; `lost` is the kernel's
    /// running total per `LOST_*` slot, `skipped` of the times it skipped
    /// a program (events that may be missing, not counted as lost: most
    /// are hooks on other processes' sockets). Facts about other processes
    /// over the kernel's rate limit are not nginx records either: neither
    /// is in `count`, and a rise of them alone is reported at most every
    /// 10 s, and at the `last` call.
    pub fn report_lost(
        &mut self,
        lost: [u64; ngx_trace_common::LOST_SLOTS as usize],
        skipped: u64,
        last: bool,
    ) -> io::Result<()> {
        use ngx_trace_common::{LOST_FATES_LIMITED, LOST_MAP_FULL, LOST_RINGBUF_FULL};
        let limited = lost[LOST_FATES_LIMITED as usize];
        let total =
            lost[LOST_RINGBUF_FULL as usize] + lost[LOST_MAP_FULL as usize] + self.bad_records;
        if let Some(metrics) = &self.export {
            metrics.set_lost(total);
        }
        // `skipped_reported` keeps the sum of both uncounted tallies.
        let skipped = skipped + limited;
        let skip_due = skipped > self.skipped_reported
            && (last
                || self
                    .skipped_reported_at
                    .is_none_or(|at| at.elapsed() >= SKIPPED_REPORT_EVERY));
        if total <= self.lost_reported && !skip_due {
            return Ok(());
        }
        let event = LostEvent::new(
            total.saturating_sub(self.lost_reported),
            lost[LOST_RINGBUF_FULL as usize],
            lost[LOST_MAP_FULL as usize],
            self.bad_records,
            skipped - limited,
            limited,
        );
        self.lost_reported = total;
        self.skipped_reported = skipped;
        self.skipped_reported_at = Some(std::time::Instant::now());
        self.out.event(&event, || event.to_text())
    }

    /// Ends the session: judges the exchanges still held, reports what the
    /// kernel still has in flight (an answered exchange on a kept-alive
    /// connection is reported as done; one still waiting for its answer, or
    /// still connecting, as a final `pending` event cut by the stop, counted
    /// in the summary), then the histograms and the per-upstream summary.
    pub fn finish(
        &mut self,
        conns: impl Iterator<Item = (u64, Exchange)>,
        now_ns: u64,
    ) -> io::Result<()> {
        self.release_held(u64::MAX)?;
        let conns: Vec<(u64, Exchange)> = conns.collect();
        let gone = self.collect_dead_workers(&conns, u64::MAX)?;
        self.unacked.new_pass();
        for (_, ex) in conns.into_iter().filter(|(sk, _)| !gone.contains(sk)) {
            let Ok(f) = facts(&ex) else {
                self.bad_records += 1;
                continue;
            };
            if f.phase == Phase::Receiving && f.req_first_ns != 0 {
                let done = Finished {
                    facts: f,
                    end: End::ResponseDone,
                    errno: None,
                    end_ns: f.resp_last_read_ns.min(now_ns),
                    client_left: false,
                };
                self.exchange(&done)?;
            } else if f.waiting_for_response() || (!f.connected && f.phase == Phase::Idle) {
                let event = self.pending_event(&f, now_ns, true);
                self.summary.add_cut_by_stop(&event.upstream);
                self.out.event(&event, || event.to_text())?;
            }
        }
        if self.unacked.skipped() > 0 {
            notice(&format!(
                "{} waiting exchanges were not asked whether their requests were \
                 acknowledged (more than {} became pending at once)",
                self.unacked.skipped(),
                crate::diagnosis::unacked::LOOKUPS_PER_PASS
            ));
        }
        for line in self.folding.due(u64::MAX) {
            self.out.text(&line)?;
        }
        self.report_histograms()?;
        let summary = self.summary.to_event();
        self.out.event(&summary, || self.summary.to_text())
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{
        AF_INET, ClientGoneRecord, FATE_EXIT, FATE_SIGNAL, FLAG_CONNECTED, FateRecord,
        RECORD_CLIENT_GONE, RECORD_FATE, RECORD_UPSTREAM, UpstreamRecord,
    };

    use super::*;

    const MS: u64 = 1_000_000;

    fn bytes_of<T>(record: &T) -> Vec<u8> {
        // SAFETY: a plain repr(C) struct viewed as bytes.
        unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    /// The record of worker `tgid` giving up at `end_ns` on a request it
    /// wrote 300 ms earlier.
    fn gave_up(tgid: u32, end_ns: u64) -> Vec<u8> {
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.port_be = 8080u16.to_be();
        addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut ex = Exchange::new(tgid, 9, end_ns - 301 * MS, addr);
        ex.flags = FLAG_CONNECTED;
        ex.connect_ns = 100_000;
        ex.req_first_ns = end_ns - 300 * MS;
        ex.req_last_ns = end_ns - 300 * MS;
        ex.phase = Phase::Sending.code();
        ex.end = End::NginxClosed.code();
        ex.end_ns = end_ns;
        bytes_of(&UpstreamRecord {
            kind: RECORD_UPSTREAM,
            _pad: 0,
            exchange: ex,
        })
    }

    fn client_gone(tgid: u32, first: u64, last: u64, closed: u64) -> Vec<u8> {
        bytes_of(&ClientGoneRecord {
            kind: RECORD_CLIENT_GONE,
            tgid,
            first_giveup_ns: first,
            last_giveup_ns: last,
            closed_ns: closed,
        })
    }

    fn session() -> Session {
        Session::new(Output::new(true), false, 1_000_000, BTreeSet::new())
    }

    /// The record of worker `tgid`'s exchange that local process `peer`
    /// ended with a FIN at `end_ns`, before any response byte.
    fn closed_by(tgid: u32, peer: u32, end_ns: u64) -> Vec<u8> {
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.port_be = 8000u16.to_be();
        addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut ex = Exchange::new(tgid, 9, end_ns - 1_001 * MS, addr);
        ex.flags = FLAG_CONNECTED;
        ex.connect_ns = 100_000;
        ex.req_first_ns = end_ns - 1_000 * MS;
        ex.req_last_ns = end_ns - 1_000 * MS;
        ex.phase = Phase::Sending.code();
        ex.end = End::PeerClosed.code();
        ex.end_ns = end_ns;
        ex.peer_pid = peer;
        bytes_of(&UpstreamRecord {
            kind: RECORD_UPSTREAM,
            _pad: 0,
            exchange: ex,
        })
    }

    /// A fate record: `signal` (from `sender`) when `exit_code` is `None`,
    /// else the exit.
    fn fate_of(
        pid: u32,
        parent: u32,
        time_ns: u64,
        signal: Option<(u32, u32)>,
        exit: u32,
    ) -> Vec<u8> {
        bytes_of(&FateRecord {
            kind: RECORD_FATE,
            what: if signal.is_some() {
                FATE_SIGNAL
            } else {
                FATE_EXIT
            },
            pid,
            parent,
            signal: signal.map_or(0, |s| s.0),
            code: 0,
            exit_code: exit,
            sender: signal.map_or(0, |s| s.1),
            memory_limit_pages: 0,
            time_ns,
            comm: *b"gunicorn\0\0\0\0\0\0\0\0",
            sender_comm: *b"gunicorn\0\0\0\0\0\0\0\0",
        })
    }

    #[test]
    fn only_a_backend_on_this_host_is_waited_for() {
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.data[..4].copy_from_slice(&[127, 0, 0, 2]);
        assert!(on_this_host(&addr));
        addr.data[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert!(!on_this_host(&addr));
        let mut s = session();
        let mut remote = closed_by(42, 777, 10_000 * MS);
        // The same record with a remote address: judged at once.
        let at = std::mem::offset_of!(UpstreamRecord, exchange)
            + std::mem::offset_of!(Exchange, addr)
            + std::mem::offset_of!(UpstreamAddr, data);
        remote[at..at + 4].copy_from_slice(&[10, 1, 2, 3]);
        s.record(&remote).unwrap();
        assert!(s.peer_wait.is_empty());
        assert_eq!(outcomes(&s).get("closed_early"), Some(&1));
    }

    #[test]
    fn a_worker_gone_from_proc_before_its_exit_record_still_gets_its_worker_exit() {
        use std::os::unix::process::CommandExt;
        // A real process with a worker's title, as /proc shows it.
        let mut child = std::process::Command::new("sleep")
            .arg0("nginx: worker process")
            .arg("60")
            .spawn()
            .expect("sleep runs");
        let pid = child.id();
        let mut s = session();
        s.traced.insert(pid);
        // `spawn` may return while the child is still in `execve()`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !procs::is_worker(pid) {
            assert!(std::time::Instant::now() < deadline, "sleep got no title");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(s.refresh_workers().unwrap());
        assert!(s.is_worker(pid));
        // It dies, and the worker set is refreshed before its exit record
        // is handled (a busy host): /proc no longer knows it.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(s.refresh_workers().unwrap());
        assert!(!s.shown_workers.as_ref().unwrap().contains(&pid));
        s.record(&fate_of(pid, 1, 10_000 * MS, None, 9)).unwrap();
        assert!(
            s.dead_workers.contains_key(&pid),
            "its exit is a worker's: its worker_exit event will be printed"
        );
    }

    #[test]
    fn a_close_by_a_local_backend_waits_for_its_exit_and_no_longer() {
        let mut s = session();
        // Told to end (SIGABRT from its parent 700), then its close...
        s.record(&fate_of(777, 0, 9_500 * MS, Some((6, 700)), 0))
            .unwrap();
        s.record(&closed_by(42, 777, 10_000 * MS)).unwrap();
        assert!(!s.peer_wait.is_empty(), "held for the exit");
        // Told to end: its exit is expected, and waited for longer.
        s.release_held(10_000 * MS + PEER_EXIT_WAIT_NS).unwrap();
        assert!(outcomes(&s).is_empty(), "not judged yet");
        // ...and its exit 3 ms later: judged at once, not at the deadline.
        s.record(&fate_of(777, 700, 10_003 * MS, None, 1 << 8))
            .unwrap();
        assert!(s.peer_wait.is_empty());
        assert_eq!(outcomes(&s).get("closed_early"), Some(&1));
        // A backend that lives on: judged when the wait is over.
        s.record(&closed_by(42, 888, 20_000 * MS)).unwrap();
        s.release_held(20_000 * MS + PEER_EXIT_WAIT_NS - 1).unwrap();
        assert_eq!(outcomes(&s).get("closed_early"), Some(&1));
        s.release_held(20_000 * MS + PEER_EXIT_WAIT_NS).unwrap();
        assert_eq!(outcomes(&s).get("closed_early"), Some(&2));
        // Already known dead (a SIGKILL's exit comes before the close): no wait.
        s.record(&fate_of(999, 700, 29_999 * MS, None, 9)).unwrap();
        s.record(&closed_by(42, 999, 30_000 * MS)).unwrap();
        assert!(s.peer_wait.is_empty());
        assert_eq!(outcomes(&s).get("closed_early"), Some(&3));
    }

    #[test]
    fn the_name_cache_stays_bounded_and_names_stay_right() {
        let mut s = session();
        for port in 1..=20_000u16 {
            let mut addr = UpstreamAddr::ZERO;
            addr.family = AF_INET;
            addr.port_be = port.to_be();
            addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
            assert_eq!(&*s.name(&addr).1, format!("127.0.0.1:{port}"));
            assert!(s.names.len() <= 4_096, "{} names cached", s.names.len());
        }
    }

    fn outcomes(s: &Session) -> BTreeMap<&'static str, u64> {
        s.summary
            .to_event()
            .upstreams
            .into_iter()
            .flat_map(|u| u.outcomes)
            .collect()
    }

    #[test]
    fn a_give_up_followed_by_its_client_leaving_is_client_closed() {
        let mut s = session();
        s.record(&gave_up(42, 10_000 * MS)).unwrap();
        assert!(outcomes(&s).is_empty(), "held until judged");
        s.record(&client_gone(
            42,
            10_000 * MS,
            10_000 * MS,
            10_000 * MS + 40_000,
        ))
        .unwrap();
        assert_eq!(outcomes(&s), BTreeMap::from([("client_closed", 1)]));
        assert!(s.held.is_empty());
    }

    #[test]
    fn a_give_up_nobody_claims_is_nginx_timing_out_once_the_wait_is_over() {
        let mut s = session();
        s.record(&gave_up(42, 10_000 * MS)).unwrap();
        s.release_held(10_000 * MS + CLIENT_GONE_WAIT_NS - 1)
            .unwrap();
        assert!(outcomes(&s).is_empty(), "still within the wait");
        s.release_held(10_000 * MS + CLIENT_GONE_WAIT_NS).unwrap();
        assert_eq!(outcomes(&s), BTreeMap::from([("no_response", 1)]));
    }

    #[test]
    fn another_worker_or_a_late_close_claims_nothing() {
        let mut s = session();
        s.record(&gave_up(42, 10_000 * MS)).unwrap();
        s.record(&client_gone(43, 10_000 * MS, 10_000 * MS, 10_000 * MS + 1))
            .unwrap();
        s.record(&client_gone(
            42,
            10_000 * MS,
            10_000 * MS,
            10_000 * MS + CLIENT_GONE_WAIT_NS + 1,
        ))
        .unwrap();
        s.release_held(u64::MAX).unwrap();
        assert_eq!(outcomes(&s), BTreeMap::from([("no_response", 1)]));
    }

    #[test]
    fn many_workers_giving_up_at_once_each_get_their_own_client_closes() {
        // 40 workers, 50 give-ups each, interleaved; every client leaves
        // but those of the even give-ups of worker 7.
        let mut s = session();
        for i in 0..50u64 {
            for w in 0..40u32 {
                s.record(&gave_up(100 + w, 10_000 * MS + i * 1_000 + u64::from(w)))
                    .unwrap();
            }
        }
        for w in 0..40u32 {
            for i in 0..50u64 {
                let end = 10_000 * MS + i * 1_000 + u64::from(w);
                if w == 7 && i % 2 == 0 {
                    continue;
                }
                s.record(&client_gone(100 + w, end, end, end + 10_000))
                    .unwrap();
            }
        }
        s.release_held(u64::MAX).unwrap();
        assert_eq!(
            outcomes(&s),
            BTreeMap::from([("client_closed", 1975), ("no_response", 25)])
        );
        assert!(s.held.is_empty());
    }

    #[test]
    fn one_client_close_claims_every_give_up_of_its_range() {
        // An HTTP/2 connection dropped: every stream given up on, one close.
        let mut s = session();
        for end in [10_000 * MS, 10_000 * MS + 10_000, 10_000 * MS + 20_000] {
            s.record(&gave_up(42, end)).unwrap();
        }
        s.record(&gave_up(42, 10_500 * MS)).unwrap();
        s.record(&client_gone(
            42,
            10_000 * MS,
            10_000 * MS + 20_000,
            10_000 * MS + 30_000,
        ))
        .unwrap();
        s.release_held(u64::MAX).unwrap();
        assert_eq!(
            outcomes(&s),
            BTreeMap::from([("client_closed", 3), ("no_response", 1)])
        );
    }
}
