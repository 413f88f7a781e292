//! What crosses regions, as messages and back: digest entries (a subject's
//! statistics, or an aggregate's marker) and whole records (failures,
//! patterns, configurations).
//! Whatever a peer sends is checked as any input is, and an error names
//! the field ("batches[0].records[2].failure.metric").

use std::collections::BTreeMap;

use super::convert;
use crate::domain::digest::{Stats, Subject, Versioned};
use crate::domain::knowledge::{
    ConfigKnowledge, FailureKnowledge, Knowledge, PatternKnowledge, Record,
};
use crate::domain::matching;
use crate::domain::model::{
    Configuration, FailurePattern, MAX_PREVENTION, MAX_TRIGGERS, RecoveryMethodStats, RecoveryStat,
    STREAK_CLASSES, VALUE_BANDS, content_id,
};
use crate::domain::stats::RunningStats;
use crate::error::{Error, Result};
use crate::pb;
use crate::validate;

/// The longest context key a peer may send (the key of attributes within
/// the limits an instance's context is held to).
const MAX_CONTEXT_KEY: usize = 8 * 1024;

/// An entry as a message (`None` for subjects that do not cross).
pub fn entry(subject: &Subject, entry: &Versioned) -> Option<pb::DigestEntry> {
    let mut message = pb::DigestEntry {
        version: entry.version,
        stats: Some(stats(&entry.stats)),
        ..Default::default()
    };
    match subject.clone() {
        Subject::Strategy { .. } => message.strategy = strategy_subject(subject),
        Subject::Aggregate {
            metric,
            strategy,
            context_key,
        } => {
            message.aggregate = Some(pb::AggregateSubject {
                metric,
                strategy,
                context_key,
            })
        }
        Subject::Streak {
            metric,
            strategy,
            context_key,
            class,
        } => {
            message.streak = Some(pb::StreakSubject {
                metric,
                strategy,
                context_key,
                class: u32::from(class),
            })
        }
        Subject::Preceded {
            metric,
            strategy,
            context_key,
            before,
        } => {
            message.preceded = Some(pb::PrecededSubject {
                metric,
                strategy,
                context_key,
                before,
            })
        }
        Subject::Usage { strategy, before } => {
            message.usage = Some(pb::UsageSubject { strategy, before })
        }
        Subject::Recovery { .. } => return None,
    }
    Some(message)
}

/// A strategy subject as a message (`None` for any other subject).
pub fn strategy_subject(subject: &Subject) -> Option<pb::StrategySubject> {
    match subject {
        Subject::Strategy {
            metric,
            strategy,
            context_key,
            band,
            day,
        } => Some(pb::StrategySubject {
            metric: metric.clone(),
            strategy: strategy.clone(),
            context_key: context_key.clone(),
            band: u32::from(*band),
            day: *day,
        }),
        _ => None,
    }
}

pub fn stats(stats: &Stats) -> pb::DigestStats {
    pb::DigestStats {
        count: stats.count,
        successes: stats.successes,
        gain_sum: stats.gain_sum,
        gain_sum_sq: stats.gain_sum_sq,
        loss_sum: stats.loss_sum,
        loss_sum_sq: stats.loss_sum_sq,
    }
}

/// The metric, strategy and context key an aggregate part names, checked.
fn aggregate_names(
    field: &dyn Fn(&str) -> String,
    part: &str,
    metric: &str,
    strategy: &str,
    context_key: &str,
) -> Result<()> {
    validate::name(&field(&format!("{part}.metric")), metric)?;
    validate::name(&field(&format!("{part}.strategy")), strategy)?;
    validate::text(
        &field(&format!("{part}.context_key")),
        context_key,
        MAX_CONTEXT_KEY,
    )
}

