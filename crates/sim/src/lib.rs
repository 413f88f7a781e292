//! The fleet simulator: measures what the hub is worth.
//!
//! N simulated instances run the seed's meta-learning loop in a hidden
//! environment ([`world`], configured by a [`scenario`]) in three modes with
//! the same seeds: **isolated** (each learns alone, UCB), **hub** (the
//! seed's flows against a real hub over mutual TLS) and **oracle** (always
//! the true best strategy: the lower bound). [`measures`] turns their traces
//! into the seed's claims — time-to-peak, cycles to plateau, peak % of the
//! theoretical maximum, failures and recovery, pattern-match accuracy, the
//! share of the achievable gain the hub captures — with 95% confidence
//! intervals over seeds, and how the hub's benefit changes with fleet size.
//! [`report`] prints and serialises them; [`plot`] draws them.
//!
//! The hub is a black box here: it is started from a plain [`Config`] and
//! reached only through [`crate::client::HubClient`], so all it can know
//! is what the simulated instances share.
//!
//! [`Config`]: crate::config::Config

pub mod agents;
pub mod hub_agent;
pub mod measures;
pub mod plot;
pub mod prediction;
pub mod report;
pub use crate::domain::rng;
pub mod runner;
pub mod scenario;
pub mod world;

// The layers below, under the names the modules here use.
pub(crate) use learning_hub_client as client;
pub(crate) use learning_hub_server::{
    auth, clock, config, domain, error, pb, pki, server, validate,
};

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::auth::Identity;
use crate::error::{Error, Result};
use measures::{Estimate, ModeSummary, RunSummary};
use runner::{FaultyMode, HubTarget, InstanceTrace, Mode, RunSpec};
use scenario::Scenario;

/// Fleet sizes the benefit-versus-N measure uses by default.
pub const DEFAULT_SCALING: [usize; 5] = [1, 5, 20, 50, 100];

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub scenario: Scenario,
    pub instances: usize,
    /// Seeds `seed`, `seed + 1`, …
    pub seeds: usize,
    pub seed: u64,
    pub horizon: u32,
    pub stagger: u32,
    /// Fleet sizes for benefit-versus-N (empty: skip).
    pub scaling: Vec<usize>,
    /// Seeds per fleet size in the scaling measure.
    pub scaling_seeds: usize,
    /// `None`: a fresh in-process hub per run.
    pub external_hub: Option<(String, PathBuf)>,
    /// Runs executed at once.
    pub parallel: usize,
    /// Faulty instances in the main fleet (not the scaling runs), and
    /// what they report.
    pub faulty: usize,
    pub faulty_mode: FaultyMode,
    /// The operator quarantines every instance an anomaly scan lists.
    pub quarantine_flagged: bool,
    pub progress: bool,
}

/// Mean and 95% band of a performance curve over seeds, in %.
#[derive(Debug, Clone, Serialize)]
pub struct CurveBand {
    pub mean: Vec<f64>,
    pub ci95: Vec<f64>,
}

/// One mode's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub summary: ModeSummary,
    pub per_seed: Vec<RunSummary>,
    pub curve: CurveBand,
}

/// Hub against the baselines, per seed then over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// 1 − hub / isolated time-to-peak, %.
    pub time_to_peak_reduction_percent: Estimate,
    /// 1 − oracle / isolated time-to-peak, %: the most any hub could do.
    pub oracle_time_to_peak_reduction_percent: Estimate,
    /// (isolated − hub) / (isolated − oracle) time-to-peak.
    pub captured_gain_fraction: Estimate,
    /// 1 − hub / isolated cycles to plateau, %.
    pub cycles_to_plateau_reduction_percent: Estimate,
}

/// Hub and baselines at one fleet size.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    pub instances: usize,
    pub isolated_time_to_peak: Estimate,
    pub hub_time_to_peak: Estimate,
    pub oracle_time_to_peak: Estimate,
    pub comparison: Comparison,
}

/// Instances that joined in the later half of a staggered fleet.
#[derive(Debug, Clone, Serialize)]
pub struct LateJoiners {
    pub isolated_time_to_peak: Estimate,
    pub hub_time_to_peak: Estimate,
}

