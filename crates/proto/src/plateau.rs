//! The plateau predictor's contract: what its weights mean. The hub serves
//! one logistic model (`GetModel`, model name [`MODEL`]); an instance turns
//! one metric's recent values into [`FEATURES`] numbers with [`features`],
//! and the model's probability that the metric reaches a plateau within
//! [`HORIZON`] cycles is `sigmoid(w · x + bias)` ([`predict`]). Instances
//! train it on their own trajectories ([`examples`], [`train`]) and send
//! the hub only the change of the weights (`ShareModelUpdate`), never the
//! values. Clients in other languages implement these few lines from the
//! same definitions, which `hub.proto` repeats.
//!
//! It lives in the API crate because the weights are part of the wire
//! contract: the hub (which answers `PredictPlateau`), the Rust client and
//! the simulator must compute the same features, or a weight means one
//! thing to the instance that trained it and another to the one using it.

/// The model's name in `GetModel`, `ShareModelUpdate` and `PredictPlateau`.
pub const MODEL: &str = "plateau";
/// Numbers [`features`] makes of a trajectory.
pub const FEATURES: usize = 7;
/// Weights of the model: one per feature, then the bias.
pub const WEIGHTS: usize = FEATURES + 1;
/// Below this gain per cycle a metric makes no progress (values are
/// normalised to [0, 1]).
pub const PROGRESS_EPSILON: f64 = 0.002;
/// Cycles without progress that make a plateau: a metric is on a plateau
/// at cycle `t` when it gained less than `PATIENCE * PROGRESS_EPSILON` over
/// the `PATIENCE` cycles up to `t`.
pub const PATIENCE: usize = 3;
/// How far ahead the model looks: P(on a plateau at some cycle in
/// `t+1 ..= t+HORIZON`) given the values up to `t`.
pub const HORIZON: usize = 2;
/// Values of a trajectory the features read (older ones are ignored).
pub const WINDOW: usize = 8;
/// Deltas are scaled by this so that features are of order one.
const DELTA_SCALE: f64 = 100.0;

/// What each feature is, in order (for documentation and reports).
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "value: the last value",
    "last_delta: the last change, x100",
    "mean_delta_3: the mean change over the last 3 cycles, x100",
    "mean_delta_7: the mean change over the last 7 cycles, x100",
    "slowdown: mean change of the 3 cycles before those 3 minus theirs, x100",
    "stalled: cycles since the last change of at least 0.002, capped at 7, /7",
    "flat_share: the share of the last 7 changes below 0.002",
];

/// The features of a metric's trajectory, oldest value first. Only the
/// last [`WINDOW`] values are read; `None` with fewer than 2.
pub fn features(values: &[f64]) -> Option<[f64; FEATURES]> {
    if values.len() < 2 {
        return None;
    }
    let window = &values[values.len().saturating_sub(WINDOW)..];
    let deltas: Vec<f64> = window.windows(2).map(|w| w[1] - w[0]).collect();
    let n = deltas.len();
    let mean = |d: &[f64]| {
        if d.is_empty() {
            0.0
        } else {
            d.iter().sum::<f64>() / d.len() as f64
        }
    };
    let last3 = &deltas[n.saturating_sub(3)..];
    let before3 = &deltas[n.saturating_sub(6)..n.saturating_sub(3)];
    let slowdown = if before3.is_empty() {
        0.0
    } else {
        mean(before3) - mean(last3)
    };
    let stalled = deltas
        .iter()
        .rev()
        .take_while(|d| **d < PROGRESS_EPSILON)
        .count();
    let flat = deltas.iter().filter(|d| **d < PROGRESS_EPSILON).count();
    let cap = (WINDOW - 1) as f64;
    Some([
        window[window.len() - 1],
        deltas[n - 1] * DELTA_SCALE,
        mean(last3) * DELTA_SCALE,
        mean(&deltas) * DELTA_SCALE,
        slowdown * DELTA_SCALE,
        stalled as f64 / cap,
        flat as f64 / n as f64,
    ])
}

/// Whether a metric is on a plateau at the last of `values` (see
/// [`PATIENCE`]); `None` with fewer than `PATIENCE + 1` values.
pub fn on_plateau(values: &[f64]) -> Option<bool> {
    if values.len() <= PATIENCE {
        return None;
    }
    let last = values[values.len() - 1];
    let before = values[values.len() - 1 - PATIENCE];
    Some(last - before < PROGRESS_EPSILON * PATIENCE as f64)
}

/// The model's probability for `features`: `sigmoid(w · x + bias)`.
/// `weights` has [`WEIGHTS`] numbers (the bias last); fewer or more read
/// as zeros or are ignored.
pub fn predict(weights: &[f64], features: &[f64; FEATURES]) -> f64 {
    let mut z = weights.get(FEATURES).copied().unwrap_or(0.0);
    for (w, x) in weights.iter().zip(features) {
        z += w * x;
    }
    sigmoid(z)
}

