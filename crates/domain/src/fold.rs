//! The one way the state changes: [`fold`] applies a [`Command`] to a
//! [`State`] and computes the answer its caller gets.
//!
//! The fold is pure. It reads no clock (the command carries its time),
//! draws no random numbers (ids and key hashes come in the command), and
//! iterates only ordered maps, so every replica that folds the same log
//! reaches the same state — the property `tests/` checks by folding random
//! logs in two processes with different hash seeds and comparing
//! [`State::digest`]s. A command is atomic: one that fails (an instance
//! that never registered shares an outcome, a request id reused for
//! another payload) leaves the state as it was and answers with the error.
//!
//! Idempotent writes are judged here too: a request id seen within its
//! window answers with what the first attempt answered, rebuilt from the
//! records as they are now, and changes nothing.

use std::sync::Arc;

use super::command::{Action, Command, Generated, Idempotency, JobStamp, RetentionRules};
use super::digest::{Batch, OriginState};
use super::federated::{FederationRules, ModelRecord, ModelUpdate, Refusal, context_model_name};
use super::idempotency::{Applied, RequestKey, RequestRecord, WriteRpc, name_tag};
use super::knowledge;
use super::matching;
use super::model::{
    AuditEntry, ConfigShare, Configuration, FailurePattern, FailureReport, Insight,
    InsightCategory, InsightDraft, InsightEvidence, Instance, JobRun, Pattern, PatternShare,
    Quarantine, RIVAL_MIN_DATA_POINTS, Registration, StrategyKey, StrategyOutcome, StrategyRecord,
    StrategyShare, UnixMillis, content_id, context_key, preceding, streak,
};
use super::retention::{self, Rules};
use super::state::State;
use crate::error::{Error, Result};

/// The identity the hub's own insights are shared under.
pub const GENERATED_BY: &str = "hub";

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// How far one recorded use extends an insight's validity…
const USE_EXTENSION_MS: i64 = 7 * DAY_MS;
/// …up to this long after it was created.
const MAX_LIFETIME_MS: i64 = 30 * DAY_MS;

/// What a retention sweep removed or rewrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub patterns: usize,
    pub insights: usize,
    pub strategies_rolled_up: usize,
    /// Context plateau models idle for `context_model_days`, removed.
    pub context_models: usize,
    /// Raw outcomes and audit entries trimmed (the writer trims the store's
    /// logs after the fold; these count what it removed).
    pub outcomes: usize,
    pub audit_entries: usize,
    pub request_ids: usize,
}

/// What a command answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Registered {
        instance: Arc<Instance>,
        new: bool,
    },
    PatternShared {
        pattern: Arc<Pattern>,
        new: bool,
    },
    PatternOutcome {
        pattern: Arc<Pattern>,
    },
    StrategyShared {
        outcome_sequence: u64,
        record: Arc<StrategyRecord>,
    },
    InsightShared {
        insight: Arc<Insight>,
        duplicate: bool,
    },
    InsightUsed {
        insight: Arc<Insight>,
    },
    FailureShared {
        failure: Arc<FailurePattern>,
    },
    ConfigurationShared {
        config: Arc<Configuration>,
    },
    ModelUpdated {
        model: Arc<ModelRecord>,
        /// The version this update completed, if it completed one (never
        /// on a retry).
        new_version: Option<u64>,
    },
    KeyIssued {
        replaced: bool,
    },
    KeyRevoked,
    FailureResolved {
        failure: Arc<FailurePattern>,
    },
    InsightInvalidated,
    Quarantined {
        quarantine: Arc<Quarantine>,
    },
    Released,
    /// Anomalies kept after a scan, and how many of them are new.
    AnomaliesRecorded {
        kept: usize,
        new: usize,
    },
    Audited,
    Retained(RetentionReport),
    /// How many batches changed what this region holds.
    DigestsMerged {
        changed: usize,
    },
    InsightsPublished {
        stored: Vec<Arc<Insight>>,
        duplicates: usize,
    },
}

/// Folds `command`, found at log `position`, into `state`. On error the
/// state is unchanged, its position included: a reader of a log in which
/// failed commands stand (a shared log, appended before it is folded)
/// moves past them with [`State::skip_to`].
pub fn fold(state: &mut State, position: u64, command: &Command) -> Result<Answer> {
    let mut next = state.clone();
    let answer = fold_in_place(&mut next, position, command)?;
    *state = next;
    Ok(answer)
}

/// [`fold`] without its copy: the same state and answer when the command
/// succeeds, but on error `state` may be left half-changed and must be
/// thrown away. For a caller that folds many commands into a state of its
/// own and can rebuild it when one fails (the writer: failures are rare,
/// and the copy [`fold`] takes before each command makes every change
/// copy the path to it in every table it touches, since the copy shares
/// them).
pub fn fold_in_place(state: &mut State, position: u64, command: &Command) -> Result<Answer> {
    state.position = position;
    apply(state, command)
}

