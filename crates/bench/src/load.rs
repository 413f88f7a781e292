//! The load: by default closed-loop, `concurrency` callers spread over the
//! fleet's connections, each sending its next request as soon as the
//! previous one was answered; with a `rate`, open-loop, requests sent on a
//! fixed schedule whatever the answers (what "N× capacity" means: a fleet
//! does not slow down because the hub is busy), `concurrency` then capping
//! the calls outstanding. A warm-up lets connections, caches and the
//! allocator settle; only calls inside the measured window count.
//! Latencies go into HDR histograms (microseconds, 3 significant digits).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tonic::Code;

use super::fleet::Member;
use super::workload::{Requests, Rpc, Shape};
use crate::client::retry_after;
use crate::domain::rng::Rng;

/// One load phase.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub rpc: Rpc,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub shape: Shape,
    pub seed: u64,
    /// Open loop: requests per second, sent on schedule.
    pub rate: Option<f64>,
    /// Closed loop: a caller refused with a `retry-after` waits that long
    /// before its next call, as the hub's clients do (the Rust client's
    /// `RetryPolicy`), instead of calling again at once.
    pub honor_retry_after: bool,
}

/// Latencies in microseconds, up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// What a load phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub rpc: String,
    /// Calls answered OK inside the window.
    pub requests: u64,
    /// OK answers per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Failed calls inside the window, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// How fast failures (e.g. load shedding) were answered: p50 and p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_p99_ms: Option<f64>,
    pub concurrency: usize,
    pub duration_s: f64,
    /// Open loop: the rate requests were scheduled at…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rps: Option<f64>,
    /// …and those not sent because `concurrency` calls were outstanding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsent: Option<u64>,
}

impl LoadSummary {
    pub fn from_histogram(
        rpc: &str,
        histogram: &Histogram<u64>,
        errors: BTreeMap<String, u64>,
        concurrency: usize,
        duration: Duration,
    ) -> Self {
        let requests = histogram.len();
        let q = |quantile: f64| {
            if requests == 0 {
                0.0
            } else {
                ms(histogram.value_at_quantile(quantile))
            }
        };
        LoadSummary {
            rpc: rpc.to_string(),
            requests,
            rps: requests as f64 / duration.as_secs_f64().max(1e-9),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if requests == 0 {
                0.0
            } else {
                ms(histogram.max())
            },
            errors,
            error_p50_ms: None,
            error_p99_ms: None,
            concurrency,
            duration_s: duration.as_secs_f64(),
            offered_rps: None,
            unsent: None,
        }
    }

    /// Adds the latencies of failed calls.
    pub fn with_error_latencies(mut self, failed: &Histogram<u64>) -> Self {
        if !failed.is_empty() {
            self.error_p50_ms = Some(ms(failed.value_at_quantile(0.5)));
            self.error_p99_ms = Some(ms(failed.value_at_quantile(0.99)));
        }
        self
    }
}

