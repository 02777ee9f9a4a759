//! What the run shows: a table per route, and the chart of offered vs admitted requests.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::app::{FREE_PER_WINDOW, HARD_LIMIT_FACTOR, PRO_PER_WINDOW};
use crate::load::{PRO_KEY, Route, Sample, Scenario};

/// Counts of one route over some stretch of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests sent.
    pub offered: u64,
    /// `200 OK`.
    pub ok: u64,
    /// `429 Too Many Requests`.
    pub too_many: u64,
    /// `503 Service Unavailable`.
    pub unavailable: u64,
    /// Anything else, failures included.
    pub other: u64,
    /// Smallest and largest suppression factor reported.
    pub factor: Option<(f64, f64)>,
    /// Smallest and largest `Retry-After` reported, in seconds.
    pub retry_after: Option<(u64, u64)>,
}

impl Counts {
    /// Counts `samples`.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Counts {
        let mut c = Counts::default();
        for s in samples {
            c.offered += 1;
            match s.status {
                200 => c.ok += 1,
                429 => c.too_many += 1,
                503 => c.unavailable += 1,
                _ => c.other += 1,
            }
            if let Some(f) = s.suppression_factor {
                c.factor = Some(c.factor.map_or((f, f), |(lo, hi)| (lo.min(f), hi.max(f))));
            }
            if let Some(r) = s.retry_after_s {
                c.retry_after = Some(
                    c.retry_after
                        .map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))),
                );
            }
        }
        c
    }
}

/// What a route is limited by, in words.
pub fn describe(route: Route, scenario: &Scenario) -> String {
    let w = scenario.limits.window_s;
    match route {
        Route::Api => format!(
            "absolute, keyed by x-api-key: {PRO_KEY} has {PRO_PER_WINDOW} per {w} s, other keys {FREE_PER_WINDOW}"
        ),
        Route::Feed => format!(
            "suppressed, keyed by client IP: {PRO_PER_WINDOW} per {w} s, hard limit x{HARD_LIMIT_FACTOR}"
        ),
        Route::Health => "not limited".to_owned(),
    }
}

fn range<T: std::fmt::Display + PartialEq>(r: Option<(T, T)>, unit: &str) -> String {
    match r {
        None => "-".to_owned(),
        Some((lo, hi)) if lo == hi => format!("{lo}{unit}"),
        Some((lo, hi)) => format!("{lo}..{hi}{unit}"),
    }
}

/// One table line: a left-aligned name, right-aligned numbers, left-aligned ranges.
fn line(c: [&str; 9]) -> String {
    format!(
        "  {:<16} {:>9} {:>7} {:>5} {:>5} {:>5} {:>5}  {:<12} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    )
}

/// The table: per route, a row per phase and a total.
pub fn table(samples: &[Sample], scenario: &Scenario) -> String {
    let mut out = String::new();
    for route in Route::ALL {
        let _ = writeln!(out, "\n{}: {}", route.path(), describe(route, scenario));
        let _ = writeln!(
            out,
            "{}",
            line([
                "phase",
                "offered/s",
                "offered",
                "200",
                "429",
                "503",
                "other",
                "supp. factor",
                "Retry-After",
            ])
        );
        let mut row = |name: &str, per_s: String, c: Counts| {
            let factor = c
                .factor
                .map(|(lo, hi)| (format!("{lo:.3}"), format!("{hi:.3}")));
            let cells = [
                name.to_owned(),
                per_s,
                c.offered.to_string(),
                c.ok.to_string(),
                c.too_many.to_string(),
                c.unavailable.to_string(),
                c.other.to_string(),
                range(factor, ""),
                range(c.retry_after, " s"),
            ];
            let _ = writeln!(out, "{}", line(cells.each_ref().map(String::as_str)));
        };
        for (i, phase) in scenario.phases.iter().enumerate() {
            let c = Counts::of(samples.iter().filter(|s| s.route == route && s.phase == i));
            row(
                phase.name,
                format!("{:.1}", scenario.offered_per_s(route, phase)),
                c,
            );
        }
        row(
            "total",
            String::new(),
            Counts::of(samples.iter().filter(|s| s.route == route)),
        );
    }
    out
}

/// One time bin: requests per second offered, admitted and refused, and the factors reported.
#[derive(Debug, Clone, Default)]
struct Bin {
    offered: f64,
    ok: f64,
    refused: f64,
    factor_sum: f64,
    factor_n: f64,
}

fn bins(samples: &[Sample], route: Route, scenario: &Scenario) -> Vec<Bin> {
    let n = (scenario.duration_s() / scenario.bin_s).round().max(1.0) as usize;
    let mut bins = vec![Bin::default(); n];
    let per = 1.0 / scenario.bin_s;
    for s in samples.iter().filter(|s| s.route == route) {
        let b = ((s.sent_s / scenario.bin_s) as usize).min(n - 1);
        bins[b].offered += per;
        match s.status {
            200 => bins[b].ok += per,
            _ => bins[b].refused += per,
        }
        if let Some(f) = s.suppression_factor {
            bins[b].factor_sum += f;
            bins[b].factor_n += 1.0;
        }
    }
    bins
}

/// A step line through per-bin values.
fn steps(values: impl Iterator<Item = f64>, bin_s: f64) -> Vec<(f64, f64)> {
    values
        .enumerate()
        .flat_map(|(i, v)| [(i as f64 * bin_s, v), ((i + 1) as f64 * bin_s, v)])
        .collect()
}

/// The average rate over the last window, at the end of each bin: what the limiter counts.
fn window_average(values: &[f64], bin_s: f64, window_s: f64) -> Vec<(f64, f64)> {
    let per_window = (window_s / bin_s).round().max(1.0) as usize;
    (0..values.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(per_window);
            let sum: f64 = values[from..=i].iter().sum();
            ((i + 1) as f64 * bin_s, sum / per_window as f64)
        })
        .collect()
}