fn apply(state: &mut State, command: &Command) -> Result<Answer> {
    let now = command.at;
    match &command.action {
        Action::Register {
            caller,
            registration,
        } => register(state, now, caller, registration),
        Action::SharePattern {
            caller,
            share,
            request,
        } => share_pattern(state, now, caller, share, request.as_ref()),
        Action::RecordPatternOutcome {
            caller,
            pattern_id,
            success,
            metric,
            strategy,
            similarity,
            request,
        } => once(
            state,
            now,
            caller,
            WriteRpc::RecordPatternOutcome,
            request.as_ref(),
            |state, first| {
                if let Some(first) = first {
                    let pattern = state
                        .tables
                        .patterns
                        .get(pattern_id)
                        .cloned()
                        .ok_or_else(|| gone(request.as_ref(), "the pattern"))?;
                    return Ok((Answer::PatternOutcome { pattern }, first));
                }
                let mut pattern = match state.tables.patterns.get(pattern_id) {
                    Some(existing) => (**existing).clone(),
                    // Known from other regions only: acting on it starts
                    // this region's own record of it.
                    None => match state.remote_pattern(pattern_id).first() {
                        Some(known) => knowledge::local_pattern(pattern_id, known),
                        None => return Err(Error::not_found("pattern", pattern_id.clone())),
                    },
                };
                touch_instance(state, now, caller)?;
                let counted = pattern.record_outcome(
                    caller,
                    *success,
                    strategy.as_deref(),
                    metric.as_deref(),
                    now,
                );
                // Only counted outcomes teach the match calibration too.
                if let Some(similarity) = similarity.filter(|_| counted) {
                    state
                        .counters
                        .pattern_calibration
                        .record(similarity, *success);
                }
                pattern.changed_at = state.position;
                let pattern = Arc::new(pattern);
                state.put_pattern(pattern.clone());
                Ok((
                    Answer::PatternOutcome { pattern },
                    Applied::RecordPatternOutcome,
                ))
            },
        ),
        Action::ShareStrategy {
            caller,
            share,
            evidence_days,
            request,
        } => share_strategy(state, now, caller, share, *evidence_days, request.as_ref()),
        Action::ShareInsight {
            caller,
            draft,
            id,
            default_ttl_ms,
            request,
            max_bytes_per_instance,
        } => share_insight(
            state,
            now,
            caller,
            draft,
            id,
            InsightBounds {
                default_ttl_ms: *default_ttl_ms,
                max_bytes_per_instance: *max_bytes_per_instance,
            },
            request.as_ref(),
        ),
        Action::RecordInsightUse {
            caller,
            insight_id,
            request,
        } => record_insight_use(state, now, caller, insight_id, request.as_ref()),
        Action::ShareFailure {
            caller,
            report,
            request,
        } => share_failure(state, now, caller, report, request.as_ref()),
        Action::ShareConfiguration {
            caller,
            share,
            request,
        } => share_configuration(state, now, caller, share, request.as_ref()),
        Action::ShareModelUpdate {
            caller,
            update,
            rules,
            announce_id,
            announce_ttl_ms,
            request,
        } => share_model_update(
            state,
            now,
            caller,
            update,
            rules,
            (announce_id, *announce_ttl_ms),
            request.as_ref(),
        ),
        Action::IssueApiKey { key } => {
            let replaced = state
                .tables
                .api_keys
                .insert(key.instance_id.clone(), Arc::new(key.clone()))
                .is_some();
            Ok(Answer::KeyIssued { replaced })
        }
        Action::RevokeApiKey { instance_id } => match state.tables.api_keys.remove(instance_id) {
            Some(_) => Ok(Answer::KeyRevoked),
            None => Err(Error::not_found("API key of instance", instance_id.clone())),
        },
        Action::MergeDigests {
            own_region,
            batches,
        } => {
            let mut changed = 0;
            for batch in batches.iter().filter(|b| b.origin != *own_region) {
                let mut held = state
                    .tables
                    .regions
                    .get(&batch.origin)
                    .map(|o| (**o).clone())
                    .unwrap_or_default();
                let imported = import_insights(state, now, &mut held, batch);
                if held.merge(batch) || imported {
                    state.put_region(batch.origin.clone(), Arc::new(held), batch);
                    changed += 1;
                }
            }
            Ok(Answer::DigestsMerged { changed })
        }
        Action::ResolveFailure { failure_id } => {
            let Some(existing) = state.tables.failures.get(failure_id).cloned() else {
                return Err(Error::not_found("failure", failure_id.clone()));
            };
            let mut failure = (*existing).clone();
            failure.resolved = true;
            failure.changed_at = state.position;
            let failure = Arc::new(failure);
            state
                .tables
                .failures
                .insert(failure_id.clone(), failure.clone());
            state.failures_changed();
            Ok(Answer::FailureResolved { failure })
        }
        Action::QuarantineInstance {
            instance_id,
            by,
            reason,
            rebuilt,
        } => {
            // What it reported stops counting: the aggregates rebuilt
            // without it (refused if one moved on since, so nothing folded
            // in the meantime is lost; the appender rebuilds and retries)…
            for r in rebuilt {
                let Some(record) = state.tables.strategies.get(&r.key).cloned() else {
                    return Err(Error::FailedPrecondition(format!(
                        "aggregate {}/{} is gone",
                        r.key.strategy, r.key.metric
                    )));
                };
                if record.through_sequence != r.based_on {
                    return Err(Error::FailedPrecondition(format!(
                        "aggregate {}/{} changed while it was rebuilt",
                        r.key.strategy, r.key.metric
                    )));
                }
                let mut record = (*record).clone();
                crate::influence::install(&mut record, r, instance_id);
                // A new version: other regions replace what they hold.
                record.changed_at = state.position;
                state.put_strategy(r.key.clone(), Arc::new(record));
            }
            // …its failure reports too…
            let reported: Vec<String> = state
                .tables
                .failures
                .iter()
                .filter(|(_, f)| {
                    f.reports.contains_key(instance_id)
                        || f.recovery_by
                            .values()
                            .any(|by| by.contains_key(instance_id))
                        || f.advice_by.values().any(|by| by.contains(instance_id))
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in reported {
                if let Some(failure) = state.tables.failures.get_mut(&id) {
                    let failure = Arc::make_mut(failure);
                    crate::influence::forget_failure_reports(failure, instance_id);
                    failure.changed_at = state.position;
                }
            }
            state.failures_changed();
            let quarantine = Arc::new(Quarantine {
                instance_id: instance_id.clone(),
                by: by.clone(),
                reason: reason.clone(),
                since: now,
            });
            state
                .tables
                .quarantined
                .insert(instance_id.clone(), quarantine.clone());
            // Its updates waiting for a version, and its voice in context
            // models' shares, no longer count either.
            let waiting: Vec<String> = state
                .tables
                .models
                .iter()
                .filter(|(_, m)| m.involves(instance_id))
                .map(|(name, _)| name.clone())
                .collect();
            for name in waiting {
                if let Some(model) = state.tables.models.get_mut(&name) {
                    Arc::make_mut(model).forget(instance_id);
                }
            }
            Ok(Answer::Quarantined { quarantine })
        }
        Action::ReleaseInstance { instance_id } => {
            match state.tables.quarantined.remove(instance_id) {
                Some(_) => Ok(Answer::Released),
                None => Err(Error::not_found(
                    "quarantined instance",
                    instance_id.clone(),
                )),
            }
        }
        Action::InvalidateInsight { insight_id } => {
            let found = state
                .tables
                .insights
                .values()
                .find(|i| &i.id == insight_id && i.is_valid_at(now))
                .map(|i| i.sequence);
            match found {
                Some(sequence) => {
                    state.tables.insights.remove(&sequence);
                    Ok(Answer::InsightInvalidated)
                }
                None => Err(Error::not_found("valid insight", insight_id.clone())),
            }
        }
        Action::Audit { entries } => {
            for entry in entries {
                state.log_audit(AuditEntry {
                    sequence: 0,
                    ..entry.clone()
                });
            }
            Ok(Answer::Audited)
        }
        Action::Retention { rules, job } => {
            run_job(state, job.as_ref())?;
            Ok(Answer::Retained(sweep(state, now, rules)))
        }
        Action::PublishInsights {
            generated,
            ttl_ms,
            by,
            job,
        } => {
            run_job(state, job.as_ref())?;
            Ok(publish(state, now, generated, *ttl_ms, by))
        }
        Action::RecordAnomalies {
            found,
            announce_ids,
            announce_ttl_ms,
            job,
        } => {
            run_job(state, job.as_ref())?;
            let kept = &state.tables.anomalies;
            // New strategy shifts are announced on the insight stream.
            let announce: Vec<Generated> = found
                .iter()
                .filter(|f| !kept.contains_key(&f.id))
                .filter_map(|f| {
                    Some(Generated {
                        id: announce_ids.get(&f.id)?.clone(),
                        draft: crate::anomaly::announcement(f)?,
                    })
                })
                .collect();
            let (next, new) =
                crate::anomaly::merge(|id| kept.get(id).map(|a| a.first_seen), found, now);
            let kept = next.len();
            state.tables.anomalies = next
                .into_iter()
                .map(|(id, anomaly)| (id, Arc::new(anomaly)))
                .collect();
            publish(state, now, &announce, *announce_ttl_ms, GENERATED_BY);
            Ok(Answer::AnomaliesRecorded { kept, new })
        }
    }
}

// --- idempotency -------------------------------------------------------------

/// Runs `apply` at most once for `caller`'s request: with `None` the first
/// time (it applies the write and says what to remember), with the first
/// answer on a retry within the window (it must rebuild the answer without
/// changing anything; whatever it changes is dropped). That answer is
/// always `rpc`'s own: an id remembered for another RPC is refused here.
fn once<F>(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    rpc: WriteRpc,
    request: Option<&Idempotency>,
    apply: F,
) -> Result<Answer>
where
    F: FnOnce(&mut State, Option<Applied>) -> Result<(Answer, Applied)>,
{
    let Some(request) = request else {
        return apply(state, None).map(|(answer, _)| answer);
    };
    let key = RequestKey::new(caller, &request.tag.id);
    let first = state
        .tables
        .requests
        .get(&key)
        .filter(|r| r.live_at(now, request.window_ms))
        .map(|r| **r);
    if let Some(first) = first {
        let applied = first
            .judge(rpc, &request.tag.fingerprint)
            .map_err(|reuse| reused(&request.tag.id, reuse, request.window_ms))?;
        let before = state.clone();
        let answer = apply(state, Some(applied)).map(|(answer, _)| answer);
        *state = before;
        return answer;
    }
    let (answer, applied) = apply(state, None)?;
    if applied.rpc() != rpc {
        return Err(Error::Internal(format!(
            "{rpc} answered as {}",
            applied.rpc()
        )));
    }
    state.tables.requests.insert(
        key,
        Arc::new(RequestRecord {
            applied,
            fingerprint: request.tag.fingerprint,
            at: now,
        }),
    );
    Ok(answer)
}

fn reused(id: &str, reuse: impl std::fmt::Display, window_ms: i64) -> Error {
    let hours = window_ms / (60 * 60 * 1000);
    let window = if hours >= 1 {
        format!("{hours} h")
    } else {
        format!("{} s", window_ms / 1000)
    };
    Error::AlreadyExists(format!(
        "request_id {id:?} {reuse} within the last {window}; a different request needs a new request_id"
    ))
}

/// The answer a replay got does not belong to its RPC (the caller checked
/// the RPC, so this is a bug, not a client error).
fn unexpected(applied: Applied, rpc: WriteRpc) -> Error {
    Error::Internal(format!("{rpc} replay got the answer of {applied:?}"))
}

/// A retried write whose record has since been removed by retention.
fn gone(request: Option<&Idempotency>, what: &str) -> Error {
    let id = request.map(|r| r.tag.id.as_str()).unwrap_or_default();
    Error::FailedPrecondition(format!(
        "request_id {id:?} was already applied, but {what} it changed has since expired and been removed"
    ))
}

/// Every write needs a registered instance; this stamps its activity on the
/// instance record (last seen, records shared).
fn touch_instance(state: &mut State, now: UnixMillis, instance_id: &str) -> Result<()> {
    if let Some(q) = state.tables.quarantined.get(instance_id) {
        return Err(Error::PermissionDenied(format!(
            "instance {instance_id:?} is in quarantine (by {}: {}); its writes do not count \
             until an operator releases it",
            q.by, q.reason
        )));
    }
    let Some(instance) = state.tables.instances.get_mut(instance_id) else {
        return Err(not_registered(instance_id));
    };
    let instance = Arc::make_mut(instance);
    instance.last_seen = instance.last_seen.max(now);
    instance.shared_records += 1;
    Ok(())
}

fn not_registered(instance_id: &str) -> Error {
    Error::FailedPrecondition(format!(
        "instance {instance_id:?} is not registered; call Register first"
    ))
}

// --- the writes ----------------------------------------------------------------

fn register(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    registration: &Registration,
) -> Result<Answer> {
    if registration.instance_id != caller {
        return Err(Error::PermissionDenied(format!(
            "instance_id {:?} does not match the client certificate's identity {caller:?}",
            registration.instance_id
        )));
    }
    let existing = state.tables.instances.get(caller).cloned();
    let instance = Arc::new(Instance {
        registered_at: existing.as_ref().map_or(now, |e| e.registered_at),
        shared_records: existing.as_ref().map_or(0, |e| e.shared_records),
        last_seen: now,
        instance_id: registration.instance_id.clone(),
        region: registration.region.clone(),
        context: registration.context.clone(),
        capabilities: registration.capabilities.clone(),
    });
    state
        .tables
        .instances
        .insert(caller.into(), instance.clone());
    Ok(Answer::Registered {
        instance,
        new: existing.is_none(),
    })
}

fn share_pattern(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    share: &PatternShare,
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::SharePattern,
        request,
        |state, first| {
            let signature = matching::signature(&share.metrics, &share.environment);
            let id = content_id("pattern", &signature);
            if let Some(first) = first {
                let Applied::SharePattern { new_pattern } = first else {
                    return Err(unexpected(first, WriteRpc::SharePattern));
                };
                let pattern = state
                    .tables
                    .patterns
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| gone(request, "the pattern"))?;
                return Ok((
                    Answer::PatternShared {
                        pattern,
                        new: new_pattern,
                    },
                    first,
                ));
            }
            touch_instance(state, now, caller)?;
            let (pattern, new) = match state.tables.patterns.get(&id) {
                Some(existing) => {
                    let mut pattern = (**existing).clone();
                    pattern.record_share(share, caller, now);
                    (pattern, false)
                }
                None => (Pattern::new(signature, share, caller, now), true),
            };
            let mut pattern = pattern;
            pattern.changed_at = state.position;
            let pattern = Arc::new(pattern);
            state.put_pattern(pattern.clone());
            Ok((
                Answer::PatternShared { pattern, new },
                Applied::SharePattern { new_pattern: new },
            ))
        },
    )
}

