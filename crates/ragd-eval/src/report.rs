//! What one evaluation run produced: quality metrics, per-stage latencies and
//! the ingest cost, as JSON (for `--json FILE` and comparisons between runs)
//! and as a terminal table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::Metrics;

/// Latency of one stage over all queries, in milliseconds. Percentiles use
/// the nearest-rank method: the smallest sample with at least p% of the
/// samples at or below it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// `None` when there are no samples, since no percentile exists.
    pub fn from_durations(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_unstable_by(f64::total_cmp);
        Some(Self {
            p50_ms: nearest_rank(&ms, 50),
            p95_ms: nearest_rank(&ms, 95),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        })
    }
}

/// The sample at 1-based rank ceil(percent / 100 * n) of a sorted, non-empty
/// slice; integer arithmetic so that 95% of 20 is exactly rank 19.
fn nearest_rank(sorted: &[f64], percent: usize) -> f64 {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestSummary {
    pub documents: usize,
    pub chunks: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Dataset name, e.g. `scifact`.
    pub dataset: String,
    pub split: String,
    /// Retrieval configuration, e.g. `dense`, `hybrid`, `hybrid+rerank`.
    pub mode: String,
    pub metrics: Metrics,
    /// Stage name -> latency; sorted so the output is stable.
    pub stages: BTreeMap<String, Latency>,
    /// `None` when the run reused an already ingested collection.
    pub ingest: Option<IngestSummary>,
}

/// A plain-text summary for the terminal, ending with a newline.
pub fn render_table(report: &Report) -> String {
    let m = &report.metrics;
    let mut out =
        format!("{} / {} / {}: {} queries\n\n", report.dataset, report.split, report.mode, m.queries);
    out.push_str(&format!("{:<10}  {:>6}\n", "metric", "value"));
    for (name, value) in [
        ("nDCG@10", m.ndcg_at_10),
        ("Recall@10", m.recall_at_10),
        ("Recall@100", m.recall_at_100),
        ("MRR@10", m.mrr_at_10),
    ] {
        out.push_str(&format!("{name:<10}  {value:>6.4}\n"));
    }

    if !report.stages.is_empty() {
        let width = report.stages.keys().map(|s| s.chars().count()).max().unwrap_or(0).max(5);
        out.push_str(&format!("\n{:<width$}  {:>8}  {:>8}  {:>8}\n", "stage", "p50 ms", "p95 ms", "mean ms"));
        for (stage, l) in &report.stages {
            out.push_str(&format!(
                "{stage:<width$}  {:>8.2}  {:>8.2}  {:>8.2}\n",
                l.p50_ms, l.p95_ms, l.mean_ms
            ));
        }
    }

    if let Some(ingest) = &report.ingest {
        out.push_str(&format!(
            "\ningest: {} documents, {} chunks in {:.1} s",
            ingest.documents, ingest.chunks, ingest.seconds
        ));
        if ingest.seconds > 0.0 {
            out.push_str(&format!(" ({:.1} documents/s)", ingest.documents as f64 / ingest.seconds));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        // (samples, p50, p95, mean). Ranks: ceil(0.50 n), ceil(0.95 n).
        let cases: &[(Vec<Duration>, f64, f64, f64)] = &[
            // n = 1: both ranks are 1.
            (ms(&[7]), 7.0, 7.0, 7.0),
            // n = 2: ranks 1 and 2.
            (ms(&[10, 20]), 10.0, 20.0, 15.0),
            // n = 20 (1..=20 ms, shuffled): ranks 10 and 19; mean 210 / 20.
            (ms(&[20, 3, 17, 1, 9, 14, 6, 11, 19, 2, 8, 16, 5, 12, 18, 4, 10, 15, 7, 13]), 10.0, 19.0, 10.5),
            // n = 21: ranks ceil(10.5) = 11 and ceil(19.95) = 20.
            (ms(&(1..=21).collect::<Vec<_>>()), 11.0, 20.0, 11.0),
            // One slow outlier in 10 moves p95 (rank 10) but not p50 (rank 5).
            (ms(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 991]), 1.0, 991.0, 100.0),
        ];
        for (samples, p50, p95, mean) in cases {
            let l = Latency::from_durations(samples).expect("non-empty");
            assert_eq!((l.p50_ms, l.p95_ms), (*p50, *p95), "{samples:?}");
            assert!((l.mean_ms - mean).abs() < 1e-9, "{samples:?}: mean {}", l.mean_ms);
        }
        let sub_ms = Latency::from_durations(&[Duration::from_micros(1500)]).expect("non-empty");
        assert!((sub_ms.p50_ms - 1.5).abs() < 1e-9);
        assert_eq!(Latency::from_durations(&[]), None);
    }

    fn report(ingest: Option<IngestSummary>) -> Report {
        Report {
            dataset: "scifact".into(),
            split: "test".into(),
            mode: "hybrid".into(),
            metrics: Metrics {
                ndcg_at_10: 0.65092,
                recall_at_10: 0.8,
                recall_at_100: 0.95,
                mrr_at_10: 0.5,
                queries: 300,
            },
            stages: BTreeMap::from([
                ("search".into(), Latency { p50_ms: 3.1, p95_ms: 5.25, mean_ms: 3.4 }),
                ("embed_query".into(), Latency { p50_ms: 12.0, p95_ms: 20.0, mean_ms: 13.375 }),
            ]),
            ingest,
        }
    }

    #[test]
    fn table_layout() {
        let with_ingest = report(Some(IngestSummary { documents: 5183, chunks: 12000, seconds: 100.0 }));
        let expected = "\
scifact / test / hybrid: 300 queries

metric       value
nDCG@10     0.6509
Recall@10   0.8000
Recall@100  0.9500
MRR@10      0.5000

stage          p50 ms    p95 ms   mean ms
embed_query     12.00     20.00     13.38
search           3.10      5.25      3.40

ingest: 5183 documents, 12000 chunks in 100.0 s (51.8 documents/s)
";
        assert_eq!(render_table(&with_ingest), expected);

        let mut bare = report(None);
        bare.stages.clear();
        let table = render_table(&bare);
        assert!(table.ends_with("MRR@10      0.5000\n"), "{table}");
        assert!(!table.contains("stage") && !table.contains("ingest"), "{table}");
    }

    #[test]
    fn json_shape() {
        let json = serde_json::to_value(report(None)).expect("serialize");
        assert_eq!(json["dataset"], "scifact");
        assert_eq!(json["metrics"]["ndcg_at_10"], 0.65092);
        assert_eq!(json["metrics"]["queries"], 300);
        assert_eq!(json["stages"]["search"]["p95_ms"], 5.25);
        assert!(json["ingest"].is_null());
    }
}
