//! Ranking metrics with the trec_eval / BEIR (pytrec_eval) definitions:
//! linear graded gains, log2(rank + 1) discounts, relevant means grade > 0.
//!
//! Every function reads a ranking through its first occurrences only, so a
//! run with repeated document ids (several chunks of one document) can never
//! score above a perfect run.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::beir::Qrels;

/// Scores averaged over the queries that have at least one relevant
/// judgement; all zero when there are none.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Metrics {
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    /// How many queries the averages are over.
    pub queries: usize,
}

/// Keeps the first occurrence of each id, in order: retrieval returns
/// chunks, and a document ranks where its best chunk does.
pub fn dedup_ranked<I, S>(ids: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut seen = HashSet::new();
    ids.into_iter()
        .filter_map(|id| {
            let id = id.as_ref();
            seen.insert(id.to_owned()).then(|| id.to_owned())
        })
        .collect()
}

/// The first `k` distinct ids of `ranking`.
fn top_k<S: AsRef<str>>(ranking: &[S], k: usize) -> impl Iterator<Item = &str> {
    let mut seen = HashSet::new();
    ranking.iter().map(AsRef::as_ref).filter(move |id| seen.insert(*id)).take(k)
}

fn grade(judgements: &HashMap<String, u32>, id: &str) -> u32 {
    judgements.get(id).copied().unwrap_or(0)
}

/// The discount of 0-based position `i`: log2(rank + 1) with rank = i + 1.
fn discount(i: usize) -> f64 {
    (i as f64 + 2.0).log2()
}

/// nDCG@k of one query; 0 when it has no relevant judgement.
pub fn ndcg_at<S: AsRef<str>>(judgements: &HashMap<String, u32>, ranking: &[S], k: usize) -> f64 {
    let dcg: f64 =
        top_k(ranking, k).enumerate().map(|(i, id)| f64::from(grade(judgements, id)) / discount(i)).sum();
    let mut ideal: Vec<u32> = judgements.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let ideal_dcg: f64 = ideal.iter().take(k).enumerate().map(|(i, &g)| f64::from(g) / discount(i)).sum();
    if ideal_dcg > 0.0 {
        dcg / ideal_dcg
    } else {
        0.0
    }
}

/// Relevant documents in the top `k` over all relevant documents of one
/// query; 0 when it has none.
pub fn recall_at<S: AsRef<str>>(judgements: &HashMap<String, u32>, ranking: &[S], k: usize) -> f64 {
    let relevant = judgements.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = top_k(ranking, k).filter(|id| grade(judgements, id) > 0).count();
    found as f64 / relevant as f64
}