/// The aggregate `existing` (or a new one for `key`) with `outcome` folded
/// in: the one way an outcome changes an aggregate.
pub fn fold_outcome(
    existing: Option<&StrategyRecord>,
    key: &StrategyKey,
    outcome: &StrategyOutcome,
    evidence_days: i64,
) -> StrategyRecord {
    let mut record = match existing {
        Some(existing) => existing.clone(),
        None => StrategyRecord::empty(key, outcome.at),
    };
    record.record(outcome, evidence_days);
    record
}

fn share_strategy(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    share: &StrategyShare,
    evidence_days: i64,
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::ShareStrategy,
        request,
        |state, first| {
            let key =
                StrategyKey::new(&share.metric, &share.strategy, &context_key(&share.context));
            if let Some(first) = first {
                let Applied::ShareStrategy { outcome_sequence } = first else {
                    return Err(unexpected(first, WriteRpc::ShareStrategy));
                };
                let record = state.tables.strategies.get(&key).cloned().ok_or_else(|| {
                    Error::Internal(format!(
                        "aggregate of outcome {outcome_sequence} is missing"
                    ))
                })?;
                return Ok((
                    Answer::StrategyShared {
                        outcome_sequence,
                        record,
                    },
                    first,
                ));
            }
            touch_instance(state, now, caller)?;
            state.counters.outcome_sequence += 1;
            let outcome = StrategyOutcome {
                sequence: state.counters.outcome_sequence,
                at: now,
                instance_id: caller.to_string(),
                streak: streak(&share.recent, &share.strategy, &share.metric),
                preceded_by: preceding(&share.recent),
                strategy: share.strategy.clone(),
                metric: share.metric.clone(),
                value_before: share.value_before,
                successful: share.successful,
                delta: share.delta,
                condition: share.condition.clone(),
                context: share.context.clone(),
            };
            let mut record = fold_outcome(
                state.tables.strategies.get(&key).map(|r| &**r),
                &key,
                &outcome,
                evidence_days,
            );
            record.changed_at = state.position;
            let record = Arc::new(record);
            let sequence = outcome.sequence;
            state.log_outcome(outcome);
            state.put_strategy(key, record.clone());
            Ok((
                Answer::StrategyShared {
                    outcome_sequence: sequence,
                    record,
                },
                Applied::ShareStrategy {
                    outcome_sequence: sequence,
                },
            ))
        },
    )
}

#[allow(clippy::too_many_arguments)]
/// What a shared insight is stamped and bounded with.
struct InsightBounds {
    default_ttl_ms: i64,
    max_bytes_per_instance: u64,
}

/// Keeps the insights of `batch` this region does not hold yet: each gets
/// this region's next insight sequence (so its stream stays gapless and
/// publishes it), unless a valid insight with its id or content is here
/// already; either way the origin's sequence is remembered, so a batch
/// delivered again imports nothing. Insights already expired are
/// remembered and not stored. Moves `insights_through` as entries'
/// versions move (see [`OriginState::merge`]). Returns whether anything
/// changed.
fn import_insights(
    state: &mut State,
    now: UnixMillis,
    held: &mut OriginState,
    batch: &Batch,
) -> bool {
    let mut changed = false;
    for remote in &batch.insights {
        if held.imported.contains_key(&remote.origin_sequence) {
            continue;
        }
        let known = state
            .tables
            .insights
            .values()
            .find(|i| i.is_valid_at(now) && (i.id == remote.id || i.same_content(&remote.draft)))
            .map(|i| i.sequence);
        let local = match known {
            Some(sequence) => sequence,
            None if now >= remote.valid_until => 0,
            None => {
                state.counters.insight_sequence += 1;
                let insight = Arc::new(Insight {
                    id: remote.id.clone(),
                    sequence: state.counters.insight_sequence,
                    draft: remote.draft.clone(),
                    created_at: remote.created_at,
                    valid_until: remote.valid_until,
                    shared_by: format!("region {}", batch.origin),
                    uses: 0,
                    origin_region: batch.origin.clone(),
                });
                state.tables.insights.insert(insight.sequence, insight);
                state.counters.insight_sequence
            }
        };
        held.imported.insert(remote.origin_sequence, local);
        changed = true;
    }
    if batch.insights_after <= held.insights_through
        && batch.insights_through > held.insights_through
    {
        held.insights_through = batch.insights_through;
        changed = true;
    }
    changed
}

