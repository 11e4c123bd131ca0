//! A uniform sample of bounded size from a stream of values (Vitter's
//! algorithm R), with the exact count and minimum kept beside it: quantiles
//! from the sample stay within sampling error of the exact ones, while
//! memory stays fixed however long tracing runs.
use std::hash::{BuildHasher, RandomState};

/// At most `cap` values of a stream, each seen value equally likely kept.
#[derive(Debug, Clone)]
pub struct Reservoir {
    cap: usize,
    /// Values seen (exact).
    seen: u64,
    /// The sample; grows as values come, up to `cap`.
    kept: Vec<u64>,
    /// The smallest value seen (exact).
    min: Option<u64>,
    /// xorshift64* state: which slot a value replaces is not the traced
    /// processes' to choose.
    rng: u64,
}

impl Reservoir {
    /// An empty reservoir of `cap` values (allocated as they come).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seen: 0,
            kept: Vec::new(),
            min: None,
            rng: RandomState::new().hash_one(0u64) | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Adds one value.
    pub fn push(&mut self, v: u64) {
        self.seen += 1;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        if self.kept.len() < self.cap {
            self.kept.push(v);
            return;
        }
        // Kept with probability cap / seen, in place of a random one.
        let slot = ((u128::from(self.next_random()) * u128::from(self.seen)) >> 64) as usize;
        if let Some(s) = self.kept.get_mut(slot) {
            *s = v;
        }
    }

    /// Values seen.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The smallest value seen.
    pub fn min(&self) -> Option<u64> {
        self.min
    }

    /// Whether the sample holds fewer values than were seen.
    pub fn sampled(&self) -> bool {
        self.seen > self.kept.len() as u64
    }

    /// The kept values, each with how many seen values it stands for.
    pub fn weighted(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        let weight = if self.kept.is_empty() {
            0.0
        } else {
            self.seen as f64 / self.kept.len() as f64
        };
        self.kept.iter().map(move |&v| (v, weight))
    }
}

/// Values pooled from reservoirs, each weighted by how many it stands for:
/// exact when nothing was sampled out.
#[derive(Debug, Default, Clone)]
pub struct Weighted {
    /// Sorted by value.
    items: Vec<(u64, f64)>,
    /// Values seen in all (exact).
    n: u64,
    sampled: bool,
}

impl Weighted {
    /// The values of `reservoirs` together.
    pub fn pool<'a>(reservoirs: impl IntoIterator<Item = &'a Reservoir>) -> Self {
        let mut w = Self::default();
        for r in reservoirs {
            w.items.extend(r.weighted());
            w.n += r.seen();
            w.sampled |= r.sampled();
        }
        w.items.sort_unstable_by_key(|&(v, _)| v);
        w
    }

    /// Exactly `values` (each standing for itself).
    #[cfg(test)]
    pub fn exact(values: &[u64]) -> Self {
        let mut items: Vec<(u64, f64)> = values.iter().map(|&v| (v, 1.0)).collect();
        items.sort_unstable_by_key(|&(v, _)| v);
        Self {
            items,
            n: values.len() as u64,
            sampled: false,
        }
    }

    /// Values seen in all (exact).
    pub fn seen(&self) -> u64 {
        self.n
    }

    /// Whether the values are a sample (counts above a limit are then
    /// estimates).
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// How many values exceed `limit` (estimated when sampled).
    pub fn over(&self, limit: u64) -> u64 {
        let from = self.items.partition_point(|&(v, _)| v <= limit);
        self.items[from..]
            .iter()
            .map(|&(_, w)| w)
            .sum::<f64>()
            .round() as u64
    }

    /// The value of 0-based rank `rank` among all values seen in order
    /// (the largest past the end; 0 when empty).
    pub fn at_rank(&self, rank: u64) -> u64 {
        let mut below = 0.0;
        for &(v, w) in &self.items {
            below += w;
            if below > rank as f64 {
                return v;
            }
        }
        self.items.last().map_or(0, |&(v, _)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream waits with a long tail: a log-normal-like mix, µs.
    fn waits(n: usize) -> Vec<u64> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                // 50 ms median, a tail to seconds; 1 in 200 a 2-5 s stall.
                if state.is_multiple_of(200) {
                    2_000_000 + (u * 3_000_000.0) as u64
                } else {
                    (50_000.0 * (4.0 * (u - 0.5)).exp()) as u64
                }
            })
            .collect()
    }

    #[test]
    fn quantiles_of_the_sample_are_near_the_exact_ones_and_counts_exact() {
        let values = waits(1_000_000);
        let mut r = Reservoir::new(65_536);
        for &v in &values {
            r.push(v);
        }
        assert_eq!(r.seen(), 1_000_000);
        assert!(r.sampled());
        assert_eq!(r.min(), values.iter().min().copied());
        assert_eq!(r.weighted().count(), 65_536, "bounded");
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let sample = Weighted::pool([&r]);
        assert_eq!(sample.seen(), 1_000_000);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let rank = (q * 1_000_000.0) as u64;
            let exact = sorted[rank as usize] as f64;
            let got = sample.at_rank(rank) as f64;
            assert!(
                (got - exact).abs() / exact < 0.1,
                "q{q}: sample {got}, exact {exact}"
            );
        }
        // Counts above a limit are estimates: about 5,000 stalls, each kept
        // value standing for 15, so within 20% (3.6 standard deviations).
        let exact_over = sorted.iter().filter(|&&v| v > 1_500_000).count() as f64;
        let got_over = sample.over(1_500_000) as f64;
        assert!(
            (got_over - exact_over).abs() / exact_over < 0.2,
            "{got_over} vs {exact_over}"
        );
    }

    #[test]
    fn below_the_cap_everything_is_exact() {
        let mut r = Reservoir::new(100);
        for v in [5, 1, 9, 3] {
            r.push(v);
        }
        let w = Weighted::pool([&r]);
        assert!(!w.sampled());
        assert_eq!(
            (w.seen(), w.over(3), w.at_rank(0), w.at_rank(3)),
            (4, 2, 1, 9)
        );
        assert_eq!(w.at_rank(10), 9);
        assert_eq!(Weighted::default().at_rank(0), 0);
    }

    #[test]
    fn pooled_reservoirs_weigh_by_what_each_saw() {
        // 100,000 fast values sampled to 1,000 and 100 slow ones kept whole:
        // the slow ones are 0.1% of the pool, not 9%.
        let mut fast = Reservoir::new(1_000);
        for _ in 0..100_000 {
            fast.push(10);
        }
        let mut slow = Reservoir::new(1_000);
        for _ in 0..100 {
            slow.push(1_000_000);
        }
        let w = Weighted::pool([&fast, &slow]);
        assert_eq!(w.seen(), 100_100);
        assert_eq!(w.over(10), 100);
        assert_eq!(w.at_rank(99_999), 10);
        assert_eq!(w.at_rank(100_000), 1_000_000);
    }
}
