//! One tracing session: turns kernel records into events, follows the set
//! of traced workers, reports lost events, and sums up at the end.
use std::{collections::BTreeSet, io};

use serde_json::json;

use crate::{
    classify::{ConnectEnd, ConnectFacts, explain_connect},
    clock::{Clock, rfc3339_micros},
    event::UpstreamEvent,
    output::{Output, notice},
    procs,
    records::{Record, upstream_name},
    summary::Summary,
};
use ngx_trace_common::{FLAG_RESET_SEEN, PROC_EXEC, PROC_EXIT, PROC_FORK};

/// State of a tracing session.
pub struct Session {
    out: Output,
    all: bool,
    clock: Clock,
    summary: Summary,
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
    /// A session printing to `out`, tracing `traced` at first.
    pub fn new(out: Output, all: bool, traced: BTreeSet<u32>) -> Self {
        Self {
            out,
            all,
            clock: Clock::new(),
            summary: Summary::default(),
            traced,
            shown_workers: None,
            lost_reported: 0,
            bad_records: 0,
        }
    }

    /// Handles one raw ring-buffer record.
    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match crate::records::decode(bytes) {
            Ok(Record::Upstream(r)) => {
                let Some(end) = ConnectEnd::from_record(r.end, r.errno) else {
                    self.bad_records += 1;
                    return Ok(());
                };
                let (transport, upstream) = upstream_name(&r.addr);
                let facts = ConnectFacts {
                    transport,
                    upstream,
                    end,
                    elapsed_us: r.end_ns.saturating_sub(r.start_ns) / 1000,
                    syn_retransmits: r.syn_retransmits,
                    reset_seen: r.flags & FLAG_RESET_SEEN != 0,
                };
                let explanation = explain_connect(&facts);
                self.summary.add(&facts.upstream, explanation.outcome);
                if explanation.outcome == crate::classify::Outcome::Ok && !self.all {
                    return Ok(());
                }
                let time = rfc3339_micros(self.clock.wall(r.end_ns));
                let event = UpstreamEvent::connect(time, r.tgid, &facts, explanation);
                self.out.event(&event, || event.to_text())
            }
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

    /// Prints the worker set if it changed since last printed. Workers are
    /// told from the master by their title, which a new worker sets a moment
    /// after fork, hence a periodic check rather than one per fork.
    pub fn refresh_workers(&mut self) -> io::Result<()> {
        self.traced.retain(|&pid| procs::is_process(pid));
        let workers: BTreeSet<u32> = self
            .traced
            .iter()
            .copied()
            .filter(|&pid| procs::is_worker(pid))
            .collect();
        if self.shown_workers.as_ref() == Some(&workers) {
            return Ok(());
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
        Ok(())
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

    /// Prints the per-upstream summary.
    pub fn finish(&self) -> io::Result<()> {
        let summary = self.summary.to_json();
        self.out.event(&summary, || self.summary.to_text())
    }
}
