//! Conversions between the wire (prost) types and the domain types, in one
//! place. Inbound conversions validate as they go and fail with an
//! `InvalidArgument` naming the field in the client's terms (e.g.
//! `metrics[learningVelocity].value`); outbound conversions cannot fail.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost_types::{Timestamp, Value, value::Kind};

use crate::domain::idempotency::{Fingerprint, RequestTag};
use crate::domain::matching::{RecoveryEstimate, rank_recoveries};
use crate::domain::model::{
    ApplicableContext, Attributes, AuditEntry, ConfigAlternative, ConfigShare, Configuration,
    FailurePattern, FailureReport, FailureType, Insight, InsightAlternative, InsightCategory,
    InsightDraft, InsightEvidence, Instance, MetricState, Metrics, PRECEDING_WINDOW, ParamValue,
    Parameters, Pattern, PatternShare, RecentApplication, RecoveryAttempt, Registration,
    StrategyRecord, StrategyShare, UnixMillis, preceding,
};
use crate::domain::prevention::Warning;
use crate::domain::recommend::{Combination, Recommendation, Scope};
use crate::domain::stats::RunningStats;
use crate::error::{Error, Result};
use crate::hub::{
    ActionCheck, AuditQuery, Bootstrap, HubStatus, InstancePage, RankedMatch, StrategyAsk,
};
use crate::pb;
use crate::validate::{
    self, MAX_TEXT_LEN, MAX_TITLE_LEN, MAX_VALUE_LEN, attributes, finite, list_len, map_len, name,
    optional_name, required_text, text, unit, within,
};

/// Cycle counts above this are not plausible and are refused.
const MAX_CYCLES: u32 = 1_000_000;
/// Most data points one configuration share may claim.
const MAX_DATA_POINTS: u64 = 1_000_000;

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

pub fn timestamp(millis: UnixMillis) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(crate) fn millis(field: &str, ts: &Timestamp) -> Result<UnixMillis> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Error::invalid(
            field,
            format!("nanos must be within [0, 999999999], got {}", ts.nanos),
        ));
    }
    // Year 1 to 9999, as google.protobuf.Timestamp defines.
    if !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds) {
        return Err(Error::invalid(field, "is outside years 1 to 9999"));
    }
    Ok(ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000)
}

// ---------------------------------------------------------------------------
// Inbound: shared building blocks
// ---------------------------------------------------------------------------

pub(crate) fn metrics(
    field: &str,
    entries: &BTreeMap<String, pb::MetricState>,
    required: bool,
) -> Result<Metrics> {
    map_len(field, entries.len(), required)?;
    entries
        .iter()
        .map(|(metric, state)| {
            name(&format!("{field} key"), metric)?;
            let value = unit(&format!("{field}[{metric}].value"), state.value)?;
            Ok((
                metric.clone(),
                MetricState {
                    value,
                    stuck: state.stuck,
                },
            ))
        })
        .collect()
}

pub fn context(field: &str, entries: &BTreeMap<String, String>) -> Result<Attributes> {
    attributes(field, entries.iter())
}

fn names(field: &str, items: &[String]) -> Result<Vec<String>> {
    list_len(field, items.len())?;
    for (i, item) in items.iter().enumerate() {
        name(&format!("{field}[{i}]"), item)?;
    }
    Ok(items.to_vec())
}

fn recent(field: &str, items: &[pb::RecentApplication]) -> Result<Vec<RecentApplication>> {
    list_len(field, items.len())?;
    items
        .iter()
        .enumerate()
        .map(|(i, r)| {
            name(&format!("{field}[{i}].strategy"), &r.strategy)?;
            name(&format!("{field}[{i}].metric"), &r.metric)?;
            Ok(RecentApplication {
                strategy: r.strategy.clone(),
                metric: r.metric.clone(),
                cycles_ago: cycles(&format!("{field}[{i}].cycles_ago"), r.cycles_ago)?,
            })
        })
        .collect()
}

fn optional(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn cycles(field: &str, value: u32) -> Result<u32> {
    if value > MAX_CYCLES {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_CYCLES}, got {value}"),
        ));
    }
    Ok(value)
}

/// A required enum: known and not UNSPECIFIED.
fn required_enum<T>(field: &str, raw: i32, parse: impl Fn(i32) -> Option<Option<T>>) -> Result<T> {
    match parse(raw) {
        Some(Some(value)) => Ok(value),
        Some(None) => Err(Error::invalid(field, "is required")),
        None => Err(Error::invalid(field, format!("unknown value {raw}"))),
    }
}

/// An optional enum filter: UNSPECIFIED means "any".
fn optional_enum<T>(
    field: &str,
    raw: i32,
    parse: impl Fn(i32) -> Option<Option<T>>,
) -> Result<Option<T>> {
    parse(raw).ok_or_else(|| Error::invalid(field, format!("unknown value {raw}")))
}

/// `None` for UNSPECIFIED, `Some(Some(_))` for a known category, `None`
/// (outer) for an unknown number.
pub fn parse_category(raw: i32) -> Option<Option<InsightCategory>> {
    use pb::InsightCategory as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => None,
        P::Configuration => Some(InsightCategory::Configuration),
        P::Timing => Some(InsightCategory::Timing),
        P::Sequence => Some(InsightCategory::Sequence),
        P::Fallback => Some(InsightCategory::Fallback),
        P::Context => Some(InsightCategory::Context),
        P::Prediction => Some(InsightCategory::Prediction),
        P::Anomaly => Some(InsightCategory::Anomaly),
    })
}

