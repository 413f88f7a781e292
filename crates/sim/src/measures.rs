//! What a run is worth, in the seed's terms: time-to-peak, cycles to
//! plateau, peak as a share of the theoretical maximum, failures and
//! recovery, pattern-match accuracy; and across seeds, means with 95%
//! confidence intervals.

use serde::Serialize;

use super::runner::InstanceTrace;

/// "Peak" is reaching this share of the theoretical maximum.
pub const PEAK_THRESHOLD: f64 = 0.9;
/// An instance has plateaued once within this of its best performance.
pub const PLATEAU_TOLERANCE: f64 = 0.01;

/// Means over one run's instances.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RunSummary {
    /// Cycles to reach [`PEAK_THRESHOLD`] of the maximum; instances that
    /// never do count as the horizon (so this is a lower bound for them).
    pub time_to_peak: f64,
    /// Share of instances that reached the threshold within the horizon.
    pub reached_peak: f64,
    /// Cycles until within [`PLATEAU_TOLERANCE`] of the instance's best.
    pub cycles_to_plateau: f64,
    /// Best performance within the horizon, % of the theoretical maximum.
    pub peak_percent: f64,
    /// Performance at the end of the horizon, %.
    pub final_percent: f64,
    /// Metrics knocked back by side effects, per instance.
    pub failures: f64,
    /// Failed strategy applications, per instance.
    pub failed_applications: f64,
    /// Mean cycles to recover from a knock-back (recovered ones only);
    /// `None` when there was none.
    pub cycles_to_recover: Option<f64>,
    /// Share of GetPatterns top matches recommending the true best
    /// strategy or one within a near-tie of it (an expected gain at most
    /// 0.005 or 10% below the best's); `None` outside hub mode.
    pub pattern_accuracy: Option<f64>,
    /// The same without near-ties: only the single best strategy counts.
    pub pattern_accuracy_strict: Option<f64>,
    /// Expected calibration error of the hub's confidence over the
    /// applications it recommended: the count-weighted mean, over tenths of
    /// confidence, of |mean confidence − success rate|. `None` outside hub
    /// mode.
    pub calibration_error: Option<f64>,
    /// Applications before a predicted plateau, per instance.
    pub early_applications: f64,
    /// Honest instances the hub's anomaly scans listed (false flags);
    /// `None` outside hub mode.
    pub false_flags: Option<f64>,
    /// Share of the faulty instances the scans listed; `None` without any.
    pub faulty_flagged: Option<f64>,
    /// Mean applications a faulty instance had made (and misreported) when
    /// first listed; `None` when none was.
    pub reports_to_flag: Option<f64>,
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Cycles (1-based) until `performance` first reaches `threshold`.
pub fn cycles_to(performance: &[f64], threshold: f64) -> Option<usize> {
    performance
        .iter()
        .position(|p| *p >= threshold)
        .map(|i| i + 1)
}

/// Expected calibration error over the traces' confidence bins.
pub fn calibration_error(traces: &[InstanceTrace]) -> Option<f64> {
    let mut bins = [(0.0, 0u32, 0u32); 10];
    for t in traces {
        for (b, (conf, successes, n)) in t.calibration.iter().enumerate() {
            bins[b].0 += conf;
            bins[b].1 += successes;
            bins[b].2 += n;
        }
    }
    let total: u32 = bins.iter().map(|b| b.2).sum();
    (total > 0).then(|| {
        bins.iter()
            .filter(|b| b.2 > 0)
            .map(|(conf, successes, n)| {
                let n = f64::from(*n);
                (n / f64::from(total)) * (conf / n - f64::from(*successes) / n).abs()
            })
            .sum()
    })
}

impl RunSummary {
    /// `hub_mode`: whether anomaly scans ran (flags are counted).
    pub fn of(all: &[InstanceTrace], horizon: u32, hub_mode: bool) -> Self {
        // What honest instances reach; faulty ones are the adversary.
        let traces: Vec<InstanceTrace> = all.iter().filter(|t| !t.faulty).cloned().collect();
        let traces = traces.as_slice();
        let faulty: Vec<&InstanceTrace> = all.iter().filter(|t| t.faulty).collect();
        let flagged: Vec<f64> = faulty
            .iter()
            .filter_map(|t| t.flagged_after.map(f64::from))
            .collect();
        let per = |f: &dyn Fn(&InstanceTrace) -> f64| mean(traces.iter().map(f)).unwrap_or(0.0);
        let best = |t: &InstanceTrace| t.performance.iter().copied().fold(0.0, f64::max);
        let recoveries: Vec<f64> = traces
            .iter()
            .flat_map(|t| {
                t.reversals
                    .iter()
                    .filter_map(|r| r.recovered_after.map(f64::from))
            })
            .collect();
        let checks: u32 = traces.iter().map(|t| t.pattern_checks).sum();
        let hits: u32 = traces.iter().map(|t| t.pattern_hits).sum();
        let strict: u32 = traces.iter().map(|t| t.pattern_hits_strict).sum();
        RunSummary {
            time_to_peak: per(&|t| {
                cycles_to(&t.performance, PEAK_THRESHOLD).map_or(f64::from(horizon), |c| c as f64)
            }),
            reached_peak: per(&|t| {
                f64::from(u8::from(
                    cycles_to(&t.performance, PEAK_THRESHOLD).is_some(),
                ))
            }),
            cycles_to_plateau: per(&|t| {
                cycles_to(&t.performance, best(t) - PLATEAU_TOLERANCE).unwrap_or(0) as f64
            }),
            peak_percent: per(&|t| 100.0 * best(t)),
            final_percent: per(&|t| 100.0 * t.performance.last().copied().unwrap_or(0.0)),
            failures: per(&|t| t.reversals.len() as f64),
            failed_applications: per(&|t| f64::from(t.failed_applications)),
            cycles_to_recover: mean(recoveries),
            pattern_accuracy: (checks > 0).then(|| f64::from(hits) / f64::from(checks)),
            pattern_accuracy_strict: (checks > 0).then(|| f64::from(strict) / f64::from(checks)),
            calibration_error: calibration_error(traces),
            early_applications: per(&|t| f64::from(t.early_applications)),
            false_flags: hub_mode
                .then(|| traces.iter().filter(|t| t.flagged_after.is_some()).count() as f64),
            faulty_flagged: (hub_mode && !faulty.is_empty())
                .then(|| flagged.len() as f64 / faulty.len() as f64),
            reports_to_flag: mean(flagged),
        }
    }
}

