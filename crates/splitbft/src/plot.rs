//! The benchmark's PNG plots, drawn with plotters' bitmap backend. Text is rendered with
//! ab_glyph from DejaVu Sans compiled into the binary (`assets/`, its licence beside it),
//! so plots need no system fonts or fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::AppKind;
use crate::bench::{Batching, Matrix, PointResult, Series, Storage, ratios};
use crate::demo::Protocol;

/// DejaVu Sans (Bitstream Vera licence, `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family name every text style below asks for.
const FAMILY: &str = "sans-serif";
/// Size of one panel; a figure is one panel per batching mode side by side.
const PANEL: (u32, u32) = (720, 520);
const TITLE_HEIGHT: u32 = 56;

fn register_font() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| anyhow::anyhow!("the bundled DejaVu Sans font does not parse"));
    });
    result
}

/// Where a point's label goes relative to it: SplitBFT's above, PBFT's below, durable
/// SplitBFT's to the left, so close values of the lines stay readable.
fn label_offset(series: Series) -> (i32, i32) {
    match (series.protocol, series.storage) {
        (Protocol::Splitbft, Storage::Memory) => (6, -18),
        (Protocol::Splitbft, Storage::Durable) => (-48, -18),
        (Protocol::Pbft, _) => (6, 6),
    }
}

fn colour(series: Series) -> RGBColor {
    match (series.protocol, series.storage) {
        (Protocol::Splitbft, Storage::Memory) => RGBColor(0xd6, 0x27, 0x28),
        (Protocol::Splitbft, Storage::Durable) => RGBColor(0xff, 0x7f, 0x0e),
        (Protocol::Pbft, _) => RGBColor(0x1f, 0x77, 0xb4),
    }
}

/// 12345.6 → "12.3k".
fn si(v: f64) -> String {
    if v.abs() >= 1000.0 { format!("{:.1}k", v / 1000.0) } else { format!("{v:.0}") }
}

/// The rows of one panel: one line's measured matrix points, by clients.
fn series(m: &Matrix, points: &[PointResult], app: AppKind, batching: Batching, line: Series) -> Vec<PointResult> {
    let mut rows: Vec<PointResult> = points
        .iter()
        .filter(|p| {
            p.series() == line
                && p.app == app
                && p.batching == batching
                && p.outstanding == m.outstanding
                && m.clients.contains(&p.clients)
                && p.ops_s.is_some()
        })
        .cloned()
        .collect();
    rows.sort_by_key(|p| p.clients);
    rows
}