const OFFERED: RGBColor = RGBColor(90, 90, 90);
const ADMITTED: RGBColor = RGBColor(20, 140, 60);
const REFUSED: RGBColor = RGBColor(210, 50, 40);
const FACTOR: RGBColor = RGBColor(40, 90, 200);
const LIMIT: RGBColor = RGBColor(20, 20, 20);
const PHASE_SHADE: RGBColor = RGBColor(240, 240, 246);
const FONT: &str = "sans-serif";

/// How a legend entry's line looks.
struct Entry {
    label: String,
    color: RGBColor,
    width: u32,
    dashed: bool,
}

impl Entry {
    fn new(label: impl Into<String>, color: RGBColor, width: u32, dashed: bool) -> Entry {
        Entry {
            label: label.into(),
            color,
            width,
            dashed,
        }
    }
}

/// A legend beside the plot, where it hides no data.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    top: i32,
    entries: &[Entry],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, e) in entries.iter().enumerate() {
        let y = top + 22 * i as i32;
        let style = e.color.stroke_width(e.width);
        if e.dashed {
            for x in [0, 10, 20] {
                area.draw(&PathElement::new([(x, y), (x + 6, y)], style))?;
            }
        } else {
            area.draw(&PathElement::new([(0, y), (26, y)], style))?;
        }
        area.draw(&Text::new(
            e.label.clone(),
            (34, y - 7),
            (FONT, 13).into_font().color(&BLACK),
        ))?;
    }
    Ok(())
}

