//! Random command logs for determinism tests: a seeded mix of every kind
//! of command a hub folds — registrations, shares of every record kind
//! (some with request ids, some retried, some reusing an id for another
//! payload), federated model updates, keys issued and revoked,
//! quarantines and releases, operators' actions, audit entries,
//! retention sweeps, other regions' knowledge and generated insights — on a clock that moves
//! forward, sometimes by days.
#![allow(dead_code)]

use learning_hub::domain::anomaly::{AnomalyKind, Finding};
use learning_hub::domain::command::{
    Action, Command, Generated, Idempotency, JobStamp, RetentionRules,
};
use learning_hub::domain::digest::{Batch, RemoteInsight, RemoteModel, Stats, Subject, Versioned};
use learning_hub::domain::federated::{Aggregation, Evaluation, FederationRules, ModelUpdate};
use learning_hub::domain::idempotency::{Fingerprint, RequestTag};
use learning_hub::domain::knowledge::{FailureKnowledge, Knowledge, Record};
use learning_hub::domain::model::{
    ApiKey, Attributes, AuditEntry, ConfigShare, FailureReport, FailureType, InsightCategory,
    InsightDraft, InsightEvidence, MetricState, ParamValue, PatternShare, RecentApplication,
    RecoveryAttempt, Registration, StrategyShare,
};
use learning_hub::domain::rng::Rng;

const DAY: i64 = 24 * 60 * 60 * 1000;
const INSTANCES: [&str; 4] = ["a", "b", "c", "d"];
const METRICS: [&str; 3] = ["lv", "acc", "loss"];
const STRATEGIES: [&str; 4] = ["s1", "s2", "s3", "s4"];

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn context(rng: &mut Rng) -> Attributes {
    Attributes::from([("p".to_string(), format!("p{}", rng.next_u64() % 2))])
}

fn request(rng: &mut Rng, payload: &str) -> Option<Idempotency> {
    if !rng.chance(0.4) {
        return None;
    }
    // Few ids, so retries (same payload) and reuse (another) both happen.
    Some(Idempotency {
        tag: RequestTag {
            id: format!("req-{}", rng.next_u64() % 12),
            fingerprint: Fingerprint::of(payload.as_bytes()),
        },
        window_ms: DAY,
    })
}

fn draft(rng: &mut Rng) -> InsightDraft {
    let n = rng.next_u64() % 6;
    InsightDraft {
        category: [InsightCategory::Timing, InsightCategory::Sequence][(n % 2) as usize],
        title: format!("insight {n}"),
        insight: format!("text {n}"),
        evidence: InsightEvidence {
            data_points: n * 10,
            correlation_strength: 0.5,
            instances_covered: 2,
            improvement_observed: 0.1,
        },
        applicable_contexts: vec![],
        effectiveness: 0.2 + 0.1 * n as f64,
        risk: 0.1,
        recommendation: String::new(),
        alternatives: vec![],
        valid_until: None,
    }
}

