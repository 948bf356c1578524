//! Figures, their statistics (median, min, max over repetitions), and the two outputs: the
//! markdown of `BENCHMARKS.md` and the hand-written SVG bar chart `bench.svg`.
//!
//! A [`Section`] has named columns (arbiter with each worker kind, gunicorn, uWSGI, a floor)
//! and a list of ratios to print, each a pair of columns; a [`Figure`] holds the samples of
//! each column, or a note where a column has none ("not installed", "no TTIN").

use std::fmt::Write as _;

/// Which way a figure is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Lower is better (times, memory, errors).
    Lower,
    /// Higher is better (requests served, throughput, workers added).
    Higher,
}

/// One measured figure, with samples per column of its section.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What it is, with its parameters ("boot to all ready, N = 8").
    pub name: String,
    /// Its unit ("ms", "MiB", ...).
    pub unit: &'static str,
    /// Which way is good.
    pub better: Better,
    /// Samples, one vector per column (missing trailing columns: no samples).
    pub samples: Vec<Vec<f64>>,
    /// Why a column has no samples, per column.
    pub notes: Vec<Option<String>>,
    /// Whether the chart shows its ratios.
    pub chart: bool,
}

impl Figure {
    /// An empty figure.
    pub fn new(name: impl Into<String>, unit: &'static str, better: Better) -> Figure {
        Figure {
            name: name.into(),
            unit,
            better,
            samples: Vec::new(),
            notes: Vec::new(),
            chart: false,
        }
    }

    /// Marks it for the chart.
    pub fn charted(mut self) -> Figure {
        self.chart = true;
        self
    }

    /// Adds a sample to column `column`.
    pub fn push(&mut self, column: usize, value: f64) {
        if self.samples.len() <= column {
            self.samples.resize(column + 1, Vec::new());
        }
        self.samples[column].push(value);
    }

    /// Says why column `column` has no samples (shown in its cell).
    pub fn note(&mut self, column: usize, why: impl Into<String>) {
        if self.notes.len() <= column {
            self.notes.resize(column + 1, None);
        }
        self.notes[column] = Some(why.into());
    }

