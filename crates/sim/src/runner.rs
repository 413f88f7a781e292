//! Runs one simulated fleet in one mode with one seed, cycle by cycle, and
//! records what each instance went through.
//!
//! All instances advance in lockstep and in a fixed order, and hub-mode
//! instances read the insight stream up to the same point at the end of
//! every cycle; the in-process hub's clock is set to the simulated cycle.
//! So a run is a deterministic function of (scenario, mode, seed, fleet
//! size) even though it talks to a real hub over the network.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::future::join_all;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::{net::TcpListener, sync::oneshot};

use super::agents::{LocalLearner, PlateauDetector, argmax, oracle_action, pick_metric};
use super::hub_agent::HubLink;
use super::rng::Rng;
use super::scenario::Scenario;
use super::world::{Application, InstanceState, World};
use crate::auth::Identity;
use crate::client::{ClientSettings, HubClient};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pb;
use crate::pki;

/// What a faulty instance reports instead of its true outcomes (it still
/// acts on the hub's advice like the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultyMode {
    /// Every outcome as a success of +0.3 for the strategy that truly does
    /// worst on the metric: an instance promoting a bad strategy.
    Inflate,
    /// A random strategy, success and delta (in [−0.2, 0.3]): a bug.
    Random,
    /// Honest outcomes, but plateau-model updates pushed towards a wrong
    /// model: ten times the opposite of what it learned, claiming a
    /// million examples.
    Model,
}

impl FaultyMode {
    pub fn parse(name: &str) -> Option<FaultyMode> {
        match name {
            "inflate" => Some(FaultyMode::Inflate),
            "random" => Some(FaultyMode::Random),
            "model" => Some(FaultyMode::Model),
            _ => None,
        }
    }
}

/// How an instance learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Isolated,
    Hub,
    Oracle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Isolated => "isolated",
            Mode::Hub => "hub",
            Mode::Oracle => "oracle",
        }
    }
}

/// Patience (cycles without progress) an instance starts with when the hub
/// has no configuration for it; drawn per instance from this range.
const PATIENCE_CHOICES: [usize; 4] = [2, 3, 4, 6];

/// A metric knocked back and whether (and when) it recovered.
#[derive(Debug, Clone, Serialize)]
pub struct ReversalTrace {
    pub cycle: u32,
    pub recovered_after: Option<u32>,
}

/// What one instance went through.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceTrace {
    pub context: usize,
    /// The fleet cycle it joined at.
    pub join: u32,
    /// Performance (share of the theoretical maximum) after each of its cycles.
    pub performance: Vec<f64>,
    pub applications: u32,
    pub failed_applications: u32,
    pub reversals: Vec<ReversalTrace>,
    /// GetPatterns top matches judged, and how many recommended the truly
    /// best strategy or one within a near-tie of it (hub mode only).
    pub pattern_checks: u32,
    pub pattern_hits: u32,
    /// The same, counting only the single best strategy (no near-ties).
    pub pattern_hits_strict: u32,
    /// Hub-recommended applications by the hub's confidence (tenths): the
    /// summed confidence, the successes and the count per bin.
    pub calibration: [(f64, u32, u32); 10],
    /// Applications to a metric that had not stalled yet, because the
    /// fleet's plateau model saw a plateau coming (hub mode).
    pub early_applications: u32,
    /// Each metric's value when it joined, then after each of its cycles:
    /// the trajectories the plateau model learns from ([`crate::prediction`]).
    #[serde(skip)]
    pub values: Vec<Vec<f64>>,
    /// One of the run's faulty instances (its performance is left out of
    /// the measures; what the others reach despite it is the point).
    pub faulty: bool,
    /// Its applications when a hub's anomaly scan first listed it (hub
    /// mode).
    pub flagged_after: Option<u32>,
}

