//! Charts of sweeps, as SVG (plotters). A preload sweep: requests/s of
//! the measured RPC and of echo, and the RPC's p99, against the outcomes
//! the hub held — what "flat as history grows" looks like. A fan-out
//! sweep: publish → last delivery p50 and p99 of the hub and of the bare
//! streaming service against the number of subscribers.

use std::path::Path;

use plotters::prelude::*;

use super::report::BenchReport;
use crate::error::{Error, Result};

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("cannot draw chart: {e}"))
}

const RPC: RGBColor = RGBColor(33, 102, 172);
const ECHO: RGBColor = RGBColor(120, 120, 120);
const P99: RGBColor = RGBColor(214, 96, 77);
const BARE: RGBColor = RGBColor(120, 120, 120);

/// Writes the sweep chart of `report` to `path`.
pub fn write_sweep_chart(report: &BenchReport, path: &Path) -> Result<()> {
    let steps: Vec<_> = report
        .steps
        .iter()
        .filter_map(|s| s.load.as_ref().map(|l| (s, l)))
        .collect();
    if steps.len() < 2 {
        return Err(Error::invalid(
            "plot",
            "needs a sweep of two or more --preload-steps",
        ));
    }
    let rpc = steps[0].1.rpc.clone();
    let labels: Vec<String> = steps
        .iter()
        .map(|(s, _)| match s.stored_outcomes {
            n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
            n if n >= 1_000 => format!("{}k", n / 1000),
            n => n.to_string(),
        })
        .collect();
    let max_rps = steps
        .iter()
        .flat_map(|(s, l)| [Some(l.rps), s.echo.as_ref().map(|e| e.rps)])
        .flatten()
        .fold(0.0, f64::max);
    let max_p99 = steps.iter().map(|(_, l)| l.p99_ms).fold(0.0, f64::max);

    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(300);
    let n = steps.len();
    let x_label = |x: &usize| labels.get(*x).cloned().unwrap_or_default();

    let with_echo = if steps.iter().any(|(s, _)| s.echo.is_some()) {
        " and echo"
    } else {
        ""
    };
    let mut throughput = ChartBuilder::on(&top)
        .caption(
            format!("{rpc}{with_echo} as the store grows (same hub, one run)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(64)
        .build_cartesian_2d(0..n - 1, 0.0..max_rps * 1.15)
        .map_err(plot_error)?;
    throughput
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .light_line_style(WHITE)
        .y_desc("requests/s")
        .draw()
        .map_err(plot_error)?;
    let echo: Vec<(usize, f64)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, (s, _))| s.echo.as_ref().map(|e| (i, e.rps)))
        .collect();
    if !echo.is_empty() {
        throughput
            .draw_series(LineSeries::new(echo.clone(), ECHO.stroke_width(2)))
            .map_err(plot_error)?
            .label("echo (ceiling)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], ECHO.stroke_width(2)));
        throughput
            .draw_series(echo.iter().map(|p| Circle::new(*p, 3, ECHO.filled())))
            .map_err(plot_error)?;
    }
    let main: Vec<(usize, f64)> = steps
        .iter()
        .enumerate()
        .map(|(i, (_, l))| (i, l.rps))
        .collect();
    throughput
        .draw_series(LineSeries::new(main.clone(), RPC.stroke_width(2)))
        .map_err(plot_error)?
        .label(rpc.as_str())
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RPC.stroke_width(2)));
    throughput
        .draw_series(main.iter().map(|p| Circle::new(*p, 3, RPC.filled())))
        .map_err(plot_error)?;
    throughput
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(plot_error)?;

    let mut latency = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0..n - 1, 0.0..max_p99 * 1.25)
        .map_err(plot_error)?;
    latency
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&x_label)
        .light_line_style(WHITE)
        .x_desc("strategy outcomes stored when the step began")
        .y_desc(format!("{rpc} p99, ms"))
        .draw()
        .map_err(plot_error)?;
    let p99: Vec<(usize, f64)> = steps
        .iter()
        .enumerate()
        .map(|(i, (_, l))| (i, l.p99_ms))
        .collect();
    latency
        .draw_series(LineSeries::new(p99.clone(), P99.stroke_width(2)))
        .map_err(plot_error)?;
    latency
        .draw_series(p99.iter().map(|p| Circle::new(*p, 3, P99.filled())))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Writes the fan-out sweep chart of `report` to `path`: last delivery p50
/// (dashed) and p99 (solid) per subscriber count, hub and bare service.
pub fn write_fanout_chart(report: &BenchReport, path: &Path) -> Result<()> {
    let steps = &report.fanout_steps;
    if steps.len() < 2 {
        return Err(Error::invalid(
            "plot",
            "needs a sweep of two or more --fanout counts",
        ));
    }
    let labels: Vec<String> = steps
        .iter()
        .map(|s| match s.subscribers {
            n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1000),
            n => n.to_string(),
        })
        .collect();
    let max_ms = steps
        .iter()
        .flat_map(|s| {
            [
                Some(s.hub.last_delivery_p99_ms),
                s.baseline.as_ref().map(|b| b.last_delivery_p99_ms),
            ]
        })
        .flatten()
        .fold(0.0, f64::max);
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let n = steps.len();
    let x_label = |x: &usize| labels.get(*x).cloned().unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Insight fan-out: publish → last delivery (one run)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0..n - 1, 0.0..max_ms * 1.2)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&x_label)
        .light_line_style(WHITE)
        .x_desc("subscribers")
        .y_desc("ms")
        .draw()
        .map_err(plot_error)?;
    type Pick = fn(&crate::FanoutSummary) -> f64;
    let series: [(&str, RGBColor, bool, bool, Pick); 4] = [
        ("hub p99", RPC, false, true, |f| f.last_delivery_p99_ms),
        ("hub p50", RPC, false, false, |f| f.last_delivery_p50_ms),
        ("bare p99", BARE, true, true, |f| f.last_delivery_p99_ms),
        ("bare p50", BARE, true, false, |f| f.last_delivery_p50_ms),
    ];
    for (label, color, bare, solid, pick) in series {
        let points: Vec<(usize, f64)> = steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let summary = if bare {
                    s.baseline.as_ref()
                } else {
                    Some(&s.hub)
                };
                summary.map(|f| (i, pick(f)))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let width = if solid { 2 } else { 1 };
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], color.stroke_width(width))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}
