//! The traced nginx processes, and which of them are workers. Workers are
//! told from their master by their title, which a new worker sets a
//! moment after fork: the set is looked at periodically rather than at
//! each fork. A worker that left the set stays one for a minute, for its
//! exit record: a dying worker loses its title (`/proc/PID/cmdline` reads
//! empty once its memory is released) before that record is handled.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{kernel::records::ProcessChange, nginx::procs, notice::notice};

/// How long a worker that left the worker set still counts as one for its
/// exit record (records arrive within a second; a minute is generous).
const LEFT_WORKER_KEPT: Duration = Duration::from_secs(60);

/// The most workers remembered as left (a reload of many instances).
const MAX_LEFT_WORKERS: usize = 4096;

/// The traced processes and the worker set last shown.
#[derive(Debug)]
pub(super) struct Workers {
    /// Traced nginx processes (not threads).
    traced: BTreeSet<u32>,
    /// The worker set last shown.
    shown: Option<BTreeSet<u32>>,
    /// Workers that left that set, and when.
    left: BTreeMap<u32, Instant>,
    /// Whether reading `/proc` failed for want of descriptors (said once).
    short_of_fds_said: bool,
}

impl Workers {
    /// Tracing `traced` at first.
    pub(super) fn new(traced: BTreeSet<u32>) -> Self {
        Self {
            traced,
            shown: None,
            left: BTreeMap::new(),
            short_of_fds_said: false,
        }
    }

    /// The nginx processes traced now.
    pub(super) fn traced(&self) -> &BTreeSet<u32> {
        &self.traced
    }

    /// The worker set last shown (`None` before the first).
    pub(super) fn shown(&self) -> Option<&BTreeSet<u32>> {
        self.shown.as_ref()
    }

    /// Follows a traced process's fork, exec or exit.
    pub(super) fn changed(&mut self, change: ProcessChange) {
        match change {
            // Unknown for want of descriptors: taken, the next look at the
            // workers drops it if it is a thread.
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
    }

    /// Whether `pid` is (was) one of the traced workers.
    pub(super) fn is_worker(&self, pid: u32) -> bool {
        self.shown.as_ref().is_some_and(|w| w.contains(&pid))
            || self
                .left
                .get(&pid)
                .is_some_and(|left| left.elapsed() < LEFT_WORKER_KEPT)
            || (self.traced.contains(&pid) && procs::is_worker(pid))
    }

    /// Worker `pid` exited: its exit record is handled, it is no longer
    /// kept as left.
    pub(super) fn exited(&mut self, pid: u32) {
        self.left.remove(&pid);
    }

    /// Looks at `/proc`: drops the traced processes that are gone, and
    /// returns the workers among the rest if they differ from the set last
    /// shown. Out of descriptors (EMFILE, ENFILE), `/proc` says nothing
    /// about a process: it stays as it was rather than count as gone for
    /// good (said once).
    pub(super) fn look(&mut self) -> Option<BTreeSet<u32>> {
        let mut short_of_fds = None;
        self.traced.retain(|&pid| match procs::process_exists(pid) {
            Ok(exists) => exists,
            Err(e) => {
                short_of_fds = Some(e);
                true
            }
        });
        let shown = self.shown.as_ref();
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
        (self.shown.as_ref() != Some(&workers)).then_some(workers)
    }

    /// `workers` is shown at `now`: those that left the set are kept as
    /// left; those left long ago (without an exit record: lost, or a pid
    /// reused) are forgotten, and at most [`MAX_LEFT_WORKERS`] are kept.
    pub(super) fn show(&mut self, workers: BTreeSet<u32>, now: Instant) {
        if let Some(shown) = &self.shown {
            self.left
                .extend(shown.difference(&workers).map(|&pid| (pid, now)));
        }
        self.left
            .retain(|_, left| now.duration_since(*left) < LEFT_WORKER_KEPT);
        while self.left.len() > MAX_LEFT_WORKERS {
            self.left.pop_first();
        }
        self.shown = Some(workers);
    }
}

#[cfg(test)]
mod tests {
    use super::{super::test_records::titled_worker, *};

    #[test]
    fn a_worker_gone_from_proc_stays_a_worker_for_its_exit_record() {
        let mut child = titled_worker();
        let pid = child.id();
        let mut workers = Workers::new(BTreeSet::from([pid]));
        let set = workers.look().expect("a new worker set");
        assert_eq!(set, BTreeSet::from([pid]));
        workers.show(set, Instant::now());
        assert_eq!(workers.look(), None, "unchanged");
        assert!(workers.is_worker(pid));
        // It dies: /proc no longer knows it, the set is empty...
        child.kill().unwrap();
        child.wait().unwrap();
        let set = workers.look().expect("the worker left");
        assert!(set.is_empty());
        assert!(workers.traced().is_empty(), "gone processes are not traced");
        workers.show(set, Instant::now());
        // ...yet it is still a worker for its exit record, until that.
        assert!(workers.is_worker(pid));
        workers.exited(pid);
        assert!(!workers.is_worker(pid));
    }

    #[test]
    fn workers_left_are_forgotten_after_a_minute_and_bounded() {
        let t0 = Instant::now();
        let mut workers = Workers::new(BTreeSet::new());
        let many: BTreeSet<u32> = (1..=MAX_LEFT_WORKERS as u32 + 10).collect();
        workers.show(many, t0);
        workers.show(BTreeSet::new(), t0);
        assert_eq!(workers.left.len(), MAX_LEFT_WORKERS);
        assert!(
            !workers.left.contains_key(&1),
            "the lowest pids go first past the bound"
        );
        workers.show(BTreeSet::new(), t0 + LEFT_WORKER_KEPT);
        assert!(workers.left.is_empty());
    }

    #[test]
    fn forks_and_execs_are_traced_and_exits_are_not() {
        let me = std::process::id();
        let mut workers = Workers::new(BTreeSet::new());
        workers.changed(ProcessChange::Fork { pid: me });
        assert!(workers.traced().contains(&me));
        workers.changed(ProcessChange::Exit { pid: me });
        assert!(workers.traced().is_empty());
        workers.changed(ProcessChange::Exec { pid: me });
        assert!(workers.traced().contains(&me));
        // A fork that is already gone is not taken.
        workers.changed(ProcessChange::Fork { pid: u32::MAX });
        assert!(!workers.traced().contains(&u32::MAX));
    }
}
