//! The fleet simulator end to end: real hubs over mutual TLS, the three
//! modes, determinism, output files, and the proof that the hub learns only
//! from what instances share.

use crate::common;

use std::path::Path;

use common::*;
use learning_hub::pb;
use learning_hub::sim::{
    self, SimOptions,
    runner::{FaultyMode, Mode},
    scenario::Scenario,
};

fn small(scenario: Scenario) -> SimOptions {
    SimOptions {
        scenario,
        // More than the hub's model buffer (5): the fleet's plateau model
        // gets versions, and instances act on its predictions.
        instances: 6,
        seeds: 2,
        seed: 7,
        horizon: 60,
        stagger: 0,
        scaling: Vec::new(),
        scaling_seeds: 1,
        external_hub: None,
        parallel: 4,
        progress: false,
        faulty: 0,
        faulty_mode: FaultyMode::Inflate,
        quarantine_flagged: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_simulation_measures_all_three_modes() {
    let report = sim::simulate(small(Scenario::builtin())).await.unwrap();
    assert_eq!(report.modes.len(), 3);
    for mode in report.modes.values() {
        assert_eq!(mode.per_seed.len(), 2);
        assert_eq!(mode.curve.mean.len(), 60);
        assert!(mode.summary.peak_percent.mean > 50.0);
    }
    let oracle = &report.modes[&Mode::Oracle].summary;
    let isolated = &report.modes[&Mode::Isolated].summary;
    assert!(
        oracle.time_to_peak.mean < isolated.time_to_peak.mean,
        "the oracle is the lower bound"
    );
    let hub = &report.modes[&Mode::Hub].summary;
    assert!(
        hub.pattern_accuracy.is_some(),
        "hub instances query patterns"
    );
    assert!(isolated.pattern_accuracy.is_none());
    assert!(
        hub.early_applications.mean > 0.0,
        "hub instances act on predicted plateaus"
    );
    assert_eq!(isolated.early_applications.mean, 0.0);
    // Every 10 cycles the hub is scanned for anomalies; honest instances
    // are never listed.
    assert_eq!(hub.false_flags.map(|e| e.mean), Some(0.0));
    assert!(isolated.false_flags.is_none() && hub.faulty_flagged.is_none());

    let out = tempfile::tempdir().unwrap();
    sim::report::write_json(&report, &out.path().join("r.json")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("r.json")).unwrap()).unwrap();
    for key in [
        "time_to_peak",
        "cycles_to_plateau",
        "peak_percent",
        "failures",
        "cycles_to_recover",
    ] {
        assert!(json["modes"]["hub"]["summary"][key].is_object(), "{key}");
        assert!(
            json["modes"]["hub"]["summary"][key]["ci95"].is_number(),
            "{key}"
        );
    }
    assert!(json["comparison"]["captured_gain_fraction"]["mean"].is_number());
    let charts = sim::plot::write_charts(&report, out.path()).unwrap();
    let svg = std::fs::read_to_string(&charts[0]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("isolated") && svg.contains("oracle"));
    let table = sim::report::table(&report);
    assert!(table.contains("time-to-peak") && table.contains("pattern-match accuracy"));
    // Per context: the built-in scenario has two.
    assert_eq!(report.contexts.len(), 2);
    assert!(table.contains("by context"));
    let in_contexts: f64 = report.contexts.iter().map(|c| c.instances).sum();
    assert!(
        (in_contexts - 6.0).abs() < 1e-9,
        "every instance in one context"
    );
}

/// Faulty instances report lies (here: successes of the truly worst
/// strategy); the hub-mode runs count how many the anomaly scans list and
/// after how many reports, and the operator quarantines them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_instances_are_listed_and_left_out_of_the_measures() {
    let options = SimOptions {
        instances: 12,
        horizon: 100,
        faulty: 2,
        quarantine_flagged: true,
        ..small(Scenario::builtin())
    };
    let report = sim::simulate(options).await.unwrap();
    let hub = &report.modes[&Mode::Hub].summary;
    let flagged = hub.faulty_flagged.expect("hub runs count flags");
    assert!(flagged.mean > 0.0, "the liars are listed: {hub:?}");
    assert!(hub.reports_to_flag.is_some());
    assert_eq!(hub.false_flags.map(|e| e.mean), Some(0.0));
    let isolated = &report.modes[&Mode::Isolated].summary;
    assert!(isolated.faulty_flagged.is_none());
    assert!(sim::report::table(&report).contains("faulty instances flagged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_results() {
    let options = SimOptions {
        seeds: 1,
        ..small(Scenario::builtin())
    };
    let a = sim::simulate(options.clone()).await.unwrap();
    let b = sim::simulate(options).await.unwrap();
    for mode in [Mode::Isolated, Mode::Hub, Mode::Oracle] {
        assert_eq!(a.modes[&mode].per_seed, b.modes[&mode].per_seed, "{mode:?}");
        assert_eq!(
            a.modes[&mode].curve.mean, b.modes[&mode].curve.mean,
            "{mode:?}"
        );
    }
}

/// The hub's recommendations follow what instances observed: two worlds
/// that differ only in which strategy truly works for learningVelocity lead
/// the same hub code to opposite recommendations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_learns_only_from_what_instances_share() {
    async fn top_strategy_after(scenario: Scenario) -> String {
        let hub = TestHub::start().await;
        let options = SimOptions {
            instances: 6,
            seeds: 1,
            horizon: 80,
            external_hub: Some((hub.url(), hub.certs_dir().to_path_buf())),
            ..small(scenario)
        };
        sim::simulate(options).await.unwrap();
        let op = hub.operator().await;
        op.get_strategies(pb::GetStrategiesRequest {
            metric: "learningVelocity".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations[0]
            .strategy
            .clone()
    }
    let mut original = Scenario::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios/homogeneous.toml")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let strong = |s: &mut Scenario, name: &str, gain: f64, success: f64| {
        let strategy = s.strategies.iter_mut().find(|x| x.name == name).unwrap();
        let effect = strategy
            .effects
            .iter_mut()
            .find(|e| e.metric == "learningVelocity")
            .unwrap();
        effect.gain = gain;
        effect.success = success;
    };
    let mut swapped = original.clone();
    strong(&mut original, "novelty_injection", 0.35, 0.95);
    strong(&mut original, "calibration", 0.05, 0.3);
    strong(&mut swapped, "novelty_injection", 0.05, 0.3);
    strong(&mut swapped, "calibration", 0.35, 0.95);
    assert_eq!(top_strategy_after(original).await, "novelty_injection");
    assert_eq!(top_strategy_after(swapped).await, "calibration");
}

/// No part of the hub's code path refers to the simulator: the hub cannot
/// see a scenario except through what instances send it over gRPC. The
/// crate graph enforces it — the server's crates do not depend on the
/// simulator's — and this keeps it so.
#[test]
fn hub_code_never_refers_to_the_simulator() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    for hub_side in ["proto", "client", "domain", "store", "server"] {
        let manifest = std::fs::read_to_string(crates.join(hub_side).join("Cargo.toml")).unwrap();
        for forbidden in ["learning-hub-sim", "learning-hub-bench"] {
            assert!(
                !manifest.contains(forbidden),
                "crates/{hub_side} depends on {forbidden}"
            );
        }
    }
}

#[test]
fn simulate_command_prints_the_claims_table_and_writes_files() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let charts = out.path().join("charts");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_learning-hub"))
        .args([
            "simulate",
            "--instances",
            "3",
            "--seeds",
            "2",
            "--horizon",
            "40",
        ])
        .args([
            "--scaling",
            "1,3",
            "--scaling-seeds",
            "1",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&charts)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "seed claims",
        "30–50% shorter with hub",
        "hub benefit by fleet size",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    assert!(json.exists());
    assert!(charts.join("performance.svg").exists());
    assert!(charts.join("scaling.svg").exists());

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_learning-hub"))
        .args(["simulate", "--scenario", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_joins_report_late_joiners() {
    let options = SimOptions {
        seeds: 1,
        stagger: 5,
        ..small(Scenario::builtin())
    };
    let report = sim::simulate(options).await.unwrap();
    let late = report.late_joiners.expect("late joiners measured");
    assert!(late.hub_time_to_peak.mean > 0.0 && late.isolated_time_to_peak.mean > 0.0);
    // Every instance runs its full horizon after joining.
    assert_eq!(report.modes[&Mode::Hub].curve.mean.len(), 60);
}

/// `simulate --regions`: the fleet split over regional hubs, alone and
/// federated, against one global hub — with the regions agreeing after
/// every cycle, a run is as repeatable as a single hub's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_study_runs_alone_federated_and_global_repeatably() {
    let options = SimOptions {
        seeds: 1,
        horizon: 40,
        ..small(Scenario::builtin())
    };
    let a = sim::regions_study(&options, 3).await.unwrap();
    assert_eq!((a.regions, a.instances), (3, 6));
    for e in [
        &a.isolated_time_to_peak,
        &a.alone_time_to_peak,
        &a.federated_time_to_peak,
        &a.global_time_to_peak,
    ] {
        assert_eq!(e.n, 1);
        assert!(e.mean > 0.0 && e.mean <= 40.0, "{e:?}");
    }
    let b = sim::regions_study(&options, 3).await.unwrap();
    assert_eq!(a.federated_time_to_peak, b.federated_time_to_peak);
    assert_eq!(a.alone_time_to_peak, b.alone_time_to_peak);
}