fn share_insight(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    draft: &InsightDraft,
    id: &str,
    bounds: InsightBounds,
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::ShareInsight,
        request,
        |state, first| {
            if let Some(first) = first {
                let Applied::ShareInsight {
                    sequence,
                    duplicate,
                } = first
                else {
                    return Err(unexpected(first, WriteRpc::ShareInsight));
                };
                let insight = state
                    .tables
                    .insights
                    .get(&sequence)
                    .cloned()
                    .ok_or_else(|| gone(request, "the insight"))?;
                return Ok((Answer::InsightShared { insight, duplicate }, first));
            }
            let known = state
                .tables
                .insights
                .values()
                .find(|i| i.is_valid_at(now) && i.same_content(draft))
                .cloned();
            if let Some(existing) = known {
                if !state.tables.instances.contains_key(caller) {
                    return Err(not_registered(caller));
                }
                let applied = Applied::ShareInsight {
                    sequence: existing.sequence,
                    duplicate: true,
                };
                return Ok((
                    Answer::InsightShared {
                        insight: existing,
                        duplicate: true,
                    },
                    applied,
                ));
            }
            touch_instance(state, now, caller)?;
            let insight = Arc::new(Insight {
                id: id.to_string(),
                sequence: state.counters.insight_sequence + 1,
                valid_until: draft.valid_until.unwrap_or(now + bounds.default_ttl_ms),
                draft: draft.clone(),
                created_at: now,
                shared_by: caller.to_string(),
                uses: 0,
                origin_region: String::new(),
            });
            make_room(state, caller, &insight, bounds.max_bytes_per_instance)?;
            state.counters.insight_sequence += 1;
            state
                .tables
                .insights
                .insert(insight.sequence, insight.clone());
            let applied = Applied::ShareInsight {
                sequence: insight.sequence,
                duplicate: false,
            };
            Ok((
                Answer::InsightShared {
                    insight,
                    duplicate: false,
                },
                applied,
            ))
        },
    )
}

/// Keeps the insights `caller` has stored within `max_bytes` with `insight`
/// added: its oldest (lowest sequence) go first. An insight larger than
/// the whole bound is refused. 0: no bound.
fn make_room(state: &mut State, caller: &str, insight: &Insight, max_bytes: u64) -> Result<()> {
    if max_bytes == 0 {
        return Ok(());
    }
    let size = insight.stored_bytes();
    if size > max_bytes {
        return Err(Error::invalid(
            "insight",
            format!(
                "takes {size} bytes, more than the {max_bytes} bytes of insights an instance \
                 may have stored (hub.insight_kib_per_instance)"
            ),
        ));
    }
    // Oldest first: the table is ordered by sequence.
    let mine: Vec<(u64, u64)> = state
        .tables
        .insights
        .values()
        .filter(|i| i.shared_by == caller)
        .map(|i| (i.sequence, i.stored_bytes()))
        .collect();
    let mut stored: u64 = mine.iter().map(|(_, bytes)| bytes).sum();
    for (sequence, bytes) in mine {
        if stored + size <= max_bytes {
            break;
        }
        state.tables.insights.remove(&sequence);
        stored -= bytes;
    }
    Ok(())
}

/// The newest version of the insight with `id`.
fn insight_with_id(state: &State, id: &str) -> Option<Arc<Insight>> {
    state.tables.insights.values().find(|i| i.id == id).cloned()
}

fn record_insight_use(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    insight_id: &str,
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::RecordInsightUse,
        request,
        |state, first| {
            if let Some(first) = first {
                let insight = insight_with_id(state, insight_id)
                    .ok_or_else(|| gone(request, "the insight"))?;
                return Ok((Answer::InsightUsed { insight }, first));
            }
            let Some(found) = insight_with_id(state, insight_id).filter(|i| i.is_valid_at(now))
            else {
                return Err(Error::not_found("valid insight", insight_id.to_string()));
            };
            touch_instance(state, now, caller)?;
            let mut insight = (*found).clone();
            insight.uses += 1;
            insight.valid_until = insight
                .valid_until
                .max((now + USE_EXTENSION_MS).min(insight.created_at + MAX_LIFETIME_MS));
            let insight = Arc::new(insight);
            state
                .tables
                .insights
                .insert(insight.sequence, insight.clone());
            Ok((Answer::InsightUsed { insight }, Applied::RecordInsightUse))
        },
    )
}

fn share_failure(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    report: &FailureReport,
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::ShareFailure,
        request,
        |state, first| {
            let id = FailurePattern::id_for(report.failure_type, &report.metric, &report.strategy);
            if let Some(first) = first {
                let failure = state
                    .tables
                    .failures
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("failure {id} is missing")))?;
                return Ok((Answer::FailureShared { failure }, first));
            }
            touch_instance(state, now, caller)?;
            let failure = match state.tables.failures.get(&id) {
                Some(existing) => {
                    let mut failure = (**existing).clone();
                    failure.record(report, caller, now);
                    failure
                }
                None if report.follow_up => {
                    return Err(Error::not_found(
                        "failure",
                        format!(
                            "{} of {} after {:?} (a follow-up completes a reported failure)",
                            report.failure_type.as_str(),
                            report.metric,
                            report.strategy
                        ),
                    ));
                }
                None => FailurePattern::new(report, caller, now),
            };
            let mut failure = failure;
            failure.changed_at = state.position;
            let failure = Arc::new(failure);
            state.tables.failures.insert(id, failure.clone());
            state.failures_changed();
            Ok((Answer::FailureShared { failure }, Applied::ShareFailure))
        },
    )
}

fn share_configuration(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    share: &ConfigShare,
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::ShareConfiguration,
        request,
        |state, first| {
            let id = Configuration::id_for(&share.context, &share.parameters);
            if let Some(first) = first {
                let config = state
                    .tables
                    .configs
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("configuration {id} is missing")))?;
                return Ok((Answer::ConfigurationShared { config }, first));
            }
            touch_instance(state, now, caller)?;
            let mut config = match state.tables.configs.get(&id) {
                Some(existing) => {
                    let mut config = (**existing).clone();
                    config.record(share, caller, now);
                    config
                }
                None => Configuration::new(share, caller, now),
            };
            config.changed_at = state.position;
            state.tables.configs.insert(id.clone(), Arc::new(config));
            // Each configuration of the context is judged against its
            // rivals again: one share can validate or demote another.
            let key = context_key(&share.context);
            let rivals: Vec<Arc<Configuration>> = state
                .tables
                .configs
                .values()
                .filter(|c| c.context_key == key)
                .cloned()
                .collect();
            for candidate in &rivals {
                let best_rival = rivals
                    .iter()
                    .filter(|r| r.id != candidate.id && r.data_points >= RIVAL_MIN_DATA_POINTS)
                    .map(|r| r.effectiveness)
                    .max_by(f64::total_cmp);
                let mut judged = (**candidate).clone();
                if judged.revalidate(best_rival, now) {
                    state
                        .tables
                        .configs
                        .insert(judged.id.clone(), Arc::new(judged));
                }
            }
            let config = state
                .tables
                .configs
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::Internal("configuration vanished".into()))?;
            Ok((
                Answer::ConfigurationShared { config },
                Applied::ShareConfiguration,
            ))
        },
    )
}

