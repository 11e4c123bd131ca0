//! One tracing session: turns kernel records into events, follows the set
//! of traced workers, reports lost events, and sums up at the end.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    rc::Rc,
};

use ngx_trace_common::{
    END_NGINX_CLOSED, END_RESPONSE_DONE, Exchange, FLAG_CONNECTED, PHASE_RECEIVING, PHASE_SENDING,
    PROC_EXEC, PROC_EXIT, PROC_FORK, UpstreamAddr,
};
use serde_json::json;

use crate::{
    classify::{Outcome, Verdict, explain},
    clock::{Clock, rfc3339_micros},
    event::{PendingEvent, UpstreamEvent},
    histogram::Histograms,
    output::{Output, notice},
    procs,
    records::{Record, Transport, upstream_name},
    summary::Summary,
};

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
    /// Upstream names by address: formatted once, not per exchange.
    names: HashMap<UpstreamAddr, (Transport, Rc<str>)>,
    /// Traced nginx processes (not threads).
    traced: BTreeSet<u32>,
    /// The worker set last printed.
    shown_workers: Option<BTreeSet<u32>>,
    /// Lost records already reported.
    lost_reported: u64,
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
            names: HashMap::new(),
            traced,
            shown_workers: None,
            lost_reported: 0,
            bad_records: 0,
        }
    }

    /// Handles one raw ring-buffer record.
    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match crate::records::decode(bytes) {
            Ok(Record::Upstream(r)) => self.exchange(&r.exchange),
            Ok(Record::Process(p)) => {
                match p.what {
                    PROC_FORK | PROC_EXEC if procs::is_process(p.pid) => {
                        self.traced.insert(p.pid);
                    }
                    PROC_EXIT => {
                        self.traced.remove(&p.pid);
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
    fn exchange(&mut self, ex: &Exchange) -> io::Result<()> {
        let (transport, upstream) = self.name(&ex.addr);
        let explanation = explain(ex, transport, &upstream, self.slow_us);
        self.summary.add(&upstream, explanation.outcome);
        self.histograms.record(&upstream, &explanation.timings);
        let routine = explanation.outcome == Outcome::Ok && explanation.verdict == Verdict::Healthy;
        if routine && !self.all {
            return Ok(());
        }
        let time = rfc3339_micros(self.clock.wall(ex.end_ns));
        let event = UpstreamEvent::new(time, ex, transport, &upstream, explanation);
        self.out.event(&event, || event.to_text())
    }

    /// Reports, once each, the exchanges in `conns` (the kernel's in-flight
    /// state) that have waited `--slow` or longer for their first byte.
    pub fn report_pending(
        &mut self,
        conns: impl Iterator<Item = (u64, Exchange)>,
        now_ns: u64,
    ) -> io::Result<()> {
        let mut still_waiting = HashSet::new();
        for (sk, ex) in conns {
            if ex.phase != PHASE_SENDING || ex.resp_kernel_ns != 0 || ex.flags & FLAG_CONNECTED == 0
            {
                continue;
            }
            let key = (sk, ex.index, ex.req_first_ns);
            let waited_us = now_ns.saturating_sub(ex.req_last_ns) / 1000;
            if waited_us < self.slow_us {
                continue;
            }
            still_waiting.insert(key);
            if self.pending_shown.contains(&key) {
                continue;
            }
            // Judged as if nginx gave up now: the verdict so far.
            let (transport, upstream) = self.name(&ex.addr);
            let mut so_far = ex;
            so_far.end = END_NGINX_CLOSED;
            so_far.end_ns = now_ns;
            let e = explain(&so_far, transport, &upstream, self.slow_us);
            let tcp = transport == Transport::Tcp;
            let event = PendingEvent {
                event: "pending",
                time: rfc3339_micros(self.clock.wall(now_ns)),
                worker_pid: ex.tgid,
                upstream: upstream.to_string(),
                transport: transport.as_str(),
                waiting_ms: waited_us / 1000,
                request_acked: tcp.then_some(e.timings.request_acked.is_some()),
                retransmits: tcp.then_some(ex.retransmits),
                verdict: e.verdict.as_str(),
                evidence: e.evidence,
            };
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
            for event in self.histograms.to_json() {
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
        let pids: Vec<u32> = workers.iter().copied().collect();
        let event = json!({"event": "workers", "pids": pids});
        self.out.event(&event, || {
            if pids.is_empty() {
                "no nginx worker running: waiting for nginx to start".into()
            } else {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("tracing nginx workers {}", list.join(" "))
            }
        })?;
        if workers.is_empty() && self.out.is_json() {
            // Text mode said it on stdout already.
            notice("no nginx worker running: waiting for nginx to start");
        }
        self.shown_workers = Some(workers);
        Ok(true)
    }

    /// Reports records lost since the last call; `lost` is the kernel's
    /// running total per cause (ring buffer full, map full).
    pub fn report_lost(&mut self, lost: [u64; 2]) -> io::Result<()> {
        let total = lost.iter().sum::<u64>() + self.bad_records;
        if total <= self.lost_reported {
            return Ok(());
        }
        let count = total - self.lost_reported;
        self.lost_reported = total;
        let event = json!({"event": "lost", "count": count});
        self.out.event(&event, || {
            format!(
                "lost {count} events (so far: ring buffer full {}, map full {}, undecodable {})",
                lost[0], lost[1], self.bad_records
            )
        })
    }

    /// Reports exchanges that got their response but were not ended by the
    /// kernel yet (a kept-alive connection waiting for its next request),
    /// then the histograms and the per-upstream summary.
    pub fn finish(
        &mut self,
        conns: impl Iterator<Item = (u64, Exchange)>,
        now_ns: u64,
    ) -> io::Result<()> {
        for (_, mut ex) in conns {
            if ex.phase == PHASE_RECEIVING {
                ex.end = END_RESPONSE_DONE;
                ex.end_ns = ex.resp_last_read_ns.min(now_ns);
                self.exchange(&ex)?;
            }
        }
        self.report_histograms()?;
        let summary = self.summary.to_json();
        self.out.event(&summary, || self.summary.to_text())
    }
}
