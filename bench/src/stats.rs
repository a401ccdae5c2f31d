//! Latency summaries and the report printed at the end of each run.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Median, tail and extremes of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample.
    pub min_us: f64,
    /// 50th percentile (nearest rank).
    pub median_us: f64,
    /// 90th percentile (nearest rank).
    pub p90_us: f64,
    /// 99th percentile (nearest rank).
    pub p99_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Summary {
    /// Summarise `samples`; `None` when there are none.
    pub fn from_durations(samples: &[Duration]) -> Option<Self> {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        Self::from_micros(&mut us)
    }

    /// Summarise samples given in microseconds (sorted in place).
    pub fn from_micros(us: &mut [f64]) -> Option<Self> {
        if us.is_empty() {
            return None;
        }
        us.sort_by(f64::total_cmp);
        let sum: f64 = us.iter().sum();
        Some(Self {
            count: us.len(),
            min_us: us[0],
            median_us: percentile(us, 50.0),
            p90_us: percentile(us, 90.0),
            p99_us: percentile(us, 99.0),
            max_us: us[us.len() - 1],
            mean_us: sum / us.len() as f64,
        })
    }

    /// Human-readable one-liner, in milliseconds.
    pub fn line(&self) -> String {
        format!(
            "n={} median={:.3}ms p90={:.3}ms p99={:.3}ms max={:.3}ms mean={:.3}ms min={:.3}ms",
            self.count,
            self.median_us / 1e3,
            self.p90_us / 1e3,
            self.p99_us / 1e3,
            self.max_us / 1e3,
            self.mean_us / 1e3,
            self.min_us / 1e3,
        )
    }

    /// The summary as JSON, in milliseconds.
    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "median_ms": self.median_us / 1e3,
            "p90_ms": self.p90_us / 1e3,
            "p99_ms": self.p99_us / 1e3,
            "max_ms": self.max_us / 1e3,
            "mean_ms": self.mean_us / 1e3,
            "min_ms": self.min_us / 1e3,
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty data: the smallest sample
/// such that at least `p` percent of the samples are less than or equal to it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Named results of one benchmark run, printed as `key: value` lines or JSON.
#[derive(Debug, Default)]
pub struct Report {
    name: String,
    fields: Vec<(String, Value, String)>,
}

impl Report {
    /// An empty report for the subcommand `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            fields: Vec::new(),
        }
    }

    /// Add a field whose human form is its JSON form.
    pub fn add(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        let human = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => match n.as_f64() {
                Some(f) if !n.is_i64() && !n.is_u64() => format!("{f:.1}"),
                _ => n.to_string(),
            },
            other => other.to_string(),
        };
        self.fields.push((key.to_owned(), value, human));
    }

    /// Add a latency summary (or a note that there were no samples).
    pub fn add_summary(&mut self, key: &str, summary: Option<Summary>) {
        match summary {
            Some(s) => self.fields.push((key.to_owned(), s.to_json(), s.line())),
            None => self
                .fields
                .push((key.to_owned(), Value::Null, "no samples".to_owned())),
        }
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("benchmark".into(), Value::String(self.name.clone()));
        for (k, v, _) in &self.fields {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }

    /// Print to stdout, as JSON or as aligned lines.
    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.to_json());
            return;
        }
        println!("== {} ==", self.name);
        let width = self
            .fields
            .iter()
            .map(|(k, _, _)| k.len())
            .max()
            .unwrap_or(0);
        for (k, _, human) in &self.fields {
            println!("{k:<width$}  {human}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut data: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        let s = Summary::from_micros(&mut data).expect("non-empty");
        assert_eq!(s.count, 100);
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.median_us, 50.0);
        assert_eq!(s.p90_us, 90.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.max_us, 100.0);
        assert!((s.mean_us - 50.5).abs() < 1e-9);
    }

    #[test]
    fn percentile_of_small_sets() {
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0], 99.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.0), 1.0);
    }

    #[test]
    fn empty_has_no_summary() {
        assert!(Summary::from_durations(&[]).is_none());
    }

    #[test]
    fn report_json_keeps_fields() {
        let mut r = Report::new("ingest");
        r.add("ok", 5u64);
        r.add_summary(
            "latency",
            Summary::from_durations(&[Duration::from_millis(2)]),
        );
        let v = r.to_json();
        assert_eq!(v["benchmark"], "ingest");
        assert_eq!(v["ok"], 5);
        assert_eq!(v["latency"]["median_ms"], 2.0);
    }
}