fn share_model_update(
    state: &mut State,
    now: UnixMillis,
    caller: &str,
    update: &ModelUpdate,
    rules: &FederationRules,
    (announce_id, announce_ttl_ms): (&str, i64),
    request: Option<&Idempotency>,
) -> Result<Answer> {
    once(
        state,
        now,
        caller,
        WriteRpc::ShareModelUpdate,
        request,
        |state, first| {
            if let Some(first) = first {
                let name = match first {
                    // The context it was registered in then: most often
                    // still the caller's, else found by its tag.
                    Applied::ShareModelUpdate { context_record } if context_record != 0 => {
                        match model_record_name(update) {
                            Ok(name) if name_tag(&name) == context_record => Some(name),
                            _ => state
                                .tables
                                .models
                                .keys()
                                .find(|name| name_tag(name) == context_record)
                                .cloned(),
                        }
                    }
                    _ => Some(model_record_name(update)?),
                };
                // Retention may have removed a context model since.
                let model = name
                    .and_then(|name| state.tables.models.get(&name).cloned())
                    .ok_or_else(|| gone(request, "the model"))?;
                return Ok((
                    Answer::ModelUpdated {
                        model,
                        new_version: None,
                    },
                    first,
                ));
            }
            let name = model_record_name(update)?;
            touch_instance(state, now, caller)?;
            let mut model = match state.tables.models.get(&name) {
                Some(existing) => (**existing).clone(),
                None => {
                    let mut fresh = ModelRecord::new(&name, rules.dimension, now);
                    // A context's model starts where the fleet's is.
                    if let Some(own) = state.tables.models.get(&update.model)
                        && update.for_context
                        && own.weights.len() == rules.dimension
                    {
                        fresh.weights = state.fleet_model(own).weights;
                    }
                    fresh
                }
            };
            // Only the fleet model is trained by every region: updates
            // are judged against every region's versions summed.
            let elsewhere = if update.for_context {
                0
            } else {
                state.fleet_model(&model).version - model.version
            };
            let new_version = model
                .accept_among(caller, update, rules, now, elsewhere)
                .map_err(|refusal| refused_update(refusal, update))?;
            let model = Arc::new(model);
            state.tables.models.insert(name.clone(), model.clone());
            // How the fleet model does on the caller's context, for that
            // context's model (if it has one) to be weighed against.
            if let (false, Some(evaluation), Some(context)) =
                (update.for_context, update.evaluation, &update.context)
            {
                let own = context_model_name(&update.model, context);
                if let Some(record) = state.tables.models.get_mut(&own) {
                    Arc::make_mut(record).record_fleet_evaluation(
                        update.base_version,
                        caller,
                        &evaluation,
                    );
                }
            }
            if let (Some(version), false) = (new_version, update.for_context) {
                announce_version(state, now, &model, version, announce_id, announce_ttl_ms);
            }
            let context_record = if update.for_context {
                name_tag(&name)
            } else {
                0
            };
            Ok((
                Answer::ModelUpdated { model, new_version },
                Applied::ShareModelUpdate { context_record },
            ))
        },
    )
}

/// The record an update folds into: the fleet model's, or its context's.
fn model_record_name(update: &ModelUpdate) -> Result<String> {
    if !update.for_context {
        return Ok(update.model.clone());
    }
    match update.context.as_deref() {
        Some(context) if !context.is_empty() => Ok(context_model_name(&update.model, context)),
        _ => Err(Error::FailedPrecondition(
            "context_model: the caller registered no context; register with one, or send the \
             update for the fleet model"
                .into(),
        )),
    }
}

fn refused_update(refusal: Refusal, update: &ModelUpdate) -> Error {
    match refusal {
        Refusal::Shape { expected, got } => Error::invalid(
            "delta",
            format!(
                "has {got} values; model {} has {expected} weights",
                update.model
            ),
        ),
        Refusal::FromTheFuture { version } => Error::FailedPrecondition(format!(
            "base_version {} is newer than model {}'s version {version}",
            update.base_version, update.model
        )),
        Refusal::TooStale {
            version,
            max_staleness,
        } => Error::FailedPrecondition(format!(
            "base_version {} is {} versions behind model {}'s version {version} (at most \
             {max_staleness}): fetch the model with GetModel and train from it",
            update.base_version,
            version - update.base_version,
            update.model
        )),
    }
}

/// Stores the insight that tells subscribers a model has a new version.
fn announce_version(
    state: &mut State,
    now: UnixMillis,
    model: &ModelRecord,
    version: u64,
    id: &str,
    ttl_ms: i64,
) {
    let rule = model.last_aggregation.map_or("", |a| a.name());
    let evaluated = model.evaluations.range(..version).next_back();
    let accuracy = evaluated.and_then(|(_, e)| e.accuracy()).unwrap_or(0.0);
    let draft = InsightDraft {
        category: InsightCategory::Prediction,
        title: format!("Model {} version {version}", model.name),
        insight: format!(
            "Version {version} of the {} model aggregates updates of {} instances ({rule}).{}",
            model.name,
            model.last_round_instances,
            match evaluated {
                Some((v, e)) => format!(
                    " Version {v} predicted {:.1}% of {} held-out examples right.",
                    accuracy * 100.0,
                    e.examples
                ),
                None => String::new(),
            }
        ),
        evidence: InsightEvidence {
            data_points: evaluated.map_or(0, |(_, e)| e.examples),
            correlation_strength: 0.0,
            instances_covered: u32::try_from(model.last_round_instances).unwrap_or(u32::MAX),
            improvement_observed: 0.0,
        },
        applicable_contexts: Vec::new(),
        effectiveness: accuracy,
        risk: 0.0,
        recommendation: format!(
            "Fetch it with GetModel {{model: \"{}\", known_version: {}}} and train from it.",
            model.name,
            version - 1
        ),
        alternatives: Vec::new(),
        valid_until: None,
    };
    publish(
        state,
        now,
        &[Generated {
            id: id.to_string(),
            draft,
        }],
        ttl_ms,
        GENERATED_BY,
    );
}

// --- maintenance -----------------------------------------------------------------

/// Admits one run of a periodic job: refused if a later lease epoch ran
/// it, or if it ran for this period already (see [`JobStamp`]).
fn run_job(state: &mut State, stamp: Option<&JobStamp>) -> Result<()> {
    let Some(stamp) = stamp else { return Ok(()) };
    if let Some(last) = state.tables.jobs.get(&stamp.job) {
        if stamp.epoch < last.epoch {
            return Err(Error::FailedPrecondition(format!(
                "{} job of lease epoch {} refused: epoch {} has run it since",
                stamp.job, stamp.epoch, last.epoch
            )));
        }
        if stamp.period <= last.period {
            return Err(Error::FailedPrecondition(format!(
                "{} job already ran for period {} (this run is for {})",
                stamp.job, last.period, stamp.period
            )));
        }
    }
    state.tables.jobs.insert(
        stamp.job.clone(),
        Arc::new(JobRun {
            epoch: stamp.epoch,
            period: stamp.period,
        }),
    );
    Ok(())
}