/// Draws the chart of offered vs admitted requests per second, both strategies, to `path`.
pub fn chart(
    samples: &[Sample],
    scenario: &Scenario,
    provider: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    const LEGEND_W: u32 = 270;
    let (width, height) = (1200, 860);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("sluicegate demo ({provider} provider): offered vs admitted requests per second"),
        (FONT, 24),
    )?;
    let panels = root.split_evenly((2, 1));
    let duration = scenario.duration_s();
    // Whole seconds on the time axis, tenths in the quick run.
    let prec = usize::from(duration < 10.0);
    let window = scenario.limits.window_s as f64;
    let w = scenario.limits.window_s;
    let limit = scenario.limits.limit_per_s();
    let hard = limit * HARD_LIMIT_FACTOR;
    let top = scenario
        .phases
        .iter()
        .map(|p| scenario.offered_per_s(Route::Api, p))
        .fold(0.0, f64::max)
        * 1.15;

    for (panel, route) in panels.iter().zip([Route::Api, Route::Feed]) {
        let (area, side) = panel.split_horizontally(width - LEGEND_W);
        let caption = match route {
            Route::Api => format!(
                "GET /api: absolute strategy, key x-api-key: {PRO_KEY}, {PRO_PER_WINDOW} requests per {w} s"
            ),
            _ => format!(
                "GET /feed: suppressed strategy, key: client IP, {PRO_PER_WINDOW} requests per {w} s, hard limit x{HARD_LIMIT_FACTOR}"
            ),
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, (FONT, 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .right_y_label_area_size(55)
            .build_cartesian_2d(0.0..duration, 0.0..top)?
            .set_secondary_coord(0.0..duration, 0.0..1.1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("requests / s")
            .x_desc("seconds since the load started")
            .light_line_style(RGBColor(235, 235, 235))
            .x_label_formatter(&|x| format!("{x:.prec$}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        if route == Route::Feed {
            chart
                .configure_secondary_axes()
                .y_desc("suppression factor")
                .draw()?;
        }

        // Phases: alternate shading, named at the top.
        for ((i, phase), start) in scenario
            .phases
            .iter()
            .enumerate()
            .zip(scenario.phase_starts())
        {
            if i % 2 == 1 {
                chart.draw_series([Rectangle::new(
                    [(start, 0.0), (start + phase.secs, top)],
                    PHASE_SHADE.filled(),
                )])?;
            }
            chart.draw_series([Text::new(
                format!(
                    "{}x the limit ({}/s)",
                    phase.load,
                    scenario.offered_per_s(Route::Api, phase)
                ),
                (start + duration * 0.006, top * 0.985),
                (FONT, 13).into_font().color(&BLACK.mix(0.75)),
            )])?;
        }

        let mut entries = Vec::new();
        let dashed = |chart: &mut ChartContext<_, _>, y: f64, dash: u32, color: RGBColor| {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, y), (duration, y)],
                    dash,
                    4,
                    color.stroke_width(1),
                ))
                .map(|_| ())
        };
        dashed(&mut chart, limit, 8, LIMIT)?;
        entries.push(Entry::new(format!("limit: {limit} / s"), LIMIT, 1, true));
        if route == Route::Feed {
            dashed(&mut chart, hard, 3, REFUSED)?;
            entries.push(Entry::new(
                format!(
                    "hard limit: {} observed per {w} s",
                    PRO_PER_WINDOW * HARD_LIMIT_FACTOR
                ),
                REFUSED,
                1,
                true,
            ));
        }

        let bins = bins(samples, route, scenario);
        let bin_s = scenario.bin_s;
        let offered: Vec<f64> = bins.iter().map(|b| b.offered).collect();
        let ok: Vec<f64> = bins.iter().map(|b| b.ok).collect();
        let mut line = |chart: &mut ChartContext<_, _>, points: Vec<(f64, f64)>, e: Entry| {
            let style = e.color.stroke_width(e.width);
            if e.dashed {
                chart.draw_series(DashedLineSeries::new(points, 5, 4, style))?;
            } else {
                chart.draw_series(LineSeries::new(points, style))?;
            }
            entries.push(e);
            Ok::<_, DrawingAreaErrorKind<_>>(())
        };
        line(
            &mut chart,
            steps(offered.iter().copied(), bin_s),
            Entry::new("offered", OFFERED, 2, false),
        )?;
        line(
            &mut chart,
            steps(bins.iter().map(|b| b.refused), bin_s),
            Entry::new(
                match route {
                    Route::Api => "refused: 429 + Retry-After",
                    _ => "shed: 503 + suppression factor",
                },
                REFUSED,
                2,
                false,
            ),
        )?;
        line(
            &mut chart,
            steps(ok.iter().copied(), bin_s),
            Entry::new("admitted: 200", ADMITTED, 3, false),
        )?;
        if route == Route::Feed {
            line(
                &mut chart,
                window_average(&offered, bin_s, window),
                Entry::new(format!("offered, average over {w} s"), OFFERED, 2, true),
            )?;
        }
        line(
            &mut chart,
            window_average(&ok, bin_s, window),
            Entry::new(format!("admitted, average over {w} s"), ADMITTED, 2, true),
        )?;
        if route == Route::Feed {
            let factor = bins.iter().map(|b| {
                if b.factor_n > 0.0 {
                    b.factor_sum / b.factor_n
                } else {
                    0.0
                }
            });
            chart.draw_secondary_series(LineSeries::new(
                steps(factor, bin_s),
                FACTOR.stroke_width(2),
            ))?;
            entries.push(Entry::new(
                "suppression factor (right axis)",
                FACTOR,
                2,
                false,
            ));
        }
        legend(&side, 60, &entries)?;
    }
    root.present()?;
    Ok(())
}