/// The personalised probability for an instance whose context has its own
/// model: the fleet model's probability and the context model's, mixed by
/// `share` (0: the fleet model's alone; GetModel's `context_share`, which
/// the hub sets from held-out evaluations).
pub fn predict_personal(
    fleet: &[f64],
    context: &[f64],
    share: f64,
    features: &[f64; FEATURES],
) -> f64 {
    let p = predict(fleet, features);
    if share <= 0.0 {
        return p;
    }
    let share = share.min(1.0);
    (1.0 - share) * p + share * predict(context, features)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z.clamp(-40.0, 40.0)).exp())
}

/// One training example: a trajectory's features at a cycle and whether a
/// plateau followed within [`HORIZON`] cycles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    pub features: [f64; FEATURES],
    pub plateau_ahead: bool,
}

/// The labelled examples in one metric's history, oldest value first: one
/// per cycle that has features, is not on a plateau itself, and has
/// [`HORIZON`] cycles after it. Cycles already on a plateau are left out —
/// an instance knows those without a model.
pub fn examples(values: &[f64]) -> Vec<Example> {
    let mut out = Vec::new();
    for t in 1..values.len().saturating_sub(HORIZON) {
        let seen = &values[..=t];
        if on_plateau(seen) == Some(true) {
            continue;
        }
        let Some(features) = features(seen) else {
            continue;
        };
        let ahead = (1..=HORIZON).any(|h| on_plateau(&values[..=t + h]) == Some(true));
        out.push(Example {
            features,
            plateau_ahead: ahead,
        });
    }
    out
}

/// How an instance trains its copy of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    /// Passes over the examples.
    pub epochs: usize,
    pub learning_rate: f64,
    /// L2 penalty, pulling weights towards the global model's.
    pub l2: f64,
}

impl Default for Training {
    fn default() -> Self {
        Training {
            epochs: 100,
            learning_rate: 1.0,
            l2: 0.001,
        }
    }
}

/// Trains from `global` on `examples` with full-batch gradient descent on
/// the log loss and returns the change of the weights: what
/// `ShareModelUpdate` sends as `delta`. Deterministic: the same examples
/// give the same delta. An empty set gives zeros.
pub fn train(global: &[f64], examples: &[Example], training: &Training) -> Vec<f64> {
    let mut weights: Vec<f64> = (0..WEIGHTS)
        .map(|i| global.get(i).copied().unwrap_or(0.0))
        .collect();
    if examples.is_empty() {
        return vec![0.0; WEIGHTS];
    }
    let n = examples.len() as f64;
    for _ in 0..training.epochs {
        let mut gradient = [0.0; WEIGHTS];
        for example in examples {
            let p = predict(&weights, &example.features);
            let error = p - f64::from(u8::from(example.plateau_ahead));
            for (g, x) in gradient.iter_mut().zip(&example.features) {
                *g += error * x;
            }
            gradient[FEATURES] += error;
        }
        for (i, w) in weights.iter_mut().enumerate() {
            let anchor = global.get(i).copied().unwrap_or(0.0);
            *w -= training.learning_rate * (gradient[i] / n + training.l2 * (*w - anchor));
        }
    }
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| w - global.get(i).copied().unwrap_or(0.0))
        .collect()
}