fn parse_failure_type(raw: i32) -> Option<Option<FailureType>> {
    use pb::FailureType as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => None,
        P::MetricReversal => Some(FailureType::MetricReversal),
        P::Deadlock => Some(FailureType::Deadlock),
        P::Cascade => Some(FailureType::Cascade),
        P::RecoveryFail => Some(FailureType::RecoveryFail),
    })
}

pub fn category_filter(raw: i32) -> Result<Option<InsightCategory>> {
    optional_enum("category", raw, parse_category)
}

/// A failure type that must be set.
pub fn required_failure_type(field: &str, raw: i32) -> Result<FailureType> {
    required_enum(field, raw, parse_failure_type)
}

pub fn failure_type_filter(raw: i32) -> Result<Option<FailureType>> {
    optional_enum("failure_type", raw, parse_failure_type)
}

/// A required name (an id the request refers to).
pub fn required_name(field: &str, value: String) -> Result<String> {
    name(field, &value)?;
    Ok(value)
}

/// A metric to filter by: empty (every metric), or a valid name.
pub fn metric_filter(value: String) -> Result<String> {
    optional_name("metric", &value)?;
    Ok(value)
}

/// A budget: 0 means none; otherwise finite and positive.
pub fn budget(value: f64) -> Result<Option<f64>> {
    let value = within("budget", value, 0.0, 1e6)?;
    Ok((value > 0.0).then_some(value))
}

// ---------------------------------------------------------------------------
// Inbound: requests
// ---------------------------------------------------------------------------

/// The write requests that carry a `request_id`.
pub trait Idempotent: prost::Message + Sized {
    /// Takes the request id out, leaving the payload it guards.
    fn take_request_id(&mut self) -> String;
}

macro_rules! idempotent {
    ($($request:ty),* $(,)?) => {
        $(impl Idempotent for $request {
            fn take_request_id(&mut self) -> String {
                std::mem::take(&mut self.request_id)
            }
        })*
    };
}

idempotent!(
    pb::SharePatternRequest,
    pb::RecordPatternOutcomeRequest,
    pb::ShareStrategyRequest,
    pb::ShareInsightRequest,
    pb::RecordInsightUseRequest,
    pb::ShareFailureRequest,
    pb::ShareConfigurationRequest,
    pb::ShareModelUpdateRequest,
);

/// Takes `request`'s request id out and, if it has one, validates it (a
/// name: 1 to 128 characters of `[A-Za-z0-9._:-]`) and fingerprints the
/// rest of the request: its protobuf encoding, which is deterministic
/// (fields in number order, maps sorted), so a retry of the same request
/// has the same fingerprint even across hub restarts.
pub fn request_tag<R: Idempotent>(request: &mut R) -> Result<Option<RequestTag>> {
    let id = request.take_request_id();
    if id.is_empty() {
        return Ok(None);
    }
    name("request_id", &id)?;
    Ok(Some(RequestTag {
        fingerprint: Fingerprint::of(&request.encode_to_vec()),
        id,
    }))
}

pub fn registration(req: pb::RegisterRequest) -> Result<Registration> {
    name("instance_id", &req.instance_id)?;
    name("region", &req.region)?;
    Ok(Registration {
        context: context("context", &req.context)?,
        capabilities: names("capabilities", &req.capabilities)?,
        instance_id: req.instance_id,
        region: req.region,
    })
}

pub fn pattern_share(req: pb::SharePatternRequest) -> Result<PatternShare> {
    optional_name("target_metric", &req.target_metric)?;
    Ok(PatternShare {
        metrics: metrics("metrics", &req.metrics, true)?,
        cycles_until_plateau: cycles("cycles_until_plateau", req.cycles_until_plateau)?,
        recovery_strategies: names("recovery_strategies", &req.recovery_strategies)?,
        environment: context("environment", &req.environment)?,
        target_metric: optional(req.target_metric),
    })
}

/// The validated parts of a GetPatterns request.
pub struct PatternsQuery {
    pub metrics: Metrics,
    pub environment: Attributes,
    pub target_metric: Option<String>,
    pub recent: Vec<RecentApplication>,
    pub limit: usize,
}

pub fn pattern_query(req: pb::GetPatternsRequest) -> Result<PatternsQuery> {
    optional_name("target_metric", &req.target_metric)?;
    Ok(PatternsQuery {
        metrics: metrics("metrics", &req.metrics, true)?,
        environment: context("environment", &req.environment)?,
        limit: validate::limit("limit", req.limit, 10, 100)?,
        recent: recent("recent", &req.recent)?,
        target_metric: optional(req.target_metric),
    })
}

/// The validated parts of a RecordPatternOutcome request.
pub struct PatternOutcome {
    pub pattern_id: String,
    pub success: bool,
    pub metric: Option<String>,
    pub strategy: Option<String>,
    pub similarity: Option<f64>,
}

pub fn pattern_outcome(req: pb::RecordPatternOutcomeRequest) -> Result<PatternOutcome> {
    name("pattern_id", &req.pattern_id)?;
    optional_name("metric_name", &req.metric_name)?;
    optional_name("strategy", &req.strategy)?;
    let similarity = unit("similarity", req.similarity)?;
    Ok(PatternOutcome {
        pattern_id: req.pattern_id,
        success: req.success,
        metric: optional(req.metric_name),
        strategy: optional(req.strategy),
        similarity: (similarity > 0.0).then_some(similarity),
    })
}