/// Where hub-mode instances find their hub.
#[derive(Debug, Clone)]
pub enum HubTarget {
    /// A fresh hub per run, in this process, with this PKI.
    InProcess { certs_dir: PathBuf },
    /// An external hub; client certificates are issued from `certs_dir`'s
    /// CA (or must already be there).
    External { url: String, certs_dir: PathBuf },
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub scenario: Arc<Scenario>,
    pub mode: Mode,
    pub seed: u64,
    pub instances: usize,
    pub horizon: u32,
    /// Cycles between successive instances joining (0: all at once).
    pub stagger: u32,
    /// Prefix of instance ids (keeps runs apart on an external hub).
    pub id_prefix: String,
    /// The first this many instances are faulty (in every mode, so that
    /// the same instances are measured), reporting as `faulty_mode` says
    /// (hub mode).
    pub faulty: usize,
    pub faulty_mode: FaultyMode,
    /// The operator quarantines every instance a scan lists (hub mode).
    pub quarantine_flagged: bool,
    /// Regional hubs the fleet is split over in hub mode (instance `i` is
    /// in region `i % regions`); 1: one hub for everyone.
    pub regions: usize,
    /// Whether the regional hubs exchange what they know (`false`: each
    /// region alone).
    pub federated: bool,
}

/// Cycles between the anomaly scans a hub-mode run asks for.
const ANOMALY_SCAN_EVERY: u32 = 10;
/// How often a simulated region's hub pulls from each peer: the run waits
/// for the regions to agree after every cycle, and short pulls keep that
/// wait short. (A cycle is a minute on the hub's clock, so this stands for
/// staleness well under a cycle, which the regions tests measure.)
const SIM_PULL_INTERVAL: Duration = Duration::from_millis(20);

struct SimInstance {
    id: String,
    state: InstanceState,
    rng: Rng,
    detector: PlateauDetector,
    learner: LocalLearner,
    link: Option<HubLink>,
    /// The region (index of its hub) it belongs to.
    region: usize,
    trace: InstanceTrace,
    /// (metric, value to regain, trace index)
    open_reversals: Vec<(usize, f64, usize)>,
}

/// A stable number from an instance id (FNV-1a), to seed its draws.
fn hash_id(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A metric counts as recovered within this of its value before the drop.
const RECOVERY_TOLERANCE: f64 = 0.02;

/// A hub this run started, stopped when the run ends.
struct LocalHub {
    url: String,
    clock: ManualClock,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
    _data: tempfile::TempDir,
}

/// Cycles are a minute apart on the hub's clock.
const CYCLE_MS: i64 = 60_000;
/// The simulated fleet's epoch (2025-11-04, the seed's date).
const EPOCH_MS: i64 = 1_762_214_400_000;

/// One simulated region: its name and, when federated, its peers' URLs.
struct RegionSetup {
    name: String,
    pull_from: std::collections::BTreeMap<String, String>,
}

async fn bind_local() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen: {e}")))
}

