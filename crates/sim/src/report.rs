//! The simulation's results for people (a table that puts each of the
//! seed's claims beside what was measured) and for programs (JSON).

use std::fmt::Write as _;
use std::path::Path;

use super::SimReport;
use super::measures::{Estimate, PEAK_THRESHOLD};
use super::runner::Mode;
use crate::error::{Error, Result};

fn est(e: &Estimate, digits: usize) -> String {
    if e.n < 2 {
        format!("{:.*}", digits, e.mean)
    } else {
        format!("{:.*} ± {:.*}", digits, e.mean, digits, e.ci95)
    }
}

fn opt(e: &Option<Estimate>, digits: usize, scale: f64, suffix: &str) -> String {
    match e {
        Some(e) => {
            let scaled = Estimate {
                mean: e.mean * scale,
                ci95: e.ci95 * scale,
                n: e.n,
            };
            format!("{}{suffix}", est(&scaled, digits))
        }
        None => "n/a".into(),
    }
}

/// Whether an interval lies entirely above zero, below it, or straddles it.
fn verdict(e: &Estimate, better_when_positive: bool) -> &'static str {
    let (lo, hi) = (e.mean - e.ci95, e.mean + e.ci95);
    match (lo > 0.0, hi < 0.0, better_when_positive) {
        (true, _, true) | (_, true, false) => "hub better",
        (true, _, false) | (_, true, true) => "hub WORSE",
        _ => "no clear difference",
    }
}

