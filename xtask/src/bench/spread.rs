//! A figure measured several times (over ABBA quads, over runs): its
//! median and its range.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// A figure measured several times: its median and its range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    /// Median and range of `values`; NaN when there are none (shown as
    /// NaN, and failing every target).
    pub(super) fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let (min, max) = spread(values);
        Self {
            median: median(&mut values.to_vec()),
            min,
            max,
        }
    }

    /// `median [min–max]`, with `decimals` digits after the point.
    pub(super) fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::bench) fn point(v: f64) -> Spread {
        Spread {
            median: v,
            min: v,
            max: v,
        }
    }

    #[test]
    fn spread_median_range_and_empty() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 5.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(s.show(1), "3.0 [1.0–5.0]");
        assert!(Spread::of(&[]).median.is_nan());
    }
}
