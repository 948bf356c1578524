//! Figures, their statistics (median, min, max over repetitions), and the two outputs:
//! `docs/BENCHMARKS.md` and the hand-written SVG bar chart `docs/bench.svg`.

use std::fmt::Write as _;

/// Which way a figure is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Lower is better (times, memory, errors).
    Lower,
    /// Higher is better (requests served, throughput, workers added).
    Higher,
}

/// One measured figure, for the two sides of a section.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What it is, with its parameters ("boot, N = 8").
    pub name: String,
    /// Its unit ("ms", "MiB", ...).
    pub unit: &'static str,
    /// Which way is good.
    pub better: Better,
    /// Samples of the first side (arbiter).
    pub a: Vec<f64>,
    /// Samples of the second side (gunicorn or the baseline); empty for one-sided figures.
    pub b: Vec<f64>,
    /// Whether the chart shows its ratio.
    pub chart: bool,
}

impl Figure {
    /// An empty figure.
    pub fn new(name: impl Into<String>, unit: &'static str, better: Better) -> Figure {
        Figure {
            name: name.into(),
            unit,
            better,
            a: Vec::new(),
            b: Vec::new(),
            chart: false,
        }
    }

    /// Marks it for the chart.
    pub fn charted(mut self) -> Figure {
        self.chart = true;
        self
    }

    /// median(a) / median(b), when both exist and the quotient means something.
    pub fn ratio(&self) -> Option<f64> {
        let (a, b) = (median(&self.a)?, median(&self.b)?);
        if b == 0.0 {
            return None;
        }
        Some(a / b)
    }

    /// Whether side a is ahead (by its median), or `None` when it cannot be said.
    pub fn a_ahead(&self) -> Option<bool> {
        let (a, b) = (median(&self.a)?, median(&self.b)?);
        Some(match self.better {
            Better::Lower => a <= b,
            Better::Higher => a >= b,
        })
    }
}

/// A group of figures with the definition of what was measured.
#[derive(Debug, Clone)]
pub struct Section {
    /// Title.
    pub title: String,
    /// How it was measured (markdown).
    pub method: String,
    /// Name of side a.
    pub a_name: &'static str,
    /// Name of side b.
    pub b_name: &'static str,
    /// Its figures.
    pub figures: Vec<Figure>,
}

/// The median of `samples` (mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