fn sweep(state: &mut State, now: UnixMillis, rules: &RetentionRules) -> RetentionReport {
    let domain_rules = Rules {
        pattern_days: rules.pattern_days,
        unconfirmed_pattern_days: rules.unconfirmed_pattern_days,
        low_frequency: rules.low_frequency,
        evidence_days: rules.evidence_days,
        context_model_days: rules.context_model_days,
    };
    let planned = retention::plan(
        state.tables.patterns.values(),
        state.tables.insights.values(),
        state.tables.strategies.values(),
        state.tables.models.values(),
        &domain_rules,
        now,
    );
    let mut report = RetentionReport {
        patterns: planned.patterns.len(),
        insights: planned.insights.len(),
        strategies_rolled_up: planned.strategies.len(),
        context_models: planned.context_models.len(),
        ..RetentionReport::default()
    };
    for name in &planned.context_models {
        state.tables.models.remove(name);
    }
    for id in &planned.patterns {
        state.remove_pattern(id);
    }
    // Other regions' patterns expire here by the same rule as there, so
    // one their origin deleted goes here too.
    let origins: Vec<String> = state.tables.regions.keys().cloned().collect();
    for origin in origins {
        let Some(held) = state.tables.regions.get(&origin) else {
            continue;
        };
        let expired: Vec<String> = held
            .records
            .iter()
            .filter(|(id, r)| match &r.knowledge {
                Some(knowledge::Knowledge::Pattern(p)) => knowledge::joined_pattern(None, [p], id)
                    .is_some_and(|p| retention::pattern_expired(&p, &domain_rules, now)),
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        if expired.is_empty() {
            continue;
        }
        let mut held = (**held).clone();
        for id in &expired {
            held.records.remove(id);
        }
        state.tables.regions.insert(origin, Arc::new(held));
        state.failures_changed();
        for id in &expired {
            state.index_pattern(id);
        }
    }
    for sequence in &planned.insights {
        state.tables.insights.remove(sequence);
    }
    for mut rolled in planned.strategies {
        rolled.changed_at = state.position;
        state.put_strategy(rolled.key(), Arc::new(rolled));
    }
    let expired: Vec<RequestKey> = state
        .tables
        .requests
        .iter()
        .filter(|(_, r)| !r.live_at(now, rules.request_window_ms))
        .map(|(key, _)| key.clone())
        .collect();
    report.request_ids = expired.len();
    for key in expired {
        state.tables.requests.remove(&key);
    }
    report
}

fn publish(
    state: &mut State,
    now: UnixMillis,
    generated: &[Generated],
    ttl_ms: i64,
    by: &str,
) -> Answer {
    let mut stored = Vec::new();
    let mut duplicates = 0;
    for found in generated {
        let known = state.tables.insights.values().any(|i| {
            i.is_valid_at(now)
                && i.draft.category == found.draft.category
                && i.draft.title == found.draft.title
        });
        if known {
            duplicates += 1;
            continue;
        }
        state.counters.insight_sequence += 1;
        let insight = Arc::new(Insight {
            id: found.id.clone(),
            sequence: state.counters.insight_sequence,
            valid_until: now + ttl_ms,
            draft: found.draft.clone(),
            created_at: now,
            shared_by: by.to_string(),
            uses: 0,
            origin_region: String::new(),
        });
        state
            .tables
            .insights
            .insert(insight.sequence, insight.clone());
        stored.push(insight);
    }
    Answer::InsightsPublished { stored, duplicates }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{Fingerprint, RequestTag};
    use crate::model::ApiKey;
    use crate::model::Attributes;

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 60 * 60 * 1000;

    fn at(at: i64, action: Action) -> Command {
        Command { at, action }
    }

    fn register(id: &str) -> Action {
        Action::Register {
            caller: id.into(),
            registration: Registration {
                instance_id: id.into(),
                region: "r".into(),
                context: Attributes::new(),
                capabilities: vec![],
            },
        }
    }

    fn share(delta: f64, request: Option<(&str, &str)>) -> Action {
        Action::ShareStrategy {
            caller: "a".into(),
            share: StrategyShare {
                strategy: "s".into(),
                metric: "m".into(),
                value_before: 0.5,
                successful: true,
                delta,
                condition: String::new(),
                context: Attributes::new(),
                recent: vec![],
            },
            evidence_days: 7,
            request: request.map(|(id, payload)| Idempotency {
                tag: RequestTag {
                    id: id.into(),
                    fingerprint: Fingerprint::of(payload.as_bytes()),
                },
                window_ms: 24 * HOUR,
            }),
        }
    }

    /// Folds `actions` at T0 + i ms, each at the next position.
    fn folded(actions: Vec<Action>) -> (State, Vec<Result<Answer>>) {
        let mut state = State::default();
        let answers = actions
            .into_iter()
            .enumerate()
            .map(|(i, action)| {
                let position = state.position + 1;
                fold(&mut state, position, &at(T0 + i as i64, action))
            })
            .collect();
        (state, answers)
    }

    fn outcome_sequence(answer: &Result<Answer>) -> u64 {
        match answer {
            Ok(Answer::StrategyShared {
                outcome_sequence, ..
            }) => *outcome_sequence,
            other => panic!("not a share: {other:?}"),
        }
    }

    fn draft(title: &str, text: &str) -> InsightDraft {
        InsightDraft {
            category: crate::model::InsightCategory::Timing,
            title: title.into(),
            insight: text.into(),
            evidence: Default::default(),
            applicable_contexts: vec![],
            effectiveness: 0.5,
            risk: 0.1,
            recommendation: String::new(),
            alternatives: vec![],
            valid_until: None,
        }
    }

    fn insight(caller: &str, title: &str, text_bytes: usize, bound: u64) -> Action {
        Action::ShareInsight {
            caller: caller.into(),
            draft: draft(title, &"x".repeat(text_bytes)),
            id: format!("id-{title}"),
            default_ttl_ms: 24 * HOUR,
            request: None,
            max_bytes_per_instance: bound,
        }
    }

    fn titles_of(state: &State, caller: &str) -> Vec<String> {
        state
            .tables
            .insights
            .values()
            .filter(|i| i.shared_by == caller)
            .map(|i| i.draft.title.clone())
            .collect()
    }

    #[test]
    fn an_instance_past_its_insight_bound_loses_its_oldest_and_nobody_elses() {
        // Each insight counts its text, id, sharer and the fixed overhead:
        // 1000 + 5 (id) + 1 (sharer) + 2 (title) + 256 = 1264 bytes; three
        // fit in 4000.
        let bound = 4000;
        let (state, answers) = folded(vec![
            register("a"),
            register("b"),
            insight("b", "b1", 1000, bound),
            insight("a", "a1", 1000, bound),
            insight("a", "a2", 1000, bound),
            insight("a", "a3", 1000, bound),
            insight("a", "a4", 1000, bound),
            insight("a", "a5", 1000, bound),
            insight("a", "huge", 5000, bound),
        ]);
        assert!(answers[..8].iter().all(|a| a.is_ok()), "{answers:?}");
        assert_eq!(titles_of(&state, "a"), ["a3", "a4", "a5"]);
        assert_eq!(titles_of(&state, "b"), ["b1"], "another's are untouched");
        let stored: u64 = state
            .tables
            .insights
            .values()
            .filter(|i| i.shared_by == "a")
            .map(|i| i.stored_bytes())
            .sum();
        assert!(stored <= bound, "{stored}");
        // Larger than the whole bound: refused, naming the field, and
        // nothing dropped for it.
        let refused = answers[8].as_ref().unwrap_err().to_string();
        assert!(
            refused.contains("insight") && refused.contains("4000 bytes"),
            "{refused}"
        );
        assert_eq!(
            state.counters.insight_sequence, 6,
            "the refused one took no sequence"
        );
        // Unbounded (a command logged before the bound): nothing goes.
        let (state, _) = folded(
            std::iter::once(register("a"))
                .chain((0..10).map(|i| insight("a", &format!("t{i}"), 1000, 0)))
                .collect(),
        );
        assert_eq!(titles_of(&state, "a").len(), 10);
    }

    #[test]
    fn a_retried_request_gets_the_first_answer_and_is_applied_once() {
        let (state, answers) = folded(vec![
            register("a"),
            share(0.1, Some(("r1", "p"))),
            share(0.1, Some(("r1", "p"))),
            share(0.1, Some(("r1", "p"))),
        ]);
        assert_eq!(
            answers[1..]
                .iter()
                .map(outcome_sequence)
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(state.counters.outcome_sequence, 1);
        assert_eq!(state.rows.outcomes.len(), 1);
        let record = state.tables.strategies.values().next().unwrap();
        assert_eq!(record.applications, 1);
        assert_eq!(state.tables.instances["a"].shared_records, 1);
    }

    #[test]
    fn an_id_reused_for_another_payload_is_refused_naming_it() {
        let (_, answers) = folded(vec![
            register("a"),
            share(0.1, Some(("r1", "p"))),
            share(0.2, Some(("r1", "q"))),
        ]);
        assert!(matches!(
            &answers[2],
            Err(Error::AlreadyExists(m)) if m.starts_with("request_id \"r1\" was already used")
        ));
    }

    #[test]
    fn a_failed_command_changes_nothing_and_its_id_stays_unused() {
        let mut state = State::default();
        let before = state.digest();
        // Not registered yet: refused.
        let refused = fold(&mut state, 1, &at(T0, share(0.1, Some(("r1", "p")))));
        assert!(matches!(refused, Err(Error::FailedPrecondition(_))));
        assert_eq!(state.digest(), before);
        assert_eq!(state.position, 0, "a failed command takes no position");
        fold(&mut state, 1, &at(T0, register("a"))).unwrap();
        let answer = fold(&mut state, 2, &at(T0, share(0.1, Some(("r1", "p")))));
        assert_eq!(outcome_sequence(&answer), 1, "the id was not remembered");
    }

    /// Another region's knowledge joins this region's views (a strategy
    /// known only there included); its own knowledge relayed back does
    /// not, and a batch merged twice changes nothing the second time.
    #[test]
    fn other_regions_knowledge_joins_the_views_once() {
        use crate::digest::{Batch, Stats, Subject, Versioned};
        let batch = |origin: &str, strategy: &str| Batch {
            origin: origin.into(),
            after: 0,
            through: 4,
            entries: [(
                Subject::Strategy {
                    metric: "m".into(),
                    strategy: strategy.into(),
                    context_key: "p=x".into(),
                    band: 2,
                    day: T0 / (24 * HOUR),
                },
                Versioned {
                    version: 4,
                    stats: Stats {
                        count: 4,
                        successes: 3,
                        gain_sum: 0.3,
                        gain_sum_sq: 0.03,
                        loss_sum: -0.1,
                        loss_sum_sq: 0.01,
                    },
                },
            )]
            .into(),
            ..Batch::default()
        };
        let merge = |batches| Action::MergeDigests {
            own_region: "us-east".into(),
            batches,
        };
        let mut state = State::default();
        let answer = fold(
            &mut state,
            1,
            &at(
                T0,
                merge(vec![batch("eu-west", "far"), batch("us-east", "own")]),
            ),
        )
        .unwrap();
        assert!(matches!(answer, Answer::DigestsMerged { changed: 1 }));
        assert_eq!(state.tables.regions.keys().collect::<Vec<_>>(), ["eu-west"]);
        let views = state.strategy_views("m", "p=x");
        assert_eq!(views.len(), 1, "only eu-west's strategy");
        let view = views[0];
        assert_eq!(view.remote_origins, 1);
        assert_eq!(view.fleet.record.strategy, "far");
        assert_eq!(view.fleet.record.applications, 0, "lifetime stays local");
        let own = view
            .own
            .expect("eu-west's evidence in the caller's context");
        let band = own.record.window[0].bands[2];
        assert_eq!((band.applications, band.successes), (4, 3));
        assert!((band.improvement.mean - 0.1).abs() < 1e-12);
        // Ranked for anyone who asks, from eu-west's evidence alone.
        for (viewer, context) in [
            (crate::influence::Viewer::Operator, ""),
            (crate::influence::Viewer::Newcomer, "p=x"),
        ] {
            let views = state.strategy_views("m", context);
            let ranked = crate::recommend::recommend_views(
                views.iter().map(|v| crate::recommend::StrategyView {
                    remote_origins: v.remote_origins,
                    ..crate::recommend::StrategyView::plain(
                        &v.fleet.record,
                        v.own.map(|o| &*o.record),
                    )
                }),
                crate::recommend::StrategyQuery {
                    viewer,
                    metric: "m",
                    context_key: context,
                    current_value: Some(0.5),
                    budget: None,
                    limit: 5,
                    recent: &[],
                    explore_seed: None,
                    now: T0,
                    tuning: crate::recommend::Tuning::default(),
                    failure_risk: &Default::default(),
                },
            );
            assert_eq!(ranked.len(), 1, "{viewer:?}");
            assert_eq!(
                (ranked[0].strategy.as_str(), ranked[0].origin_regions),
                ("far", 1)
            );
        }
        let digest = state.digest();
        let again = fold(&mut state, 2, &at(T0, merge(vec![batch("eu-west", "far")]))).unwrap();
        assert!(matches!(again, Answer::DigestsMerged { changed: 0 }));
        let views = state.strategy_views("m", "p=x");
        assert_eq!(
            views[0].own.unwrap().record.window[0].bands[2].applications,
            4
        );
        assert_ne!(state.digest(), digest, "the position moved");
        assert_eq!(state.tables.regions, {
            let mut before = State::default();
            fold(
                &mut before,
                1,
                &at(T0, merge(vec![batch("eu-west", "far")])),
            )
            .unwrap();
            before.tables.regions
        });
    }

    /// Another region's insights get this region's next sequences (and so
    /// its stream); delivered again, or known here by content, they are
    /// not stored twice; expired ones are not stored; a batch after a gap
    /// does not move the insight version.
    #[test]
    fn other_regions_insights_are_stored_once_under_local_sequences() {
        use crate::digest::{Batch, RemoteInsight};
        let remote = |origin_sequence: u64, title: &str, valid_until: i64| RemoteInsight {
            origin_sequence,
            id: format!("eu-{origin_sequence}"),
            draft: draft(title, "text"),
            created_at: T0,
            valid_until,
        };
        let merge = |after: u64, through: u64, insights: Vec<RemoteInsight>| Action::MergeDigests {
            own_region: "us-east".into(),
            batches: vec![Batch {
                origin: "eu-west".into(),
                insights_after: after,
                insights_through: through,
                insights,
                ..Batch::default()
            }],
        };
        let mut state = State::default();
        fold(&mut state, 1, &at(T0, register("a"))).unwrap();
        // A local insight first: sequence 1.
        fold(&mut state, 2, &at(T0, insight("a", "local", 10, 1 << 20))).unwrap();
        let batch = merge(
            0,
            4,
            vec![
                remote(2, "from eu-west", T0 + HOUR),
                remote(3, "expired", T0 - 1),
                // The same knowledge as this region's own insight.
                RemoteInsight {
                    draft: state.tables.insights[&1].draft.clone(),
                    ..remote(4, "", T0 + HOUR)
                },
            ],
        );
        fold(&mut state, 3, &at(T0, batch.clone())).unwrap();
        let sequences: Vec<(u64, &str, &str)> = state
            .tables
            .insights
            .values()
            .map(|i| (i.sequence, i.draft.title.as_str(), i.origin_region.as_str()))
            .collect();
        assert_eq!(
            sequences,
            [(1, "local", ""), (2, "from eu-west", "eu-west")]
        );
        assert_eq!(state.counters.insight_sequence, 2);
        let held = &state.tables.regions["eu-west"];
        assert_eq!(held.insights_through, 4);
        assert_eq!(held.imported, [(2, 2), (3, 0), (4, 1)].into());
        // Delivered again: nothing new.
        fold(&mut state, 4, &at(T0, batch)).unwrap();
        assert_eq!(state.counters.insight_sequence, 2);
        // After a gap: kept, but the version waits for the gap.
        fold(
            &mut state,
            5,
            &at(T0, merge(6, 7, vec![remote(7, "late", T0 + HOUR)])),
        )
        .unwrap();
        assert_eq!(state.counters.insight_sequence, 3);
        assert_eq!(state.tables.regions["eu-west"].insights_through, 4);
    }

    /// With replicas, a job's output is admitted once per period and never
    /// from a lease epoch older than the last that ran it.
    #[test]
    fn job_outputs_are_admitted_once_per_period_from_the_newest_epoch() {
        let run = |epoch, period| Action::PublishInsights {
            generated: vec![],
            ttl_ms: HOUR,
            by: "hub".into(),
            job: Some(JobStamp {
                job: "insights".into(),
                epoch,
                period,
            }),
        };
        let mut state = State::default();
        assert!(fold(&mut state, 1, &at(T0, run(1, 10))).is_ok());
        let again = fold(&mut state, 2, &at(T0, run(1, 10)));
        assert!(
            matches!(&again, Err(Error::FailedPrecondition(m)) if m.contains("already ran for period 10")),
            "{again:?}"
        );
        assert!(
            fold(&mut state, 2, &at(T0, run(2, 11))).is_ok(),
            "a new holder, a new period"
        );
        let deposed = fold(&mut state, 3, &at(T0, run(1, 12)));
        assert!(
            matches!(&deposed, Err(Error::FailedPrecondition(m)) if m.contains("epoch 2 has run it since")),
            "{deposed:?}"
        );
        assert_eq!(
            *state.tables.jobs["insights"],
            JobRun {
                epoch: 2,
                period: 11
            }
        );
        // Unstamped (an operator asked) is always admitted.
        let asked = Action::PublishInsights {
            generated: vec![],
            ttl_ms: HOUR,
            by: "op".into(),
            job: None,
        };
        assert!(fold(&mut state, 3, &at(T0, asked)).is_ok());
    }

    /// An unstamped retention sweep with the default-like rules the tests
    /// use (patterns 30 days, unconfirmed 7, evidence 7, request ids a day).
    fn sweep_now() -> Action {
        Action::Retention {
            job: None,
            rules: RetentionRules {
                pattern_days: 30,
                unconfirmed_pattern_days: 7,
                low_frequency: 3,
                evidence_days: 7,
                request_window_ms: 24 * HOUR,
                context_model_days: 30,
            },
        }
    }

    #[test]
    fn another_regions_pattern_is_matched_acted_on_and_expires_as_there() {
        use crate::digest::Batch;
        use crate::knowledge::{Knowledge, PatternKnowledge, Record};
        let metrics: crate::model::Metrics = [(
            "lv".to_string(),
            crate::model::MetricState {
                value: 0.4,
                stuck: true,
            },
        )]
        .into();
        let signature = crate::matching::signature(&metrics, &Default::default());
        let id = crate::model::content_id("pattern", &signature);
        let known = PatternKnowledge {
            signature,
            metrics: metrics.clone(),
            environment: Default::default(),
            cycles_until_plateau: Default::default(),
            recovery: [(
                "warm-restart".to_string(),
                crate::model::RecoveryStat {
                    suggested: 2,
                    successes: 1,
                    failures: 0,
                },
            )]
            .into(),
            recovery_by_metric: Default::default(),
            successes: 1,
            failures: 0,
            frequency: 2,
            reporters: 2,
            first_seen: T0,
            last_seen: T0,
        };
        let merge = Action::MergeDigests {
            own_region: "us-east".into(),
            batches: vec![Batch {
                origin: "eu-west".into(),
                through: 3,
                records: [(
                    id.clone(),
                    Record {
                        version: 3,
                        knowledge: Some(Knowledge::Pattern(known)),
                    },
                )]
                .into(),
                ..Batch::default()
            }],
        };
        let mut state = State::default();
        fold(&mut state, 1, &at(T0, merge)).unwrap();
        // Matched with eu-west's figures, though this region has none.
        let found = state.indexes.patterns.rank(
            &metrics,
            &Default::default(),
            &state.counters.pattern_calibration,
            5,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(
            (
                found[0].pattern.frequency,
                found[0].pattern.remote_reporters
            ),
            (2, 2)
        );
        assert!(state.tables.patterns.is_empty());
        // Acting on it starts this region's own record of it.
        fold(&mut state, 2, &at(T0, register("a"))).unwrap();
        let acted = Action::RecordPatternOutcome {
            caller: "a".into(),
            pattern_id: id.clone(),
            success: true,
            metric: Some("lv".into()),
            strategy: Some("warm-restart".into()),
            similarity: None,
            request: None,
        };
        fold(&mut state, 3, &at(T0, acted)).unwrap();
        assert_eq!(state.tables.patterns[&id].successes, 1);
        assert_eq!(state.tables.patterns[&id].changed_at, 3);
        let found = state.indexes.patterns.rank(
            &metrics,
            &Default::default(),
            &state.counters.pattern_calibration,
            5,
        );
        assert_eq!(found[0].pattern.successes, 2, "its own and eu-west's");
        // Idle past the rule: eu-west's record goes here as it does there.
        let sweep = sweep_now();
        fold(&mut state, 4, &at(T0 + 40 * 24 * HOUR, sweep)).unwrap();
        assert!(state.tables.regions["eu-west"].records.is_empty());
        assert!(state.tables.patterns.is_empty(), "its own expired too");
        assert!(
            state
                .indexes
                .patterns
                .rank(
                    &metrics,
                    &Default::default(),
                    &state.counters.pattern_calibration,
                    5
                )
                .is_empty()
        );
    }

    #[test]
    fn ids_are_forgotten_after_their_window_by_the_sweep() {
        let mut state = State::default();
        fold(&mut state, 1, &at(T0, register("a"))).unwrap();
        fold(&mut state, 2, &at(T0, share(0.1, Some(("r1", "p"))))).unwrap();
        // Within the window: a retry. Past it: a new write.
        let retry = fold(&mut state, 3, &at(T0 + HOUR, share(0.1, Some(("r1", "p")))));
        assert_eq!(outcome_sequence(&retry), 1);
        let sweep = sweep_now();
        let Answer::Retained(report) = fold(&mut state, 4, &at(T0 + 25 * HOUR, sweep)).unwrap()
        else {
            panic!("not a sweep");
        };
        assert_eq!(report.request_ids, 1);
        assert!(state.tables.requests.is_empty());
        let again = fold(
            &mut state,
            5,
            &at(T0 + 25 * HOUR, share(0.1, Some(("r1", "p")))),
        );
        assert_eq!(outcome_sequence(&again), 2);
    }

    #[test]
    fn a_key_revoked_twice_is_not_found_the_second_time() {
        let key = ApiKey {
            instance_id: "a".into(),
            salt: "00".into(),
            hash: "11".into(),
            issued_at: T0,
            issued_by: "op".into(),
        };
        let (state, answers) = folded(vec![
            Action::IssueApiKey { key: key.clone() },
            Action::IssueApiKey { key },
            Action::RevokeApiKey {
                instance_id: "a".into(),
            },
            Action::RevokeApiKey {
                instance_id: "a".into(),
            },
        ]);
        assert!(matches!(
            answers[0],
            Ok(Answer::KeyIssued { replaced: false })
        ));
        assert!(matches!(
            answers[1],
            Ok(Answer::KeyIssued { replaced: true })
        ));
        assert!(matches!(answers[2], Ok(Answer::KeyRevoked)));
        assert!(matches!(answers[3], Err(Error::NotFound { .. })));
        assert!(state.tables.api_keys.is_empty());
    }

    /// A retry answers with the context model the first attempt updated,
    /// even after the caller registered another context in between (the
    /// record name came from the registration, not from the request).
    #[test]
    fn a_retried_context_update_finds_the_model_it_updated() {
        let update = |context: &str| Action::ShareModelUpdate {
            caller: "a".into(),
            update: ModelUpdate {
                model: "plateau".into(),
                base_version: 0,
                delta: vec![0.1, 0.2],
                examples: 10,
                evaluation: None,
                context: Some(context.into()),
                for_context: true,
            },
            rules: FederationRules {
                dimension: 2,
                buffer_size: 3,
                ..FederationRules::default()
            },
            announce_id: "announce".into(),
            announce_ttl_ms: HOUR,
            request: Some(Idempotency {
                tag: RequestTag {
                    id: "r1".into(),
                    fingerprint: Fingerprint::of(b"update"),
                },
                window_ms: 24 * HOUR,
            }),
        };
        let (state, answers) = folded(vec![
            register("a"),
            update("gpu=a100"),
            register("a"),
            update("gpu=h100"),
        ]);
        let name = |answer: &Result<Answer>| match answer {
            Ok(Answer::ModelUpdated { model, new_version }) => {
                assert_eq!(*new_version, None);
                model.name.clone()
            }
            other => panic!("not a model update: {other:?}"),
        };
        assert_eq!(name(&answers[1]), "plateau@gpu=a100");
        assert_eq!(name(&answers[3]), "plateau@gpu=a100", "the retry");
        assert!(!state.tables.models.contains_key("plateau@gpu=h100"));
        assert_eq!(state.tables.models["plateau@gpu=a100"].pending.len(), 1);
    }
}
