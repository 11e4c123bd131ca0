//! One tracing session: turns kernel records into events, follows the set
//! of traced workers, reports lost events, and sums up at the end.
//!
//! `mod.rs` holds the session and its way for a record: decode, hold or
//! judge, count, print. Each part it keeps is its own module, testable
//! alone: `workers` (which traced processes are workers), `worker_exits`
//! (workers that died and what they took), `peers` (a local backend's part
//! in the exchange it ended), `pending` and `under_way` (what is still in
//! flight), `lost` (records lost or skipped), `fd_counts` (descriptors at a
//! failed `socket()`), `names` (upstream names) and `side` (the side
//! thread's configuration reads and backend lookups).
mod fd_counts;
mod lost;
mod names;
mod peers;
mod pending;
mod side;
#[cfg(test)]
mod test_records;
mod under_way;
mod worker_exits;
mod workers;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io,
    rc::Rc,
};

use ngx_trace_common::{End, Exchange, Phase};

pub use self::under_way::UnderWay;
use self::{
    fd_counts::FdCounts,
    lost::LostTally,
    names::Names,
    side::SideWork,
    under_way::InFlight,
    worker_exits::{DeadWorkers, worker_exit_event},
    workers::Workers,
};
use crate::{
    diagnosis::accept_queue::AcceptQueues,
    diagnosis::fates::{self, Fact, FateLog, PeerFacts},
    diagnosis::held::Held,
    diagnosis::peer_wait::PeerWait,
    diagnosis::timings::Timings,
    diagnosis::unacked::Unacked,
    diagnosis::verdict::{Outcome, Verdict, explain},
    kernel::clock::{Clock, rfc3339_micros},
    kernel::records::{Finished, Record, Transport, facts, upstream_name},
    kernel::request_head::Waiting,
    nginx::backends::Backends,
    nginx::configs::Configs,
    nginx::procs,
    notice::notice,
    report::event::{LocationRef, UpstreamEvent, WorkersEvent},
    report::fold::Folding,
    report::histogram::Histograms,
    report::metrics::{self, Metrics, Route},
    report::output::Output,
    report::summary::Summary,
    slow::Done,
};

/// How long an exchange nginx gave up on waits for the kernel's word that
/// its client had left (a record written microseconds after it, in the same
/// worker thread) before it is judged as nginx's own timeout.
/// Longer than the kernel's window for that close (250 ms), with room for
/// the record's way through the ring buffer.
const CLIENT_GONE_WAIT_NS: u64 = 500_000_000;