pub fn strategy_share(req: pb::ShareStrategyRequest) -> Result<StrategyShare> {
    name("strategy", &req.strategy)?;
    name("metric", &req.metric)?;
    text("condition", &req.condition, MAX_VALUE_LEN)?;
    Ok(StrategyShare {
        value_before: unit("value_before", req.value_before)?,
        delta: within("delta", req.delta, -1.0, 1.0)?,
        context: context("context", &req.context)?,
        recent: recent("recent", &req.recent)?,
        strategy: req.strategy,
        metric: req.metric,
        successful: req.successful,
        condition: req.condition,
    })
}

pub fn strategies_query(req: pb::GetStrategiesRequest) -> Result<StrategyAsk> {
    name("metric", &req.metric)?;
    Ok(StrategyAsk {
        // Who asks comes from the certificate, not the request.
        caller: None,
        current_value: Some(unit("current_value", req.current_value)?),
        budget: budget(req.budget)?,
        context: context("context", &req.context)?,
        limit: validate::limit("limit", req.limit, 10, 100)?,
        recent: recent("recent", &req.recent)?,
        explore_seed: req.explore.then_some(req.explore_seed),
        metric: req.metric,
    })
}

/// The validated parts of a GetOptimalCombination request.
pub struct CombinationQuery {
    pub metrics: Metrics,
    pub context: Attributes,
    pub budget: Option<f64>,
    pub costs: BTreeMap<String, f64>,
    pub recent: Vec<RecentApplication>,
}

pub fn combination_query(req: &pb::GetOptimalCombinationRequest) -> Result<CombinationQuery> {
    map_len("costs", req.costs.len(), false)?;
    let costs = req
        .costs
        .iter()
        .map(|(strategy, cost)| {
            name("costs key", strategy)?;
            let cost = within(&format!("costs[{strategy}]"), *cost, 0.0, 1e6)?;
            if cost <= 0.0 {
                return Err(Error::invalid(
                    format!("costs[{strategy}]"),
                    "must be positive",
                ));
            }
            Ok((strategy.clone(), cost))
        })
        .collect::<Result<_>>()?;
    Ok(CombinationQuery {
        metrics: metrics("metrics", &req.metrics, true)?,
        context: context("context", &req.context)?,
        budget: budget(req.budget)?,
        costs,
        recent: recent("recent", &req.recent)?,
    })
}