/// The terminal report.
pub fn table(report: &SimReport) -> String {
    let iso = &report.modes[&Mode::Isolated].summary;
    let hub = &report.modes[&Mode::Hub].summary;
    let ora = &report.modes[&Mode::Oracle].summary;
    let cmp = &report.comparison;
    let mut rows: Vec<[String; 6]> = vec![[
        "measure".into(),
        "seed claims".into(),
        "isolated".into(),
        "hub".into(),
        "oracle".into(),
        "hub vs isolated".into(),
    ]];
    let ttp_reduction = format!("{}% shorter", est(&cmp.time_to_peak_reduction_percent, 1));
    rows.push([
        format!(
            "time-to-peak (cycles to {:.0}% of max)",
            PEAK_THRESHOLD * 100.0
        ),
        "30–50% shorter with hub".into(),
        est(&iso.time_to_peak, 1),
        est(&hub.time_to_peak, 1),
        est(&ora.time_to_peak, 1),
        ttp_reduction,
    ]);
    rows.push([
        "instances reaching that peak".into(),
        "".into(),
        format!("{:.0}%", iso.reached_peak.mean * 100.0),
        format!("{:.0}%", hub.reached_peak.mean * 100.0),
        format!("{:.0}%", ora.reached_peak.mean * 100.0),
        "".into(),
    ]);
    rows.push([
        "cycles to plateau".into(),
        "200–300 → 100–150".into(),
        est(&iso.cycles_to_plateau, 1),
        est(&hub.cycles_to_plateau, 1),
        est(&ora.cycles_to_plateau, 1),
        format!(
            "{}% shorter",
            est(&cmp.cycles_to_plateau_reduction_percent, 1)
        ),
    ]);
    rows.push([
        "peak, % of theoretical max".into(),
        "85–90% → 92–96%".into(),
        est(&iso.peak_percent, 1),
        est(&hub.peak_percent, 1),
        est(&ora.peak_percent, 1),
        "".into(),
    ]);
    rows.push([
        "failures (knock-backs) per instance".into(),
        "".into(),
        est(&iso.failures, 2),
        est(&hub.failures, 2),
        est(&ora.failures, 2),
        "".into(),
    ]);
    rows.push([
        "failed applications per instance".into(),
        "".into(),
        est(&iso.failed_applications, 1),
        est(&hub.failed_applications, 1),
        est(&ora.failed_applications, 1),
        "".into(),
    ]);
    rows.push([
        "applications before a predicted plateau".into(),
        "".into(),
        "".into(),
        est(&hub.early_applications, 1),
        "".into(),
        "".into(),
    ]);
    rows.push([
        "cycles to recover from a failure".into(),
        "2–3 with hub".into(),
        opt(&iso.cycles_to_recover, 1, 1.0, ""),
        opt(&hub.cycles_to_recover, 1, 1.0, ""),
        opt(&ora.cycles_to_recover, 1, 1.0, ""),
        "".into(),
    ]);
    rows.push([
        "pattern-match accuracy (near-ties ok)".into(),
        "80%+".into(),
        "".into(),
        opt(&hub.pattern_accuracy, 0, 100.0, "%"),
        "".into(),
        "".into(),
    ]);
    rows.push([
        "  strictly the single best".into(),
        "".into(),
        "".into(),
        opt(&hub.pattern_accuracy_strict, 0, 100.0, "%"),
        "".into(),
        "".into(),
    ]);
    rows.push([
        "calibration error of hub confidence".into(),
        "".into(),
        "".into(),
        opt(&hub.calibration_error, 3, 1.0, ""),
        "".into(),
        "".into(),
    ]);
    rows.push([
        "honest instances flagged as anomalies".into(),
        "0".into(),
        "".into(),
        opt(&hub.false_flags, 1, 1.0, ""),
        "".into(),
        "".into(),
    ]);
    if hub.faulty_flagged.is_some() {
        rows.push([
            "faulty instances flagged".into(),
            "".into(),
            "".into(),
            opt(&hub.faulty_flagged, 0, 100.0, "%"),
            "".into(),
            "".into(),
        ]);
        rows.push([
            "  after this many of their reports".into(),
            "".into(),
            "".into(),
            opt(&hub.reports_to_flag, 1, 1.0, ""),
            "".into(),
            "".into(),
        ]);
    }
    rows.push([
        "share of achievable gain captured".into(),
        "".into(),
        "".into(),
        est(&cmp.captured_gain_fraction, 2),
        "".into(),
        format!(
            "oracle: {}% shorter",
            est(&cmp.oracle_time_to_peak_reduction_percent, 1)
        ),
    ]);

    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {:?} — {} instances, {} seed(s) {:?}, horizon {} cycles{}; hub: {}",
        report.scenario,
        report.instances,
        report.seeds.len(),
        report.seeds,
        report.horizon,
        if report.stagger > 0 {
            format!(", a join every {} cycles", report.stagger)
        } else {
            String::new()
        },
        report.hub
    );
    let _ = writeln!(out, "(mean ± 95% CI over seeds)\n");
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "  {}", rule.join("  "));
        }
    }
    let _ = writeln!(
        out,
        "\ntime-to-peak: {}; cycles to plateau: {}.",
        verdict(&cmp.time_to_peak_reduction_percent, true),
        verdict(&cmp.cycles_to_plateau_reduction_percent, true)
    );
    if let Some(late) = &report.late_joiners {
        let _ = writeln!(
            out,
            "late joiners (second half of the fleet): time-to-peak isolated {}, hub {}.",
            est(&late.isolated_time_to_peak, 1),
            est(&late.hub_time_to_peak, 1)
        );
    }
    if !report.scaling.is_empty() {
        let _ = writeln!(out, "\nhub benefit by fleet size (time-to-peak, cycles):");
        let _ = writeln!(
            out,
            "  {:>9}  {:>14}  {:>14}  {:>14}  {:>18}  {:>14}",
            "instances", "isolated", "hub", "oracle", "hub reduction %", "gain captured"
        );
        for p in &report.scaling {
            let _ = writeln!(
                out,
                "  {:>9}  {:>14}  {:>14}  {:>14}  {:>18}  {:>14}",
                p.instances,
                est(&p.isolated_time_to_peak, 1),
                est(&p.hub_time_to_peak, 1),
                est(&p.oracle_time_to_peak, 1),
                est(&p.comparison.time_to_peak_reduction_percent, 1),
                est(&p.comparison.captured_gain_fraction, 2)
            );
        }
    }
    if !report.contexts.is_empty() {
        let _ = writeln!(out, "\nby context (time-to-peak, cycles):");
        let _ = writeln!(
            out,
            "  {:<14}  {:>9}  {:>14}  {:>14}  {:>14}  {:>18}  {:>13}",
            "context", "instances", "isolated", "hub", "oracle", "hub reduction %", "pattern match"
        );
        for p in &report.contexts {
            let _ = writeln!(
                out,
                "  {:<14}  {:>9.1}  {:>14}  {:>14}  {:>14}  {:>18}  {:>13}",
                p.context,
                p.instances,
                est(&p.isolated_time_to_peak, 1),
                est(&p.hub_time_to_peak, 1),
                est(&p.oracle_time_to_peak, 1),
                est(&p.comparison.time_to_peak_reduction_percent, 1),
                opt(&p.pattern_accuracy, 0, 100.0, "%"),
            );
        }
    }
    let _ = writeln!(out, "\n({:.1} s)", report.elapsed_seconds);
    out
}

/// Writes the full report as JSON.
pub fn write_json(report: &SimReport, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Internal(format!("cannot encode the report: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, json)
        .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_interval() {
        let e = |mean, ci95| Estimate { mean, ci95, n: 5 };
        assert_eq!(verdict(&e(20.0, 5.0), true), "hub better");
        assert_eq!(verdict(&e(-20.0, 5.0), true), "hub WORSE");
        assert_eq!(verdict(&e(2.0, 5.0), true), "no clear difference");
    }
}
