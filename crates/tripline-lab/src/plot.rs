//! Line charts as SVG: a column of panels sharing the time axis, one line per series. Plain
//! SVG text, so a report's plots are small, diffable files a browser and GitHub show as they
//! are (a plotting crate would be most of the lab's dependencies for four kinds of line).

use std::fmt::Write as _;

/// One line: `(seconds, value)` points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A panel: a title, its unit, and its lines; the y axis goes from 0 to the highest value.
pub struct Panel {
    pub title: String,
    pub unit: &'static str,
    pub lines: Vec<Line>,
}

const WIDTH: f64 = 860.0;
const PANEL: f64 = 150.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
pub fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|v| *v >= max).unwrap_or(10.0 * p)
}

/// The chart: `title` on top, the panels one under another over `[0, seconds]`.
pub fn svg(title: &str, seconds: f64, panels: &[Panel]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + panels.len() as f64 * (PANEL + GAP) + 10.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let seconds = seconds.max(1.0);
    for (i, p) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL + GAP);
        let max = nice_max(p.lines.iter().flat_map(|l| l.points.iter().map(|pt| pt.1)).fold(0.0, f64::max));
        let x = |t: f64| LEFT + t / seconds * plot_w;
        let y = |v: f64| y0 + PANEL - v / max * PANEL;
        let _ = write!(
            s,
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{} ({})</text>\
             <rect x=\"{LEFT}\" y=\"{y0}\" width=\"{plot_w}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
            y0 - 6.0,
            escape(&p.title),
            p.unit,
            LEFT - 4.0,
            y0 + 10.0,
            max,
            LEFT - 4.0,
            y0 + PANEL
        );
        // Time ticks every few seconds, labelled on every panel.
        let step = nice_max(seconds / 8.0);
        let mut t = 0.0;
        while t <= seconds + 1e-9 {
            let _ = write!(
                s,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{y0}\" y2=\"{1}\" stroke=\"#eee\"/><text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{t}s</text>",
                x(t),
                y0 + PANEL,
                y0 + PANEL + 13.0
            );
            t += step;
        }
        for (j, l) in p.lines.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let pts: Vec<String> =
                l.points.iter().map(|(t, v)| format!("{:.0},{:.0}", x(*t), y(*v))).collect();
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.3\" points=\"{}\"/>\
                 <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                pts.join(" "),
                WIDTH - RIGHT + 10.0,
                y0 + 8.0 + j as f64 * 14.0,
                WIDTH - RIGHT + 24.0,
                y0 + 12.0 + j as f64 * 14.0,
                escape(&l.name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!([0.0, 0.7, 1.0, 3.0, 7.0, 1234.0].map(nice_max), [1.0, 1.0, 1.0, 5.0, 10.0, 2000.0]);
    }

    #[test]
    fn a_chart_has_a_line_per_series_and_escapes_names() {
        let p = Panel {
            title: "a<b".into(),
            unit: "req/s",
            lines: vec![
                Line { name: "x&y".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] },
                Line { name: "z".into(), points: vec![] },
            ],
        };
        let s = svg("t", 2.0, &[p]);
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a&lt;b") && s.contains("x&amp;y") && s.ends_with("</svg>\n"), "{s}");
    }
}
