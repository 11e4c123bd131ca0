//! One tracing session: turns kernel records into events, follows the set
//! of traced workers, reports lost events, and sums up at the end.
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    io,
    rc::Rc,
};

use ngx_trace_common::{End, Exchange, Phase, UpstreamAddr};

use crate::{
    clock::{Clock, rfc3339_micros},
    event::{LostEvent, PendingEvent, UpstreamEvent, WorkersEvent},
    histogram::Histograms,
    output::{Output, notice},
    proc_net, procs,
    records::{Facts, Finished, ProcessChange, Record, Transport, facts, upstream_name},
    summary::Summary,
    timings::Timings,
    verdict::{Outcome, Verdict, explain},
};

/// How long an exchange nginx gave up on waits for the kernel's word that
/// its client had left (a record written microseconds after it, in the same
/// worker thread) before it is judged as nginx's own timeout.
const CLIENT_GONE_WAIT_NS: u64 = 200_000_000;

/// Least time between two reports of hooks skipped alone (they rise in
/// bursts; one line per second would bury the events).
const SKIPPED_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
    held: VecDeque<Finished>,
    /// Upstream names by address: formatted once, not per exchange.
    names: HashMap<UpstreamAddr, (Transport, Rc<str>)>,
    /// Traced nginx processes (not threads).
    traced: BTreeSet<u32>,
    /// The worker set last printed.
    shown_workers: Option<BTreeSet<u32>>,
    /// Lost records already reported.
    lost_reported: u64,
    /// Hooks skipped by the kernel, as last reported, and when.
    skipped_reported: u64,
    skipped_reported_at: Option<std::time::Instant>,
    /// Records user space could not decode.
    bad_records: u64,
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
            held: VecDeque::new(),
            names: HashMap::new(),
            traced,
            shown_workers: None,
            lost_reported: 0,
            skipped_reported: 0,
            skipped_reported_at: None,
            bad_records: 0,
        }
    }

    /// Handles one raw ring-buffer record; one that does not decode is
    /// counted and reported with the lost records.
    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match crate::records::decode(bytes) {
            Ok(Record::Upstream(x)) if x.end.is_nginx_giving_up() => {
                self.held.push_back(x);
                Ok(())
            }
            Ok(Record::Upstream(x)) => self.exchange(&x),
            Ok(Record::ClientGone {
                worker_pid,
                first_giveup_ns,
                last_giveup_ns,
                closed_ns,
            }) => self.client_gone(worker_pid, first_giveup_ns..=last_giveup_ns, closed_ns),
            Ok(Record::Process(change)) => {
                match change {
                    ProcessChange::Fork { pid } | ProcessChange::Exec { pid }
                        if procs::is_process(pid) =>
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
        let (left, kept): (VecDeque<Finished>, VecDeque<Finished>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|x| x.facts.worker_pid == worker_pid && giveups.contains(&x.end_ns));
        self.held = kept;
        for mut x in left {
            x.client_left = true;
            self.exchange(&x)?;
        }
        Ok(())
    }

    /// Judges the held give-ups that ended before `now_ns` minus the wait
    /// for a client-gone record (all of them when `now_ns` is `u64::MAX`).
    pub fn release_held(&mut self, now_ns: u64) -> io::Result<()> {
        while let Some(x) = self.held.front() {
            if x.end_ns.saturating_add(CLIENT_GONE_WAIT_NS) > now_ns {
                break;
            }
            if let Some(x) = self.held.pop_front() {
                self.exchange(&x)?;
            }
        }
        Ok(())
    }

    /// The transport and name of an upstream, cached (bounded: cleared when
    /// a host has seen more upstreams than any configuration has).
    fn name(&mut self, addr: &UpstreamAddr) -> (Transport, Rc<str>) {
        if self.names.len() > 65_536 {
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
        let (transport, upstream) = self.name(&x.facts.addr);
        let explanation = explain(x, transport, &upstream, self.slow_us);
        self.summary.add(&upstream, explanation.outcome);
        if explanation.outcome == Outcome::ClientClosed {
            // Its wait measures the client's patience, not the upstream.
            let connect_only = Timings {
                connect: explanation.timings.connect,
                ..Timings::default()
            };
            self.histograms.record(&upstream, &connect_only);
        } else {
            self.histograms.record(&upstream, &explanation.timings);
        }
        let routine = explanation.outcome == Outcome::Ok && explanation.verdict == Verdict::Healthy;
        if routine && !self.all {
            return Ok(());
        }
        let time = rfc3339_micros(self.clock.wall(x.end_ns));
        let event = UpstreamEvent::new(time, &x.facts, transport, &upstream, explanation);
        self.out.event(&event, || event.to_text())
    }

    /// The `pending` event of an exchange still under way at `now_ns`:
    /// waiting for its answer, or still connecting. Judged as if nginx gave
    /// up now: the verdict so far.
    fn pending_event(
        &mut self,
        f: &Facts,
        now_ns: u64,
        cut_by_stop: bool,
        tables: &mut proc_net::Tables,
    ) -> PendingEvent {
        let (transport, upstream) = self.name(&f.addr);
        let mut f = *f;
        if transport == Transport::Tcp
            && f.connected
            && f.acked_ns == 0
            && let Some(fd) = f.fd
        {
            // No hook runs on a pure ACK: ask the kernel's socket table
            // whether anything written is still unacknowledged.
            f.acked_live = tables.unacked(f.worker_pid, fd) == Some(0);
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
            cut_by_stop,
        }
    }

    /// Reports, once each, the exchanges in `conns` (the kernel's in-flight
    /// state) that have waited `--slow` or longer for their first byte.
    pub fn report_pending(
        &mut self,
        conns: impl Iterator<Item = (u64, Exchange)>,
        now_ns: u64,
    ) -> io::Result<()> {
        let mut still_waiting = HashSet::new();
        let mut tables = proc_net::Tables::default();
        for (sk, ex) in conns {
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
            let event = self.pending_event(&f, now_ns, false, &mut tables);
            self.out.event(&event, || event.to_text())?;
        }
        // Forget exchanges that ended, keeping the set bounded.
        self.pending_shown = still_waiting;
        Ok(())
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

    /// Prints the worker set if it changed since last printed. Workers are
    /// told from the master by their title, which a new worker sets a moment
    /// after fork, hence a periodic check rather than one per fork.
    /// Returns whether the set changed.
    pub fn refresh_workers(&mut self) -> io::Result<bool> {
        self.traced.retain(|&pid| procs::is_process(pid));
        let workers: BTreeSet<u32> = self
            .traced
            .iter()
            .copied()
            .filter(|&pid| procs::is_worker(pid))
            .collect();
        if self.shown_workers.as_ref() == Some(&workers) {
            return Ok(false);
        }
        let event = WorkersEvent::new(workers.iter().copied().collect());
        self.out.event(&event, || event.to_text())?;
        if workers.is_empty() && self.out.is_json() {
            // Text mode said it on stdout already.
            notice("no nginx worker running: waiting for nginx to start");
        }
        self.shown_workers = Some(workers);
        Ok(true)
    }

    /// Reports records lost since the last call; `lost` is the kernel's
    /// running total per cause (ring buffer full, map full), `skipped` of
    /// the times it skipped a program (events that may be missing, not
    /// counted as lost: most are hooks on other processes' sockets). A rise
    /// of `skipped` alone is reported at most every 10 s, and at the `last`
    /// call.
    pub fn report_lost(&mut self, lost: [u64; 2], skipped: u64, last: bool) -> io::Result<()> {
        let total = lost.iter().sum::<u64>() + self.bad_records;
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
            lost[0],
            lost[1],
            self.bad_records,
            skipped,
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
        let mut tables = proc_net::Tables::default();
        for (_, ex) in conns {
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
                let event = self.pending_event(&f, now_ns, true, &mut tables);
                self.summary.add_cut_by_stop(&event.upstream);
                self.out.event(&event, || event.to_text())?;
            }
        }
        self.report_histograms()?;
        let summary = self.summary.to_event();
        self.out.event(&summary, || self.summary.to_text())
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{
        AF_INET, ClientGoneRecord, FLAG_CONNECTED, RECORD_CLIENT_GONE, RECORD_UPSTREAM,
        UpstreamRecord,
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

    fn outcomes(s: &Session) -> BTreeMap<&'static str, u64> {
        s.summary
            .to_event()
            .upstreams
            .into_iter()
            .flat_map(|u| u.outcomes)
            .collect()
    }

    use std::collections::BTreeMap;

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
