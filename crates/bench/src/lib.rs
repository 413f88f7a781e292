//! `learning-hub bench`: a load generator that measures the hub as it
//! really runs — mutual TLS, an instance identity and API key per
//! connection, durable acknowledgements — next to the hub's trivial `Echo`
//! RPC, which passes the same TLS, authentication, rate limit and audit but
//! does no work: the transport ceiling. Measured in the same run, on the
//! same connections, the two give ratios that mean something on a shared,
//! noisy machine where absolute figures drift.
//!
//! A run: reach the hub under test ([`target`]), enlist the bench fleet
//! ([`fleet`]), preload history (outcomes, patterns, registered
//! instances), then either measure a closed-loop workload ([`load`],
//! optionally after an echo baseline and with a background write load) or
//! the insight fan-out ([`fanout`], optionally after the same measure
//! against a bare streaming service, [`bare`]), and report ([`report`]).

pub mod bare;
pub mod fanout;
pub mod fleet;
pub mod load;
pub mod plot;
pub mod report;
pub mod target;
pub mod workload;

// The layers below, under the names the modules here use.
pub(crate) use learning_hub_client as client;
pub(crate) use learning_hub_proto::pb;
pub(crate) use learning_hub_server::{auth, domain, error, pki};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use indicatif::{ProgressBar, ProgressStyle};

use crate::domain::rng::Rng;
use crate::error::{Error, Result};
pub use fanout::{FanoutSpec, FanoutStep, FanoutSummary};
use fleet::{Enlister, Member, until_admitted};
pub use load::{LoadSpec, LoadSummary};
pub use report::BenchReport;
pub use target::{Target, TargetOptions};
pub use workload::{Rpc, Shape};

/// Streams one connection carries in the fan-out measure (the hub allows
/// 1024 per connection by default).
const STREAMS_PER_CONNECTION: usize = 1000;

/// Everything a bench run is told.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub rpc: Rpc,
    /// Requests in flight (with `rate`: at most outstanding).
    pub concurrency: usize,
    /// Open loop: requests per second sent on schedule, whatever the
    /// answers (`None`: closed loop, each caller waits for its answer).
    pub rate: Option<f64>,
    /// Closed loop: refused callers wait out the hub's `retry-after`.
    pub honor_retry_after: bool,
    /// Connections, each its own instance.
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Strategy outcomes stored before the run.
    pub preload: u64,
    /// A sweep: measure after preloading up to each of these (ascending);
    /// replaces `preload`.
    pub preload_steps: Vec<u64>,
    /// Plateau patterns shared before the run.
    pub preload_patterns: u64,
    /// Extra instances registered (and keyed) before the run.
    pub preload_instances: u64,
    pub shape: Shape,
    /// ShareStrategy callers running alongside the measured load.
    pub write_concurrency: usize,
    /// Measure `echo` with the same settings first and report the ratio;
    /// with `fanout`, measure the bare streaming service ([`bare`]) first.
    pub baseline: bool,
    /// Measure the insight fan-out to this many subscribers instead.
    pub fanout: Option<FanoutSpec>,
    pub target: TargetOptions,
    pub seed: u64,
    /// Show progress bars (on stderr).
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            rpc: Rpc::ShareStrategy,
            concurrency: 64,
            rate: None,
            honor_retry_after: false,
            connections: 8,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            preload: 0,
            preload_steps: Vec::new(),
            preload_patterns: 0,
            preload_instances: 0,
            shape: Shape::default(),
            write_concurrency: 0,
            baseline: false,
            fanout: None,
            target: TargetOptions::default(),
            seed: 1,
            progress: false,
        }
    }
}

impl BenchOptions {
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 || self.concurrency > 100_000 {
            return Err(Error::invalid("concurrency", "must be within [1, 100000]"));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) {
                return Err(Error::invalid(
                    "rate",
                    "must be within (0, 1000000] requests/s",
                ));
            }
            if self.fanout.is_some() {
                return Err(Error::invalid(
                    "rate",
                    "applies to --rpc loads, not --fanout",
                ));
            }
            if self.honor_retry_after {
                return Err(Error::invalid(
                    "honor_retry_after",
                    "applies to the closed loop; an open loop sends on schedule",
                ));
            }
        }
        if self.connections == 0 || self.connections > 5_000 {
            return Err(Error::invalid("connections", "must be within [1, 5000]"));
        }
        if self.duration.is_zero() {
            return Err(Error::invalid("duration", "must be positive"));
        }
        if let Some(f) = &self.fanout {
            if f.subscribers.is_empty() {
                return Err(Error::invalid("fanout", "names no subscriber count"));
            }
            if f.subscribers.iter().any(|&n| n == 0 || n > 1_000_000) {
                return Err(Error::invalid("fanout", "must be within [1, 1000000]"));
            }
            if f.subscribers.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::invalid("fanout", "a sweep must be ascending"));
            }
            if f.publishes == 0 {
                return Err(Error::invalid("publishes", "must be positive"));
            }
            // The hub's own limit on an insight's text.
            if f.insight_bytes > 4096 {
                return Err(Error::invalid("insight_bytes", "must be at most 4096"));
            }
        }
        if self.preload_steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid("preload_steps", "must be ascending"));
        }
        if !self.preload_steps.is_empty() && self.fanout.is_some() {
            return Err(Error::invalid(
                "preload_steps",
                "a sweep measures a load, not the fan-out",
            ));
        }
        self.shape.validate()
    }
}

fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// What a preload stores.
#[derive(Debug, Clone, Copy)]
enum Preload {
    /// Strategy outcomes, visiting every record of the shape in turn.
    Outcomes,
    Patterns,
}

/// Stores records `from..to` of `kind` over `members`, `parallel` at a
/// time.
async fn preload(
    members: &[Member],
    kind: Preload,
    (from, to): (u64, u64),
    parallel: usize,
    options: &BenchOptions,
    bar: &ProgressBar,
) -> Result<()> {
    let count = to;
    let next = Arc::new(AtomicU64::new(from));
    let workers = (0..parallel).map(|w| {
        let member = members[w % members.len()].clone();
        let next = next.clone();
        let mut requests = workload::Requests::new(
            options.shape,
            &member.instance_id,
            Rng::derive(options.seed ^ 0xfeed ^ from, w as u64),
        );
        async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok(());
                }
                let sent = match kind {
                    Preload::Outcomes => {
                        let request = requests.preload_outcome(index);
                        until_admitted(|| member.client.share_strategy(request.clone()))
                            .await
                            .map(drop)
                    }
                    Preload::Patterns => {
                        let request = requests.share_pattern();
                        until_admitted(|| member.client.share_pattern(request.clone()))
                            .await
                            .map(drop)
                    }
                };
                sent.map_err(|s| {
                    Error::Unavailable(format!("preload: {:?}: {}", s.code(), s.message()))
                })?;
                bar.inc(1);
            }
        }
    });
    join_all(workers).await.into_iter().collect()
}

/// Runs one bench as `options` say.
pub async fn run(options: &BenchOptions) -> Result<BenchReport> {
    options.validate()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The bare service first, so both are up before either is measured.
    let bare = match (&options.fanout, options.baseline) {
        (Some(_), true) => Some(Target::start_bare(&options.target).await?),
        _ => None,
    };
    let target = Target::open(&options.target).await?;
    let result = run_against(&target, bare.as_ref(), options).await;
    target.stop().await;
    if let Some(bare) = bare {
        bare.stop().await;
    }
    result
}

async fn run_against(
    target: &Target,
    bare: Option<&Target>,
    options: &BenchOptions,
) -> Result<BenchReport> {
    let enlister = Enlister::new(&target.url, &target.certs_dir).await?;
    let connections = match &options.fanout {
        Some(f) => {
            let most = f.subscribers.iter().copied().max().unwrap_or(0);
            options
            .connections
            .max(most.div_ceil(STREAMS_PER_CONNECTION))
            // Stalled streams get connections of their own: a client that
            // leaves a stream unread also blocks its other streams on that
            // connection (HTTP/2's connection-level window), which would
            // measure the client, not the hub.
            + f.stalled.div_ceil(STREAMS_PER_CONNECTION)
        }
        None => options.connections,
    };
    // Run-unique names, so that repeated runs against one hub do not
    // re-register each other's instances.
    let run_tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let bar = progress_bar(options.progress, connections as u64, "connections");
    let members = enlister
        .enlist_many(&format!("bench-{run_tag}-"), connections, 32, &bar)
        .await?;
    bar.finish_and_clear();

    let parallel = 64;
    let started = std::time::Instant::now();
    if options.preload_instances > 0 {
        let bar = progress_bar(options.progress, options.preload_instances, "instances");
        enlister
            .register_many(
                &format!("bench-{run_tag}-fleet-"),
                options.preload_instances,
                parallel,
                &bar,
            )
            .await?;
        bar.finish_and_clear();
    }
    if options.preload_patterns > 0 {
        let count = options.preload_patterns;
        let bar = progress_bar(options.progress, count, "patterns");
        preload(
            &members,
            Preload::Patterns,
            (0, count),
            parallel,
            options,
            &bar,
        )
        .await?;
        bar.finish_and_clear();
    }
    // Outcomes: up to each step of a sweep in turn, measuring after each;
    // without a sweep, one step.
    let steps = if options.preload_steps.is_empty() {
        vec![options.preload]
    } else {
        options.preload_steps.clone()
    };
    let mut preloaded = 0;
    let mut preload_s = started.elapsed().as_secs_f64();
    let mut rss_before = None;
    let mut measured = Vec::new();
    for step in steps {
        if step > preloaded {
            let started = std::time::Instant::now();
            let bar = progress_bar(options.progress, step - preloaded, "outcomes");
            let range = (preloaded, step);
            preload(&members, Preload::Outcomes, range, parallel, options, &bar).await?;
            bar.finish_and_clear();
            preload_s += started.elapsed().as_secs_f64();
            preloaded = step;
        }
        rss_before = target.rss_bytes();
        // Write workloads add outcomes as they run: a step is labelled with
        // what the hub held when its measurement began.
        let stored = stored_outcomes(&enlister).await?;
        let report = measure(&members, &enlister, target, bare, options, run_tag).await?;
        measured.push((step, stored, report));
    }
    let (_, _, mut report) = measured.last().cloned().expect("at least one step");
    if measured.len() > 1 {
        report.steps = measured
            .into_iter()
            .map(|(preload, stored, r)| report::SweepStep {
                preload_outcomes: preload,
                stored_outcomes: stored,
                load: r.load,
                echo: r.echo,
                ratio_to_echo: r.ratio_to_echo,
                background_writes: r.background_writes,
            })
            .collect();
    }
    let status = enlister
        .operator()
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| Error::Unavailable(format!("GetStatus: {}", s.message())))?;
    report.connections = connections;
    report.preload_outcomes = preloaded;
    report.preload_patterns = options.preload_patterns;
    report.preload_instances = options.preload_instances;
    report.preload_s = preload_s;
    report.stored_outcomes = status.strategy_outcomes;
    report.strategy_records = status.strategy_records;
    report.patterns = status.patterns;
    report.instances = status.instances;
    report.hub_rss_mb_before = rss_before.map(|b| b as f64 / (1024.0 * 1024.0));
    report.hub_rss_mb = target.rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
    report.hub = target.url.clone();
    Ok(report)
}

