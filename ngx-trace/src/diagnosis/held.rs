//! Exchanges nginx gave up on, held until the kernel says whether their
//! client had left: indexed by worker, so that a client-gone record finds
//! its exchanges without going through every one held (a burst of clients
//! giving up is a burst of both).
use std::collections::{BTreeMap, VecDeque};

use crate::kernel::records::Finished;

/// Key of a held exchange: worker, end, arrival (two may end at once).
type Key = (u32, u64, u64);

/// The held exchanges.
#[derive(Debug, Default)]
pub struct Held {
    by_worker: BTreeMap<Key, Finished>,
    /// Keys in arrival order, with their end time; a key already claimed
    /// stays until its turn comes, then is passed over.
    order: VecDeque<(u64, Key)>,
    arrivals: u64,
}

impl Held {
    /// Holds `x`.
    pub fn push(&mut self, x: Finished) {
        let key = (x.facts.worker_pid, x.end_ns, self.arrivals);
        self.arrivals += 1;
        self.order.push_back((x.end_ns, key));
        self.by_worker.insert(key, x);
    }

    /// Takes the exchanges of `worker` that ended within `ends`.
    pub fn claim(&mut self, worker: u32, ends: std::ops::RangeInclusive<u64>) -> Vec<Finished> {
        let keys: Vec<Key> = self
            .by_worker
            .range((worker, *ends.start(), 0)..=(worker, *ends.end(), u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        keys.iter()
            .filter_map(|k| self.by_worker.remove(k))
            .collect()
    }

    /// The oldest held exchange (by arrival), taken if it ended `wait_ns`
    /// or more before `now_ns`; `None` when it did not.
    pub fn pop_due(&mut self, now_ns: u64, wait_ns: u64) -> Option<Finished> {
        while let Some(&(end_ns, key)) = self.order.front() {
            if !self.by_worker.contains_key(&key) {
                self.order.pop_front();
                continue;
            }
            if end_ns.saturating_add(wait_ns) > now_ns {
                return None;
            }
            self.order.pop_front();
            return self.by_worker.remove(&key);
        }
        None
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_worker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{End, Exchange, UpstreamAddr};

    use super::*;

    fn gave_up(worker: u32, end_ns: u64) -> Finished {
        let ex = Exchange::new(worker, 9, end_ns.saturating_sub(1), UpstreamAddr::ZERO);
        Finished {
            facts: crate::kernel::records::facts(&ex).unwrap(),
            end: End::NginxClosed,
            errno: None,
            end_ns,
            client_left: false,
        }
    }

    fn ends(xs: &[Finished]) -> Vec<(u32, u64)> {
        xs.iter().map(|x| (x.facts.worker_pid, x.end_ns)).collect()
    }

    #[test]
    fn a_claim_takes_its_worker_s_range_alone_and_release_passes_over_it() {
        let mut held = Held::default();
        for (worker, end) in [(1, 100), (2, 100), (1, 150), (1, 200), (2, 250), (1, 300)] {
            held.push(gave_up(worker, end));
        }
        assert_eq!(
            ends(&held.claim(1, 100..=200)),
            [(1, 100), (1, 150), (1, 200)]
        );
        assert!(held.claim(1, 100..=200).is_empty(), "claimed once");
        // Released in arrival order, the claimed ones passed over.
        assert_eq!(
            ends(&held.pop_due(260, 10).into_iter().collect::<Vec<_>>()),
            [(2, 100)]
        );
        assert_eq!(
            ends(&held.pop_due(260, 10).into_iter().collect::<Vec<_>>()),
            [(2, 250)]
        );
        assert!(
            held.pop_due(260, 10).is_none(),
            "(1, 300) ended too recently"
        );
        assert_eq!(
            ends(&held.pop_due(310, 10).into_iter().collect::<Vec<_>>()),
            [(1, 300)]
        );
        assert!(held.is_empty());
    }
}
