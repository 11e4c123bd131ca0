//! Exchanges still under way: the `pending` event of each that has waited
//! `--slow` or longer for its answer (once each), the in-flight counts and
//! metrics, and the exchanges dead workers took with them.
use std::{collections::HashSet, io};

use ngx_trace_common::{End, Exchange};

use super::{Session, under_way::InFlight};
use crate::{
    diagnosis::verdict::explain,
    kernel::{
        clock::rfc3339_micros,
        records::{Facts, Finished, Transport, facts},
    },
    report::{event::PendingEvent, metrics::Route},
};

impl Session {
    /// The `pending` event of an exchange still under way at `now_ns`:
    /// waiting for its answer, or still connecting. Judged as if nginx gave
    /// up now: the verdict so far.
    pub(super) fn pending_event(
        &mut self,
        f: &Facts,
        now_ns: u64,
        cut_by_stop: bool,
    ) -> PendingEvent {
        let (transport, upstream) = self.names.get(&f.addr);
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
        self.side.look_up_backends(
            &mut self.backends,
            conns.iter().map(|(_, ex)| (&ex.addr, ex.tgid)),
        );
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
                let (transport, upstream) = self.names.get(&f.addr);
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{
        super::test_records::{MS, loopback, waiting},
        *,
    };
    use crate::report::output::Output;

    #[test]
    fn an_exchange_waiting_past_slow_is_reported_once_and_counted_while_it_waits() {
        // --slow 1 s.
        let mut s = Session::new(Output::capturing(), false, 1_000_000, BTreeSet::new());
        // A worker pid no process has (above the kernel's PID_MAX_LIMIT):
        // the pending exchange's socket is never asked of a real process.
        const WORKER: u32 = 1 << 23;
        let now = 100_000 * MS;
        let slow = waiting(WORKER, loopback(8080), now, 1_500 * MS);
        let quick = waiting(WORKER, loopback(8081), now, 200 * MS);
        let conns = || [(1, slow), (2, quick)].into_iter();
        assert!(s.report_pending(conns(), now).unwrap().is_empty());
        let events = s.output().take_captured();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["event"], "pending");
        assert_eq!(events[0]["upstream"], "127.0.0.1:8080");
        assert_eq!(events[0]["waiting_ms"], 1_500);
        // Both are under way; the quick one too.
        let under_way = s.under_way();
        assert_eq!(under_way.by_upstream.len(), 2);
        // Still waiting at the next look: not reported again.
        s.report_pending(conns(), now + 250 * MS).unwrap();
        assert!(s.output().take_captured().is_empty());
        // It ended; a new exchange on the same socket is a new one.
        let next = waiting(WORKER, loopback(8080), now + 5_000 * MS, 1_100 * MS);
        s.report_pending([(1, next)].into_iter(), now + 5_000 * MS)
            .unwrap();
        assert_eq!(s.output().take_captured().len(), 1);
        assert_eq!(s.under_way().by_upstream.len(), 1);
    }
}