fn number(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if magnitude >= 10.0 {
        format!("{x:.1}")
    } else if magnitude >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// "median (min–max)" of samples.
fn summary(samples: &[f64]) -> String {
    let Some(m) = median(samples) else {
        return "—".into();
    };
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if samples.len() == 1 {
        format!("{} (n=1)", number(m))
    } else {
        format!(
            "{} ({}–{}, n={})",
            number(m),
            number(min),
            number(max),
            samples.len()
        )
    }
}

/// The markdown of the sections, as tables.
pub fn markdown(sections: &[Section]) -> String {
    let mut out = String::new();
    for section in sections {
        let _ = writeln!(out, "## {}\n\n{}\n", section.title, section.method.trim());
        let _ = writeln!(
            out,
            "| figure | unit | {a} median (min–max) | {b} median (min–max) | ratio {a} / {b} |",
            a = section.a_name,
            b = section.b_name
        );
        out.push_str("| --- | --- | --- | --- | --- |\n");
        for f in &section.figures {
            let ratio = match (f.ratio(), f.a_ahead()) {
                (Some(r), Some(ahead)) => {
                    format!("{}{}", number(r), if ahead { "" } else { " (behind)" })
                }
                (None, Some(ahead)) => format!("n/a{}", if ahead { "" } else { " (behind)" }),
                _ => "n/a".into(),
            };
            let better = match f.better {
                Better::Lower => "lower is better",
                Better::Higher => "higher is better",
            };
            let _ = writeln!(
                out,
                "| {} | {} ({better}) | {} | {} | {ratio} |",
                f.name,
                f.unit,
                summary(&f.a),
                summary(&f.b)
            );
        }
        out.push('\n');
    }
    out
}

/// A horizontal bar chart of the charted ratios, on a log scale around 1.
pub fn svg(sections: &[Section]) -> String {
    let rows: Vec<(String, f64, bool)> = sections
        .iter()
        .flat_map(|s| s.figures.iter())
        .filter(|f| f.chart)
        .filter_map(|f| Some((f.name.clone(), f.ratio()?, f.a_ahead()?)))
        .filter(|(_, r, _)| *r > 0.0)
        .collect();
    let (label_w, plot_w, row_h, top) = (300.0, 420.0, 24.0, 56.0);
    let width = label_w + plot_w + 90.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    // log10 range shown: 1/1000 .. 1000, clamped.
    let span = 3.0;
    let x_of = |ratio: f64| {
        let l = ratio.log10().clamp(-span, span);
        label_w + plot_w / 2.0 + l / span * (plot_w / 2.0)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">arbiter / gunicorn, median ratios (log scale)</text><text x="10" y="38" fill="#555">green: arbiter ahead (lower time or memory, more work done); red: behind. See docs/BENCHMARKS.md.</text>"##
    );
    for tick in [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
        let x = x_of(tick);
        let stroke = if tick == 1.0 { "#000" } else { "#ddd" };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{y2}" stroke="{stroke}"/><text x="{x:.1}" y="{ty}" text-anchor="middle" fill="#555">{}×</text>"##,
            number(tick),
            y1 = top - 6.0,
            y2 = height - 30.0,
            ty = height - 14.0
        );
    }
    for (i, (name, ratio, ahead)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let (x1, x2) = (x_of(1.0), x_of(*ratio));
        let (left, w) = (x1.min(x2), (x2 - x1).abs().max(1.0));
        let colour = if *ahead { "#2e8b57" } else { "#c0392b" };
        let label = name.replace('&', "&amp;").replace('<', "&lt;");
        let _ = writeln!(
            out,
            r##"<text x="{lx}" y="{ty:.1}" text-anchor="end">{label}</text><rect x="{left:.1}" y="{ry:.1}" width="{w:.1}" height="{h:.1}" fill="{colour}"/><text x="{vx:.1}" y="{ty:.1}">{}</text>"##,
            number(*ratio),
            lx = label_w - 8.0,
            ty = y + row_h * 0.65,
            ry = y + 4.0,
            h = row_h - 8.0,
            vx = label_w + plot_w + 6.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(a: &[f64], b: &[f64], better: Better) -> Figure {
        let mut f = Figure::new("boot, N = 2", "ms", better).charted();
        f.a = a.to_vec();
        f.b = b.to_vec();
        f
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let f = figure(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0], Better::Lower);
        assert_eq!(f.ratio(), Some(0.1));
        assert_eq!(f.a_ahead(), Some(true));
        let g = figure(&[1.0], &[10.0], Better::Higher);
        assert_eq!(g.a_ahead(), Some(false));
        assert_eq!(figure(&[1.0], &[0.0], Better::Lower).ratio(), None);
    }

    #[test]
    fn markdown_has_a_row_per_figure_with_min_and_max() {
        let section = Section {
            title: "Boot".into(),
            method: "from start".into(),
            a_name: "arbiter",
            b_name: "gunicorn",
            figures: vec![figure(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0], Better::Lower)],
        };
        let md = markdown(&[section]);
        assert!(
            md.contains(
                "| boot, N = 2 | ms (lower is better) | 2 (1–3, n=3) | 20 (10–30, n=3) | 0.10 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn svg_draws_one_bar_per_charted_ratio() {
        let section = Section {
            title: "Boot".into(),
            method: String::new(),
            a_name: "arbiter",
            b_name: "gunicorn",
            figures: vec![
                figure(&[1.0], &[10.0], Better::Lower),
                figure(&[5.0], &[1.0], Better::Lower),
                Figure::new("not charted", "ms", Better::Lower),
            ],
        };
        let svg = svg(&[section]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#2e8b57\"").count(), 1);
        assert_eq!(svg.matches("fill=\"#c0392b\"").count(), 1);
    }
}