/// `n` commands from `seed`, starting at time `start`.
pub fn random_log(seed: u64, n: usize, start: i64) -> Vec<Command> {
    let mut rng = Rng::new(seed);
    let mut at = start;
    let mut commands = Vec::with_capacity(n);
    for i in 0..n {
        at += if rng.chance(0.02) {
            3 * DAY
        } else {
            (rng.next_u64() % 5_000) as i64
        };
        let caller = pick(&mut rng, &INSTANCES).to_string();
        let roll = rng.next_u64() % 100;
        let action = match roll {
            0..=7 => Action::Register {
                caller: caller.clone(),
                registration: Registration {
                    instance_id: caller,
                    region: format!("r{}", rng.next_u64() % 2),
                    context: context(&mut rng),
                    capabilities: vec![],
                },
            },
            8..=37 => {
                let share = StrategyShare {
                    strategy: pick(&mut rng, &STRATEGIES).into(),
                    metric: pick(&mut rng, &METRICS).into(),
                    value_before: rng.uniform(),
                    successful: rng.chance(0.6),
                    delta: rng.uniform() * 0.2 - 0.05,
                    condition: String::new(),
                    context: context(&mut rng),
                    recent: vec![RecentApplication {
                        strategy: pick(&mut rng, &STRATEGIES).into(),
                        metric: pick(&mut rng, &METRICS).into(),
                        cycles_ago: 1,
                    }],
                };
                let payload = format!("{share:?}");
                Action::ShareStrategy {
                    caller,
                    share,
                    evidence_days: 7,
                    request: request(&mut rng, &payload),
                }
            }
            38..=49 => {
                let share = PatternShare {
                    metrics: [(
                        pick(&mut rng, &METRICS).to_string(),
                        MetricState {
                            value: (rng.next_u64() % 4) as f64 * 0.25,
                            stuck: true,
                        },
                    )]
                    .into(),
                    cycles_until_plateau: 3,
                    recovery_strategies: vec![pick(&mut rng, &STRATEGIES).into()],
                    environment: context(&mut rng),
                    target_metric: None,
                };
                let payload = format!("{share:?}");
                Action::SharePattern {
                    caller,
                    share,
                    request: request(&mut rng, &payload),
                }
            }
            50..=53 => Action::RecordPatternOutcome {
                caller,
                pattern_id: "pattern_unknown".into(),
                success: rng.chance(0.5),
                metric: None,
                strategy: None,
                similarity: Some(0.8),
                request: None,
            },
            54..=61 => Action::ShareInsight {
                caller,
                draft: draft(&mut rng),
                id: format!("insight_{seed}_{i}"),
                default_ttl_ms: 7 * DAY,
                request: None,
                // Half of them under a bound small enough to evict.
                max_bytes_per_instance: if rng.next_u64() % 2 == 0 { 0 } else { 2048 },
            },
            62..=64 => Action::RecordInsightUse {
                caller,
                insight_id: format!("insight_{seed}_{}", rng.next_u64() % (i as u64 + 1)),
                request: None,
            },
            65..=71 => Action::ShareFailure {
                caller,
                report: FailureReport {
                    failure_type: [FailureType::Deadlock, FailureType::MetricReversal]
                        [(rng.next_u64() % 2) as usize],
                    trigger: "t".into(),
                    metric: pick(&mut rng, &METRICS).into(),
                    strategy: pick(&mut rng, &STRATEGIES).into(),
                    recovery: vec![RecoveryAttempt {
                        method: "rollback".into(),
                        succeeded: rng.chance(0.5),
                        cycles_to_recover: 2,
                    }],
                    prevention: vec![],
                    preceded_by: vec![],
                    magnitude: None,
                    // Some complete an earlier report (refused when there is
                    // none: alike everywhere).
                    follow_up: i % 5 == 0,
                },
                request: None,
            },
            72..=77 => Action::ShareConfiguration {
                caller,
                share: ConfigShare {
                    context: context(&mut rng),
                    parameters: [(
                        "rate".to_string(),
                        ParamValue::Number((rng.next_u64() % 3) as f64),
                    )]
                    .into(),
                    effectiveness: rng.uniform(),
                    data_points: 20 + rng.next_u64() % 100,
                    recommendation: String::new(),
                    alternatives: vec![],
                },
                request: None,
            },
            78..=80 => Action::IssueApiKey {
                key: ApiKey {
                    instance_id: caller,
                    salt: format!("{:032x}", rng.next_u64()),
                    hash: format!("{:064x}", rng.next_u64()),
                    issued_at: at,
                    issued_by: "operator".into(),
                },
            },
            81..=82 => Action::RevokeApiKey {
                instance_id: caller,
            },
            83..=84 => Action::ResolveFailure {
                failure_id: "failure_unknown".into(),
            },
            85..=86 => Action::InvalidateInsight {
                insight_id: format!("insight_{seed}_{}", rng.next_u64() % (i as u64 + 1)),
            },
            87..=91 => {
                // Updates of one model, from versions that may have moved
                // on (refused when too old or from the future: alike
                // everywhere), under every rule.
                let aggregation = [
                    Aggregation::TrimmedMean,
                    Aggregation::Median,
                    Aggregation::FedAvg,
                ][(rng.next_u64() % 3) as usize];
                Action::ShareModelUpdate {
                    caller,
                    update: ModelUpdate {
                        model: "plateau".into(),
                        base_version: rng.next_u64() % 4 / 2,
                        delta: (0..8).map(|_| rng.uniform() * 4.0 - 2.0).collect(),
                        examples: 1 + rng.next_u64() % 500,
                        evaluation: rng.chance(0.5).then(|| Evaluation {
                            examples: 10,
                            correct: rng.next_u64() % 11,
                            log_loss: rng.uniform() * 7.0,
                            reports: 0,
                        }),
                        // Every other one for the context's model (by
                        // position: no new draws, the log stays as it was).
                        context: Some("tier=gold".into()),
                        for_context: i % 2 == 0,
                    },
                    rules: FederationRules {
                        dimension: 8,
                        buffer_size: 2,
                        aggregation,
                        max_staleness: 2,
                        ..FederationRules::default()
                    },
                    announce_id: format!("model_{seed}_{i}"),
                    announce_ttl_ms: 7 * DAY,
                    request: None,
                }
            }
            // Only "d" is ever quarantined: the others keep the log's
            // other commands succeeding.
            92 => Action::QuarantineInstance {
                instance_id: "d".into(),
                by: "operator".into(),
                reason: format!("quarantine {i}"),
                rebuilt: vec![],
            },
            93 => Action::ReleaseInstance {
                instance_id: "d".into(),
            },
            // Another region's knowledge: batches that continue what is
            // held, skip ahead, repeat, or come from this hub's own region.
            95 => {
                let origin = pick(&mut rng, &["r0", "r1", "own"]).to_string();
                let after = rng.next_u64() % 6;
                let through = after + rng.next_u64() % 4;
                let entries = (0..1 + rng.next_u64() % 3)
                    .map(|_| {
                        let successes = rng.next_u64() % 3;
                        (
                            Subject::Strategy {
                                metric: pick(&mut rng, &METRICS).into(),
                                strategy: pick(&mut rng, &STRATEGIES).into(),
                                context_key: format!("p=p{}", rng.next_u64() % 2),
                                band: (rng.next_u64() % 5) as u8,
                                day: (at / DAY) - (rng.next_u64() % 3) as i64,
                            },
                            Versioned {
                                version: after + 1 + rng.next_u64() % 4,
                                stats: Stats {
                                    count: successes + rng.next_u64() % 3,
                                    successes,
                                    gain_sum: rng.uniform() * 0.3,
                                    gain_sum_sq: rng.uniform() * 0.05,
                                    loss_sum: -rng.uniform() * 0.1,
                                    loss_sum_sq: rng.uniform() * 0.01,
                                },
                            },
                        )
                    })
                    .collect();
                // Now and then an insight: new, redelivered, or one this
                // region already has under the same id.
                let insights = (0..rng.next_u64() % 2)
                    .map(|_| RemoteInsight {
                        origin_sequence: after + 1 + rng.next_u64() % 3,
                        id: format!("remote-{}", rng.next_u64() % 4),
                        draft: draft(&mut rng),
                        created_at: at,
                        valid_until: at + DAY,
                    })
                    .collect();
                Action::MergeDigests {
                    own_region: "own".into(),
                    batches: vec![Batch {
                        origin,
                        after,
                        through,
                        entries,
                        insights_after: after,
                        insights_through: through,
                        insights,
                        // Sometimes the origin's plateau model, at a
                        // version that may be older than the one held
                        // (drawn aside, so the rest of the log stays what
                        // it was before models crossed).
                        models: {
                            let mut side = Rng::new(seed ^ (i as u64).wrapping_mul(0x9e37));
                            side.chance(0.3)
                                .then(|| RemoteModel {
                                    name: "plateau".into(),
                                    version: 1 + side.next_u64() % 4,
                                    weights: (0..8).map(|_| side.uniform() - 0.5).collect(),
                                    updates: 1 + side.next_u64() % 10,
                                })
                                .into_iter()
                                .collect()
                        },
                        // Sometimes a failure the origin knows, or its
                        // withdrawal (drawn aside too).
                        records: {
                            let mut side = Rng::new(seed ^ (i as u64).wrapping_mul(0x7f4a));
                            side.chance(0.3)
                                .then(|| remote_record(&mut side, after))
                                .into_iter()
                                .collect()
                        },
                    }],
                }
            }
            94 => Action::Audit {
                entries: (0..1 + rng.next_u64() % 3)
                    .map(|_| AuditEntry {
                        at,
                        caller: caller.clone(),
                        role: "instance".into(),
                        rpc: "/learninghub.v1.Hub/GetStatus".into(),
                        ..Default::default()
                    })
                    .collect(),
            },
            96..=97 => Action::Retention {
                // Some sweeps are job runs: admitted or refused by epoch
                // and period, alike everywhere.
                job: (i % 2 == 0).then(|| JobStamp {
                    job: "retention".into(),
                    epoch: (i / 40) as u64,
                    period: (i / 20) as u64,
                }),
                rules: RetentionRules {
                    pattern_days: 30,
                    unconfirmed_pattern_days: 7,
                    low_frequency: 3,
                    evidence_days: 7,
                    request_window_ms: DAY,
                    context_model_days: 30,
                },
            },
            // A scan's findings: a random subset of two, so that some are
            // kept across scans (first sighting kept) and some dropped.
            99 => Action::RecordAnomalies {
                found: [("a", i % 2 == 0), ("b", i % 3 == 0)]
                    .into_iter()
                    .filter(|(_, found)| *found)
                    .map(|(who, _)| Finding {
                        id: format!("anomaly_{who}"),
                        kind: AnomalyKind::InconsistentReports,
                        instance_id: who.into(),
                        strategy: STRATEGIES[i % STRATEGIES.len()].into(),
                        metric: METRICS[i % METRICS.len()].into(),
                        context_key: String::new(),
                        score: 8.0 + (i % 7) as f64,
                        evidence: format!("scan {i}"),
                    })
                    .collect(),
                announce_ids: Default::default(),
                announce_ttl_ms: 0,
                job: None,
            },
            _ => Action::PublishInsights {
                generated: vec![Generated {
                    id: format!("generated_{seed}_{i}"),
                    draft: draft(&mut rng),
                }],
                ttl_ms: 7 * DAY,
                by: "hub".into(),
                job: (i % 3 == 0).then(|| JobStamp {
                    job: "insights".into(),
                    epoch: (i / 30) as u64,
                    period: (i / 10) as u64,
                }),
            },
        };
        commands.push(Command { at, action });
    }
    commands
}

