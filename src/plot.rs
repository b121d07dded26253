//! PNG plots for reports (plotters, bitmap backend, with an embedded DejaVu font so
//! nothing depends on the fonts a machine happens to have).

use crate::error::{CybError, Result};
use crate::metrics::EvalSummary;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A bundled font that fails to parse is a build problem, not a user error;
        // plots would then render without text rather than abort the run.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> CybError {
    CybError::Data(format!("plotting {}: {e}", path.display()))
}

/// One labelled line of a learning-curve plot: `(x, y)` points, and an optional band
/// `(x, lo, hi)` drawn beneath it (spread over seeds).
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

/// Line plot of several series (e.g. validation NLL against real tokens seen).
pub fn plot_curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    let pts = series.iter().flat_map(|s| s.points.iter().copied());
    let band = series
        .iter()
        .flat_map(|s| s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]));
    let all: Vec<(f64, f64)> = pts
        .chain(band)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if all.is_empty() {
        return Err(CybError::Data(format!(
            "plotting {}: no finite points",
            path.display()
        )));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, s) in series.iter().enumerate() {
        let color = colour(i);
        if !s.band.is_empty() {
            let mut poly: Vec<(f64, f64)> = s.band.iter().map(|&(x, _, hi)| (x, hi)).collect();
            poly.extend(s.band.iter().rev().map(|&(x, lo, _)| (x, lo)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    color.mix(0.18).filled(),
                )))
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Two panels: the histogram of pauses taken, and mean pauses per difficulty class.
pub fn plot_pauses(path: &Path, summary: &EvalSummary) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (left, right) = root.split_horizontally(420);

    let total = summary.histogram.iter().sum::<usize>().max(1) as f64;
    let steps: Vec<String> = (0..summary.histogram.len())
        .map(|k| k.to_string())
        .collect();
    let fractions: Vec<f64> = summary
        .histogram
        .iter()
        .map(|&n| n as f64 / total)
        .collect();
    bar_panel(
        &left,
        path,
        [
            "pauses taken (greedy policy)",
            "pauses",
            "fraction of tokens",
        ],
        &steps,
        &fractions,
        1.0,
        BLUE.mix(0.6),
    )?;
    let (names, means): (Vec<String>, Vec<f64>) = summary
        .by_class
        .iter()
        .filter(|(_, g)| g.count > 0)
        .map(|(n, g)| (n.clone(), g.mean_pauses))
        .unzip();
    bar_panel(
        &right,
        path,
        ["mean pauses by target class", "target class", "mean pauses"],
        &names,
        &means,
        (summary.pauses_max as f64).max(0.5),
        RED.mix(0.6),
    )?;
    root.present().map_err(|e| plot_err(path, e))
}

/// The x-axis label of slot `i` of a bar chart: `names[i]` at the slot's centre
/// `i + 0.5`, nothing at the other tick marks.
fn centre_label(names: &[String], x: f64) -> String {
    let i = x.floor() as usize;
    if (x - i as f64 - 0.5).abs() < 0.01 {
        names.get(i).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// One panel of bars, `values[i]` above `names[i]`: one slot per bar (no empty slot at
/// either end), a title and both axes described (`text` = title, x and y description).
fn bar_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    path: &Path,
    text: [&str; 3],
    names: &[String],
    values: &[f64],
    ymax: f64,
    colour: RGBAColor,
) -> Result<()> {
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(text[0], (FONT, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n, 0.0..ymax)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| centre_label(names, *x))
        .x_desc(text[1])
        .y_desc(text[2])
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| {
                    let x0 = i as f64 + 0.1;
                    Rectangle::new([(x0, 0.0), (x0 + 0.8, v)], colour.filled())
                }),
        )
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// The colour of series or group `i` in every plot (a variant keeps its colour across
/// figures when callers pass its index).
pub fn colour(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// Grouped bars: for each class on the x axis, one bar per group (e.g. per variant),
/// each group `(label, colour index, values)` in [`colour`]`(colour index)`.
pub fn plot_grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    classes: &[String],
    groups: &[(String, usize, Vec<f64>)],
) -> Result<()> {
    register_font();
    let ymax = groups
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.1;
    let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let n = classes.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..n, 0.0..ymax)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(classes.len() * 2 + 1)
        .x_label_formatter(&|x| centre_label(classes, *x))
        .x_desc("target class")
        .y_desc(y_label)
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let width = 0.8 / groups.len().max(1) as f64;
    for (gi, (label, colour_index, values)) in groups.iter().enumerate() {
        let color = colour(*colour_index);
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(ci, &v)| {
                        let x0 = ci as f64 + 0.1 + gi as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
                    }),
            )
            .map_err(|e| plot_err(path, e))?
            .label(label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}
