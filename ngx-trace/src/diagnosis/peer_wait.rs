//! Exchanges a local backend ended by its close or reset, held a moment
//! for that backend's exit: a process that closes its connections on its
//! way out (a worker leaving from a signal handler, an application
//! server's child shutting down) dies tens of milliseconds after nginx
//! sees the close, and judged at the close it would read as a backend that
//! chose to hang up. Holding is not waiting: the reader goes on draining,
//! and a held exchange is judged when the exit arrives or its time is up.
use std::collections::VecDeque;

use crate::kernel::records::Finished;

/// How long an exchange waits for its peer's exit, from its end, when the
/// peer was told to end (sent a signal that ends a process): its exit is
/// expected. Measured on real backends (`tests/tests/process_faults.rs`,
/// printed by the gunicorn test): gunicorn's sync worker, sent SIGABRT by
/// its arbiter, closes nginx's connection 34 to 66 ms before it exits
/// (Python's shutdown in between) on an idle host; a loaded host or an
/// emulated VM takes several times that. Only such exchanges wait this
/// long.
pub const SIGNALLED_PEER_WAIT_NS: u64 = 2_000_000_000;

/// The same for a peer nothing told to end: a process that closes and
/// then exits of itself is rarer, and a backend merely hanging up must not
/// be reported late. Within the one second the reports keep to.
pub const PEER_EXIT_WAIT_NS: u64 = 200_000_000;

/// Most exchanges held at once: past it the oldest is judged at once (a
/// burst of resets from a live backend must not grow memory).
const MAX_HELD: usize = 4_096;

/// The held exchanges, oldest first, each with the time it is due.
#[derive(Debug, Default)]
pub struct PeerWait {
    queue: VecDeque<(u64, Finished)>,
}

impl PeerWait {
    /// Holds `x` until `wait_ns` after its end; returns the exchange to
    /// judge now when the queue is full.
    pub fn push(&mut self, x: Finished, wait_ns: u64) -> Option<Finished> {
        let overflow = if self.queue.len() >= MAX_HELD {
            self.queue.pop_front().map(|(_, x)| x)
        } else {
            None
        };
        self.queue.push_back((x.end_ns.saturating_add(wait_ns), x));
        overflow
    }

    /// Takes the exchanges whose peer (as the kernel named it) is one of
    /// `pids`: a process that died, or its parent.
    pub fn take_for(&mut self, pids: [u32; 2]) -> Vec<Finished> {
        // Any process's exit comes here: most concern nothing held.
        let held_for = |x: &Finished| x.facts.peer_pid.is_some_and(|p| pids.contains(&p));
        if !self.queue.iter().any(|(_, x)| held_for(x)) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for (due, x) in self.queue.drain(..) {
            if held_for(&x) {
                taken.push(x);
            } else {
                kept.push_back((due, x));
            }
        }
        self.queue = kept;
        taken
    }

    /// The exchanges due at `now_ns`, in arrival order (waits differ: not
    /// only the oldest).
    pub fn take_due(&mut self, now_ns: u64) -> Vec<Finished> {
        if !self.queue.iter().any(|(due, _)| *due <= now_ns) {
            return Vec::new();
        }
        let (due, kept): (VecDeque<_>, VecDeque<_>) =
            self.queue.drain(..).partition(|(due, _)| *due <= now_ns);
        self.queue = kept;
        due.into_iter().map(|(_, x)| x).collect()
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{End, Exchange, UpstreamAddr};

    use super::*;

    fn closed_by(peer: u32, end_ns: u64) -> Finished {
        let mut ex = Exchange::new(42, 9, end_ns.saturating_sub(1), UpstreamAddr::ZERO);
        ex.peer_pid = peer;
        Finished {
            facts: crate::kernel::records::facts(&ex).unwrap(),
            end: End::PeerClosed,
            errno: None,
            end_ns,
            client_left: false,
        }
    }

    #[test]
    fn an_exit_takes_its_exchanges_and_the_rest_wait_their_time() {
        let mut w = PeerWait::default();
        assert!(w.push(closed_by(100, 1_000), PEER_EXIT_WAIT_NS).is_none());
        assert!(w.push(closed_by(200, 2_000), PEER_EXIT_WAIT_NS).is_none());
        assert!(w.push(closed_by(100, 3_000), PEER_EXIT_WAIT_NS).is_none());
        // pid 100 died (its parent 1): both of its exchanges, at once.
        let taken = w.take_for([100, 1]);
        assert_eq!(
            taken.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
            [1_000, 3_000]
        );
        assert!(w.take_due(2_000 + PEER_EXIT_WAIT_NS - 1).is_empty());
        let due = w.take_due(2_000 + PEER_EXIT_WAIT_NS);
        assert_eq!(due.iter().map(|x| x.end_ns).collect::<Vec<_>>(), [2_000]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_queue_gives_back_its_oldest() {
        let mut w = PeerWait::default();
        for i in 0..MAX_HELD as u64 {
            assert!(w.push(closed_by(7, i), PEER_EXIT_WAIT_NS).is_none());
        }
        assert_eq!(
            w.push(closed_by(7, 99_999), PEER_EXIT_WAIT_NS)
                .map(|x| x.end_ns),
            Some(0)
        );
    }
}
