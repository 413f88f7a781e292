//! Running statistics the aggregates are made of. Means and variances use
//! Welford's update (and Chan et al.'s merge), which stays accurate over
//! millions of values where the naive sum-of-squares formula cancels
//! catastrophically.

use serde::{Deserialize, Serialize};

/// Count, mean, variance, min and max of a stream of values, updated one
/// value at a time.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    pub count: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean (Welford's M2).
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

impl RunningStats {
    /// Adds one value. Callers only pass finite values (validated at the edge).
    pub fn push(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count = self.count.saturating_add(1);
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Combines two summaries as if every value had been pushed into one.
    pub fn merge(&self, other: &RunningStats) -> RunningStats {
        if self.count == 0 {
            return *other;
        }
        if other.count == 0 {
            return *self;
        }
        let n_a = self.count as f64;
        let n_b = other.count as f64;
        let n = n_a + n_b;
        let delta = other.mean - self.mean;
        RunningStats {
            count: self.count.saturating_add(other.count),
            mean: self.mean + delta * n_b / n,
            m2: self.m2 + other.m2 + delta * delta * n_a * n_b / n,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// Sample variance (n − 1 denominator); 0 with fewer than two values.
    pub fn variance(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            (self.m2 / (self.count - 1) as f64).max(0.0)
        }
    }

    /// Sample standard deviation; 0 with fewer than two values.
    pub fn std_dev(&self) -> f64 {
        self.variance().sqrt()
    }
}

/// Lower bound of the Wilson score interval at 95%: a success rate that
/// accounts for sample size (1 success in 1 trial gives 0.21, not 1.0).
pub fn wilson_lower_bound(successes: u64, trials: u64) -> f64 {
    if trials == 0 {
        return 0.0;
    }
    const Z: f64 = 1.959_963_984_540_054;
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let margin = Z * ((p * (1.0 - p) + z2 / (4.0 * n)) / n).sqrt();
    ((centre - margin) / (1.0 + z2 / n)).clamp(0.0, 1.0)
}

/// Laplace's rule of succession, (s + 1) / (n + 2): a rate that starts at ½
/// and moves towards the observed rate as evidence accumulates.
pub fn laplace_rate(successes: u64, trials: u64) -> f64 {
    (successes as f64 + 1.0) / (trials as f64 + 2.0)
}

/// `numerator / denominator`, 0 when the denominator is 0.
pub fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn matches_two_pass_formula() {
        let values = [0.05, 0.35, 0.18, 0.12, 0.2, 0.09, 0.3];
        let mut s = RunningStats::default();
        values.iter().for_each(|v| s.push(*v));
        let (mean, std) = naive(&values);
        assert_eq!(s.count, 7);
        assert!((s.mean - mean).abs() < 1e-12);
        assert!((s.std_dev() - std).abs() < 1e-12);
        assert_eq!(s.min, 0.05);
        assert_eq!(s.max, 0.35);
    }

    #[test]
    fn stable_with_large_offset() {
        // Values around 1e9 with unit spread: the naive Σx² − n·mean² formula
        // loses every significant digit here; Welford keeps them.
        let mut s = RunningStats::default();
        for i in 0..10_000 {
            s.push(1e9 + (i % 3) as f64);
        }
        let expected_var = {
            let vals: Vec<f64> = (0..10_000).map(|i| (i % 3) as f64).collect();
            naive(&vals).1.powi(2)
        };
        assert!(
            (s.variance() - expected_var).abs() < 1e-6,
            "{}",
            s.variance()
        );
    }

    #[test]
    fn merge_equals_sequential() {
        let a_vals = [0.1, 0.4, 0.2];
        let b_vals = [0.9, -0.3, 0.5, 0.55];
        let (mut a, mut b, mut all) = (
            RunningStats::default(),
            RunningStats::default(),
            RunningStats::default(),
        );
        a_vals.iter().for_each(|v| a.push(*v));
        b_vals.iter().for_each(|v| b.push(*v));
        a_vals.iter().chain(&b_vals).for_each(|v| all.push(*v));
        let m = a.merge(&b);
        assert_eq!(m.count, all.count);
        assert!((m.mean - all.mean).abs() < 1e-12);
        assert!((m.variance() - all.variance()).abs() < 1e-12);
        assert_eq!((m.min, m.max), (all.min, all.max));
        assert_eq!(RunningStats::default().merge(&a), a);
    }

    #[test]
    fn single_value_has_zero_spread() {
        let mut s = RunningStats::default();
        s.push(0.3);
        assert_eq!(s.std_dev(), 0.0);
        assert_eq!((s.min, s.max, s.mean), (0.3, 0.3, 0.3));
    }

    #[test]
    fn wilson_bound_grows_with_evidence() {
        assert_eq!(wilson_lower_bound(0, 0), 0.0);
        let small = wilson_lower_bound(1, 1);
        let large = wilson_lower_bound(100, 100);
        assert!(small > 0.15 && small < 0.25, "{small}");
        assert!(large > 0.95, "{large}");
        // 135 of 156, the seed's example: ~0.80.
        let seed = wilson_lower_bound(135, 156);
        assert!((seed - 0.804).abs() < 0.01, "{seed}");
    }

    #[test]
    fn laplace_starts_at_half() {
        assert_eq!(laplace_rate(0, 0), 0.5);
        assert_eq!(laplace_rate(8, 8), 0.9);
    }
}
