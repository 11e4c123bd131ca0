//! Workers that exited: the exchanges they took with them, collected once
//! the kernel has had time to close their TCP sockets, and their
//! `worker_exit` event in nginx's words.
use std::collections::BTreeMap;

use crate::{
    diagnosis::fates::{self, FateFacts, FateKind, FateLog},
    kernel::clock::{Clock, rfc3339_micros},
    report::event::WorkerExitEvent,
};

/// How long after a worker's exit its exchanges still in the kernel's map
/// are taken as lost with it: its TCP sockets are closed by its exit within
/// milliseconds (the kernel reports those itself), its UNIX ones never are.
pub(super) const WORKER_SWEEP_WAIT_NS: u64 = 250_000_000;

/// How far back a worker's fate is looked for, from its exit.
const FATE_LOOKBACK_NS: u64 = 60_000_000_000;

/// A worker that exited, its exchanges being collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DeadWorker {
    /// When it exited.
    pub time_ns: u64,
    /// Exchanges it took with it so far.
    pub in_flight: u32,
}

/// Workers that exited, until their in-flight exchanges are collected.
#[derive(Debug, Default)]
pub(super) struct DeadWorkers(BTreeMap<u32, DeadWorker>);

impl DeadWorkers {
    /// Worker `pid` exited at `time_ns`.
    pub(super) fn died(&mut self, pid: u32, time_ns: u64) {
        self.0.insert(
            pid,
            DeadWorker {
                time_ns,
                in_flight: 0,
            },
        );
    }

    /// An exchange of worker `pid` ended with it (if it is known dead).
    pub(super) fn took_one(&mut self, pid: u32) {
        if let Some(dead) = self.0.get_mut(&pid) {
            dead.in_flight += 1;
        }
    }

    /// The workers that exited at least [`WORKER_SWEEP_WAIT_NS`] before
    /// `now_ns` (all of them at `u64::MAX`).
    pub(super) fn due(&self, now_ns: u64) -> Vec<(u32, DeadWorker)> {
        self.0
            .iter()
            .filter(|(_, d)| d.time_ns.saturating_add(WORKER_SWEEP_WAIT_NS) <= now_ns)
            .map(|(&pid, &d)| (pid, d))
            .collect()
    }

    /// Worker `pid`, collected: forgotten, with what it took.
    pub(super) fn remove(&mut self, pid: u32) -> Option<DeadWorker> {
        self.0.remove(&pid)
    }

    /// Whether worker `pid` is known dead and not collected yet.
    #[cfg(test)]
    pub(super) fn contains(&self, pid: u32) -> bool {
        self.0.contains_key(&pid)
    }
}

/// The `worker_exit` event of worker `pid`, which exited at `time_ns` with
/// `in_flight` exchanges, in nginx's own words ("worker process N exited
/// on signal 9"); `None` when it ended quietly (status 0, nothing in
/// flight: a reload or a stop) or nothing is known of its end.
pub(super) fn worker_exit_event(
    fates: &FateLog,
    clock: &Clock,
    pid: u32,
    time_ns: u64,
    in_flight: u32,
) -> Option<WorkerExitEvent> {
    let fate = fates.fate(pid, time_ns.saturating_sub(FATE_LOOKBACK_NS), time_ns)?;
    if in_flight == 0 && fate.kind == FateKind::Exited && fate.exit_status == Some(0) {
        return None;
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
    Some(WorkerExitEvent {
        event: "worker_exit",
        time: rfc3339_micros(clock.wall(time_ns)),
        worker_pid: pid,
        fate: FateFacts::of(&fate, true),
        in_flight,
        nginx_error,
        evidence: format!("nginx worker {pid} {}", fates::what_befell(&fate)),
    })
}

#[cfg(test)]
mod tests {
    use super::{super::test_records::fate_entry, *};

    const MS: u64 = 1_000_000;

    #[test]
    fn a_worker_is_collected_once_the_kernel_had_time_to_close_its_sockets() {
        let mut dead = DeadWorkers::default();
        dead.died(42, 1_000 * MS);
        dead.took_one(42);
        dead.took_one(43);
        assert!(dead.due(1_000 * MS + WORKER_SWEEP_WAIT_NS - 1).is_empty());
        let due = dead.due(1_000 * MS + WORKER_SWEEP_WAIT_NS);
        let expected = DeadWorker {
            time_ns: 1_000 * MS,
            in_flight: 1,
        };
        assert_eq!(due, vec![(42, expected)]);
        assert_eq!(dead.remove(42), Some(expected));
        assert!(!dead.contains(42));
    }

    #[test]
    fn a_killed_worker_is_said_in_nginxs_words_and_a_quiet_exit_not_at_all() {
        let clock = Clock::new();
        let mut fates = FateLog::default();
        // SIGSEGV, core dumped: the kernel's exit code 0x80 | 11.
        fates.add(fate_entry(42, 1, 10_000 * MS, None, 0x80 | 11));
        let event = worker_exit_event(&fates, &clock, 42, 10_000 * MS, 2).expect("an event");
        assert_eq!(
            event.nginx_error,
            "worker process 42 exited on signal 11 (core dumped)"
        );
        assert_eq!(event.in_flight, 2);
        // Exit status 1: a failure.
        fates.add(fate_entry(43, 1, 11_000 * MS, None, 1 << 8));
        let event = worker_exit_event(&fates, &clock, 43, 11_000 * MS, 0).expect("an event");
        assert_eq!(event.nginx_error, "worker process 43 exited with code 1");
        // Status 0 with nothing in flight: a reload, not an event...
        fates.add(fate_entry(44, 1, 12_000 * MS, None, 0));
        assert!(worker_exit_event(&fates, &clock, 44, 12_000 * MS, 0).is_none());
        // ...unless it took exchanges with it.
        assert!(worker_exit_event(&fates, &clock, 44, 12_000 * MS, 1).is_some());
        // Nothing known of it: nothing said.
        assert!(worker_exit_event(&fates, &clock, 45, 12_000 * MS, 1).is_none());
    }
}