async fn stored_outcomes(enlister: &Enlister) -> Result<u64> {
    enlister
        .operator()
        .get_status(pb::GetStatusRequest {})
        .await
        .map(|s| s.strategy_outcomes)
        .map_err(|s| Error::Unavailable(format!("GetStatus: {}", s.message())))
}

/// One measurement: the fan-out (each subscriber count, after the bare
/// service's), or the load (after its echo baseline).
async fn measure(
    members: &[Member],
    enlister: &Enlister,
    target: &Target,
    bare: Option<&Target>,
    options: &BenchOptions,
    run_tag: &str,
) -> Result<BenchReport> {
    let spec = |rpc: Rpc, concurrency: usize| LoadSpec {
        rpc,
        concurrency,
        warmup: options.warmup,
        duration: options.duration,
        shape: options.shape,
        seed: options.seed,
        rate: None,
        honor_retry_after: options.honor_retry_after,
    };
    Ok(match &options.fanout {
        Some(fanout_spec) => {
            let publisher = enlister
                .enlist(&format!("bench-{run_tag}-publisher"))
                .await?;
            // The bare service gets as many connections as the hub, and
            // its own operator and publisher connections.
            let bare = match bare {
                Some(bare) => {
                    let mut clients =
                        Enlister::connect_bare(&bare.url, &bare.certs_dir, members.len() + 2)
                            .await?;
                    let operator = clients.pop().expect("two extra clients");
                    let publisher = clients.pop().expect("two extra clients");
                    Some((bare, clients, publisher, operator))
                }
                None => None,
            };
            let hub_cpu = || target.cpu_seconds();
            let mut steps = Vec::new();
            for &subscribers in &fanout_spec.subscribers {
                let baseline = match &bare {
                    Some((bare, clients, publisher, operator)) => {
                        let bare_cpu = || bare.cpu_seconds();
                        Some(
                            fanout::run(
                                clients,
                                publisher,
                                &operator.client,
                                fanout_spec,
                                subscribers,
                                &bare_cpu,
                            )
                            .await?,
                        )
                    }
                    None => None,
                };
                let hub = fanout::run(
                    members,
                    &publisher,
                    enlister.operator(),
                    fanout_spec,
                    subscribers,
                    &hub_cpu,
                )
                .await?;
                steps.push(FanoutStep::new(hub, baseline));
            }
            BenchReport::fanout(steps)
        }
        None => {
            let echo = if options.baseline && options.rpc != Rpc::Echo {
                Some(
                    load::run(members, &spec(Rpc::Echo, options.concurrency), None)
                        .await
                        .0,
                )
            } else {
                None
            };
            let background = (options.write_concurrency > 0)
                .then(|| spec(Rpc::ShareStrategy, options.write_concurrency));
            let main = LoadSpec {
                rate: options.rate,
                ..spec(options.rpc, options.concurrency)
            };
            let (main, background) = load::run(members, &main, background.as_ref()).await;
            BenchReport::load(main, echo, background)
        }
    })
}
