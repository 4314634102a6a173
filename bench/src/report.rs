//! The results table: absolute figures per path and ferry's ratios against
//! each baseline, printed as markdown and saved as JSON and markdown.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

/// One measured quantity across paths and rounds.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub scenario: String,
    /// Its unit.
    pub unit: String,
    /// Whether a larger value is better (for reading ratios).
    pub higher_is_better: bool,
    /// Path name -> one value per round.
    pub values: BTreeMap<String, Vec<f64>>,
}

/// All rows of one run, plus notes about what was not measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows in the order they were first recorded.
    pub rows: Vec<Row>,
    /// Skipped baselines and other remarks.
    pub notes: Vec<String>,
    /// Path names in display order.
    pub paths: Vec<String>,
    /// Extra ratio columns besides ferry's: (numerator path, denominator path).
    pub pairs: Vec<(String, String)>,
}

/// A path's values in one row: the median, with the spread (min-max) when
/// there is more than one.
fn cell(v: &[f64]) -> String {
    let (lo, hi) = spread(v);
    if v.len() > 1 {
        format!("{} ({}-{})", fmt(median(v)), fmt(lo), fmt(hi))
    } else {
        fmt(median(v))
    }
}

/// The smallest and largest of `v`.
fn spread(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

impl Report {
    /// Records one value for `path` in `scenario`.
    pub fn record(&mut self, scenario: &str, unit: &str, higher_is_better: bool, path: &str, value: f64) {
        if !self.paths.iter().any(|p| p == path) {
            self.paths.push(path.to_string());
        }
        let row = match self.rows.iter_mut().position(|r| r.scenario == scenario) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    scenario: scenario.into(),
                    unit: unit.into(),
                    higher_is_better,
                    values: BTreeMap::new(),
                });
                self.rows.last_mut().unwrap()
            }
        };
        row.values.entry(path.into()).or_default().push(value);
    }

    /// The median of a path's values in a scenario.
    pub fn value(&self, scenario: &str, path: &str) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.scenario == scenario)?;
        row.values.get(path).map(|v| median(v))
    }

    /// The table as markdown: medians per path, then ferry / each other path.
    pub fn markdown(&self, title: &str) -> String {
        let others: Vec<&String> = self.paths.iter().filter(|p| *p != "ferry").collect();
        let mut out = format!("## {title}\n\n| scenario | unit |");
        for p in &self.paths {
            let _ = write!(out, " {p} |");
        }
        let mut ratios: Vec<(&str, &str)> = others.iter().map(|p| ("ferry", p.as_str())).collect();
        ratios.extend(
            self.pairs
                .iter()
                .filter(|(a, b)| self.paths.contains(a) && self.paths.contains(b))
                .map(|(a, b)| (a.as_str(), b.as_str())),
        );
        for (a, b) in &ratios {
            let _ = write!(out, " {a} / {b} |");
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---:|".repeat(self.paths.len() + ratios.len()));
        out.push('\n');
        for r in &self.rows {
            let _ = write!(out, "| {} | {} |", r.scenario, r.unit);
            for p in &self.paths {
                match r.values.get(p) {
                    Some(v) => {
                        let _ = write!(out, " {} |", cell(v));
                    }
                    None => out.push_str(" – |"),
                }
            }
            for (a, b) in &ratios {
                match (r.values.get(*a), r.values.get(*b)) {
                    (Some(f), Some(o)) if median(o) != 0.0 => {
                        let _ = write!(out, " {:.2} |", median(f) / median(o));
                    }
                    _ => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out.push_str(
            "\nValues are medians over rounds, with the spread (min-max) in brackets when there was more than one; ",
        );
        out.push_str("the paths ran alternately in each round. ");
        out.push_str(
            "Ratios are the first path's value divided by the second's: above 1 is better where higher is better ",
        );
        out.push_str("(Gbit/s, conn/s, fairness), below 1 is better for latency, CPU and memory.\n");
        for n in &self.notes {
            let _ = writeln!(out, "\n- {n}");
        }
        out
    }

    /// The raw values as JSON.
    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                let medians: BTreeMap<_, _> = r.values.iter().map(|(p, v)| (p.clone(), median(v))).collect();
                let spreads: BTreeMap<_, _> = r.values.iter().map(|(p, v)| (p.clone(), spread(v))).collect();
                serde_json::json!({
                    "scenario": r.scenario, "unit": r.unit, "higher_is_better": r.higher_is_better,
                    "rounds": r.values, "median": medians, "min_max": spreads,
                })
            })
            .collect();
        serde_json::json!({ "paths": self.paths, "rows": rows, "notes": self.notes })
    }

    /// Writes `NAME.json` and `NAME.md` into `dir`.
    pub fn save(&self, dir: &Path, name: &str, title: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(&self.json())?)?;
        std::fs::write(dir.join(format!("{name}.md")), self.markdown(title))
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_the_spread_when_there_are_several_rounds() {
        let mut r = Report::default();
        r.record("rt", "µs", false, "ferry", 20.0);
        r.record("rt", "µs", false, "ferry", 40.0);
        r.record("rt", "µs", false, "ferry", 30.0);
        r.record("rt", "µs", false, "direct", 5.0);
        let md = r.markdown("t");
        assert!(md.contains("| 30.0 (20.0-40.0) |"), "{md}");
        assert!(md.contains("| 5.000 |"), "{md}");
        assert_eq!(r.json()["rows"][0]["min_max"]["ferry"], serde_json::json!([20.0, 40.0]));
    }
}