/// Draws every figure into `dir` and returns their paths: per application,
/// `throughput_vs_clients_<app>.png` and `latency_vs_throughput_<app>.png`, each with one
/// panel per batching mode and one line per protocol and storage.
pub fn draw(dir: &Path, m: &Matrix, points: &[PointResult], started_utc: &str) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    for &app in &m.apps {
        for kind in [Figure::Throughput, Figure::Latency] {
            let path = dir.join(format!("{}_{}.png", kind.file_stem(), app.name()));
            draw_figure(&path, kind, m, points, app, started_utc)
                .with_context(|| format!("drawing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

#[derive(Clone, Copy, PartialEq)]
enum Figure {
    Throughput,
    Latency,
}

impl Figure {
    fn file_stem(self) -> &'static str {
        match self {
            Figure::Throughput => "throughput_vs_clients",
            Figure::Latency => "latency_vs_throughput",
        }
    }
}

fn draw_figure(
    path: &Path,
    kind: Figure,
    m: &Matrix,
    points: &[PointResult],
    app: AppKind,
    started_utc: &str,
) -> anyhow::Result<()> {
    let width = PANEL.0 * m.batching.len() as u32;
    let root = BitMapBackend::new(path, (width, PANEL.1 + TITLE_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    let heading = match kind {
        Figure::Throughput => format!("{} — throughput vs clients (higher is better)", app.name()),
        Figure::Latency => format!("{} — median latency vs throughput (lower right is better)", app.name()),
    };
    title.draw(&Text::new(heading, (16, 6), (FAMILY, 24).into_font().color(&BLACK)))?;
    let note = format!(
        "{} replicas on this machine, {} outstanding per client, {} B values, {:.1} s window after ≥ {:.1} s warm-up; run {started_utc}",
        m.replicas, m.outstanding, m.payload, m.window_s, m.warmup_s
    );
    title.draw(&Text::new(note, (16, 34), (FAMILY, 14).into_font().color(&RGBColor(90, 90, 90))))?;
    let panels = body.split_evenly((1, m.batching.len()));
    let all_ratios = ratios(m, points);
    for (panel, &batching) in panels.iter().zip(&m.batching) {
        let last = |ratio: fn(&crate::bench::Ratio) -> Option<f64>| {
            all_ratios
                .iter()
                .filter(|r| r.app == app && r.batching == batching)
                .filter_map(|r| ratio(r).map(|x| (r.clients, x)))
                .next_back()
        };
        let mode = match batching {
            Batching::Unbatched => "unbatched (B = 1)".to_owned(),
            Batching::Batched => format!("batched (B = {}, {} ms)", m.batch, m.batch_timeout_ms),
        };
        let mut caption = mode;
        if let Some((clients, r)) = last(|r| r.splitbft_over_pbft) {
            caption.push_str(&format!(" — {clients} clients: splitbft/pbft {r:.2}"));
        }
        if let Some((clients, r)) = last(|r| r.durable_over_memory) {
            caption.push_str(&format!(", durable/memory {r:.2} ({clients})"));
        }
        let data: Vec<(Series, Vec<PointResult>)> =
            m.series().into_iter().map(|line| (line, series(m, points, app, batching, line))).collect();
        if data.iter().all(|(_, rows)| rows.is_empty()) {
            let reason = points
                .iter()
                .find(|p| p.app == app && p.batching == batching)
                .and_then(|p| p.skipped.clone())
                .unwrap_or_else(|| "nothing measured".into());
            no_data(panel, &caption, &reason)?;
            continue;
        }
        match kind {
            Figure::Throughput => throughput_panel(panel, &caption, m, &data)?,
            Figure::Latency => latency_panel(panel, &caption, &data)?,
        }
    }
    root.present()?;
    Ok(())
}

fn no_data(panel: &DrawingArea<BitMapBackend<'_>, Shift>, caption: &str, reason: &str) -> anyhow::Result<()> {
    panel.draw(&Text::new(caption.to_owned(), (20, 20), (FAMILY, 20).into_font()))?;
    panel.draw(&Text::new("not measured:".to_owned(), (20, 70), (FAMILY, 18).into_font().color(&RED)))?;
    // Long reasons wrap at word boundaries to stay inside the panel.
    let mut line = String::new();
    let mut y = 100;
    for word in reason.split_whitespace() {
        if line.len() + word.len() > 60 {
            panel.draw(&Text::new(std::mem::take(&mut line), (20, y), (FAMILY, 16).into_font()))?;
            y += 24;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    panel.draw(&Text::new(line, (20, y), (FAMILY, 16).into_font()))?;
    Ok(())
}

fn throughput_panel(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    m: &Matrix,
    data: &[(Series, Vec<PointResult>)],
) -> anyhow::Result<()> {
    let rows = || data.iter().flat_map(|(_, r)| r.iter());
    let x_max = rows().map(|p| p.clients).max().unwrap_or(1) as f64;
    let y_max = rows().filter_map(|p| p.ops_s).fold(0.0, f64::max).max(1.0);
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FAMILY, 16))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc(format!("clients (each {} outstanding)", m.outstanding))
        .y_desc("throughput (ops/s)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| si(*v))
        .light_line_style(RGBColor(238, 238, 238))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()?;
    for (line, rows) in data {
        let style = colour(*line).stroke_width(3);
        let xy: Vec<(f64, f64)> = rows.iter().map(|p| (p.clients as f64, p.ops_s.unwrap_or(0.0))).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), style))?
            .label(line.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart.draw_series(xy.iter().map(|&(x, y)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 5, colour(*line).filled())
                + Text::new(si(y), label_offset(*line), (FAMILY, 12).into_font())
        }))?;
    }
    legend(&mut chart)
}

fn latency_panel(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    data: &[(Series, Vec<PointResult>)],
) -> anyhow::Result<()> {
    let rows = || data.iter().flat_map(|(_, r)| r.iter()).filter(|p| p.p50_us.is_some());
    let x_max = rows().filter_map(|p| p.ops_s).fold(0.0, f64::max).max(1.0);
    let y_max = rows().filter_map(|p| p.p50_us).max().unwrap_or(1) as f64 / 1000.0;
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FAMILY, 16))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max * 1.1, 0.0..y_max.max(0.001) * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("throughput (ops/s); labels: clients")
        .y_desc("median latency (ms)")
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| if y_max >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") })
        .light_line_style(RGBColor(238, 238, 238))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()?;
    for (line, rows) in data {
        let style = colour(*line).stroke_width(3);
        let pts: Vec<(f64, f64, usize)> =
            rows.iter().filter_map(|p| Some((p.ops_s?, p.p50_us? as f64 / 1000.0, p.clients))).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().map(|&(x, y, _)| (x, y)), style))?
            .label(line.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart.draw_series(pts.iter().map(|&(x, y, clients)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 5, colour(*line).filled())
                + Text::new(clients.to_string(), label_offset(*line), (FAMILY, 12).into_font())
        }))?;
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("drawing the legend: {e}"))
}
