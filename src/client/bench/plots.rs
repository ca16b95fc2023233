//! SVG plots of benchmark results: grouped bars per query, a speedup line against
//! executor count, and a Gantt-like timeline of each executor's tasks.
//!
//! Plain SVG text, so the files open in any browser with nothing installed.

use std::fmt::Write;

/// Colours of the series, in order.
const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, width: f64, height: f64, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(title)
    );
}

/// A "nice" upper bound for an axis that must reach `max`.
fn axis_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn y_axis(out: &mut String, max: f64, label: &str, plot_height: f64) {
    for i in 0..=5 {
        let value = max * i as f64 / 5.0;
        let y = TOP + plot_height - plot_height * i as f64 / 5.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            trim_number(value)
        );
    }
    let _ = write!(
        out,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_height / 2.0,
        escape(label)
    );
}

fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn legend(out: &mut String, names: &[String], y: f64) {
    let mut x = LEFT;
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            out,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{}</text>"#,
            y - 10.0,
            PALETTE[i % PALETTE.len()],
            x + 16.0,
            escape(name)
        );
        x += 24.0 + 7.0 * name.len() as f64;
    }
}

/// Grouped bars: one group per category (e.g. query), one bar per series.
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let mut out = String::new();
    header(&mut out, WIDTH, HEIGHT, title);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let max = axis_max(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max),
    );
    y_axis(&mut out, max, y_label, plot_height);
    let group = (WIDTH - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = LEFT + group * c as f64 + group * 0.1;
        for (s, (_, values)) in series.iter().enumerate() {
            let value = values.get(c).copied().unwrap_or(0.0);
            let h = plot_height * value / max;
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {value:.4}</title></rect>"#,
                x0 + bar * s as f64,
                TOP + plot_height - h,
                bar.max(1.0),
                h,
                PALETTE[s % PALETTE.len()],
                escape(category)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + group * 0.4,
            TOP + plot_height + 16.0,
            escape(category)
        );
    }
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut out, &names, HEIGHT - 14.0);
    out.push_str("</svg>\n");
    out
}

/// Lines over a numeric x axis: each series is (name, points). A dashed diagonal shows
/// the ideal y = x when `ideal` is set.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    ideal: bool,
) -> String {
    let mut out = String::new();
    header(&mut out, WIDTH, HEIGHT, title);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let plot_width = WIDTH - LEFT - RIGHT;
    let points = series.iter().flat_map(|(_, p)| p.iter().copied());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), (px, py)| (x.max(px), y.max(py)));
    let x_max = axis_max(x_max);
    let y_max = axis_max(if ideal { y_max.max(x_max) } else { y_max });
    y_axis(&mut out, y_max, y_label, plot_height);
    let sx = |x: f64| LEFT + plot_width * x / x_max;
    let sy = |y: f64| TOP + plot_height - plot_height * y / y_max;
    for i in 0..=5 {
        let x = x_max * i as f64 / 5.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            TOP + plot_height + 16.0,
            trim_number(x)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        TOP + plot_height + 34.0,
        escape(x_label)
    );
    if ideal {
        let end = x_max.min(y_max);
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
            sx(0.0),
            sy(0.0),
            sx(end),
            sy(end)
        );
    }
    for (s, (_, points)) in series.iter().enumerate() {
        let colour = PALETTE[s % PALETTE.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"><title>{x}: {y:.3}</title></circle>"#,
                sx(x),
                sy(y)
            );
        }
    }
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut out, &names, HEIGHT - 8.0);
    out.push_str("</svg>\n");
    out
}

/// One bar of a timeline: a task that ran from `start` to `end` seconds.
#[derive(Debug, Clone)]
pub struct Span {
    /// Seconds from the start of the run.
    pub start: f64,
    /// Seconds from the start of the run.
    pub end: f64,
    /// Colour group (e.g. the query).
    pub group: usize,
    /// Hover text.
    pub label: String,
}