/// A record as another region might send it: one of a few failures,
/// patterns or configurations, at a version near `after`, now and then
/// withdrawn.
fn remote_record(rng: &mut Rng, after: u64) -> (String, Record) {
    use learning_hub::domain::knowledge::{ConfigKnowledge, PatternKnowledge};
    use learning_hub::domain::model::{Configuration, FailurePattern, MetricState, ParamValue};
    let metric = pick(rng, &METRICS).to_string();
    let strategy = pick(rng, &STRATEGIES).to_string();
    let version = after + 1 + rng.next_u64() % 4;
    let withdrawn = !rng.chance(0.8);
    match rng.next_u64() % 3 {
        0 => {
            let metrics: learning_hub::domain::model::Metrics = [(
                metric,
                MetricState {
                    value: 0.1 * (rng.next_u64() % 3) as f64,
                    stuck: true,
                },
            )]
            .into();
            let signature =
                learning_hub::domain::matching::signature(&metrics, &Default::default());
            let id = learning_hub::domain::model::content_id("pattern", &signature);
            let knowledge = (!withdrawn).then(|| {
                Knowledge::Pattern(PatternKnowledge {
                    signature,
                    metrics,
                    environment: Default::default(),
                    cycles_until_plateau: Default::default(),
                    recovery: Default::default(),
                    recovery_by_metric: Default::default(),
                    successes: rng.next_u64() % 3,
                    failures: rng.next_u64() % 3,
                    frequency: 2 + rng.next_u64() % 3,
                    reporters: 2,
                    first_seen: 0,
                    last_seen: 0,
                })
            });
            return (id, Record { version, knowledge });
        }
        1 => {
            let context: learning_hub::domain::model::Attributes =
                [("p".to_string(), format!("p{}", rng.next_u64() % 2))].into();
            let parameters: learning_hub::domain::model::Parameters =
                [("lr".to_string(), ParamValue::Number(0.1))].into();
            let id = Configuration::id_for(&context, &parameters);
            let knowledge = (!withdrawn).then(|| {
                Knowledge::Configuration(ConfigKnowledge {
                    context,
                    parameters,
                    effectiveness: 0.5,
                    shared_effectiveness: Default::default(),
                    data_points: 10 + rng.next_u64() % 100,
                    reporters: 2,
                    recommendation: String::new(),
                    alternatives: vec![],
                    first_seen: 0,
                    last_updated: 0,
                })
            });
            return (id, Record { version, knowledge });
        }
        _ => {}
    }
    let failure_type = FailureType::MetricReversal;
    let id = FailurePattern::id_for(failure_type, &metric, &strategy);
    let knowledge = (!withdrawn).then(|| {
        Knowledge::Failure(FailureKnowledge {
            failure_type,
            metric,
            strategy,
            triggers: vec![format!("trigger {}", rng.next_u64() % 3)],
            occurrences: 1 + rng.next_u64() % 5,
            recovery: Default::default(),
            prevention: vec!["go slower".into()],
            preceded_by: Default::default(),
            magnitude: Default::default(),
            resolved: false,
            first_seen: 0,
            last_seen: 0,
        })
    });
    (id, Record { version, knowledge })
}