/// A mean over seeds with its 95% confidence interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    /// Half-width of the 95% interval (Student's t); 0 with one seed.
    pub ci95: f64,
    pub n: usize,
}

/// Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

impl Estimate {
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        let mean = mean(values.iter().copied())?;
        let ci95 = if n < 2 {
            0.0
        } else {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let t = T_975.get(n - 2).copied().unwrap_or(1.96);
            t * (var / n as f64).sqrt()
        };
        Some(Estimate { mean, ci95, n })
    }
}

/// Means over seeds of every [`RunSummary`] field.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModeSummary {
    pub time_to_peak: Estimate,
    pub reached_peak: Estimate,
    pub cycles_to_plateau: Estimate,
    pub peak_percent: Estimate,
    pub final_percent: Estimate,
    pub failures: Estimate,
    pub failed_applications: Estimate,
    pub cycles_to_recover: Option<Estimate>,
    pub pattern_accuracy: Option<Estimate>,
    pub pattern_accuracy_strict: Option<Estimate>,
    pub calibration_error: Option<Estimate>,
    pub early_applications: Estimate,
    pub false_flags: Option<Estimate>,
    pub faulty_flagged: Option<Estimate>,
    pub reports_to_flag: Option<Estimate>,
}

impl ModeSummary {
    pub fn of(runs: &[RunSummary]) -> Option<Self> {
        let field =
            |f: fn(&RunSummary) -> f64| Estimate::of(&runs.iter().map(f).collect::<Vec<_>>());
        let optional = |f: fn(&RunSummary) -> Option<f64>| {
            Estimate::of(&runs.iter().filter_map(f).collect::<Vec<_>>())
        };
        Some(ModeSummary {
            time_to_peak: field(|r| r.time_to_peak)?,
            reached_peak: field(|r| r.reached_peak)?,
            cycles_to_plateau: field(|r| r.cycles_to_plateau)?,
            peak_percent: field(|r| r.peak_percent)?,
            final_percent: field(|r| r.final_percent)?,
            failures: field(|r| r.failures)?,
            failed_applications: field(|r| r.failed_applications)?,
            cycles_to_recover: optional(|r| r.cycles_to_recover),
            pattern_accuracy: optional(|r| r.pattern_accuracy),
            pattern_accuracy_strict: optional(|r| r.pattern_accuracy_strict),
            calibration_error: optional(|r| r.calibration_error),
            early_applications: field(|r| r.early_applications)?,
            false_flags: optional(|r| r.false_flags),
            faulty_flagged: optional(|r| r.faulty_flagged),
            reports_to_flag: optional(|r| r.reports_to_flag),
        })
    }
}

/// Mean performance per cycle across a run's honest instances (cycles
/// counted from each instance's join).
pub fn curve(traces: &[InstanceTrace], horizon: u32) -> Vec<f64> {
    (0..horizon as usize)
        .map(|c| {
            mean(
                traces
                    .iter()
                    .filter(|t| !t.faulty)
                    .filter_map(|t| t.performance.get(c).copied()),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ReversalTrace;

    fn trace(performance: Vec<f64>) -> InstanceTrace {
        InstanceTrace {
            context: 0,
            join: 0,
            performance,
            applications: 4,
            failed_applications: 1,
            reversals: vec![ReversalTrace {
                cycle: 1,
                recovered_after: Some(3),
            }],
            pattern_checks: 4,
            pattern_hits: 3,
            pattern_hits_strict: 2,
            calibration: [(0.0, 0, 0); 10],
            early_applications: 0,
            values: Vec::new(),
            faulty: false,
            flagged_after: None,
        }
    }

    #[test]
    fn summary_of_known_traces() {
        let a = trace(vec![0.5, 0.8, 0.91, 0.95, 0.95]);
        let b = trace(vec![0.5, 0.6, 0.7, 0.8, 0.85]);
        let s = RunSummary::of(&[a, b], 5, false);
        // a peaks at cycle 3; b never does and counts as the horizon (5).
        assert_eq!(s.time_to_peak, 4.0);
        assert_eq!(s.reached_peak, 0.5);
        // a: within 0.01 of 0.95 at cycle 4; b: of 0.85 at cycle 5.
        assert_eq!(s.cycles_to_plateau, 4.5);
        assert!((s.peak_percent - 90.0).abs() < 1e-9);
        assert_eq!(s.cycles_to_recover, Some(3.0));
        assert_eq!(s.pattern_accuracy, Some(0.75));
    }

    #[test]
    fn confidence_interval_matches_t_distribution() {
        let e = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(e.mean, 2.0);
        // sd 1, n 3: 4.303 / sqrt(3)
        assert!((e.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(Estimate::of(&[5.0]).unwrap().ci95, 0.0);
        assert!(Estimate::of(&[]).is_none());
    }
}