/// A Gantt-like timeline: per executor, its tasks laid out in slot lanes, with its
/// busy/idle ratio in the row label. `rows` is (executor name, slots, spans).
pub fn timeline(title: &str, wall: f64, rows: &[(String, u32, Vec<Span>)]) -> String {
    const LANE: f64 = 14.0;
    const GAP: f64 = 12.0;
    const LABEL: f64 = 200.0;
    let lanes: u32 = rows.iter().map(|(_, slots, _)| (*slots).max(1)).sum();
    let height = TOP + BOTTOM + lanes as f64 * LANE + rows.len() as f64 * GAP;
    let mut out = String::new();
    header(&mut out, WIDTH, height, title);
    let plot_width = WIDTH - LABEL - RIGHT;
    let run_wall = wall.max(f64::EPSILON);
    let wall = axis_max(wall);
    let sx = |t: f64| LABEL + plot_width * t / wall;
    let mut y = TOP;
    for (name, slots, spans) in rows {
        let slots = (*slots).max(1) as usize;
        let busy: f64 = spans.iter().map(|s| (s.end - s.start).max(0.0)).sum();
        let capacity = run_wall * slots as f64;
        let _ = write!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{} busy {:.0}%</text>"#,
            LABEL - 8.0,
            y + LANE * slots as f64 / 2.0 + 4.0,
            escape(name),
            100.0 * (busy / capacity).min(1.0)
        );
        let _ = write!(
            out,
            r##"<rect x="{LABEL}" y="{y:.1}" width="{plot_width:.1}" height="{:.1}" fill="#f4f4f4"/>"##,
            LANE * slots as f64
        );
        // Greedy lanes: each span goes to the first lane free at its start.
        let mut sorted: Vec<&Span> = spans.iter().collect();
        sorted.sort_by(|a, b| a.start.total_cmp(&b.start));
        let mut lane_end = vec![f64::NEG_INFINITY; slots];
        for span in sorted {
            let lane = lane_end
                .iter()
                .position(|&end| end <= span.start + 1e-9)
                .unwrap_or_else(|| {
                    lane_end
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i)
                });
            lane_end[lane] = span.end;
            let _ = write!(
                out,
                r#"<rect x="{:.2}" y="{:.1}" width="{:.2}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                sx(span.start),
                y + lane as f64 * LANE + 1.0,
                (sx(span.end) - sx(span.start)).max(0.5),
                LANE - 2.0,
                PALETTE[span.group % PALETTE.len()],
                escape(&span.label)
            );
        }
        y += LANE * slots as f64 + GAP;
    }
    for i in 0..=5 {
        let t = wall * i as f64 / 5.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} s</text>"#,
            sx(t),
            y + 14.0,
            trim_number(t)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round_and_cover_the_data() {
        assert_eq!(axis_max(0.0), 1.0);
        assert_eq!(axis_max(0.37), 0.5);
        assert_eq!(axis_max(3.8), 5.0);
        assert_eq!(axis_max(11.0), 20.0);
    }

    #[test]
    fn plots_are_svg_with_one_mark_per_value() {
        let bars = grouped_bars(
            "t",
            "s",
            &["Q1".into(), "Q2".into()],
            &[("a".into(), vec![1.0, 2.0]), ("b<".into(), vec![0.5, 0.25])],
        );
        assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"));
        assert_eq!(bars.matches("<title>").count(), 4);
        assert!(bars.contains("b&lt;"));
        let line = lines(
            "t",
            "x",
            "y",
            &[("s".into(), vec![(1.0, 1.0), (2.0, 1.8)])],
            true,
        );
        assert_eq!(line.matches("<circle").count(), 2);
        let spans = vec![
            Span {
                start: 0.0,
                end: 1.0,
                group: 0,
                label: "a".into(),
            },
            Span {
                start: 0.5,
                end: 1.5,
                group: 1,
                label: "b".into(),
            },
        ];
        let gantt = timeline("t", 2.0, &[("e1".into(), 2, spans)]);
        assert_eq!(gantt.matches("<title>").count(), 2);
        assert!(gantt.contains("busy 50%"), "{gantt}");
    }
}
