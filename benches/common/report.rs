//! The report: one Markdown table printer, number formats, and the PASS/MISS list of targets.

use std::time::Duration;

/// A Markdown table, printed with its columns padded to their widest cell.
pub struct Table {
    /// Headers, and whether the column holds numbers (right-aligned).
    columns: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers; a header starting with `>` is a right-aligned
    /// column of numbers (the `>` is not printed).
    pub fn new(headers: &[&str]) -> Table {
        let columns = headers.iter().map(|h| match h.strip_prefix('>') {
            Some(h) => (h.to_string(), true),
            None => (h.to_string(), false),
        });
        Table {
            columns: columns.collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are empty).
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    /// Print it, after a blank line.
    pub fn print(&self) {
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let width = |i: usize| {
            let cells = self.rows.iter().map(|r| cell(r, i).chars().count());
            cells.chain([self.columns[i].0.chars().count(), 3]).max().unwrap_or(3)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let line = |cells: Vec<String>| {
            let padded = cells
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((c, (_, right)), w)| match right {
                    true => format!("{c:>w$}"),
                    false => format!("{c:<w$}"),
                });
            println!("| {} |", padded.collect::<Vec<_>>().join(" | "));
        };
        println!();
        line(self.columns.iter().map(|(h, _)| h.clone()).collect());
        let rule = self.columns.iter().zip(&widths).map(|((_, right), w)| match right {
            true => format!("{}:", "-".repeat(w - 1)),
            false => format!(":{}", "-".repeat(w - 1)),
        });
        println!("| {} |", rule.collect::<Vec<_>>().join(" | "));
        for r in &self.rows {
            line((0..self.columns.len()).map(|i| cell(r, i)).collect());
        }
    }
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// A difference of nanoseconds as signed milliseconds.
pub fn signed_ms(nanos: i128) -> String {
    format!("{:+.3}", nanos as f64 / 1e6)
}

/// `b - a` in nanoseconds, signed.
pub fn diff_ns(a: Duration, b: Duration) -> i128 {
    b.as_nanos() as i128 - a.as_nanos() as i128
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `PASS` or `MISS`.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// Every target checked in a run, for the summary at its end. A `MISS` does not fail a run.
#[derive(Default)]
pub struct Targets(Vec<(String, bool)>);

impl Targets {
    /// Record a target; its verdict.
    pub fn check(&mut self, what: impl Into<String>, ok: bool) -> &'static str {
        self.0.push((what.into(), ok));
        verdict(ok)
    }

    /// Print every verdict and the counts.
    pub fn print(&self) {
        let missed = self.0.iter().filter(|(_, ok)| !ok).count();
        for (what, ok) in &self.0 {
            println!("  {}  {what}", verdict(*ok));
        }
        println!(
            "  {} PASS, {missed} MISS (a MISS does not fail the run)",
            self.0.len() - missed
        );
    }
}