/// The hubs of a hub-mode run: one, or one per region (pulling from each
/// other when federated).
async fn start_local_hubs(
    certs_dir: &Path,
    regions: usize,
    federated: bool,
) -> Result<Vec<LocalHub>> {
    if regions <= 1 {
        return Ok(vec![
            start_local_hub(certs_dir, bind_local().await?, None).await?,
        ]);
    }
    let mut listeners = Vec::with_capacity(regions);
    for _ in 0..regions {
        listeners.push(bind_local().await?);
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| format!("https://{a}"))
                .map_err(|e| Error::Unavailable(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let name = |r: usize| format!("region{r}");
    let mut hubs = Vec::with_capacity(regions);
    for (r, listener) in listeners.into_iter().enumerate() {
        if !pki::CertPaths::for_name(certs_dir, &name(r)).cert.exists() {
            pki::issue(certs_dir, &Identity::hub(name(r)), false)?;
        }
        let pull_from = (0..regions)
            .filter(|peer| federated && *peer != r)
            .map(|peer| (name(peer), urls[peer].clone()))
            .collect();
        let setup = RegionSetup {
            name: name(r),
            pull_from,
        };
        hubs.push(start_local_hub(certs_dir, listener, Some(setup)).await?);
    }
    Ok(hubs)
}

/// Waits until every regional hub holds the same fleet knowledge (each
/// has pulled everything the others know), or 10 s have passed.
async fn regions_agree(operators: &[HubClient]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut digests = std::collections::BTreeSet::new();
        for operator in operators {
            let knowledge = operator
                .admin()
                .get_fleet_knowledge(pb::GetFleetKnowledgeRequest::default())
                .await
                .map_err(|e| Error::Unavailable(format!("GetFleetKnowledge: {e}")))?;
            digests.insert(knowledge.into_inner().digest);
        }
        if digests.len() == 1 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Unavailable(
                "the simulated regions did not agree within 10 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn start_local_hub(
    certs_dir: &Path,
    listener: TcpListener,
    region: Option<RegionSetup>,
) -> Result<LocalHub> {
    // The hub keeps its acknowledged-means-flushed contract; on tmpfs a
    // flush is cheap, which keeps a simulated run fast.
    let shm = Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("learning-hub-sim")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new()
            .prefix("learning-hub-sim")
            .tempdir()
    }
    .map_err(|e| Error::Unavailable(format!("cannot create a data dir: {e}")))?;
    let mut config = Config::new(data.path().join("data"), certs_dir);
    config.generate_dev_pki = false;
    if let Some(region) = region {
        config.hub.region = region.name;
        config.hub.peers = region.pull_from.keys().cloned().collect();
        config.pull_from = region.pull_from;
        config.pull_interval = SIM_PULL_INTERVAL;
    }
    let clock = ManualClock::new(EPOCH_MS);
    let prepared = crate::server::PreparedHub::prepare(config, Arc::new(clock.clone())).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let (shutdown, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(prepared.serve(listener, async move {
        let _ = rx.await;
    }));
    Ok(LocalHub {
        url: format!("https://{addr}"),
        clock,
        shutdown,
        task,
        _data: data,
    })
}

/// Connects with retries (a hub just started may not accept yet).
async fn connect_retrying(settings: &ClientSettings) -> Result<HubClient> {
    let mut last = None;
    for _ in 0..50 {
        match HubClient::connect(settings).await {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| Error::Unavailable("cannot connect".into())))
}

/// The operator that provisions the simulated instances: the PKI's
/// `operator` certificate, or one issued from its CA.
async fn operator(url: &str, certs_dir: &Path) -> Result<HubClient> {
    let name = if pki::CertPaths::for_name(certs_dir, pki::DEFAULT_OPERATOR)
        .cert
        .exists()
    {
        pki::DEFAULT_OPERATOR
    } else {
        pki::issue(certs_dir, &Identity::operator("sim-operator"), true)?;
        "sim-operator"
    };
    let mut settings = ClientSettings::new(url, certs_dir, name);
    settings.instance_id = None;
    connect_retrying(&settings).await
}

/// Provisions an instance as an operator would (certificate, API key) and
/// connects as it.
async fn connect(
    url: &str,
    certs_dir: &Path,
    instance_id: &str,
    operator: &HubClient,
) -> Result<HubClient> {
    let identity = Identity::instance(instance_id);
    if !pki::CertPaths::for_name(certs_dir, instance_id)
        .cert
        .exists()
    {
        pki::issue(certs_dir, &identity, false)?;
    }
    let mut settings = ClientSettings::new(url, certs_dir, instance_id);
    settings.api_key = Some(
        operator
            .issue_api_key(instance_id)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot issue an API key: {e}")))?,
    );
    connect_retrying(&settings).await
}

/// Runs the fleet; returns one trace per instance, in instance order.
pub async fn run(
    spec: &RunSpec,
    hub: Option<&HubTarget>,
    progress: &ProgressBar,
) -> Result<Vec<InstanceTrace>> {
    let scenario = spec.scenario.clone();
    let world = World::new(&scenario);
    let mut setup = Rng::derive(spec.seed, 0);
    let mut fleet: Vec<SimInstance> = (0..spec.instances)
        .map(|i| {
            let context = world.draw_context(&mut setup);
            let patience = PATIENCE_CHOICES[setup.weighted(&[1.0; PATIENCE_CHOICES.len()])];
            let state = world.instance(context);
            let values = state.values.iter().map(|v| vec![*v]).collect();
            SimInstance {
                id: format!("{}{i:04}", spec.id_prefix),
                state,
                // The world's randomness per instance depends only on the
                // seed and the instance, never on the mode.
                rng: Rng::derive(spec.seed, 1 + i as u64),
                detector: PlateauDetector::new(scenario.metrics.len(), patience),
                learner: LocalLearner::default(),
                link: None,
                region: i % spec.regions.max(1),
                trace: InstanceTrace {
                    context,
                    join: i as u32 * spec.stagger,
                    performance: Vec::with_capacity(spec.horizon as usize),
                    applications: 0,
                    failed_applications: 0,
                    reversals: Vec::new(),
                    pattern_checks: 0,
                    pattern_hits: 0,
                    pattern_hits_strict: 0,
                    calibration: [(0.0, 0, 0); 10],
                    early_applications: 0,
                    values,
                    faulty: i < spec.faulty,
                    flagged_after: None,
                },
                open_reversals: Vec::new(),
            }
        })
        .collect();

    let local = match (spec.mode, hub) {
        (Mode::Hub, Some(HubTarget::InProcess { certs_dir })) => {
            start_local_hubs(certs_dir, spec.regions, spec.federated).await?
        }
        (Mode::Hub, Some(HubTarget::External { .. })) if spec.regions > 1 => {
            return Err(Error::invalid(
                "regions",
                "simulated regions need in-process hubs",
            ));
        }
        (Mode::Hub, None) => return Err(Error::invalid("hub", "hub mode needs a hub")),
        _ => Vec::new(),
    };
    // One URL per region (one region when there is one hub).
    let (urls, certs_dir) = match hub {
        Some(HubTarget::InProcess { certs_dir }) if !local.is_empty() => (
            local.iter().map(|l| l.url.clone()).collect::<Vec<_>>(),
            certs_dir.clone(),
        ),
        Some(HubTarget::External { url, certs_dir }) => (vec![url.clone()], certs_dir.clone()),
        _ => (Vec::new(), PathBuf::new()),
    };

    let mut operators = Vec::new();
    if spec.mode == Mode::Hub {
        for url in &urls {
            operators.push(operator(url, &certs_dir).await?);
        }
    }
    let last_join = spec.stagger * spec.instances.saturating_sub(1) as u32;
    // Insight sequences are per hub.
    let mut insight_sequence = vec![0u64; urls.len().max(1)];
    let result = async {
        for cycle in 0..last_join + spec.horizon {
            for local in &local {
                local.clock.set(EPOCH_MS + i64::from(cycle) * CYCLE_MS);
            }
            let active =
                |i: &SimInstance| cycle >= i.trace.join && cycle < i.trace.join + spec.horizon;
            for instance in fleet
                .iter_mut()
                .filter(|i| i.trace.join == cycle && spec.mode == Mode::Hub)
            {
                let region = instance.region;
                let client =
                    connect(&urls[region], &certs_dir, &instance.id, &operators[region]).await?;
                let seed = spec.seed ^ hash_id(&instance.id);
                let (mut link, patience) =
                    HubLink::join(client, &instance.id, seed, &world, &instance.state).await?;
                if instance.trace.faulty {
                    link.faulty = Some(spec.faulty_mode);
                }
                if let Some(patience) = patience {
                    instance.detector = PlateauDetector::new(scenario.metrics.len(), patience);
                }
                instance.link = Some(link);
            }
            // Decisions only read from the hub, so the fleet makes them
            // concurrently against the state left by the previous cycle;
            // the shares that change it then go in instance order.
            let decisions = join_all(
                fleet
                    .iter_mut()
                    .filter(|i| active(i))
                    .map(|instance| decide(&world, spec.mode, instance)),
            )
            .await;
            let actors = fleet.iter_mut().filter(|i| active(i));
            for (instance, decision) in actors.zip(decisions) {
                let region = instance.region;
                if let Some(sequence) = act(&world, instance, decision?).await? {
                    insight_sequence[region] = insight_sequence[region].max(sequence);
                }
                progress.inc(1);
            }
            for instance in fleet.iter_mut() {
                let sequence = insight_sequence[instance.region];
                if let (Some(link), true) = (instance.link.as_mut(), sequence > 0) {
                    link.catch_up_insights(&world, sequence).await?;
                }
            }
            // Regions that exchange knowledge agree before the next cycle.
            if spec.federated && operators.len() > 1 {
                regions_agree(&operators).await?;
            }
            // Anomaly scans with one hub (the study of regions has no
            // faulty instances).
            if let (true, [operator]) = (cycle % ANOMALY_SCAN_EVERY == 0, operators.as_slice()) {
                flag_anomalies(operator, &mut fleet, spec.quarantine_flagged).await?;
            }
        }
        Ok::<(), Error>(())
    }
    .await;

    if !local.is_empty() {
        drop(fleet.iter_mut().map(|i| i.link.take()).collect::<Vec<_>>());
    }
    // Each hub's data directory lives until its hub has stopped.
    let mut stopping = Vec::new();
    for hub in local {
        let _ = hub.shutdown.send(());
        stopping.push((hub.task, hub._data));
    }
    for (task, _data) in stopping {
        let _ = task.await;
    }
    result?;
    Ok(fleet.into_iter().map(|i| i.trace).collect())
}

/// Asks the hub for an anomaly scan and notes, for each instance it lists
/// for the first time, how many applications it had made; with
/// `quarantine`, puts it in quarantine as an operator would.
async fn flag_anomalies(
    operator: &HubClient,
    fleet: &mut [SimInstance],
    quarantine: bool,
) -> Result<()> {
    let listed = operator
        .admin()
        .list_anomalies(pb::ListAnomaliesRequest { scan: true })
        .await
        .map_err(|s| Error::Unavailable(format!("ListAnomalies: {s}")))?
        .into_inner();
    for anomaly in listed.anomalies {
        let Some(instance) = fleet.iter_mut().find(|i| i.id == anomaly.instance_id) else {
            continue;
        };
        instance
            .trace
            .flagged_after
            .get_or_insert(instance.trace.applications);
        // Only lying is quarantined: a metric regression is the
        // instance's own trouble, not poison for the fleet.
        if quarantine
            && !anomaly.quarantined
            && anomaly.kind == pb::AnomalyKind::InconsistentReports as i32
        {
            operator
                .admin()
                .quarantine_instance(pb::QuarantineInstanceRequest {
                    instance_id: anomaly.instance_id.clone(),
                    reason: anomaly.evidence.clone(),
                })
                .await
                .map_err(|s| Error::Unavailable(format!("QuarantineInstance: {s}")))?;
            // Its writes are refused from now on: it stops sharing.
            instance.link = None;
        }
    }
    Ok(())
}

/// What an instance does this cycle: its action and, in hub mode, the
/// decision behind it.
struct Planned {
    action: Option<Application>,
    decision: Option<super::hub_agent::Decision>,
}

/// Observes the metrics and decides on this cycle's action (hub mode asks
/// the hub; nothing is written).
async fn decide(world: &World<'_>, mode: Mode, instance: &mut SimInstance) -> Result<Planned> {
    let scenario = world.scenario;
    instance.detector.observe(&instance.state.values);
    let stuck = instance.detector.stuck_metrics();
    let target = pick_metric(world, &instance.state, &stuck);
    Ok(match mode {
        Mode::Oracle => Planned {
            action: oracle_action(world, &instance.state),
            decision: None,
        },
        Mode::Isolated => Planned {
            action: target.map(|metric| Application {
                metric,
                strategy: argmax(&instance.learner.scores(
                    scenario.strategies.len(),
                    metric,
                    instance.state.values[metric],
                )),
            }),
            decision: None,
        },
        Mode::Hub => match (
            // A metric knocked back comes first: the failure report was
            // answered with a recovery plan, and the instance follows it.
            instance
                .link
                .as_ref()
                .and_then(|link| link.recovering(instance.state.cycle))
                .or(target)
                .or_else(|| {
                    // Nothing stalled yet: act on a plateau the fleet's model
                    // sees coming.
                    let ahead = instance
                        .link
                        .as_ref()
                        .and_then(|link| link.plateau_ahead(&instance.trace.values));
                    instance.trace.early_applications += u32::from(ahead.is_some());
                    ahead
                }),
            instance.link.as_mut(),
        ) {
            (Some(metric), Some(link)) => {
                let decision = link
                    .decide(world, &instance.state, &instance.detector, metric)
                    .await?;
                if let Some((hit, strict)) = decision.pattern_hit {
                    instance.trace.pattern_checks += 1;
                    instance.trace.pattern_hits += u32::from(hit);
                    instance.trace.pattern_hits_strict += u32::from(strict);
                }
                Planned {
                    action: Some(decision.app),
                    decision: Some(decision),
                }
            }
            _ => Planned {
                action: None,
                decision: None,
            },
        },
    })
}

/// Applies the planned action, learns from it, shares it (hub mode) and
/// records the cycle. Returns the sequence of an insight it shared.
async fn act(
    world: &World<'_>,
    instance: &mut SimInstance,
    planned: Planned,
) -> Result<Option<u64>> {
    let Planned { action, decision } = planned;
    let cycle_in_run = instance.state.cycle;
    let outcome = world.step(&mut instance.state, action, &mut instance.rng);
    let mut shared_insight = None;
    if let (Some(app), Some(outcome)) = (action, outcome) {
        instance.learner.record(app, &outcome);
        instance.detector.reset(app.metric);
        instance.trace.applications += 1;
        instance.trace.failed_applications += u32::from(!outcome.success);
        for reversal in &outcome.reversals {
            instance.trace.reversals.push(ReversalTrace {
                cycle: cycle_in_run,
                recovered_after: None,
            });
            instance.open_reversals.push((
                reversal.metric,
                reversal.value_before,
                instance.trace.reversals.len() - 1,
            ));
        }
        if let Some(confidence) = decision.as_ref().and_then(|d| d.confidence) {
            let bin = &mut instance.trace.calibration[((confidence * 10.0) as usize).min(9)];
            bin.0 += confidence;
            bin.1 += u32::from(outcome.success);
            bin.2 += 1;
        }
        if let (Some(link), Some(decision)) = (instance.link.as_mut(), decision.as_ref()) {
            shared_insight = link
                .share_outcome(
                    world,
                    &instance.learner,
                    &instance.state,
                    decision,
                    &outcome,
                    cycle_in_run,
                )
                .await?;
        }
    }
    let state = &instance.state;
    let trace = &mut instance.trace;
    let mut recovered = Vec::new();
    instance.open_reversals.retain(|(metric, target, index)| {
        if state.values[*metric] >= target - RECOVERY_TOLERANCE {
            let cycles = state.cycle - trace.reversals[*index].cycle - 1;
            trace.reversals[*index].recovered_after = Some(cycles);
            recovered.push((*metric, cycles));
            false
        } else {
            true
        }
    });
    if let Some(link) = instance.link.as_mut() {
        for (metric, cycles) in recovered {
            link.recovered(world, metric, cycles).await?;
        }
    }
    let performance = world.performance(&instance.state);
    instance.trace.performance.push(performance);
    for (history, value) in instance.trace.values.iter_mut().zip(&instance.state.values) {
        history.push(*value);
    }
    if let Some(link) = instance.link.as_mut() {
        link.maybe_sync_model(instance.state.cycle, &instance.trace.values)
            .await?;
        link.maybe_share_configuration(
            instance.state.cycle,
            instance.detector.patience,
            performance,
        )
        .await?;
    }
    Ok(shared_insight)
}