/// Hub and baselines for the instances of one context: a minority the
/// majority's favourite strategies harm cannot hide inside a fleet mean.
#[derive(Debug, Clone, Serialize)]
pub struct ContextPoint {
    pub context: String,
    /// Honest instances in it, per run (mean over seeds).
    pub instances: f64,
    pub isolated_time_to_peak: Estimate,
    pub hub_time_to_peak: Estimate,
    pub oracle_time_to_peak: Estimate,
    pub comparison: Comparison,
    /// Pattern-match accuracy (near-ties ok) of its hub-mode instances.
    pub pattern_accuracy: Option<Estimate>,
}

/// Everything a simulation measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub scenario: String,
    pub description: String,
    pub instances: usize,
    pub seeds: Vec<u64>,
    pub horizon: u32,
    pub stagger: u32,
    pub hub: String,
    pub modes: BTreeMap<Mode, ModeReport>,
    pub comparison: Comparison,
    pub late_joiners: Option<LateJoiners>,
    pub scaling: Vec<ScalingPoint>,
    /// By context (only with more than one).
    pub contexts: Vec<ContextPoint>,
    pub elapsed_seconds: f64,
}

struct Job {
    spec: RunSpec,
}

struct Finished {
    mode: Mode,
    seed: u64,
    instances: usize,
    traces: Vec<InstanceTrace>,
}

fn compare(
    isolated: &[RunSummary],
    hub: &[RunSummary],
    oracle: &[RunSummary],
) -> Option<Comparison> {
    let per_seed = |f: &dyn Fn(&RunSummary, &RunSummary, &RunSummary) -> f64| {
        let values: Vec<f64> = isolated
            .iter()
            .zip(hub)
            .zip(oracle)
            .map(|((i, h), o)| f(i, h, o))
            .filter(|v| v.is_finite())
            .collect();
        Estimate::of(&values)
    };
    Some(Comparison {
        time_to_peak_reduction_percent: per_seed(&|i, h, _| {
            100.0 * (1.0 - h.time_to_peak / i.time_to_peak)
        })?,
        oracle_time_to_peak_reduction_percent: per_seed(&|i, _, o| {
            100.0 * (1.0 - o.time_to_peak / i.time_to_peak)
        })?,
        captured_gain_fraction: per_seed(&|i, h, o| {
            (i.time_to_peak - h.time_to_peak) / (i.time_to_peak - o.time_to_peak)
        })?,
        cycles_to_plateau_reduction_percent: per_seed(&|i, h, _| {
            100.0 * (1.0 - h.cycles_to_plateau / i.cycles_to_plateau)
        })?,
    })
}

/// Where hub-mode runs find their hub: the external one, or in-process
/// hubs sharing one PKI made here (kept alive by the returned directory),
/// with the certificates of `instances` instances issued up front.
fn hub_target(
    options: &SimOptions,
    instances: usize,
) -> Result<(Option<tempfile::TempDir>, HubTarget)> {
    if let Some((url, dir)) = &options.external_hub {
        return Ok((
            None,
            HubTarget::External {
                url: url.clone(),
                certs_dir: dir.clone(),
            },
        ));
    }
    let certs = tempfile::tempdir()
        .map_err(|e| Error::Unavailable(format!("cannot create a temp dir: {e}")))?;
    crate::pki::generate_dev_pki(certs.path())?;
    for i in 0..instances {
        crate::pki::issue(
            certs.path(),
            &Identity::instance(format!("inst-{i:04}")),
            false,
        )?;
    }
    let target = HubTarget::InProcess {
        certs_dir: certs.path().to_path_buf(),
    };
    Ok((Some(certs), target))
}

