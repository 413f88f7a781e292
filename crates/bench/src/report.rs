//! A bench run's result: one flat JSON object (`--json`; the main load's
//! `rpc`, `rps`, `p50_ms`, `p99_ms` … at the top level) or a short text
//! report.

use std::fmt::Write;

use serde::Serialize;

use super::fanout::{FanoutStep, FanoutSummary};
use super::load::LoadSummary;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The measured load (absent in fan-out runs).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadSummary>,
    /// `echo` measured right before with the same settings (`--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<LoadSummary>,
    /// `rps / echo.rps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_echo: Option<f64>,
    /// The ShareStrategy load that ran alongside (`--write-concurrency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_writes: Option<LoadSummary>,
    /// The fan-out measure (the last subscriber count of a sweep).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutSummary>,
    /// The bare streaming service measured the same way (`--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_baseline: Option<FanoutSummary>,
    /// The hub's publish → last delivery p50 and p99 over the baseline's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_last_delivery_p50_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_last_delivery_p99_ratio: Option<f64>,
    /// Every subscriber count of a fan-out sweep, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fanout_steps: Vec<FanoutStep>,
    pub hub: String,
    pub connections: usize,
    pub preload_outcomes: u64,
    pub preload_patterns: u64,
    pub preload_instances: u64,
    /// Time the preloads took.
    pub preload_s: f64,
    /// What the hub held at the end (GetStatus).
    pub stored_outcomes: u64,
    pub strategy_records: u64,
    pub patterns: u64,
    pub instances: u64,
    /// The hub's resident memory after the preload and at the end (only
    /// for a hub the bench started).
    pub hub_rss_mb_before: Option<f64>,
    pub hub_rss_mb: Option<f64>,
    /// A preload sweep's measurements, step by step (the top-level figures
    /// are the last step's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<SweepStep>,
}

/// One step of a preload sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepStep {
    pub preload_outcomes: u64,
    /// Outcomes the hub held when the step's measurement began (a write
    /// workload adds its own during the step).
    pub stored_outcomes: u64,
    pub load: Option<LoadSummary>,
    pub echo: Option<LoadSummary>,
    pub ratio_to_echo: Option<f64>,
    pub background_writes: Option<LoadSummary>,
}

impl BenchReport {
    fn empty() -> Self {
        BenchReport {
            load: None,
            echo: None,
            ratio_to_echo: None,
            background_writes: None,
            fanout: None,
            fanout_baseline: None,
            fanout_last_delivery_p50_ratio: None,
            fanout_last_delivery_p99_ratio: None,
            fanout_steps: Vec::new(),
            hub: String::new(),
            connections: 0,
            preload_outcomes: 0,
            preload_patterns: 0,
            preload_instances: 0,
            preload_s: 0.0,
            stored_outcomes: 0,
            strategy_records: 0,
            patterns: 0,
            instances: 0,
            hub_rss_mb_before: None,
            hub_rss_mb: None,
            steps: Vec::new(),
        }
    }

    pub fn load(
        main: LoadSummary,
        echo: Option<LoadSummary>,
        background: Option<LoadSummary>,
    ) -> Self {
        let ratio_to_echo = echo
            .as_ref()
            .filter(|e| e.rps > 0.0)
            .map(|e| main.rps / e.rps);
        BenchReport {
            load: Some(main),
            echo,
            ratio_to_echo,
            background_writes: background,
            ..Self::empty()
        }
    }