/// A peer's entry, checked; `field` names its fields.
pub fn entry_from(
    message: pb::DigestEntry,
    field: &dyn Fn(&str) -> String,
) -> Result<(Subject, Versioned)> {
    let set = [
        message.strategy.is_some(),
        message.aggregate.is_some(),
        message.streak.is_some(),
        message.preceded.is_some(),
        message.usage.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    if set != 1 {
        return Err(Error::invalid(
            field("strategy"),
            format!(
                "exactly one of strategy, aggregate, streak, preceded and usage must be set \
                 (got {set})"
            ),
        ));
    }
    let versioned = |stats| Versioned {
        version: message.version,
        stats,
    };
    if let Some(m) = message.aggregate {
        aggregate_names(field, "aggregate", &m.metric, &m.strategy, &m.context_key)?;
        let subject = Subject::Aggregate {
            metric: m.metric,
            strategy: m.strategy,
            context_key: m.context_key,
        };
        // A marker's statistics are empty.
        return Ok((subject, versioned(Stats::default())));
    }
    let stats = stats_from(message.stats.unwrap_or_default(), field)?;
    let subject = if let Some(m) = message.strategy {
        aggregate_names(field, "strategy", &m.metric, &m.strategy, &m.context_key)?;
        let band = u8::try_from(m.band)
            .ok()
            .filter(|b| usize::from(*b) < VALUE_BANDS)
            .ok_or_else(|| {
                Error::invalid(
                    field("strategy.band"),
                    format!("must be below {VALUE_BANDS}, got {}", m.band),
                )
            })?;
        Subject::Strategy {
            metric: m.metric,
            strategy: m.strategy,
            context_key: m.context_key,
            band,
            day: m.day,
        }
    } else if let Some(m) = message.streak {
        aggregate_names(field, "streak", &m.metric, &m.strategy, &m.context_key)?;
        let class = u8::try_from(m.class)
            .ok()
            .filter(|c| usize::from(*c) < STREAK_CLASSES)
            .ok_or_else(|| {
                Error::invalid(
                    field("streak.class"),
                    format!("must be below {STREAK_CLASSES}, got {}", m.class),
                )
            })?;
        Subject::Streak {
            metric: m.metric,
            strategy: m.strategy,
            context_key: m.context_key,
            class,
        }
    } else if let Some(m) = message.preceded {
        aggregate_names(field, "preceded", &m.metric, &m.strategy, &m.context_key)?;
        validate::name(&field("preceded.before"), &m.before)?;
        Subject::Preceded {
            metric: m.metric,
            strategy: m.strategy,
            context_key: m.context_key,
            before: m.before,
        }
    } else if let Some(m) = message.usage {
        validate::name(&field("usage.strategy"), &m.strategy)?;
        validate::optional_name(&field("usage.before"), &m.before)?;
        Subject::Usage {
            strategy: m.strategy,
            before: m.before,
        }
    } else {
        unreachable!("exactly one subject is set")
    };
    Ok((subject, versioned(stats)))
}

fn stats_from(stats: pb::DigestStats, field: &dyn Fn(&str) -> String) -> Result<Stats> {
    if stats.successes > stats.count {
        return Err(Error::invalid(
            field("stats.successes"),
            format!("exceeds count ({} > {})", stats.successes, stats.count),
        ));
    }
    Ok(Stats {
        count: stats.count,
        successes: stats.successes,
        gain_sum: validate::finite(&field("stats.gain_sum"), stats.gain_sum)?,
        gain_sum_sq: validate::finite(&field("stats.gain_sum_sq"), stats.gain_sum_sq)?,
        loss_sum: validate::finite(&field("stats.loss_sum"), stats.loss_sum)?,
        loss_sum_sq: validate::finite(&field("stats.loss_sum_sq"), stats.loss_sum_sq)?,
    })
}

/// A record as a message.
pub fn record(id: &str, record: &Record) -> pb::ExchangedRecord {
    let mut message = pb::ExchangedRecord {
        id: id.to_string(),
        version: record.version,
        ..Default::default()
    };
    match &record.knowledge {
        Some(Knowledge::Failure(f)) => message.failure = Some(failure(f)),
        Some(Knowledge::Pattern(p)) => message.pattern = Some(pattern(p)),
        Some(Knowledge::Configuration(c)) => message.configuration = Some(configuration(c)),
        None => {}
    }
    message
}

fn recovery_stats(by: &BTreeMap<String, RecoveryStat>) -> Vec<pb::ExchangedRecoveryStat> {
    by.iter()
        .map(|(strategy, s)| pb::ExchangedRecoveryStat {
            strategy: strategy.clone(),
            suggested: s.suggested,
            successes: s.successes,
            failures: s.failures,
        })
        .collect()
}

fn pattern(p: &PatternKnowledge) -> pb::ExchangedPattern {
    pb::ExchangedPattern {
        signature: p.signature.clone(),
        metrics: convert::metric_states(&p.metrics).into_iter().collect(),
        environment: p.environment.clone().into_iter().collect(),
        cycles_until_plateau: Some(running(&p.cycles_until_plateau)),
        recovery: recovery_stats(&p.recovery),
        recovery_by_metric: p
            .recovery_by_metric
            .iter()
            .map(|(metric, by)| {
                (
                    metric.clone(),
                    pb::ExchangedRecoveryStats {
                        strategies: recovery_stats(by),
                    },
                )
            })
            .collect(),
        successes: p.successes,
        failures: p.failures,
        frequency: p.frequency,
        reporters: p.reporters,
        first_seen: Some(convert::timestamp(p.first_seen)),
        last_seen: Some(convert::timestamp(p.last_seen)),
    }
}

fn configuration(c: &ConfigKnowledge) -> pb::ExchangedConfiguration {
    pb::ExchangedConfiguration {
        context: c.context.clone().into_iter().collect(),
        parameters: convert::parameters_out(&c.parameters).into_iter().collect(),
        effectiveness: c.effectiveness,
        shared_effectiveness: Some(running(&c.shared_effectiveness)),
        data_points: c.data_points,
        reporters: c.reporters,
        recommendation: c.recommendation.clone(),
        alternatives: convert::alternatives_out(&c.alternatives),
        first_seen: Some(convert::timestamp(c.first_seen)),
        last_updated: Some(convert::timestamp(c.last_updated)),
    }
}

fn failure(f: &FailureKnowledge) -> pb::ExchangedFailure {
    pb::ExchangedFailure {
        failure_type: convert::failure_type(f.failure_type) as i32,
        metric: f.metric.clone(),
        strategy: f.strategy.clone(),
        triggers: f.triggers.clone(),
        occurrences: f.occurrences,
        recovery: f
            .recovery
            .iter()
            .map(|(method, s)| pb::ExchangedRecovery {
                method: method.clone(),
                attempts: s.attempts,
                successes: s.successes,
                cycles: Some(running(&s.cycles)),
            })
            .collect(),
        prevention: f.prevention.clone(),
        preceded_by: f.preceded_by.clone().into_iter().collect(),
        magnitude: Some(running(&f.magnitude)),
        resolved: f.resolved,
        first_seen: Some(convert::timestamp(f.first_seen)),
        last_seen: Some(convert::timestamp(f.last_seen)),
    }
}

fn running(s: &RunningStats) -> pb::ExchangedStats {
    pb::ExchangedStats {
        count: s.count,
        mean: s.mean,
        m2: s.m2,
        min: s.min,
        max: s.max,
    }
}

fn running_from(s: Option<pb::ExchangedStats>, field: &str) -> Result<RunningStats> {
    let s = s.unwrap_or_default();
    let at = |name: &str| format!("{field}.{name}");
    let stats = RunningStats {
        count: s.count,
        mean: validate::finite(&at("mean"), s.mean)?,
        m2: validate::finite(&at("m2"), s.m2)?,
        min: validate::finite(&at("min"), s.min)?,
        max: validate::finite(&at("max"), s.max)?,
    };
    if stats.m2 < 0.0 {
        return Err(Error::invalid(at("m2"), "must not be negative"));
    }
    Ok(stats)
}

/// A peer's record, checked; `field` names its fields.
pub fn record_from(
    message: pb::ExchangedRecord,
    field: &dyn Fn(&str) -> String,
) -> Result<(String, Record)> {
    validate::name(&field("id"), &message.id)?;
    let set = [
        message.failure.is_some(),
        message.pattern.is_some(),
        message.configuration.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    if set > 1 {
        return Err(Error::invalid(
            field("failure"),
            format!("at most one of failure, pattern and configuration may be set (got {set})"),
        ));
    }
    // The id is the content's: a peer cannot file knowledge of one record
    // under another's id.
    let must_be = |id: String, what: &str| {
        if id == message.id {
            Ok(())
        } else {
            Err(Error::invalid(
                field("id"),
                format!("is not the {what}'s ({id})"),
            ))
        }
    };
    let knowledge = if let Some(f) = message.failure {
        let f = failure_from(f, &|name| field(&format!("failure.{name}")))?;
        must_be(
            FailurePattern::id_for(f.failure_type, &f.metric, &f.strategy),
            "failure",
        )?;
        Some(Knowledge::Failure(f))
    } else if let Some(p) = message.pattern {
        let p = pattern_from(p, &|name| field(&format!("pattern.{name}")))?;
        must_be(content_id("pattern", &p.signature), "pattern")?;
        Some(Knowledge::Pattern(p))
    } else if let Some(c) = message.configuration {
        let c = configuration_from(c, &|name| field(&format!("configuration.{name}")))?;
        must_be(
            Configuration::id_for(&c.context, &c.parameters),
            "configuration",
        )?;
        Some(Knowledge::Configuration(c))
    } else {
        None
    };
    Ok((
        message.id,
        Record {
            version: message.version,
            knowledge,
        },
    ))
}

fn failure_from(
    f: pb::ExchangedFailure,
    field: &dyn Fn(&str) -> String,
) -> Result<FailureKnowledge> {
    let failure_type = convert::required_failure_type(&field("failure_type"), f.failure_type)?;
    validate::name(&field("metric"), &f.metric)?;
    validate::optional_name(&field("strategy"), &f.strategy)?;
    if f.triggers.len() > MAX_TRIGGERS {
        return Err(Error::invalid(
            field("triggers"),
            format!("at most {MAX_TRIGGERS}, got {}", f.triggers.len()),
        ));
    }
    for (i, trigger) in f.triggers.iter().enumerate() {
        validate::required_text(
            &field(&format!("triggers[{i}]")),
            trigger,
            validate::MAX_TEXT_LEN,
        )?;
    }
    if f.prevention.len() > MAX_PREVENTION {
        return Err(Error::invalid(
            field("prevention"),
            format!("at most {MAX_PREVENTION}, got {}", f.prevention.len()),
        ));
    }
    for (i, advice) in f.prevention.iter().enumerate() {
        validate::required_text(
            &field(&format!("prevention[{i}]")),
            advice,
            validate::MAX_TEXT_LEN,
        )?;
    }
    let mut recovery = BTreeMap::new();
    for (i, r) in f.recovery.into_iter().enumerate() {
        let at = |name: &str| field(&format!("recovery[{i}].{name}"));
        validate::name(&at("method"), &r.method)?;
        if r.successes > r.attempts {
            return Err(Error::invalid(
                at("successes"),
                format!("exceeds attempts ({} > {})", r.successes, r.attempts),
            ));
        }
        let cycles = running_from(r.cycles, &at("cycles"))?;
        recovery.insert(
            r.method,
            RecoveryMethodStats {
                attempts: r.attempts,
                successes: r.successes,
                cycles,
            },
        );
    }
    for before in f.preceded_by.keys() {
        validate::name(&field(&format!("preceded_by[{before}]")), before)?;
    }
    let stamp = |name: &str, ts: Option<prost_types::Timestamp>| {
        let ts = ts.ok_or_else(|| Error::invalid(field(name), "is required"))?;
        convert::millis(&field(name), &ts)
    };
    Ok(FailureKnowledge {
        failure_type,
        metric: f.metric,
        strategy: f.strategy,
        triggers: f.triggers,
        occurrences: f.occurrences,
        recovery,
        prevention: f.prevention,
        preceded_by: f.preceded_by.into_iter().collect(),
        magnitude: running_from(f.magnitude, &field("magnitude"))?,
        resolved: f.resolved,
        first_seen: stamp("first_seen", f.first_seen)?,
        last_seen: stamp("last_seen", f.last_seen)?,
    })
}

fn recovery_stats_from(
    stats: Vec<pb::ExchangedRecoveryStat>,
    field: &dyn Fn(&str) -> String,
) -> Result<BTreeMap<String, RecoveryStat>> {
    let mut by = BTreeMap::new();
    for (i, s) in stats.into_iter().enumerate() {
        validate::name(&field(&format!("[{i}].strategy")), &s.strategy)?;
        by.insert(
            s.strategy,
            RecoveryStat {
                suggested: s.suggested,
                successes: s.successes,
                failures: s.failures,
            },
        );
    }
    Ok(by)
}

fn pattern_from(
    p: pb::ExchangedPattern,
    field: &dyn Fn(&str) -> String,
) -> Result<PatternKnowledge> {
    let metrics = convert::metrics(&field("metrics"), &p.metrics.into_iter().collect(), true)?;
    let environment =
        convert::context(&field("environment"), &p.environment.into_iter().collect())?;
    // The signature is the metric state's and environment's: a peer
    // cannot send one pattern's figures under another's signature.
    let signature = matching::signature(&metrics, &environment);
    if signature != p.signature {
        return Err(Error::invalid(
            field("signature"),
            format!("is not the metric state's and environment's ({signature})"),
        ));
    }
    let mut recovery_by_metric = BTreeMap::new();
    for (metric, by) in p.recovery_by_metric {
        let at = |name: &str| field(&format!("recovery_by_metric[{metric}]{name}"));
        validate::name(&at(""), &metric)?;
        let stats = recovery_stats_from(by.strategies, &|name| at(&format!(".strategies{name}")))?;
        recovery_by_metric.insert(metric, stats);
    }
    let stamp = |name: &str, ts: Option<prost_types::Timestamp>| {
        let ts = ts.ok_or_else(|| Error::invalid(field(name), "is required"))?;
        convert::millis(&field(name), &ts)
    };
    Ok(PatternKnowledge {
        signature,
        metrics,
        environment,
        cycles_until_plateau: running_from(p.cycles_until_plateau, &field("cycles_until_plateau"))?,
        recovery: recovery_stats_from(p.recovery, &|name| field(&format!("recovery{name}")))?,
        recovery_by_metric,
        successes: p.successes,
        failures: p.failures,
        frequency: p.frequency,
        reporters: p.reporters,
        first_seen: stamp("first_seen", p.first_seen)?,
        last_seen: stamp("last_seen", p.last_seen)?,
    })
}

fn configuration_from(
    c: pb::ExchangedConfiguration,
    field: &dyn Fn(&str) -> String,
) -> Result<ConfigKnowledge> {
    let context = convert::context(&field("context"), &c.context.into_iter().collect())?;
    let parameters =
        convert::parameters_in(&field("parameters"), &c.parameters.into_iter().collect())?;
    validate::text(
        &field("recommendation"),
        &c.recommendation,
        validate::MAX_TEXT_LEN,
    )?;
    let alternatives = convert::alternatives_in(&field("alternatives"), &c.alternatives)?;
    let stamp = |name: &str, ts: Option<prost_types::Timestamp>| {
        let ts = ts.ok_or_else(|| Error::invalid(field(name), "is required"))?;
        convert::millis(&field(name), &ts)
    };
    Ok(ConfigKnowledge {
        context,
        parameters,
        effectiveness: validate::unit(&field("effectiveness"), c.effectiveness)?,
        shared_effectiveness: running_from(c.shared_effectiveness, &field("shared_effectiveness"))?,
        data_points: c.data_points,
        reporters: c.reporters,
        recommendation: c.recommendation,
        alternatives,
        first_seen: stamp("first_seen", c.first_seen)?,
        last_updated: stamp("last_updated", c.last_updated)?,
    })
}
