//! Summaries of samples, the printed table and the JSON result file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// p50, p99, min, max and mean of a sample set (nearest-rank quantiles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Summary::default();
        }
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Summary {
            count: sorted.len(),
            p50: rank(0.5),
            p99: rank(0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// A three-column table: what, measured value, target/verdict.
#[derive(Default)]
pub struct Table {
    rows: Vec<[String; 3]>,
}

impl Table {
    pub fn row(&mut self, what: impl Into<String>, value: impl Into<String>, target: impl Into<String>) {
        self.rows.push([what.into(), value.into(), target.into()]);
    }

    pub fn section(&mut self, title: &str) {
        self.rows.push([format!("-- {title}"), String::new(), String::new()]);
    }

    pub fn render(&self) -> String {
        let header = ["metric".to_string(), "value".to_string(), "target".to_string()];
        let width = |i: usize| self.rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0);
        let (w0, w1) = (width(0), width(1));
        let mut out = String::new();
        for row in [&header].into_iter().chain(&self.rows) {
            let line = format!("{:<w0$}  {:>w1$}  {}", row[0], row[1], row[2]);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `<dir>/<name>-<UTC timestamp>.json`, pretty-printed.
pub fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}-{}.json", utc_stamp()));
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `YYYYMMDDTHHMMSSZ` of now.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{}Z", oak_core::utc::UtcTime::from_unix(secs as i64).compact("T"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.count, s.p50, s.p99, s.min, s.max), (100, 50.0, 99.0, 1.0, 100.0));
        assert_eq!(s.mean, 50.5);
        assert_eq!(Summary::of(&[]), Summary::default());
        assert_eq!(Summary::of(&[3.0]).p99, 3.0);
    }

    #[test]
    fn stamps_are_compact_utc() {
        let stamp = utc_stamp();
        assert_eq!(stamp.len(), 16);
        assert!(stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z'), "{stamp}");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::default();
        t.row("throughput", "2500.0 /s", ">= 2000 /s PASS");
        t.row("p99", "0.1 ms", "");
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("throughput  2500.0 /s  >= 2000"));
        // Values are right-aligned: both end in the same column.
        assert_eq!(lines[2], format!("{:<10}  {:>9}", "p99", "0.1 ms"));
    }
}