    /// The report of a fan-out measure: its last step at the top level,
    /// every step (a sweep's) in `fanout_steps`.
    pub fn fanout(steps: Vec<FanoutStep>) -> Self {
        let last = steps.last().cloned();
        BenchReport {
            fanout: last.as_ref().map(|s| s.hub.clone()),
            fanout_baseline: last.as_ref().and_then(|s| s.baseline.clone()),
            fanout_last_delivery_p50_ratio: last.as_ref().and_then(|s| s.last_delivery_p50_ratio),
            fanout_last_delivery_p99_ratio: last.as_ref().and_then(|s| s.last_delivery_p99_ratio),
            fanout_steps: steps,
            ..Self::empty()
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, label: &str, s: &LoadSummary| {
            let errors: u64 = s.errors.values().sum();
            let _ = writeln!(
                out,
                "{label:<16} {:>10.0} req/s   p50 {:>7.3} ms   p90 {:>7.3} ms   p99 {:>7.3} ms   p99.9 {:>7.3} ms   ({} ok, {} failed, {} in flight)",
                s.rps, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.requests, errors, s.concurrency
            );
            if let (Some(offered), Some(unsent)) = (s.offered_rps, s.unsent) {
                let _ = writeln!(
                    out,
                    "{:<16}   open loop: {offered:.0} req/s offered, {unsent} not sent (cap of {} outstanding reached)",
                    "", s.concurrency
                );
            }
            for (code, n) in &s.errors {
                let _ = writeln!(out, "{:<16}   {n} × {code}", "");
            }
            if let (Some(p50), Some(p99)) = (s.error_p50_ms, s.error_p99_ms) {
                let _ = writeln!(
                    out,
                    "{:<16}   failed calls answered in p50 {p50:.3} ms, p99 {p99:.3} ms",
                    ""
                );
            }
        };
        let _ = writeln!(
            out,
            "hub {} — {} connections (one instance each), mTLS + API keys",
            self.hub, self.connections
        );
        if let Some(echo) = &self.echo {
            line(&mut out, "echo (ceiling)", echo);
        }
        if let Some(load) = &self.load {
            line(&mut out, &load.rpc, load);
        }
        if let Some(ratio) = self.ratio_to_echo {
            let _ = writeln!(out, "{:<16} {:>9.1}% of echo's req/s", "", ratio * 100.0);
        }
        if let Some(bg) = &self.background_writes {
            line(&mut out, "  + writes", bg);
        }
        for step in &self.fanout_steps {
            if let Some(bare) = &step.baseline {
                fanout_lines(&mut out, "bare streaming service (ceiling)", bare);
            }
            fanout_lines(&mut out, "hub", &step.hub);
            if let (Some(p50), Some(p99)) =
                (step.last_delivery_p50_ratio, step.last_delivery_p99_ratio)
            {
                let _ = writeln!(
                    out,
                    "  hub ÷ bare, publish → last delivery:   p50 {p50:.2}×   p99 {p99:.2}×"
                );
            }
        }
        if !self.steps.is_empty() {
            let _ = writeln!(
                out,
                "\n{:>16} {:>12} {:>10} {:>10} {:>12} {:>9}",
                "stored outcomes", "req/s", "p50 ms", "p99 ms", "echo req/s", "of echo"
            );
            for step in &self.steps {
                let Some(load) = &step.load else { continue };
                let echo = step
                    .echo
                    .as_ref()
                    .map_or("-".to_string(), |e| format!("{:.0}", e.rps));
                let ratio = step
                    .ratio_to_echo
                    .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
                let _ = writeln!(
                    out,
                    "{:>16} {:>12.0} {:>10.3} {:>10.3} {:>12} {:>9}",
                    step.stored_outcomes, load.rps, load.p50_ms, load.p99_ms, echo, ratio
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "stored: {} outcomes, {} strategy records, {} patterns, {} instances (preload took {:.1} s)",
            self.stored_outcomes,
            self.strategy_records,
            self.patterns,
            self.instances,
            self.preload_s
        );
        if let (Some(before), Some(after)) = (self.hub_rss_mb_before, self.hub_rss_mb) {
            let _ = writeln!(
                out,
                "hub RSS: {before:.1} MiB after preload, {after:.1} MiB at the end"
            );
        }
        out
    }
}

/// The text lines of one fan-out measure.
fn fanout_lines(out: &mut String, server: &str, f: &FanoutSummary) {
    let _ = writeln!(
        out,
        "{server}: fan-out to {} subscribers over {} connections, {} publishes of {} bytes: {} deliveries, {} missing",
        f.subscribers, f.connections, f.publishes, f.message_bytes, f.deliveries, f.missing
    );
    if f.stalled > 0 {
        let _ = writeln!(out, "  + {} stalled subscriptions (never read)", f.stalled);
    }
    let _ = writeln!(
        out,
        "  publish → each delivery:   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        f.delivery_p50_ms, f.delivery_p99_ms, f.delivery_max_ms
    );
    let _ = writeln!(
        out,
        "  publish → last delivery:   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        f.last_delivery_p50_ms, f.last_delivery_p99_ms, f.last_delivery_max_ms
    );
    let _ = writeln!(
        out,
        "  ShareInsight answered:     p50 {:.1} ms   p99 {:.1} ms;  subscriptions opened in {:.1} s",
        f.publish_ack_p50_ms, f.publish_ack_p99_ms, f.subscribe_s
    );
    let cpu = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.2} s"));
    let _ = writeln!(
        out,
        "  CPU while publishing:      server {}   receivers (this process) {}",
        cpu(f.server_cpu_s),
        cpu(f.receivers_cpu_s)
    );
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::load::new_histogram;

    #[test]
    fn json_has_the_main_figures_at_the_top_level() {
        let mut h = new_histogram();
        h.record(1500).unwrap();
        let main = LoadSummary::from_histogram(
            "share-strategy",
            &h,
            BTreeMap::new(),
            64,
            Duration::from_secs(1),
        );
        let echo = LoadSummary::from_histogram(
            "echo",
            &h,
            BTreeMap::new(),
            64,
            Duration::from_millis(500),
        );
        let report = BenchReport::load(main, Some(echo), None);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for field in ["rpc", "rps", "p50_ms", "p99_ms"] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(json["rpc"], "share-strategy");
        assert_eq!(json["ratio_to_echo"], 0.5);
        assert!(report.text().contains("50.0% of echo"));
    }
}
