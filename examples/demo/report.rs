//! What the run shows: a table per route, and the chart of offered vs admitted requests.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
            "suppressed, keyed by client IP: {PRO_PER_WINDOW} per {w} s; hard limit x{HARD_LIMIT_FACTOR} \
             ({} offered per {w} s), at or over which everything is shed",
            PRO_PER_WINDOW * HARD_LIMIT_FACTOR
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
fn line(c: [&str; 10]) -> String {
    format!(
        "  {:<26} {:>9} {:>9} {:>7} {:>5} {:>5} {:>5} {:>5}  {:<12} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    )
}

/// Seconds with no needless decimals: `3`, `0.3`.
fn secs(s: f64) -> String {
    let s = (s * 100.0).round() / 100.0;
    format!("{s}")
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
                "time (s)",
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
        let mut row = |name: &str, time: String, per_s: String, c: Counts| {
            let factor = c
                .factor
                .map(|(lo, hi)| (format!("{lo:.3}"), format!("{hi:.3}")));
            let cells = [
                name.to_owned(),
                time,
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
        let starts = scenario.phase_starts();
        for ((i, phase), start) in scenario.phases.iter().enumerate().zip(starts) {
            let c = Counts::of(samples.iter().filter(|s| s.route == route && s.phase == i));
            row(
                phase.name,
                format!("{}-{}", secs(start), secs(start + phase.secs)),
                format!("{:.1}", scenario.offered_per_s(route, phase)),
                c,
            );
        }
        row(
            "total",
            format!("0-{}", secs(scenario.duration_s())),
            String::new(),
            Counts::of(samples.iter().filter(|s| s.route == route)),
        );
    }
    out
}

/// Requests per second in one time bin: offered, and of those admitted.
#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    offered: f64,
    ok: f64,
}

fn bins(samples: &[Sample], route: Route, scenario: &Scenario) -> Vec<Bin> {
    let n = (scenario.duration_s() / scenario.bin_s).round().max(1.0) as usize;
    let mut bins = vec![Bin::default(); n];
    let per = 1.0 / scenario.bin_s;
    for s in samples.iter().filter(|s| s.route == route) {
        let b = ((s.sent_s / scenario.bin_s) as usize).min(n - 1);
        bins[b].offered += per;
        if s.status == 200 {
            bins[b].ok += per;
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

/// The area under a line, down to zero.
fn area(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if let (Some(&(first, _)), Some(&(last, _))) = (points.first(), points.last()) {
        points.push((last, 0.0));
        points.push((first, 0.0));
    }
    points
}

/// How many of `route`'s requests (admitted ones only if `admitted`) were sent within the
/// last window, at `steps` points per bin: the count the limiter compares with its limits.
fn in_window(
    samples: &[Sample],
    route: Route,
    admitted: bool,
    scenario: &Scenario,
) -> Vec<(f64, f64)> {
    let window = scenario.limits.window_s as f64;
    let times: Vec<f64> = samples
        .iter()
        .filter(|s| s.route == route && (!admitted || s.status == 200))
        .map(|s| s.sent_s)
        .collect();
    let dt = scenario.bin_s / 10.0;
    let n = (scenario.duration_s() / dt).round() as usize;
    (0..=n)
        .map(|i| {
            let t = i as f64 * dt;
            let count = times.iter().filter(|&&s| s <= t && s > t - window).count();
            (t, count as f64)
        })
        .collect()
}

/// The first time at or after `from` when `points` reach `level` (`above`) or fall below it.
fn crossing(points: &[(f64, f64)], from: f64, level: f64, above: bool) -> Option<f64> {
    points
        .iter()
        .find(|&&(t, v)| t >= from && (v >= level) == above)
        .map(|&(t, _)| t)
}

const ADMITTED: RGBColor = RGBColor(40, 150, 75);
const REFUSED: RGBColor = RGBColor(225, 95, 75);
const OFFERED: RGBColor = RGBColor(205, 205, 212);
const CAPACITY: RGBColor = RGBColor(30, 30, 30);
const HARD: RGBColor = RGBColor(190, 30, 30);
const SHADE: RGBColor = RGBColor(246, 246, 249);
const GRID: RGBColor = RGBColor(228, 228, 232);
const INK: RGBColor = RGBColor(60, 60, 60);
const FONT: &str = "sans-serif";

/// What a legend entry looks like.
enum Swatch {
    Fill(RGBColor),
    Line(RGBColor, u32),
    Dashed(RGBColor),
}

/// One row of legend entries, left to right from `entries_x`, after a heading at `x`.
fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (x, y, entries_x): (i32, i32, i32),
    heading: &str,
    entries: &[(Swatch, String)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = (FONT, 14).into_font();
    let style: TextStyle = font.clone().into();
    let text_w = |t: &str| area.estimate_text_size(t, &style).map(|(w, _)| w as i32);
    area.draw(&Text::new(
        heading.to_owned(),
        (x, y - 8),
        font.clone().style(FontStyle::Bold).color(&INK),
    ))?;
    let mut x = entries_x;
    for (swatch, label) in entries {
        match *swatch {
            Swatch::Fill(c) => {
                area.draw(&Rectangle::new([(x, y - 7), (x + 22, y + 7)], c.filled()))?
            }
            Swatch::Line(c, w) => {
                area.draw(&PathElement::new([(x, y), (x + 22, y)], c.stroke_width(w)))?
            }
            Swatch::Dashed(c) => {
                for dx in [0, 9, 18] {
                    area.draw(&PathElement::new(
                        [(x + dx, y), (x + dx + 5, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (x + 30, y - 8),
            font.clone().color(&INK),
        ))?;
        x += 30 + text_w(label)? + 30;
    }
    Ok(())
}

/// Draws the chart: for each strategy, the requests per second admitted and refused, and
/// below it the counts over the last window that the limiter decides on.
pub fn chart(
    samples: &[Sample],
    scenario: &Scenario,
    provider: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let (width, height) = (1200, 1070);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("sluicegate demo ({provider} provider): one load, two strategies"),
        (FONT, 24),
    )?;
    let w = scenario.limits.window_s;
    let capacity = PRO_PER_WINDOW;
    let hard = PRO_PER_WINDOW * HARD_LIMIT_FACTOR;
    let duration = scenario.duration_s();
    // Whole seconds on the time axis, tenths in the quick run.
    let prec = usize::from(duration < 10.0);
    let starts = scenario.phase_starts();

    let (legend, body) = root.split_vertically(70);
    legend_row(
        &legend,
        (70, 16, 300),
        "Requests per second:",
        &[
            (Swatch::Fill(ADMITTED), "admitted (200)".to_owned()),
            (
                Swatch::Fill(REFUSED),
                "refused (/api: 429, /feed: 503); together: all that was offered".to_owned(),
            ),
        ],
    )?;
    legend_row(
        &legend,
        (70, 46, 300),
        &format!("Sent within the last {w} s:"),
        &[
            (Swatch::Fill(OFFERED), "offered".to_owned()),
            (Swatch::Line(ADMITTED, 3), "admitted".to_owned()),
            (Swatch::Dashed(CAPACITY), format!("capacity: {capacity}")),
            (
                Swatch::Dashed(HARD),
                format!("/feed's hard limit: {hard} offered"),
            ),
        ],
    )?;

    let offered_in_window = in_window(samples, Route::Api, false, scenario)
        .into_iter()
        .chain(in_window(samples, Route::Feed, false, scenario))
        .map(|(_, v)| v)
        .fold(hard, f64::max);
    let count_top = (offered_in_window * 1.12 / 25.0).ceil() * 25.0;
    let rate_top = scenario
        .phases
        .iter()
        .map(|p| scenario.offered_per_s(Route::Api, p))
        .fold(0.0, f64::max)
        * 1.35;

    let panels = body.split_evenly((2, 1));
    for (panel, route) in panels.iter().zip([Route::Api, Route::Feed]) {
        let (caption, note) = match route {
            Route::Api => (
                format!("GET /api (absolute strategy, per API key {PRO_KEY})"),
                [
                    format!(
                        "Admits a request only while fewer than {capacity} were admitted in the last {w} s; the rest get 429 with Retry-After."
                    ),
                    "Until the window is full everything passes; then it admits as fast as old admissions leave the window, whatever the load."
                        .to_owned(),
                ],
            ),
            _ => (
                "GET /feed (suppressed strategy, per client IP)".to_owned(),
                [
                    format!(
                        "Past {capacity} admitted per {w} s it sheds a share (503) that grows with the load, pulling admissions back toward {}/s.",
                        scenario.limits.limit_per_s()
                    ),
                    format!(
                        "Once {hard} are offered within {w} s (the hard limit, x{HARD_LIMIT_FACTOR}) it sheds everything, until the flood has left the window."
                    ),
                ],
            ),
        };
        panel.draw(&Text::new(
            caption,
            (70, 6),
            (FONT, 18).into_font().style(FontStyle::Bold).color(&BLACK),
        ))?;
        for (i, line) in note.into_iter().enumerate() {
            panel.draw(&Text::new(
                line,
                (70, 30 + 17 * i as i32),
                (FONT, 13).into_font().color(&INK),
            ))?;
        }
        let (_, plots) = panel.split_vertically(66);
        let plot_h = plots.dim_in_pixel().1;
        let (upper, lower) = plots.split_vertically(plot_h * 52 / 100);

        let shade = |i: usize| i % 2 == 1;
        let mut rates = ChartBuilder::on(&upper)
            .margin_left(8)
            .margin_right(24)
            .margin_bottom(6)
            .x_label_area_size(0)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..duration, 0.0..rate_top)?;
        rates
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .bold_line_style(GRID)
            .y_labels(5)
            .y_desc("requests / s")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for ((i, phase), &start) in scenario.phases.iter().enumerate().zip(&starts) {
            if shade(i) {
                rates.draw_series([Rectangle::new(
                    [(start, 0.0), (start + phase.secs, rate_top)],
                    SHADE.filled(),
                )])?;
            }
            let x = start + duration * 0.005;
            rates.draw_series([
                Text::new(
                    phase.name.to_owned(),
                    (x, rate_top * 0.97),
                    (FONT, 13).into_font().style(FontStyle::Bold).color(&INK),
                ),
                Text::new(
                    format!(
                        "{}x = {}/s, {} s",
                        phase.load,
                        scenario.offered_per_s(route, phase),
                        secs(phase.secs)
                    ),
                    (x, rate_top * 0.85),
                    (FONT, 12).into_font().color(&INK),
                ),
            ])?;
        }
        let bins = bins(samples, route, scenario);
        let bin_s = scenario.bin_s;
        rates.draw_series([Polygon::new(
            area(steps(bins.iter().map(|b| b.offered), bin_s)),
            REFUSED.filled(),
        )])?;
        rates.draw_series([Polygon::new(
            area(steps(bins.iter().map(|b| b.ok), bin_s)),
            ADMITTED.filled(),
        )])?;

        let mut counts = ChartBuilder::on(&lower)
            .margin_left(8)
            .margin_right(24)
            .margin_top(4)
            .margin_bottom(4)
            .x_label_area_size(if route == Route::Feed { 44 } else { 24 })
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..duration, 0.0..count_top)?;
        let x_label = |x: &f64| format!("{x:.prec$}");
        let y_label = |y: &f64| format!("{y:.0}");
        let mut mesh = counts.configure_mesh();
        mesh.disable_x_mesh()
            .max_light_lines(0)
            .bold_line_style(GRID)
            .y_labels(4)
            .y_desc(format!("in the last {w} s"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label);
        if route == Route::Feed {
            mesh.x_desc("seconds since the load started");
        }
        mesh.draw()?;
        for ((i, phase), &start) in scenario.phases.iter().enumerate().zip(&starts) {
            if shade(i) {
                counts.draw_series([Rectangle::new(
                    [(start, 0.0), (start + phase.secs, count_top)],
                    SHADE.filled(),
                )])?;
            }
        }
        let offered = in_window(samples, route, false, scenario);
        let admitted = in_window(samples, route, true, scenario);
        counts.draw_series([Polygon::new(area(offered.clone()), OFFERED.filled())])?;
        counts.draw_series(LineSeries::new(admitted, ADMITTED.stroke_width(3)))?;
        let level = |counts: &mut ChartContext<_, _>, y: f64, color: RGBColor, label: String| {
            counts.draw_series(DashedLineSeries::new(
                [(0.0, y), (duration, y)],
                7,
                5,
                color.stroke_width(2),
            ))?;
            // Just above the line, in the first phase (where nothing else is that high).
            let style = (FONT, 12)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Left, VPos::Bottom));
            counts
                .draw_series([Text::new(
                    label,
                    (duration * 0.005, y + count_top * 0.02),
                    style,
                )])
                .map(|_| ())
        };
        let capacity_label = match route {
            Route::Api => format!("capacity {capacity}: the most it admits"),
            _ => format!("capacity {capacity}: shedding starts"),
        };
        level(&mut counts, capacity, CAPACITY, capacity_label)?;
        if route == Route::Feed {
            level(
                &mut counts,
                hard,
                HARD,
                format!("hard limit {hard}: all shed"),
            )?;
            // Where the offered count crosses the hard limit, and where it falls back.
            let flood = starts.get(3).copied().unwrap_or(0.0);
            if let Some(over) = crossing(&offered, flood, hard, true) {
                let under = crossing(&offered, over, hard, false);
                let mut note = |t: f64, text: &str| {
                    counts.draw_series([PathElement::new(
                        [(t, 0.0), (t, count_top)],
                        HARD.mix(0.6).stroke_width(1),
                    )])?;
                    // Beside the line, on the side with room.
                    let (x, h) = if t < duration * 0.7 {
                        (t + duration * 0.004, HPos::Left)
                    } else {
                        (t - duration * 0.004, HPos::Right)
                    };
                    let style = (FONT, 12)
                        .into_font()
                        .color(&HARD)
                        .pos(Pos::new(h, VPos::Top));
                    counts
                        .draw_series([Text::new(text.to_owned(), (x, count_top * 0.96), style)])
                        .map(|_| ())
                };
                note(over, "offered count over the hard limit: all shed")?;
                if let Some(under) = under {
                    note(under, "under it again: admitting resumes")?;
                }
            }
        }
    }
    root.present()?;
    Ok(())
}