pub fn insight_draft(insight: Option<pb::Insight>) -> Result<InsightDraft> {
    let Some(i) = insight else {
        return Err(Error::invalid("insight", "is required"));
    };
    let field = |f: &str| format!("insight.{f}");
    if !i.id.is_empty() {
        return Err(Error::invalid(
            field("id"),
            "is assigned by the hub; leave it empty",
        ));
    }
    if i.sequence != 0 {
        return Err(Error::invalid(
            field("sequence"),
            "is assigned by the hub; leave it 0",
        ));
    }
    if i.created_at.is_some() {
        return Err(Error::invalid(
            field("created_at"),
            "is assigned by the hub; leave it unset",
        ));
    }
    let category = required_enum(&field("category"), i.category, parse_category)?;
    required_text(&field("title"), &i.title, MAX_TITLE_LEN)?;
    required_text(&field("insight"), &i.insight, MAX_TEXT_LEN)?;
    text(&field("recommendation"), &i.recommendation, MAX_TEXT_LEN)?;
    let evidence = match &i.evidence {
        None => InsightEvidence::default(),
        Some(e) => InsightEvidence {
            data_points: e.data_points,
            correlation_strength: within(
                &field("evidence.correlation_strength"),
                e.correlation_strength,
                -1.0,
                1.0,
            )?,
            instances_covered: e.instances_covered,
            improvement_observed: within(
                &field("evidence.improvement_observed"),
                e.improvement_observed,
                -1.0,
                1.0,
            )?,
        },
    };
    list_len(&field("applicable_contexts"), i.applicable_contexts.len())?;
    let applicable_contexts = i
        .applicable_contexts
        .iter()
        .enumerate()
        .map(|(n, c)| {
            name(
                &field(&format!("applicable_contexts[{n}].context")),
                &c.context,
            )?;
            text(
                &field(&format!("applicable_contexts[{n}].threshold")),
                &c.threshold,
                MAX_VALUE_LEN,
            )?;
            Ok(ApplicableContext {
                context: c.context.clone(),
                threshold: c.threshold.clone(),
            })
        })
        .collect::<Result<_>>()?;
    list_len(&field("alternatives"), i.alternatives.len())?;
    let alternatives = i
        .alternatives
        .iter()
        .enumerate()
        .map(|(n, a)| {
            required_text(
                &field(&format!("alternatives[{n}].insight")),
                &a.insight,
                MAX_TEXT_LEN,
            )?;
            Ok(InsightAlternative {
                insight: a.insight.clone(),
                effectiveness: unit(
                    &field(&format!("alternatives[{n}].effectiveness")),
                    a.effectiveness,
                )?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(InsightDraft {
        category,
        effectiveness: unit(&field("effectiveness"), i.effectiveness)?,
        risk: unit(&field("risk"), i.risk)?,
        valid_until: i
            .valid_until
            .as_ref()
            .map(|t| millis(&field("valid_until"), t))
            .transpose()?,
        evidence,
        applicable_contexts,
        alternatives,
        title: i.title,
        insight: i.insight,
        recommendation: i.recommendation,
    })
}

pub fn failure_report(req: pb::ShareFailureRequest) -> Result<FailureReport> {
    let failure_type = required_enum("failure_type", req.failure_type, parse_failure_type)?;
    required_text("trigger", &req.trigger, MAX_TEXT_LEN)?;
    let Some(ctx) = req.context else {
        return Err(Error::invalid(
            "context",
            "is required (context.metric at least)",
        ));
    };
    name("context.metric", &ctx.metric)?;
    optional_name("context.strategy", &ctx.strategy)?;
    list_len("recovery", req.recovery.len())?;
    let recovery: Vec<RecoveryAttempt> = req
        .recovery
        .iter()
        .enumerate()
        .map(|(n, r)| {
            name(&format!("recovery[{n}].method"), &r.method)?;
            Ok(RecoveryAttempt {
                method: r.method.clone(),
                succeeded: r.succeeded,
                cycles_to_recover: cycles(
                    &format!("recovery[{n}].cycles_to_recover"),
                    r.cycles_to_recover,
                )?,
            })
        })
        .collect::<Result<_>>()?;
    list_len("prevention", req.prevention.len())?;
    for (n, advice) in req.prevention.iter().enumerate() {
        required_text(&format!("prevention[{n}]"), advice, MAX_TEXT_LEN)?;
    }
    let preceded_by = preceding(&recent("recent", &req.recent)?);
    let magnitude = unit("magnitude", req.magnitude)?;
    if req.follow_up && recovery.is_empty() {
        return Err(Error::invalid(
            "recovery",
            "a follow-up reports how a recovery went: at least one attempt",
        ));
    }
    Ok(FailureReport {
        follow_up: req.follow_up,
        preceded_by,
        magnitude: (magnitude > 0.0).then_some(magnitude),
        failure_type,
        trigger: req.trigger,
        metric: ctx.metric,
        strategy: ctx.strategy,
        recovery,
        prevention: req.prevention,
    })
}

/// The validated parts of a CheckAction request.
pub struct ActionQuery {
    pub metrics: Metrics,
    pub recent: Vec<RecentApplication>,
    pub context: Attributes,
}

pub fn action_check(req: &pb::CheckActionRequest) -> Result<ActionQuery> {
    name("strategy", &req.strategy)?;
    name("metric", &req.metric)?;
    Ok(ActionQuery {
        metrics: metrics("metrics", &req.metrics, false)?,
        recent: recent("recent", &req.recent)?,
        context: context("context", &req.context)?,
    })
}

fn parameter(field: &str, value: &Value) -> Result<ParamValue> {
    match &value.kind {
        Some(Kind::NumberValue(n)) => Ok(ParamValue::Number(finite(field, *n)?)),
        Some(Kind::StringValue(s)) => {
            text(field, s, MAX_VALUE_LEN)?;
            Ok(ParamValue::Text(s.clone()))
        }
        Some(Kind::BoolValue(b)) => Ok(ParamValue::Flag(*b)),
        Some(Kind::NullValue(_)) | None => Err(Error::invalid(
            field,
            "must be a number, string or boolean, got null",
        )),
        Some(Kind::ListValue(_)) | Some(Kind::StructValue(_)) => Err(Error::invalid(
            field,
            "must be a number, string or boolean, got a list or object",
        )),
    }
}

pub(crate) fn parameters_in(field: &str, entries: &BTreeMap<String, Value>) -> Result<Parameters> {
    map_len(field, entries.len(), true)?;
    entries
        .iter()
        .map(|(k, v)| {
            name(&format!("{field} key"), k)?;
            Ok((k.clone(), parameter(&format!("{field}[{k}]"), v)?))
        })
        .collect()
}

/// A configuration's alternatives, checked (`field` names the list).
pub(crate) fn alternatives_in(
    field: &str,
    alternatives: &[pb::ConfigAlternative],
) -> Result<Vec<ConfigAlternative>> {
    list_len(field, alternatives.len())?;
    alternatives
        .iter()
        .enumerate()
        .map(|(n, a)| {
            name(&format!("{field}[{n}].name"), &a.name)?;
            Ok(ConfigAlternative {
                name: a.name.clone(),
                effectiveness: unit(&format!("{field}[{n}].effectiveness"), a.effectiveness)?,
                risk: unit(&format!("{field}[{n}].risk"), a.risk)?,
            })
        })
        .collect()
}

/// A configuration's alternatives as messages.
pub(crate) fn alternatives_out(alternatives: &[ConfigAlternative]) -> Vec<pb::ConfigAlternative> {
    alternatives
        .iter()
        .map(|a| pb::ConfigAlternative {
            name: a.name.clone(),
            effectiveness: a.effectiveness,
            risk: a.risk,
        })
        .collect()
}

pub fn config_share(req: pb::ShareConfigurationRequest) -> Result<ConfigShare> {
    text("recommendation", &req.recommendation, MAX_TEXT_LEN)?;
    if req.data_points > MAX_DATA_POINTS {
        return Err(Error::invalid(
            "data_points",
            format!("must be at most {MAX_DATA_POINTS}, got {}", req.data_points),
        ));
    }
    let alternatives = alternatives_in("alternatives", &req.alternatives)?;
    Ok(ConfigShare {
        context: context("context", &req.context)?,
        parameters: parameters_in("parameters", &req.parameters)?,
        effectiveness: unit("effectiveness", req.effectiveness)?,
        data_points: req.data_points.max(1),
        recommendation: req.recommendation,
        alternatives,
    })
}

pub fn audit_query(req: pb::QueryAuditRequest, now: UnixMillis) -> Result<AuditQuery> {
    optional_name("caller", &req.caller)?;
    text("rpc", &req.rpc, MAX_VALUE_LEN)?;
    let from = req
        .since
        .as_ref()
        .map(|t| millis("since", t))
        .transpose()?
        .unwrap_or(i64::MIN);
    let until = req
        .until
        .as_ref()
        .map(|t| millis("until", t))
        .transpose()?
        .unwrap_or(now.saturating_add(1));
    Ok(AuditQuery {
        from,
        until,
        caller: optional(req.caller),
        rpc: optional(req.rpc),
        hub_calls_only: req.hub_calls_only,
        role: match req.role.as_str() {
            "" => None,
            role @ ("instance" | "operator" | "hub" | "unknown") => Some(role.to_string()),
            other => {
                return Err(Error::invalid(
                    "role",
                    format!(
                        "must be \"instance\", \"operator\", \"hub\" or \"unknown\", got {}",
                        validate::preview(other)
                    ),
                ));
            }
        },
        limit: validate::limit("limit", req.limit, 100, 10_000)?,
    })
}

pub fn audit_entry(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        sequence: e.sequence,
        at: Some(timestamp(e.at)),
        caller: e.caller.clone(),
        role: e.role.clone(),
        rpc: e.rpc.clone(),
        code: e.code,
        request_bytes: e.request_bytes,
        count: e.count,
        peer: e.peer.clone(),
        certificate_serial: e.serial.clone(),
        path: e.path.clone(),
    }
}

pub fn bootstrap_context(req: &pb::BootstrapRequest) -> Result<Attributes> {
    context("context", &req.context)
}

/// Echo's payload: at most 4096 bytes.
pub fn echo_payload(req: pb::EchoRequest) -> Result<Vec<u8>> {
    validate::max_bytes("payload", req.payload.len(), 4096)?;
    Ok(req.payload)
}

/// The validated parts of a ListInstances request.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancesQuery {
    pub region: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

pub fn instances_query(req: pb::ListInstancesRequest) -> Result<InstancesQuery> {
    optional_name("region", &req.region)?;
    optional_name("after_instance_id", &req.after_instance_id)?;
    Ok(InstancesQuery {
        limit: validate::limit("limit", req.limit, 100, 1000)?,
        region: optional(req.region),
        after: optional(req.after_instance_id),
    })
}

/// The validated parts of a GetInsights request.
#[derive(Debug, Clone, PartialEq)]
pub struct InsightsQuery {
    pub category: Option<InsightCategory>,
    pub context: Option<String>,
    pub limit: usize,
}

pub fn insights_query(req: pb::GetInsightsRequest) -> Result<InsightsQuery> {
    let category = category_filter(req.category)?;
    optional_name("context", &req.context)?;
    Ok(InsightsQuery {
        category,
        limit: validate::limit("limit", req.limit, 10, 1000)?,
        context: optional(req.context),
    })
}

/// The validated parts of a SubscribeInsights request.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionQuery {
    pub after_sequence: u64,
    pub category: Option<InsightCategory>,
}

pub fn subscription(req: &pb::SubscribeInsightsRequest) -> Result<SubscriptionQuery> {
    Ok(SubscriptionQuery {
        after_sequence: req.after_sequence,
        category: category_filter(req.category)?,
    })
}

/// The validated parts of a GetFailures request.
#[derive(Debug, Clone, PartialEq)]
pub struct FailuresQuery {
    pub failure_type: Option<FailureType>,
    pub metric: Option<String>,
    pub strategy: Option<String>,
    pub include_resolved: bool,
    pub limit: usize,
}

pub fn failures_query(req: pb::GetFailuresRequest) -> Result<FailuresQuery> {
    let failure_type = failure_type_filter(req.failure_type)?;
    optional_name("metric", &req.metric)?;
    optional_name("strategy", &req.strategy)?;
    Ok(FailuresQuery {
        failure_type,
        limit: validate::limit("limit", req.limit, 10, 1000)?,
        include_resolved: req.include_resolved,
        metric: optional(req.metric),
        strategy: optional(req.strategy),
    })
}

// ---------------------------------------------------------------------------
// Outbound
// ---------------------------------------------------------------------------

pub fn instance(i: &Instance) -> pb::Instance {
    pb::Instance {
        instance_id: i.instance_id.clone(),
        region: i.region.clone(),
        context: i.context.clone(),
        capabilities: i.capabilities.clone(),
        registered_at: Some(timestamp(i.registered_at)),
        last_seen: Some(timestamp(i.last_seen)),
        shared_records: i.shared_records,
    }
}

pub fn instance_page(page: InstancePage) -> pb::ListInstancesResponse {
    pb::ListInstancesResponse {
        instances: page.instances.iter().map(|i| instance(i)).collect(),
        instances_by_region: page.by_region,
        total: page.total,
        next_after_instance_id: page.next_after.unwrap_or_default(),
    }
}

pub(crate) fn metric_states(m: &Metrics) -> BTreeMap<String, pb::MetricState> {
    m.iter()
        .map(|(k, s)| {
            (
                k.clone(),
                pb::MetricState {
                    value: s.value,
                    stuck: s.stuck,
                },
            )
        })
        .collect()
}

fn recovery(r: &RecoveryEstimate) -> pb::RecoveryStrategy {
    pb::RecoveryStrategy {
        strategy: r.strategy.clone(),
        suggested: r.suggested,
        successes: r.successes,
        failures: r.failures,
        success_rate: r.success_rate,
    }
}

/// A pattern with its own recovery ranking.
pub fn pattern(p: &Pattern) -> pb::Pattern {
    pattern_with(p, &rank_recoveries(p, None, &[]))
}

fn pattern_with(p: &Pattern, recoveries: &[RecoveryEstimate]) -> pb::Pattern {
    pb::Pattern {
        id: p.id.clone(),
        signature: p.signature.clone(),
        metrics: metric_states(&p.metrics),
        cycles_until_plateau: p.cycles_until_plateau.mean,
        recovery_strategies: recoveries.iter().map(recovery).collect(),
        effectiveness: Some(pb::PatternEffectiveness {
            success: p.successes,
            failure: p.failures,
        }),
        environment: p.environment.clone(),
        instances: p.instances.iter().cloned().collect(),
        instance_count: p.instances.len() as u32,
        first_seen: Some(timestamp(p.first_seen)),
        last_seen: Some(timestamp(p.last_seen)),
        frequency: p.frequency,
    }
}

pub fn pattern_match(m: &RankedMatch) -> pb::PatternMatch {
    pb::PatternMatch {
        pattern: Some(pattern_with(&m.found.pattern, &m.recoveries)),
        exact: m.found.exact,
        similarity: m.found.similarity,
        confidence: m.found.confidence,
    }
}

fn running_stats(s: &RunningStats) -> pb::RunningStats {
    pb::RunningStats {
        count: s.count,
        mean: s.mean,
        min: s.min,
        max: s.max,
        std_dev: s.std_dev(),
    }
}

fn failure_mode(condition: &str, stats: &crate::domain::model::ConditionStats) -> pb::FailureMode {
    pb::FailureMode {
        condition: condition.to_string(),
        applications: stats.applications,
        failures: stats.failures,
        failure_rate: stats.failure_rate(),
    }
}

pub fn strategy_record(r: &StrategyRecord) -> pb::StrategyRecord {
    pb::StrategyRecord {
        strategy: r.strategy.clone(),
        metric: r.metric.clone(),
        context_key: r.context_key.clone(),
        applications: r.applications,
        successes: r.successes,
        success_rate: r.success_rate(),
        improvement: Some(running_stats(&r.improvement)),
        regression: Some(running_stats(&r.regression)),
        failure_modes: r
            .ranked_failure_modes()
            .into_iter()
            .map(|(c, s)| failure_mode(c, s))
            .collect(),
        instances: r
            .instances
            .iter()
            .map(|(id, share)| (id.clone(), share.applications))
            .collect(),
        first_seen: Some(timestamp(r.first_seen)),
        last_updated: Some(timestamp(r.last_updated)),
    }
}

pub fn recommendation(r: &Recommendation) -> pb::StrategyRecommendation {
    pb::StrategyRecommendation {
        strategy: r.strategy.clone(),
        confidence: r.confidence,
        expected_delta: r.expected_delta,
        success_rate: r.success_rate,
        applications: r.applications,
        improvement: Some(running_stats(&r.improvement)),
        failure_modes: r
            .failure_modes
            .iter()
            .map(|(c, s)| failure_mode(c, s))
            .collect(),
        scope: match r.scope {
            Scope::Context => pb::EvidenceScope::Context,
            Scope::Fleet => pb::EvidenceScope::Fleet,
        } as i32,
        metric: r.metric.clone(),
        lower_bound: r.lower_bound,
        band_low: r.band.0,
        band_high: r.band.1,
        optimal_conditions: if r.band_known {
            format!(
                "use when {} in ({:.2}, {:.2})",
                r.metric, r.band.0, r.band.1
            )
        } else {
            String::new()
        },
        max_consecutive_uses: r.max_consecutive_uses,
        cooldown_cycles: r.cooldown_cycles,
        evidence: r.evidence,
        failure_risk: r.failure_risk,
        score: r.score,
        origin_regions: r.origin_regions,
    }
}

pub fn combination(
    c: &Combination,
    conflicts: &[(String, String)],
) -> pb::GetOptimalCombinationResponse {
    pb::GetOptimalCombinationResponse {
        steps: c
            .steps
            .iter()
            .map(|(s, cost)| pb::CombinationStep {
                strategy: s.strategy.clone(),
                metric: s.metric.clone(),
                expected_delta: s.expected_delta,
                confidence: s.confidence,
                cost: *cost,
            })
            .collect(),
        strategies: c.steps.iter().map(|s| s.0.strategy.clone()).collect(),
        expected_total_delta: c.expected_total_delta,
        confidence: c.confidence,
        conflicts: conflicts.iter().map(|(a, b)| format!("{a}+{b}")).collect(),
        total_cost: c.total_cost,
    }
}

fn category(c: InsightCategory) -> pb::InsightCategory {
    match c {
        InsightCategory::Configuration => pb::InsightCategory::Configuration,
        InsightCategory::Timing => pb::InsightCategory::Timing,
        InsightCategory::Sequence => pb::InsightCategory::Sequence,
        InsightCategory::Fallback => pb::InsightCategory::Fallback,
        InsightCategory::Context => pb::InsightCategory::Context,
        InsightCategory::Prediction => pb::InsightCategory::Prediction,
        InsightCategory::Anomaly => pb::InsightCategory::Anomaly,
    }
}

pub fn insight(i: &Insight) -> pb::Insight {
    let d = &i.draft;
    pb::Insight {
        id: i.id.clone(),
        sequence: i.sequence,
        category: category(d.category) as i32,
        title: d.title.clone(),
        insight: d.insight.clone(),
        evidence: Some(pb::InsightEvidence {
            data_points: d.evidence.data_points,
            correlation_strength: d.evidence.correlation_strength,
            instances_covered: d.evidence.instances_covered,
            improvement_observed: d.evidence.improvement_observed,
        }),
        applicable_contexts: d
            .applicable_contexts
            .iter()
            .map(|c| pb::ApplicableContext {
                context: c.context.clone(),
                threshold: c.threshold.clone(),
            })
            .collect(),
        effectiveness: d.effectiveness,
        risk: d.risk,
        recommendation: d.recommendation.clone(),
        alternatives: d
            .alternatives
            .iter()
            .map(|a| pb::InsightAlternative {
                insight: a.insight.clone(),
                effectiveness: a.effectiveness,
            })
            .collect(),
        created_at: Some(timestamp(i.created_at)),
        valid_until: Some(timestamp(i.valid_until)),
    }
}

pub fn failure_type(t: FailureType) -> pb::FailureType {
    match t {
        FailureType::MetricReversal => pb::FailureType::MetricReversal,
        FailureType::Deadlock => pb::FailureType::Deadlock,
        FailureType::Cascade => pb::FailureType::Cascade,
        FailureType::RecoveryFail => pb::FailureType::RecoveryFail,
    }
}

pub fn failure(f: &FailurePattern) -> pb::FailurePattern {
    pb::FailurePattern {
        id: f.id.clone(),
        failure_type: failure_type(f.failure_type) as i32,
        triggers: f.triggers.clone(),
        occurrences: f.occurrences,
        context: Some(pb::FailureContext {
            metric: f.metric.clone(),
            strategy: f.strategy.clone(),
        }),
        recovery: f
            .ranked_recovery()
            .into_iter()
            .map(|(method, s)| pb::RecoveryMethod {
                method: method.to_string(),
                attempts: s.attempts,
                successes: s.successes,
                success_rate: s.success_rate(),
                mean_cycles_to_recover: s.cycles.mean,
            })
            .collect(),
        prevention: f.prevention.clone(),
        instances: f.instances.iter().cloned().collect(),
        first_seen: Some(timestamp(f.first_seen)),
        last_seen: Some(timestamp(f.last_seen)),
        preceded_by: f.preceded_by.clone(),
        mean_magnitude: f.magnitude.mean,
        instance_count: f.instances.len() as u32,
        resolved: f.resolved,
    }
}

pub fn warning(w: &Warning<Arc<FailurePattern>>) -> pb::ActionWarning {
    let mut prevention = w.failure.prevention.clone();
    if let Some(p) = &w.prerequisite {
        prevention.push(format!(
            "apply {p} within {} cycles before {} (failure rate {:.2} instead of {:.2})",
            PRECEDING_WINDOW, w.failure.strategy, w.failure_rate_with_prerequisite, w.failure_rate
        ));
    }
    pb::ActionWarning {
        failure: Some(failure(&w.failure)),
        failure_rate: w.failure_rate,
        prevention,
        message: w.message.clone(),
        prerequisite: w.prerequisite.clone().unwrap_or_default(),
        failure_rate_with_prerequisite: w.failure_rate_with_prerequisite,
    }
}

pub fn action_check_reply(check: &ActionCheck) -> pb::CheckActionResponse {
    pb::CheckActionResponse {
        safe: check.safe,
        warnings: check.warnings.iter().map(warning).collect(),
        safer_alternative: check.safer_alternative.clone().unwrap_or_default(),
    }
}

fn parameter_value(v: &ParamValue) -> Value {
    Value {
        kind: Some(match v {
            ParamValue::Number(n) => Kind::NumberValue(*n),
            ParamValue::Text(s) => Kind::StringValue(s.clone()),
            ParamValue::Flag(b) => Kind::BoolValue(*b),
        }),
    }
}

pub(crate) fn parameters_out(p: &Parameters) -> BTreeMap<String, Value> {
    p.iter()
        .map(|(k, v)| (k.clone(), parameter_value(v)))
        .collect()
}

pub fn configuration(c: &Configuration) -> pb::Configuration {
    pb::Configuration {
        id: c.id.clone(),
        context: c.context.clone(),
        context_key: c.context_key.clone(),
        parameters: parameters_out(&c.parameters),
        effectiveness: c.effectiveness,
        // Other regions' reporters too, where a bootstrap joined them.
        applicable_instances: u32::try_from(c.reporters()).unwrap_or(u32::MAX),
        based_on_data_points: c.data_points,
        recommendation: c.recommendation.clone(),
        alternatives: alternatives_out(&c.alternatives),
        validated: c.validated,
        validation_date: c.validation_date.map(timestamp),
        last_updated: Some(timestamp(c.last_updated)),
    }
}

pub fn bootstrap(b: &Bootstrap) -> pb::BootstrapConfig {
    pb::BootstrapConfig {
        parameters: parameters_out(&b.parameters),
        source: if b.configuration.is_some() {
            pb::ConfigSource::Fleet
        } else {
            pb::ConfigSource::Default
        } as i32,
        configuration: b.configuration.as_deref().map(configuration),
        proven_strategies: b.proven_strategies.iter().map(recommendation).collect(),
        alternatives: b
            .alternatives
            .iter()
            .map(|c| pb::ConfigAlternative {
                name: c.id.clone(),
                effectiveness: c.effectiveness,
                risk: c.risk(),
            })
            .collect(),
    }
}

pub fn status(s: &HubStatus) -> pb::GetStatusResponse {
    pb::GetStatusResponse {
        version: s.version.to_string(),
        started_at: Some(timestamp(s.started_at)),
        uptime_seconds: s.uptime_seconds,
        instances: s.instances,
        patterns: s.patterns,
        strategy_records: s.strategy_records,
        strategy_outcomes: s.strategy_outcomes,
        insights: s.insights,
        failures: s.failures,
        configurations: s.configurations,
        live_subscribers: s.live_subscribers,
        last_insight_sequence: s.last_insight_sequence,
        stream_catch_ups: s.stream_catch_ups,
        log_position: s.log_position,
        region: s.region.clone(),
        peers: s
            .peers
            .iter()
            .map(|(region, link)| pb::PeerLink {
                region: region.clone(),
                url: link.url.clone(),
                last_success: link.last_success.map(timestamp),
                staleness_ms: link.staleness_ms(s.now, s.started_at),
                failures_in_a_row: link.failures_in_a_row,
                last_error: link.last_error.clone(),
                batches_merged: link.batches_merged,
            })
            .collect(),
        held: s.held.clone().into_iter().collect(),
    }
}

pub fn recovery_plan(plan: &crate::domain::recovery::Plan) -> pb::RecoveryPlan {
    pb::RecoveryPlan {
        steps: plan
            .steps
            .iter()
            .map(|s| pb::RecoveryStep {
                method: s.method.clone(),
                attempts: s.attempts,
                successes: s.successes,
                success_rate: s.success_rate,
                expected_cycles: s.expected_cycles,
                give_up_after: s.give_up_after,
            })
            .collect(),
        failures: u32::try_from(plan.failures).unwrap_or(u32::MAX),
        success_rate: plan.success_rate,
        expected_cycles: plan.steps.first().map_or(0.0, |s| s.expected_cycles),
        prevention: plan.prevention.clone(),
    }
}

/// A QuarantineInstance request's instance id and reason.
pub fn quarantine_request(req: pb::QuarantineInstanceRequest) -> Result<(String, String)> {
    name("instance_id", &req.instance_id)?;
    required_text("reason", &req.reason, MAX_TEXT_LEN)?;
    Ok((req.instance_id, req.reason))
}

pub fn quarantine(q: &crate::domain::model::Quarantine) -> pb::Quarantine {
    pb::Quarantine {
        instance_id: q.instance_id.clone(),
        by: q.by.clone(),
        reason: q.reason.clone(),
        since: Some(timestamp(q.since)),
    }
}

pub fn anomaly(a: &crate::domain::anomaly::Anomaly, quarantined: bool) -> pb::Anomaly {
    use crate::domain::anomaly::AnomalyKind;
    let f = &a.finding;
    pb::Anomaly {
        id: f.id.clone(),
        kind: match f.kind {
            AnomalyKind::InconsistentReports => pb::AnomalyKind::InconsistentReports,
            AnomalyKind::StrategyShift => pb::AnomalyKind::StrategyShift,
            AnomalyKind::MetricRegression => pb::AnomalyKind::MetricRegression,
        } as i32,
        instance_id: f.instance_id.clone(),
        strategy: f.strategy.clone(),
        metric: f.metric.clone(),
        context_key: f.context_key.clone(),
        score: f.score,
        evidence: f.evidence.clone(),
        first_seen: Some(timestamp(a.first_seen)),
        last_seen: Some(timestamp(a.last_seen)),
        quarantined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(millis("t", &timestamp(ms)).unwrap(), ms);
        }
        assert!(
            millis(
                "t",
                &Timestamp {
                    seconds: 0,
                    nanos: -1
                }
            )
            .is_err()
        );
    }

    #[test]
    fn parameters_reject_nested_values() {
        let nested = Value {
            kind: Some(Kind::ListValue(prost_types::ListValue { values: vec![] })),
        };
        let err = parameter("parameters[x]", &nested).unwrap_err().to_string();
        assert!(err.starts_with("parameters[x]:"), "{err}");
        assert!(
            parameter(
                "p",
                &Value {
                    kind: Some(Kind::NumberValue(f64::NAN))
                }
            )
            .is_err()
        );
        assert_eq!(
            parameter(
                "p",
                &Value {
                    kind: Some(Kind::BoolValue(true))
                }
            )
            .unwrap(),
            ParamValue::Flag(true)
        );
    }

    #[test]
    fn request_ids_are_validated_and_the_payload_fingerprinted() {
        let share = |delta: f64, id: &str| pb::ShareStrategyRequest {
            strategy: "s".into(),
            metric: "m".into(),
            delta,
            context: BTreeMap::from([
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]),
            request_id: id.into(),
            ..Default::default()
        };
        let mut no_id = share(0.1, "");
        assert_eq!(request_tag(&mut no_id).unwrap(), None);
        let tag = |delta, id| request_tag(&mut share(delta, id)).unwrap().unwrap();
        let first = tag(0.1, "r-1");
        assert_eq!(first.id, "r-1");
        // The id itself is not part of the fingerprint; the payload is.
        assert_eq!(tag(0.1, "r-2").fingerprint, first.fingerprint);
        assert_ne!(tag(0.2, "r-1").fingerprint, first.fingerprint);
        let mut taken = share(0.1, "r-1");
        request_tag(&mut taken).unwrap();
        assert!(taken.request_id.is_empty());
        for bad in ["has space", "é", &"x".repeat(129)] {
            let err = request_tag(&mut share(0.1, bad)).unwrap_err().to_string();
            assert!(err.starts_with("request_id: "), "{err}");
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        assert!(request_tag(&mut share(0.1, &uuid)).is_ok());
    }

    #[test]
    fn unknown_enum_values_are_named() {
        let err = category_filter(99).unwrap_err().to_string();
        assert_eq!(err, "category: unknown value 99");
        assert_eq!(category_filter(0).unwrap(), None);
    }
}