/// The model that fits `examples` best: the minimum of the mean log loss
/// plus `l2`/2 times the squared weights, found by Newton's method (the
/// loss is convex and the model small). What an instance that trains
/// alone, or a central trainer, would converge to; gradient descent
/// ([`train`]) gets there slowly, as the features are of different scales.
pub fn fit(examples: &[Example], l2: f64) -> Vec<f64> {
    let mut weights = vec![0.0; WEIGHTS];
    if examples.is_empty() {
        return weights;
    }
    let n = examples.len() as f64;
    for _ in 0..50 {
        let mut gradient = [0.0; WEIGHTS];
        let mut hessian = [[0.0; WEIGHTS]; WEIGHTS];
        for example in examples {
            let mut x = [1.0; WEIGHTS];
            x[..FEATURES].copy_from_slice(&example.features);
            let p = predict(&weights, &example.features);
            let error = p - f64::from(u8::from(example.plateau_ahead));
            let curvature = p * (1.0 - p);
            for i in 0..WEIGHTS {
                gradient[i] += error * x[i] / n;
                for j in 0..WEIGHTS {
                    hessian[i][j] += curvature * x[i] * x[j] / n;
                }
            }
        }
        for i in 0..WEIGHTS {
            gradient[i] += l2 * weights[i];
            hessian[i][i] += l2;
        }
        let Some(step) = solve(hessian, gradient) else {
            break;
        };
        for (w, s) in weights.iter_mut().zip(&step) {
            *w -= s;
        }
        if step.iter().map(|s| s * s).sum::<f64>() < 1e-20 {
            break;
        }
    }
    weights
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None`
/// if `a` is singular.
fn solve(mut a: [[f64; WEIGHTS]; WEIGHTS], mut b: [f64; WEIGHTS]) -> Option<[f64; WEIGHTS]> {
    for col in 0..WEIGHTS {
        let pivot = (col..WEIGHTS).max_by(|i, j| a[*i][col].abs().total_cmp(&a[*j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..WEIGHTS {
            let factor = a[row][col] / pivot_row[col];
            for (cell, above) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *cell -= factor * above;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = [0.0; WEIGHTS];
    for row in (0..WEIGHTS).rev() {
        let tail: f64 = (row + 1..WEIGHTS).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

/// How well `weights` predict `examples`: what `ShareModelUpdate` reports
/// as `evaluation` (on examples held out of training).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    pub examples: u64,
    /// Predictions on the right side of 0.5.
    pub correct: u64,
    /// Sum of the log losses.
    pub log_loss: f64,
}

pub fn evaluate(weights: &[f64], examples: &[Example]) -> Evaluation {
    let mut eval = Evaluation::default();
    for example in examples {
        let p = predict(weights, &example.features).clamp(1e-12, 1.0 - 1e-12);
        eval.examples += 1;
        eval.correct += u64::from((p >= 0.5) == example.plateau_ahead);
        eval.log_loss -= if example.plateau_ahead {
            p.ln()
        } else {
            (1.0 - p).ln()
        };
    }
    eval
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metric that rises by a shrinking share of its gap to 0.8.
    fn saturating(n: usize) -> Vec<f64> {
        let mut v = vec![0.2];
        for _ in 1..n {
            let last = *v.last().unwrap();
            v.push(last + (0.8 - last) * 0.3);
        }
        v
    }

    #[test]
    fn features_of_a_known_trajectory() {
        let f = features(&[0.5, 0.6, 0.65, 0.66, 0.661]).unwrap();
        assert_eq!(f[0], 0.661);
        assert!((f[1] - 0.1).abs() < 1e-9);
        // The last 3 changes: 0.05, 0.01, 0.001.
        assert!((f[2] - (0.061 / 3.0) * 100.0).abs() < 1e-9);
        // All 4 changes.
        assert!((f[3] - (0.161 / 4.0) * 100.0).abs() < 1e-9);
        // One change before the last 3 (0.1), minus their mean.
        assert!((f[4] - (0.1 - 0.061 / 3.0) * 100.0).abs() < 1e-9);
        // The last change (0.001) is below 0.002, the one before is not.
        assert!((f[5] - 1.0 / 7.0).abs() < 1e-12);
        assert!((f[6] - 0.25).abs() < 1e-12);
        assert_eq!(features(&[0.5]), None);
    }

    #[test]
    fn a_saturating_metric_is_labelled_before_its_plateau() {
        let values = saturating(20);
        let first_plateau = (0..values.len())
            .find(|t| on_plateau(&values[..=*t]) == Some(true))
            .unwrap();
        let examples = examples(&values);
        assert!(!examples.is_empty());
        // Exactly the HORIZON cycles before the first plateau are positive.
        let positives = examples.iter().filter(|e| e.plateau_ahead).count();
        assert_eq!(positives, HORIZON, "plateau at {first_plateau}");
    }

    #[test]
    fn training_learns_to_tell_plateaus_coming() {
        let mut all = Vec::new();
        for rate in [0.2, 0.3, 0.4, 0.5] {
            for start in [0.1, 0.3] {
                let mut v = vec![start];
                for _ in 0..25 {
                    let last = *v.last().unwrap();
                    v.push(last + (0.9 - last) * rate);
                }
                all.extend(examples(&v));
            }
        }
        let zero = vec![0.0; WEIGHTS];
        let before = evaluate(&zero, &all);
        let delta = train(&zero, &all, &Training::default());
        assert_eq!(delta.len(), WEIGHTS);
        let after = evaluate(&delta, &all);
        assert!(after.log_loss < before.log_loss, "{before:?} -> {after:?}");
        assert!(after.correct > before.correct, "{before:?} -> {after:?}");
        // Deterministic.
        assert_eq!(delta, train(&zero, &all, &Training::default()));
        // Newton's fit is at the optimum: no worse than gradient descent,
        // and its gradient vanishes.
        let best = fit(&all, 0.001);
        assert!(evaluate(&best, &all).log_loss <= after.log_loss + 1e-9);
        // No step along any weight lowers the regularised loss.
        let objective = |w: &[f64]| {
            evaluate(w, &all).log_loss / all.len() as f64
                + 0.0005 * w.iter().map(|x| x * x).sum::<f64>()
        };
        for i in 0..WEIGHTS {
            for step in [-1e-4, 1e-4] {
                let mut moved = best.clone();
                moved[i] += step;
                assert!(objective(&moved) >= objective(&best) - 1e-12, "weight {i}");
            }
        }
        assert_eq!(train(&zero, &[], &Training::default()), zero);
    }
}