struct CallerResult {
    histogram: Histogram<u64>,
    failed: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl CallerResult {
    fn new() -> Self {
        CallerResult {
            histogram: new_histogram(),
            failed: new_histogram(),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, micros: u64, outcome: std::result::Result<(), Code>) {
        match outcome {
            Ok(()) => self.histogram.saturating_record(micros),
            Err(code) => {
                self.failed.saturating_record(micros);
                *self.errors.entry(format!("{code:?}")).or_insert(0) += 1;
            }
        }
    }
}

async fn caller(
    member: Member,
    spec: LoadSpec,
    mut requests: Requests,
    measure_from: Instant,
    until: Instant,
) -> CallerResult {
    let mut result = CallerResult::new();
    loop {
        let started = Instant::now();
        if started >= until {
            break;
        }
        let outcome = requests.call(&member.client, spec.rpc).await;
        let finished = Instant::now();
        let wait = match &outcome {
            Err(status) if spec.honor_retry_after => retry_after(status),
            _ => None,
        };
        if started >= measure_from && finished <= until {
            let micros = (finished - started).as_micros().max(1) as u64;
            result.record(micros, outcome.map_err(|status| status.code()));
        }
        if let Some(wait) = wait {
            tokio::time::sleep_until((finished + wait).min(until)).await;
        }
    }
    result
}

/// The open-loop generator: request `k` is due at `start + k / rate`. Each
/// is spawned when due, on the members round-robin, unless `cap` calls are
/// outstanding (then it is counted as unsent, never silently dropped).
/// Latency runs from when a call was due, not when it left, so a generator
/// that fell behind shows up in the figures instead of hiding the wait
/// (no coordinated omission). Calls due inside the window count, however
/// late they finish.
async fn open_loop(
    members: &[Member],
    spec: &LoadSpec,
    rate: f64,
    start: Instant,
) -> (CallerResult, u64) {
    let measure_from = start + spec.warmup;
    let until = measure_from + spec.duration;
    let mut generators: Vec<Requests> = members
        .iter()
        .enumerate()
        .map(|(i, m)| Requests::new(spec.shape, &m.instance_id, Rng::derive(spec.seed, i as u64)))
        .collect();
    let outstanding = Arc::new(Semaphore::new(spec.concurrency));
    let (answers, mut answered) = mpsc::unbounded_channel::<(u64, std::result::Result<(), Code>)>();
    let collector = tokio::spawn(async move {
        let mut result = CallerResult::new();
        while let Some((micros, outcome)) = answered.recv().await {
            result.record(micros, outcome);
        }
        result
    });
    let mut unsent = 0u64;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        let due = ((now - start).as_secs_f64() * rate) as u64;
        while sent < due {
            let due_at = start + Duration::from_secs_f64(sent as f64 / rate);
            let index = (sent % members.len() as u64) as usize;
            sent += 1;
            if due_at >= until {
                break;
            }
            let counted = due_at >= measure_from;
            let Ok(permit) = outstanding.clone().try_acquire_owned() else {
                unsent += u64::from(counted);
                continue;
            };
            let call = generators[index].issue(&members[index].client, spec.rpc);
            let answers = answers.clone();
            tokio::spawn(async move {
                let outcome = call.await;
                drop(permit);
                if counted {
                    let micros = due_at.elapsed().as_micros().max(1) as u64;
                    let _ = answers.send((micros, outcome.map_err(|s| s.code())));
                }
            });
        }
        if start + Duration::from_secs_f64(sent as f64 / rate) >= until {
            break;
        }
        // The timer's granularity: calls due meanwhile go out in a burst.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(answers);
    (
        collector.await.unwrap_or_else(|_| CallerResult::new()),
        unsent,
    )
}

/// Runs `spec` over `members` (callers take connections round-robin) and,
/// at the same time, `background` (unmeasured by the main summary, reported
/// on its own). Returns the main summary and the background's.
pub async fn run(
    members: &[Member],
    spec: &LoadSpec,
    background: Option<&LoadSpec>,
) -> (LoadSummary, Option<LoadSummary>) {
    let start = Instant::now();
    let spawn_phase = |spec: &LoadSpec, offset: usize| {
        let measure_from = start + spec.warmup;
        let until = measure_from + spec.duration;
        (0..spec.concurrency)
            .map(|i| {
                let member = members[(offset + i) % members.len()].clone();
                let requests = Requests::new(
                    spec.shape,
                    &member.instance_id,
                    Rng::derive(spec.seed, (offset + i) as u64),
                );
                tokio::spawn(caller(member, spec.clone(), requests, measure_from, until))
            })
            .collect::<Vec<_>>()
    };
    // The background's callers take the connections after the main load's.
    let extra = background.map(|b| spawn_phase(b, spec.concurrency));
    let summarize = |spec: &LoadSpec, results: Vec<CallerResult>| {
        let mut histogram = new_histogram();
        let mut failed = new_histogram();
        let mut errors = BTreeMap::new();
        for r in results {
            let _ = histogram.add(&r.histogram);
            let _ = failed.add(&r.failed);
            for (code, n) in r.errors {
                *errors.entry(code).or_insert(0) += n;
            }
        }
        LoadSummary::from_histogram(
            spec.rpc.name(),
            &histogram,
            errors,
            spec.concurrency,
            spec.duration,
        )
        .with_error_latencies(&failed)
    };
    let main_summary = match spec.rate {
        Some(rate) => {
            let (result, unsent) = open_loop(members, spec, rate, start).await;
            let mut summary = summarize(spec, vec![result]);
            summary.offered_rps = Some(rate);
            summary.unsent = Some(unsent);
            summary
        }
        None => {
            let main = spawn_phase(spec, 0);
            let results = join_all(main).await.into_iter().flatten().collect();
            summarize(spec, results)
        }
    };
    let background_summary = match (background, extra) {
        (Some(b), Some(handles)) => {
            let results = join_all(handles).await.into_iter().flatten().collect();
            Some(summarize(b, results))
        }
        _ => None,
    };
    (main_summary, background_summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_quantiles_come_from_the_histogram() {
        let mut h = new_histogram();
        for micros in 1..=1000u64 {
            h.record(micros * 10).unwrap();
        }
        let s = LoadSummary::from_histogram("echo", &h, BTreeMap::new(), 4, Duration::from_secs(2));
        assert_eq!(s.requests, 1000);
        assert!((s.rps - 500.0).abs() < 1e-9);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{}", s.p50_ms);
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{}", s.p99_ms);
        assert!((s.max_ms - 10.0).abs() < 0.01, "{}", s.max_ms);
        let empty = LoadSummary::from_histogram(
            "echo",
            &new_histogram(),
            BTreeMap::new(),
            1,
            Duration::from_secs(1),
        );
        assert_eq!((empty.requests, empty.p99_ms), (0, 0.0));
    }
}