/// `simulate --regions N`: the same fleet, with the same seeds, split over
/// N regions' hubs (instance `i` in region `i % N`), each region alone and
/// the regions federated, against one global hub (and every instance
/// alone, for scale).
#[derive(Debug, Clone, Serialize)]
pub struct RegionsReport {
    pub regions: usize,
    pub instances: usize,
    pub isolated_time_to_peak: Estimate,
    pub alone_time_to_peak: Estimate,
    pub federated_time_to_peak: Estimate,
    pub global_time_to_peak: Estimate,
    /// federated / global − 1 per seed, %: how far federation is from one
    /// hub that hears everyone (goal: within 5).
    pub federated_vs_global_percent: Estimate,
    /// 1 − federated / alone per seed, %: what the exchange buys.
    pub federated_vs_alone_percent: Estimate,
}

/// Runs the regions study (see [`RegionsReport`]).
pub async fn regions_study(options: &SimOptions, regions: usize) -> Result<RegionsReport> {
    if options.external_hub.is_some() {
        return Err(Error::invalid(
            "--regions",
            "simulated regions run their own hubs: drop --hub",
        ));
    }
    let (certs, target) = hub_target(options, options.instances)?;
    if let Some(certs) = &certs {
        // Issued up front: the runs of a seed start their hubs at once.
        for r in 0..regions {
            crate::pki::issue(certs.path(), &Identity::hub(format!("region{r}")), false)?;
        }
    }
    let scenario = Arc::new(options.scenario.clone());
    // (mode, regions, federated): isolated, the global hub, regions alone,
    // regions federated.
    let variants = [
        (Mode::Isolated, 1, false),
        (Mode::Hub, 1, false),
        (Mode::Hub, regions, false),
        (Mode::Hub, regions, true),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for k in 0..options.seeds as u64 {
        let mut running = JoinSet::new();
        for (v, (mode, regions, federated)) in variants.into_iter().enumerate() {
            let spec = RunSpec {
                scenario: scenario.clone(),
                mode,
                seed: options.seed + k,
                instances: options.instances,
                horizon: options.horizon,
                stagger: options.stagger,
                id_prefix: "inst-".into(),
                faulty: 0,
                faulty_mode: options.faulty_mode,
                quarantine_flagged: false,
                regions,
                federated,
            };
            let target = target.clone();
            running.spawn(async move {
                let hub = (mode == Mode::Hub).then_some(&target);
                let traces = runner::run(&spec, hub, &ProgressBar::hidden()).await?;
                let summary = RunSummary::of(&traces, spec.horizon, false);
                Ok::<_, Error>((v, summary.time_to_peak))
            });
        }
        while let Some(done) = running.join_next().await {
            let (v, time) =
                done.map_err(|e| Error::Internal(format!("simulation task failed: {e}")))??;
            times[v].push(time);
        }
    }
    let estimate = |values: &[f64]| {
        Estimate::of(values).ok_or_else(|| Error::Internal("no runs to estimate".into()))
    };
    let ratio = |a: usize, b: usize, f: &dyn Fn(f64, f64) -> f64| -> Result<Estimate> {
        let values: Vec<f64> = times[a]
            .iter()
            .zip(&times[b])
            .map(|(x, y)| f(*x, *y))
            .filter(|v| v.is_finite())
            .collect();
        estimate(&values)
    };
    Ok(RegionsReport {
        regions,
        instances: options.instances,
        isolated_time_to_peak: estimate(&times[0])?,
        global_time_to_peak: estimate(&times[1])?,
        alone_time_to_peak: estimate(&times[2])?,
        federated_time_to_peak: estimate(&times[3])?,
        federated_vs_global_percent: ratio(3, 1, &|f, g| 100.0 * (f / g - 1.0))?,
        federated_vs_alone_percent: ratio(3, 2, &|f, a| 100.0 * (1.0 - f / a))?,
    })
}

/// Runs the whole experiment.
pub async fn simulate(options: SimOptions) -> Result<SimReport> {
    let started = Instant::now();
    let scenario = Arc::new(options.scenario.clone());
    let seeds: Vec<u64> = (0..options.seeds as u64)
        .map(|k| options.seed + k)
        .collect();
    let mut sizes: Vec<(usize, Vec<u64>)> = vec![(options.instances, seeds.clone())];
    for &n in &options.scaling {
        if n != options.instances {
            sizes.push((
                n,
                seeds
                    .iter()
                    .copied()
                    .take(options.scaling_seeds.max(1))
                    .collect(),
            ));
        }
    }
    let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut jobs = Vec::new();
    for (instances, seeds) in &sizes {
        for &seed in seeds {
            for mode in [Mode::Isolated, Mode::Hub, Mode::Oracle] {
                jobs.push(Job {
                    spec: RunSpec {
                        scenario: scenario.clone(),
                        mode,
                        seed,
                        instances: *instances,
                        horizon: options.horizon,
                        stagger: options.stagger,
                        id_prefix: match &options.external_hub {
                            Some(_) => format!("sim-{run_tag}-{seed}-{instances}-"),
                            None => "inst-".into(),
                        },
                        faulty: if *instances == options.instances {
                            options.faulty
                        } else {
                            0
                        },
                        faulty_mode: options.faulty_mode,
                        quarantine_flagged: options.quarantine_flagged,
                        regions: 1,
                        federated: false,
                    },
                });
            }
        }
    }

    let most = sizes.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let (_certs, target) = hub_target(&options, most)?;

    let work: u64 = jobs
        .iter()
        .map(|j| j.spec.instances as u64 * u64::from(j.spec.horizon))
        .sum();
    let progress = ProgressBar::with_draw_target(
        Some(work),
        if options.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} simulating [{bar:40}] {percent}% {elapsed_precise} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    // An external hub is shared state: its runs go one at a time.
    let parallel = if options.external_hub.is_some() {
        1
    } else {
        options.parallel.max(1)
    };
    let mut pending = jobs.into_iter();
    let mut running = JoinSet::new();
    let mut finished = Vec::new();
    loop {
        while running.len() < parallel {
            let Some(job) = pending.next() else { break };
            let target = target.clone();
            let progress = progress.clone();
            running.spawn(async move {
                let spec = job.spec;
                let hub = (spec.mode == Mode::Hub).then_some(&target);
                let traces = runner::run(&spec, hub, &progress).await?;
                Ok::<_, Error>(Finished {
                    mode: spec.mode,
                    seed: spec.seed,
                    instances: spec.instances,
                    traces,
                })
            });
        }
        match running.join_next().await {
            Some(done) => finished
                .push(done.map_err(|e| Error::Internal(format!("simulation task failed: {e}")))??),
            None => break,
        }
    }
    progress.finish_and_clear();
    finished.sort_by_key(|f| (f.instances, f.seed, f.mode));

    let summaries = |instances: usize, mode: Mode| -> Vec<RunSummary> {
        finished
            .iter()
            .filter(|f| f.instances == instances && f.mode == mode)
            .map(|f| RunSummary::of(&f.traces, options.horizon, f.mode == Mode::Hub))
            .collect()
    };

    let mut modes = BTreeMap::new();
    for mode in [Mode::Isolated, Mode::Hub, Mode::Oracle] {
        let per_seed = summaries(options.instances, mode);
        let curves: Vec<Vec<f64>> = finished
            .iter()
            .filter(|f| f.instances == options.instances && f.mode == mode)
            .map(|f| measures::curve(&f.traces, options.horizon))
            .collect();
        let band = (0..options.horizon as usize)
            .map(|c| {
                let at: Vec<f64> = curves.iter().map(|curve| 100.0 * curve[c]).collect();
                Estimate::of(&at).map_or((0.0, 0.0), |e| (e.mean, e.ci95))
            })
            .collect::<Vec<_>>();
        modes.insert(
            mode,
            ModeReport {
                summary: ModeSummary::of(&per_seed)
                    .ok_or_else(|| Error::Internal("no runs".into()))?,
                per_seed,
                curve: CurveBand {
                    mean: band.iter().map(|b| b.0).collect(),
                    ci95: band.iter().map(|b| b.1).collect(),
                },
            },
        );
    }
    let comparison = compare(
        &modes[&Mode::Isolated].per_seed,
        &modes[&Mode::Hub].per_seed,
        &modes[&Mode::Oracle].per_seed,
    )
    .ok_or_else(|| Error::Internal("no comparable runs".into()))?;

    let late_joiners = (options.stagger > 0 && options.instances >= 2).then(|| {
        let late = |mode: Mode| -> Vec<f64> {
            finished
                .iter()
                .filter(|f| f.instances == options.instances && f.mode == mode)
                .map(|f| {
                    let half = &f.traces[f.traces.len() / 2..];
                    RunSummary::of(half, options.horizon, false).time_to_peak
                })
                .collect()
        };
        Some(LateJoiners {
            isolated_time_to_peak: Estimate::of(&late(Mode::Isolated))?,
            hub_time_to_peak: Estimate::of(&late(Mode::Hub))?,
        })
    });

    let mut scaling = Vec::new();
    let mut sizes_measured: Vec<usize> = options.scaling.clone();
    sizes_measured.sort_unstable();
    sizes_measured.dedup();
    for n in sizes_measured {
        let (i, h, o) = (
            summaries(n, Mode::Isolated),
            summaries(n, Mode::Hub),
            summaries(n, Mode::Oracle),
        );
        let ttp = |runs: &[RunSummary]| {
            Estimate::of(&runs.iter().map(|r| r.time_to_peak).collect::<Vec<_>>())
        };
        if let (Some(iso), Some(hub), Some(oracle), Some(cmp)) =
            (ttp(&i), ttp(&h), ttp(&o), compare(&i, &h, &o))
        {
            scaling.push(ScalingPoint {
                instances: n,
                isolated_time_to_peak: iso,
                hub_time_to_peak: hub,
                oracle_time_to_peak: oracle,
                comparison: cmp,
            });
        }
    }

    let mut contexts = Vec::new();
    if options.scenario.contexts.len() > 1 {
        for (c, spec) in options.scenario.contexts.iter().enumerate() {
            let runs = |mode: Mode| -> Vec<(RunSummary, usize)> {
                finished
                    .iter()
                    .filter(|f| f.instances == options.instances && f.mode == mode)
                    .filter_map(|f| {
                        let in_context: Vec<InstanceTrace> = f
                            .traces
                            .iter()
                            .filter(|t| t.context == c && !t.faulty)
                            .cloned()
                            .collect();
                        (!in_context.is_empty()).then(|| {
                            (
                                RunSummary::of(&in_context, options.horizon, mode == Mode::Hub),
                                in_context.len(),
                            )
                        })
                    })
                    .collect()
            };
            let (i, h, o) = (runs(Mode::Isolated), runs(Mode::Hub), runs(Mode::Oracle));
            let instances = i.iter().map(|(_, n)| *n as f64).sum::<f64>() / i.len().max(1) as f64;
            let summaries = |runs: &[(RunSummary, usize)]| -> Vec<RunSummary> {
                runs.iter().map(|(r, _)| *r).collect()
            };
            let (i, h, o) = (summaries(&i), summaries(&h), summaries(&o));
            let ttp = |runs: &[RunSummary]| {
                Estimate::of(&runs.iter().map(|r| r.time_to_peak).collect::<Vec<_>>())
            };
            if let (Some(iso), Some(hub), Some(oracle), Some(cmp)) =
                (ttp(&i), ttp(&h), ttp(&o), compare(&i, &h, &o))
            {
                contexts.push(ContextPoint {
                    context: spec.name.clone(),
                    instances,
                    isolated_time_to_peak: iso,
                    hub_time_to_peak: hub,
                    oracle_time_to_peak: oracle,
                    comparison: cmp,
                    pattern_accuracy: Estimate::of(
                        &h.iter()
                            .filter_map(|r| r.pattern_accuracy)
                            .collect::<Vec<_>>(),
                    ),
                });
            }
        }
    }

    Ok(SimReport {
        scenario: options.scenario.name.clone(),
        description: options.scenario.description.clone(),
        instances: options.instances,
        seeds,
        horizon: options.horizon,
        stagger: options.stagger,
        hub: match &options.external_hub {
            Some((url, _)) => url.clone(),
            None => "in-process (a fresh hub per run, mTLS on 127.0.0.1)".into(),
        },
        modes,
        comparison,
        late_joiners: late_joiners.flatten(),
        scaling,
        contexts,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}