/// 1 / rank of the first relevant document within the top `k`, else 0.
pub fn mrr_at<S: AsRef<str>>(judgements: &HashMap<String, u32>, ranking: &[S], k: usize) -> f64 {
    top_k(ranking, k).position(|id| grade(judgements, id) > 0).map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// Averages the per-query metrics of `runs` (query id -> ranked document
/// ids) over every query in `qrels` with a relevant judgement. A judged query
/// missing from `runs` scores zero rather than being skipped, so an engine
/// cannot gain by returning nothing; runs for unjudged queries are ignored.
pub fn evaluate(qrels: &Qrels, runs: &HashMap<String, Vec<String>>) -> Metrics {
    // Sorted so that the floating-point sums do not depend on hash order.
    let mut query_ids: Vec<&String> = qrels
        .iter()
        .filter(|(_, judgements)| judgements.values().any(|&g| g > 0))
        .map(|(id, _)| id)
        .collect();
    query_ids.sort_unstable();
    if query_ids.is_empty() {
        return Metrics::default();
    }

    let mut sum = Metrics::default();
    for id in &query_ids {
        let judgements = &qrels[*id];
        let ranking = runs.get(*id).map_or(&[][..], Vec::as_slice);
        sum.ndcg_at_10 += ndcg_at(judgements, ranking, 10);
        sum.recall_at_10 += recall_at(judgements, ranking, 10);
        sum.recall_at_100 += recall_at(judgements, ranking, 100);
        sum.mrr_at_10 += mrr_at(judgements, ranking, 10);
    }
    let n = query_ids.len() as f64;
    Metrics {
        ndcg_at_10: sum.ndcg_at_10 / n,
        recall_at_10: sum.recall_at_10 / n,
        recall_at_100: sum.recall_at_100 / n,
        mrr_at_10: sum.mrr_at_10 / n,
        queries: query_ids.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-9;

    fn judged(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|&(id, g)| (id.to_owned(), g)).collect()
    }

    fn ranked(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|&id| id.to_owned()).collect()
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!((actual - expected).abs() < EPS, "{what}: {actual} != {expected}");
    }

    struct Case {
        name: &'static str,
        judgements: &'static [(&'static str, u32)],
        ranking: &'static [&'static str],
        k: usize,
        ndcg: f64,
        recall: f64,
        mrr: f64,
    }

    #[test]
    fn per_query_metrics_match_hand_computation() {
        let l3 = 3f64.log2();
        let l4 = 4f64.log2();
        let l5 = 5f64.log2();
        let cases = [
            // DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
            // IDCG = 1/log2(2) + 1/log2(3) = 1.63093 -> nDCG = 0.65092
            // first relevant at rank 2 -> MRR = 1/2; both found -> recall 2/2
            Case {
                name: "binary",
                judgements: &[("a", 1), ("b", 1)],
                ranking: &["x", "a", "y", "b"],
                k: 10,
                ndcg: (1.0 / l3 + 1.0 / l5) / (1.0 + 1.0 / l3),
                recall: 1.0,
                mrr: 0.5,
            },
            // Linear gains: DCG = 1/log2(2) + 2/log2(3) = 1 + 1.26186 = 2.26186
            // IDCG (a:2 first) = 2/log2(2) + 1/log2(3) = 2.63093 -> nDCG = 0.85972
            // c (grade 0) is judged but not relevant: recall counts a, b only.
            Case {
                name: "graded",
                judgements: &[("a", 2), ("b", 1), ("c", 0)],
                ranking: &["b", "a", "c"],
                k: 10,
                ndcg: (1.0 + 2.0 / l3) / (2.0 + 1.0 / l3),
                recall: 1.0,
                mrr: 1.0,
            },
            // A grade-0 document first contributes no gain and is not the
            // first relevant one: DCG = 1/log2(3), IDCG = 1 -> 0.63093; MRR 1/2.
            Case {
                name: "judged non-relevant first",
                judgements: &[("a", 1), ("c", 0)],
                ranking: &["c", "a"],
                k: 10,
                ndcg: 1.0 / l3,
                recall: 1.0,
                mrr: 0.5,
            },
            Case {
                name: "nothing relevant retrieved",
                judgements: &[("a", 1), ("b", 2)],
                ranking: &["x", "y", "z"],
                k: 10,
                ndcg: 0.0,
                recall: 0.0,
                mrr: 0.0,
            },
            Case {
                name: "empty ranking",
                judgements: &[("a", 1)],
                ranking: &[],
                k: 10,
                ndcg: 0.0,
                recall: 0.0,
                mrr: 0.0,
            },
            // k = 2 cuts both the run and the ideal list: only a (rank 2)
            // counts. DCG = 1/log2(3); IDCG = 1 + 1/log2(3) (two of three
            // relevant fit in 2 slots) -> 0.38685; recall 1/3; MRR 1/2.
            Case {
                name: "cut-off",
                judgements: &[("a", 1), ("b", 1), ("c", 1)],
                ranking: &["x", "a", "b", "c"],
                k: 2,
                ndcg: (1.0 / l3) / (1.0 + 1.0 / l3),
                recall: 1.0 / 3.0,
                mrr: 0.5,
            },
            // Repeats are skipped before the cut: the distinct ranking is
            // [a, x, b], so b is at rank 3, inside k = 3.
            // DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) = 1.63093 -> 0.91972
            Case {
                name: "duplicates",
                judgements: &[("a", 1), ("b", 1)],
                ranking: &["a", "a", "x", "a", "b"],
                k: 3,
                ndcg: (1.0 + 1.0 / l4) / (1.0 + 1.0 / l3),
                recall: 1.0,
                mrr: 1.0,
            },
            Case {
                name: "k = 0",
                judgements: &[("a", 1)],
                ranking: &["a"],
                k: 0,
                ndcg: 0.0,
                recall: 0.0,
                mrr: 0.0,
            },
            Case {
                name: "no relevant judgement",
                judgements: &[("a", 0)],
                ranking: &["a"],
                k: 10,
                ndcg: 0.0,
                recall: 0.0,
                mrr: 0.0,
            },
        ];
        for case in &cases {
            let judgements = judged(case.judgements);
            assert_close(ndcg_at(&judgements, case.ranking, case.k), case.ndcg, case.name);
            assert_close(recall_at(&judgements, case.ranking, case.k), case.recall, case.name);
            assert_close(mrr_at(&judgements, case.ranking, case.k), case.mrr, case.name);
        }
    }

    #[test]
    fn the_brief_example_is_0_6509() {
        let judgements = judged(&[("a", 1), ("b", 1)]);
        let ndcg = ndcg_at(&judgements, &["x", "a", "y", "b"], 10);
        assert!((ndcg - 0.6509).abs() < 5e-5, "{ndcg}");
    }

    #[test]
    fn dedup_keeps_first_occurrences_in_order() {
        assert_eq!(dedup_ranked(["a", "x", "a", "b", "x"]), ranked(&["a", "x", "b"]));
        assert_eq!(dedup_ranked(Vec::<String>::new()), Vec::<String>::new());
    }

    #[test]
    fn evaluate_averages_over_judged_queries() {
        let qrels: Qrels = HashMap::from([
            ("q1".into(), judged(&[("a", 1), ("b", 1)])),
            ("q2".into(), judged(&[("c", 1)])),
            // Only non-relevant judgements: excluded from the average.
            ("q3".into(), judged(&[("d", 0)])),
            // Judged but never run: counts as zero.
            ("q4".into(), judged(&[("e", 1)])),
        ]);
        // q2's relevant doc is at rank 11: outside @10, inside @100.
        let mut q2: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        q2.push("c".into());
        let runs = HashMap::from([
            ("q1".to_owned(), ranked(&["x", "a", "x", "y", "b"])),
            ("q2".to_owned(), q2),
            ("q3".to_owned(), ranked(&["d"])),
            ("unjudged".to_owned(), ranked(&["a"])),
        ]);
        let metrics = evaluate(&qrels, &runs);
        let l3 = 3f64.log2();
        let l5 = 5f64.log2();
        // q1 after dedup is [x, a, y, b]: the 0.65092 case; q2 and q4 score 0
        // on everything @10; recall@100 is 1 for q1 and q2.
        assert_eq!(metrics.queries, 3);
        assert_close(metrics.ndcg_at_10, (1.0 / l3 + 1.0 / l5) / (1.0 + 1.0 / l3) / 3.0, "ndcg");
        assert_close(metrics.recall_at_10, 1.0 / 3.0, "recall@10");
        assert_close(metrics.recall_at_100, 2.0 / 3.0, "recall@100");
        assert_close(metrics.mrr_at_10, 0.5 / 3.0, "mrr");
    }

    #[test]
    fn evaluate_without_judged_queries_is_zero() {
        let empty = evaluate(&Qrels::new(), &HashMap::new());
        assert_eq!(empty, Metrics::default());
        let unjudged: Qrels = HashMap::from([("q".into(), judged(&[("a", 0)]))]);
        let runs = HashMap::from([("q".to_owned(), ranked(&["a"]))]);
        assert_eq!(evaluate(&unjudged, &runs), Metrics::default());
    }
}