    /// The samples of `column` (empty if none).
    pub fn column(&self, column: usize) -> &[f64] {
        self.samples.get(column).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The median of `column`.
    pub fn median_of(&self, column: usize) -> Option<f64> {
        median(self.column(column))
    }

    /// median(a) / median(b), when both exist and the quotient means something.
    pub fn ratio(&self, a: usize, b: usize) -> Option<f64> {
        let (a, b) = (self.median_of(a)?, self.median_of(b)?);
        if b == 0.0 {
            return None;
        }
        Some(a / b)
    }

    /// Whether column `a` is ahead of (or level with) column `b`, or `None` when unknown.
    pub fn ahead(&self, a: usize, b: usize) -> Option<bool> {
        let (a, b) = (self.median_of(a)?, self.median_of(b)?);
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
    /// Column names, in order.
    pub columns: Vec<String>,
    /// The ratios printed: (numerator column, denominator column).
    pub ratios: Vec<(usize, usize)>,
    /// Its figures.
    pub figures: Vec<Figure>,
}

impl Section {
    /// The name of a ratio: "a / b".
    pub fn ratio_name(&self, (a, b): (usize, usize)) -> String {
        format!("{} / {}", self.columns[a], self.columns[b])
    }

    /// Every (figure, ratio) where the numerator is an arbiter column and is behind.
    pub fn behind(&self) -> Vec<String> {
        let mut out = Vec::new();
        for figure in &self.figures {
            for &(a, b) in &self.ratios {
                let arbiter_vs_other = self.columns[a].starts_with("arbiter")
                    && !self.columns[b].starts_with("arbiter");
                if arbiter_vs_other && figure.ahead(a, b) == Some(false) {
                    out.push(format!("*{}* ({})", figure.name, self.ratio_name((a, b))));
                }
            }
        }
        out
    }
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

/// A number with about three significant digits.
pub fn number(x: f64) -> String {
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

/// "median (min–max, n)" of samples.
fn summary(samples: &[f64]) -> Option<String> {
    let m = median(samples)?;
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(if samples.len() == 1 {
        number(m)
    } else {
        format!(
            "{} ({}–{}, n={})",
            number(m),
            number(min),
            number(max),
            samples.len()
        )
    })
}

fn cell(figure: &Figure, column: usize) -> String {
    summary(figure.column(column)).unwrap_or_else(|| {
        figure
            .notes
            .get(column)
            .cloned()
            .flatten()
            .unwrap_or_else(|| "—".into())
    })
}

/// The markdown of one section: a title, the method, and a table.
pub fn section_markdown(section: &Section) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n\n{}\n", section.title, section.method.trim());
    out.push_str("| figure | unit |");
    for column in &section.columns {
        let _ = write!(out, " {column} |");
    }
    for &pair in &section.ratios {
        let _ = write!(out, " {} |", section.ratio_name(pair));
    }
    out.push('\n');
    let width = 2 + section.columns.len() + section.ratios.len();
    out.push('|');
    out.push_str(&" --- |".repeat(width));
    out.push('\n');
    for f in &section.figures {
        let better = match f.better {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        };
        let _ = write!(out, "| {} | {} ({better}) |", f.name, f.unit);
        for column in 0..section.columns.len() {
            let _ = write!(out, " {} |", cell(f, column));
        }
        for &(a, b) in &section.ratios {
            let ratio = match (f.ratio(a, b), f.ahead(a, b)) {
                (Some(r), Some(ahead)) => {
                    format!("{}{}", number(r), if ahead { "" } else { " (behind)" })
                }
                (None, Some(ahead)) => format!("n/a{}", if ahead { "" } else { " (behind)" }),
                _ => "n/a".into(),
            };
            let _ = write!(out, " {ratio} |");
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The markdown of the sections, as tables.
pub fn markdown(sections: &[Section]) -> String {
    sections.iter().map(section_markdown).collect()
}

/// A horizontal bar chart of the charted ratios, on a log scale around 1.
pub fn svg(sections: &[Section]) -> String {
    let mut rows: Vec<(String, f64, bool)> = Vec::new();
    for section in sections {
        for figure in section.figures.iter().filter(|f| f.chart) {
            for &pair in &section.ratios {
                let (Some(ratio), Some(ahead)) =
                    (figure.ratio(pair.0, pair.1), figure.ahead(pair.0, pair.1))
                else {
                    continue;
                };
                if ratio > 0.0 {
                    let label = format!("{} — {}", figure.name, section.ratio_name(pair));
                    rows.push((label, ratio, ahead));
                }
            }
        }
    }
    let (label_w, plot_w, row_h, top) = (520.0, 420.0, 22.0, 56.0);
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
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">arbiter against gunicorn, uWSGI and the floors: median ratios (log scale)</text><text x="10" y="38" fill="#555">green: arbiter ahead (lower time or memory, more work done); red: behind. See BENCHMARKS.md.</text>"##
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
        for &x in a {
            f.push(0, x);
        }
        for &x in b {
            f.push(1, x);
        }
        f
    }

    fn section(figures: Vec<Figure>) -> Section {
        Section {
            title: "Boot".into(),
            method: "from start".into(),
            columns: vec!["arbiter".into(), "gunicorn".into(), "uWSGI".into()],
            ratios: vec![(0, 1), (0, 2)],
            figures,
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let f = figure(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0], Better::Lower);
        assert_eq!(f.ratio(0, 1), Some(0.1));
        assert_eq!(f.ahead(0, 1), Some(true));
        assert_eq!(f.ratio(0, 2), None);
        let g = figure(&[1.0], &[10.0], Better::Higher);
        assert_eq!(g.ahead(0, 1), Some(false));
        assert_eq!(figure(&[1.0], &[0.0], Better::Lower).ratio(0, 1), None);
    }

    #[test]
    fn markdown_has_a_row_per_figure_with_min_max_and_notes() {
        let mut f = figure(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0], Better::Lower);
        f.note(2, "not installed");
        let md = markdown(&[section(vec![f])]);
        assert!(
            md.contains("| figure | unit | arbiter | gunicorn | uWSGI | arbiter / gunicorn | arbiter / uWSGI |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| boot, N = 2 | ms (lower is better) | 2 (1–3, n=3) | 20 (10–30, n=3) | not installed | 0.10 | n/a |"
            ),
            "{md}"
        );
    }

    #[test]
    fn behind_names_only_arbiter_against_others() {
        let s = section(vec![figure(&[5.0], &[1.0], Better::Lower)]);
        assert_eq!(
            s.behind(),
            vec!["*boot, N = 2* (arbiter / gunicorn)".to_owned()]
        );
        let s = section(vec![figure(&[1.0], &[5.0], Better::Lower)]);
        assert!(s.behind().is_empty());
    }

    #[test]
    fn svg_draws_one_bar_per_charted_ratio() {
        let s = section(vec![
            figure(&[1.0], &[10.0], Better::Lower),
            figure(&[5.0], &[1.0], Better::Lower),
            Figure::new("not charted", "ms", Better::Lower),
        ]);
        let svg = svg(&[s]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#2e8b57\"").count(), 1);
        assert_eq!(svg.matches("fill=\"#c0392b\"").count(), 1);
    }
}