/// The name of the upstream of a `socket()` that failed: nginx had chosen
/// one, but had not passed its address to the kernel yet.
const UNKNOWN_UPSTREAM: &str = "unknown";

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
    names: Names,
    /// The traced nginx processes, and which are workers.
    workers: Workers,
    /// Records lost, undecodable or skipped, and what was reported of them.
    lost: LostTally,
    /// Recent signals, OOM kills and exits of processes.
    fates: FateLog,
    /// The processes serving local upstreams.
    backends: Backends,
    /// Workers that exited, until their in-flight exchanges are collected.
    dead_workers: DeadWorkers,
    /// Descriptor counts of workers whose `socket()` failed.
    fd_counts: FdCounts,
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
    /// Configuration reads and backend lookups, off the drain's path.
    side: SideWork,
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
            names: Names::default(),
            workers: Workers::new(traced),
            lost: LostTally::default(),
            fates: FateLog::default(),
            backends: Backends::default(),
            dead_workers: DeadWorkers::default(),
            fd_counts: FdCounts::default(),
            export: None,
            configs: None,
            accept_queues: AcceptQueues::default(),
            unacked: Unacked::default(),
            folding: Folding::default(),
            under_way: Vec::new(),
            side: SideWork::start(),
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
        UnderWay::count(&self.under_way, &self.requests, |upstream, path| {
            self.place(upstream, path)
        })
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
        self.workers.shown().map_or(0, BTreeSet::len)
    }

    /// Records lost so far (as last reported).
    pub fn lost(&self) -> u64 {
        self.lost.reported()
    }

    /// Handles one raw ring-buffer record; one that does not decode is
    /// counted and reported with the lost records.
    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match crate::kernel::records::decode(bytes) {
            Ok(Record::Upstream(x)) if x.end.is_nginx_giving_up() => {
                self.held.push(x);
                Ok(())
            }
            Ok(Record::Upstream(x)) => match peers::exit_wait(&self.fates, &x) {
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
                self.workers.changed(change);
                Ok(())
            }
            Err(_) => {
                self.lost.bad_record();
                Ok(())
            }
        }
    }

    /// Keeps a fact about a process; a worker's exit starts the collection
    /// of the exchanges it took with it, and a process's exit releases the
    /// exchanges held for it (or for its parent) to be judged now.
    fn fate(&mut self, entry: fates::Entry) -> io::Result<()> {
        let exited = matches!(entry.fact, Fact::Exited { .. });
        let (pid, parent) = (entry.pid, entry.parent);
        if exited && self.workers.is_worker(pid) {
            self.workers.exited(pid);
            self.unacked.forget_worker(pid);
            self.dead_workers.died(pid, entry.time_ns);
        }
        self.fates.add(entry);
        if exited {
            for x in self.peer_wait.take_for([pid, parent]) {
                self.exchange(&x)?;
            }
        }
        Ok(())
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

    /// Explains, counts and (if it is to be shown) prints a finished exchange.
    fn exchange(&mut self, x: &Finished) -> io::Result<()> {
        let (transport, upstream) = if x.end == End::SocketFailed {
            (upstream_name(&x.facts.addr).0, Rc::from(UNKNOWN_UPSTREAM))
        } else {
            self.names.get(&x.facts.addr)
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
                let count = self
                    .fd_counts
                    .describe(x.facts.worker_pid, x.errno.unwrap_or(0));
                explanation.evidence = format!("{}: {count}", explanation.evidence);
            }
            Outcome::WorkerDied => self.dead_workers.took_one(x.facts.worker_pid),
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

    /// The backend process that held the other end of a local upstream's
    /// connection, if it died or was signalled during the exchange (see
    /// [`peers::peer_fate`]).
    fn peer_fate(&mut self, x: &Finished) -> Option<(PeerFacts, String, bool)> {
        if !peers::any_fate_during(&self.fates, x) {
            return None;
        }
        // Who serves it as last looked up (never waiting for /proc); never
        // looked up (a crash within the first moments of a new upstream):
        // asked now, for the next time, the kernel's hint serving now.
        self.side_work();
        self.side.look_up_backends(
            &mut self.backends,
            std::iter::once((&x.facts.addr, x.facts.worker_pid)),
        );
        peers::peer_fate(&self.fates, &self.backends, x)
    }

    /// Where events go.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// The nginx processes traced now.
    pub fn traced(&self) -> &BTreeSet<u32> {
        self.workers.traced()
    }

    /// For each worker that exited at least
    /// [`worker_exits::WORKER_SWEEP_WAIT_NS`] before `now_ns` (all of them
    /// when `now_ns` is `u64::MAX`): its exchanges still in `conns` (UNIX
    /// ones, whose close no hook sees) ended with it, an answered one done;
    /// then its `worker_exit` event, when it died of a signal, failed, or
    /// took exchanges with it. Returns the sockets to forget.
    fn collect_dead_workers(
        &mut self,
        conns: &[(u64, Exchange)],
        now_ns: u64,
    ) -> io::Result<Vec<u64>> {
        let mut forget = Vec::new();
        for (pid, dead) in self.dead_workers.due(now_ns) {
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
                .remove(pid)
                .map_or(dead.in_flight, |d| d.in_flight);
            if let Some(event) =
                worker_exit_event(&self.fates, &self.clock, pid, dead.time_ns, in_flight)
            {
                self.out.event(&event, || event.to_text())?;
            }
        }
        Ok(forget)
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
    /// in effect), backend lookups.
    fn side_work(&mut self) {
        for done in self.side.done() {
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
    }

    /// Prints the worker set if it changed since last printed (see
    /// [`Workers::look`]). Returns whether the set changed.
    pub fn refresh_workers(&mut self) -> io::Result<bool> {
        let Some(workers) = self.workers.look() else {
            return Ok(false);
        };
        let event = WorkersEvent::new(workers.iter().copied().collect());
        self.out.event(&event, || event.to_text())?;
        if workers.is_empty() && self.out.is_json() {
            // Text mode said it on stdout already.
            notice("no nginx worker running: waiting for nginx to start");
        }
        if let Some(configs) = &self.configs {
            // A reload forks new workers: read its configuration again
            // (read at start already for the first set; workers leaving
            // change nothing). Put in effect by `side_work`.
            if let Some(shown) = self.workers.shown()
                && workers.difference(shown).next().is_some()
            {
                let file = configs.file().map(std::path::Path::to_path_buf);
                self.side.read_configs(file, self.workers.traced().clone());
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
        self.workers.show(workers, std::time::Instant::now());
        Ok(true)
    }

    /// Reports records lost since the last call; `lost` is the kernel's
    /// running total per `LOST_*` slot, `skipped` of the times it skipped
    /// a program (events that may be missing, not counted as lost: most
    /// are hooks on other processes' sockets). Facts about other processes
    /// over the kernel's rate limit are not nginx records either: neither
    /// is in the count, and a rise of them alone is reported at most every
    /// 10 s, and at the `last` call.
    pub fn report_lost(
        &mut self,
        lost: [u64; ngx_trace_common::LOST_SLOTS as usize],
        skipped: u64,
        last: bool,
    ) -> io::Result<()> {
        let (total, event) = self
            .lost
            .take(lost, skipped, last, std::time::Instant::now());
        if let Some(metrics) = &self.export {
            metrics.set_lost(total);
        }
        match event {
            Some(event) => self.out.event(&event, || event.to_text()),
            None => Ok(()),
        }
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
                self.lost.bad_record();
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
    use super::{
        test_records::{MS, client_gone, closed_by, fate_of, gave_up, titled_worker},
        *,
    };
    use crate::diagnosis::peer_wait::PEER_EXIT_WAIT_NS;

    fn session() -> Session {
        Session::new(Output::capturing(), false, 1_000_000, BTreeSet::new())
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
    fn a_remote_peers_close_is_judged_at_once() {
        let mut s = session();
        let mut remote = closed_by(42, 777, 10_000 * MS);
        // The same record with a remote address: judged at once.
        let at = std::mem::offset_of!(ngx_trace_common::UpstreamRecord, exchange)
            + std::mem::offset_of!(Exchange, addr)
            + std::mem::offset_of!(ngx_trace_common::UpstreamAddr, data);
        remote[at..at + 4].copy_from_slice(&[10, 1, 2, 3]);
        s.record(&remote).unwrap();
        assert!(s.peer_wait.is_empty());
        assert_eq!(outcomes(&s).get("closed_early"), Some(&1));
    }

    #[test]
    fn a_worker_gone_from_proc_before_its_exit_record_still_gets_its_worker_exit() {
        let mut child = titled_worker();
        let pid = child.id();
        let mut s = Session::new(Output::capturing(), false, 1_000_000, BTreeSet::from([pid]));
        assert!(s.refresh_workers().unwrap());
        assert_eq!(s.workers(), 1);
        // It dies, and the worker set is refreshed before its exit record
        // is handled (a busy host): /proc no longer knows it.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(s.refresh_workers().unwrap());
        assert_eq!(s.workers(), 0);
        s.record(&fate_of(pid, 1, 10_000 * MS, None, 9)).unwrap();
        assert!(
            s.dead_workers.contains(pid),
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
