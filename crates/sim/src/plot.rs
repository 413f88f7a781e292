//! Charts of a simulation, as SVG (plotters): mean performance over cycles
//! with 95% bands for the three modes, and the hub's benefit by fleet size.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::SimReport;
use super::runner::Mode;
use crate::error::{Error, Result};

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("cannot draw chart: {e}"))
}

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Isolated => RGBColor(214, 96, 77),
        Mode::Hub => RGBColor(33, 102, 172),
        Mode::Oracle => RGBColor(90, 90, 90),
    }
}

/// Writes `performance.svg` (and `scaling.svg` when the report has a
/// scaling measure) into `dir`; returns the files written.
pub fn write_charts(report: &SimReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    let mut written = vec![performance_chart(report, &dir.join("performance.svg"))?];
    if report.scaling.len() > 1 {
        written.push(scaling_chart(report, &dir.join("scaling.svg"))?);
    }
    Ok(written)
}

fn performance_chart(report: &SimReport, path: &Path) -> Result<PathBuf> {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let horizon = report.horizon as usize;
    let low = report
        .modes
        .values()
        .flat_map(|m| m.curve.mean.iter().zip(&m.curve.ci95).map(|(a, b)| a - b))
        .fold(100.0_f64, f64::min)
        .clamp(0.0, 100.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Scenario {:?}: mean performance, {} instances, {} seeds (95% bands)",
                report.scenario,
                report.instances,
                report.seeds.len()
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0..horizon, (low.floor() - 2.0).max(0.0)..100.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("cycle")
        .y_desc("% of theoretical maximum")
        .draw()
        .map_err(plot_error)?;
    for (mode, data) in &report.modes {
        let c = color(*mode);
        let upper = data
            .curve
            .mean
            .iter()
            .zip(&data.curve.ci95)
            .map(|(m, ci)| m + ci);
        let lower = data
            .curve
            .mean
            .iter()
            .zip(&data.curve.ci95)
            .map(|(m, ci)| m - ci);
        let band: Vec<(usize, f64)> = upper
            .enumerate()
            .chain(lower.enumerate().collect::<Vec<_>>().into_iter().rev())
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18))))
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                data.curve.mean.iter().enumerate().map(|(x, y)| (x, *y)),
                c.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(mode.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    let threshold = 100.0 * super::measures::PEAK_THRESHOLD;
    chart
        .draw_series(LineSeries::new(
            [(0, threshold), (horizon, threshold)],
            BLACK.mix(0.4),
        ))
        .map_err(plot_error)?
        .label("peak threshold")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(path.to_path_buf())
}

/// Picks one mode's time-to-peak out of a scaling point.
type TimeToPeak = fn(&super::ScalingPoint) -> super::measures::Estimate;

fn scaling_chart(report: &SimReport, path: &Path) -> Result<PathBuf> {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let points = &report.scaling;
    let top = points
        .iter()
        .flat_map(|p| {
            [
                p.isolated_time_to_peak.mean + p.isolated_time_to_peak.ci95,
                p.hub_time_to_peak.mean + p.hub_time_to_peak.ci95,
            ]
        })
        .fold(0.0_f64, f64::max)
        // Tiny samples give huge intervals; time-to-peak never exceeds the horizon.
        .min(f64::from(report.horizon));
    let labels: Vec<String> = points.iter().map(|p| p.instances.to_string()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Scenario {:?}: time-to-peak by fleet size (95% CIs)",
                report.scenario
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0..points.len().saturating_sub(1), 0.0..(top * 1.1).max(1.0))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("instances in the fleet")
        .y_desc("cycles to reach the peak threshold")
        .x_labels(points.len())
        .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
        .draw()
        .map_err(plot_error)?;
    let series: [(Mode, TimeToPeak); 3] = [
        (Mode::Isolated, |p| p.isolated_time_to_peak),
        (Mode::Hub, |p| p.hub_time_to_peak),
        (Mode::Oracle, |p| p.oracle_time_to_peak),
    ];
    for (mode, get) in series {
        let c = color(mode);
        chart
            .draw_series(LineSeries::new(
                points.iter().enumerate().map(|(i, p)| (i, get(p).mean)),
                c.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(mode.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().enumerate().map(|(i, p)| {
                let e = get(p);
                PathElement::new(
                    vec![(i, e.mean - e.ci95), (i, e.mean + e.ci95)],
                    c.stroke_width(1),
                )
            }))
            .map_err(plot_error)?;
        chart
            .draw_series(
                points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Circle::new((i, get(p).mean), 4, c.filled())),
            )
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(path.to_path_buf())
}
