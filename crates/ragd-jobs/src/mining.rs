//! Hard negatives for the training jobs, mined with ragd's own hybrid
//! search: for each query, the top hits of a collection that are none of
//! its judged answers. Both `finetune-reranker` (several per query) and
//! `finetune-embedder` (one per pair, when asked) use them.

use std::collections::{HashMap, HashSet};

use ragd_core::{Filter, SearchMode, TenantId, TopK};
use ragd_retrieve::SearchRequest;
use ragd_store::CollectionRecord;
use serde_json::Value;

use crate::Result;
use crate::finetune::TrainingJobs;

/// Hits looked at per query beyond the negatives wanted, since the judged
/// answers among them are skipped.
const MINING_MARGIN: usize = 10;

/// The most unjudged top hits a job may pass over before taking negatives.
const MAX_SKIP_HITS: usize = 50;

/// Both training jobs check `skip_hits` the same way.
pub(crate) fn check_skip_hits(skip_hits: usize) -> std::result::Result<(), String> {
    if skip_hits > MAX_SKIP_HITS {
        return Err(format!(
            "skip_hits must be at most {MAX_SKIP_HITS} (the unjudged top hits passed over before negatives are taken)"
        ));
    }
    Ok(())
}

/// A query with the passages judged to answer it; `documents` are the
/// judged BEIR ids, which the hits of a collection ingested by `ragd eval`
/// carry as `beir_id`.
pub(crate) struct Judged {
    pub query: String,
    pub positives: Vec<String>,
    pub documents: HashSet<String>,
}

/// Groups `(query, positive, judged BEIR id)` by query, in first-seen order.
pub(crate) fn group_by_query(pairs: impl IntoIterator<Item = (String, String, Option<String>)>) -> Vec<Judged> {
    let mut judged: Vec<Judged> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (query, positive, document) in pairs {
        let slot = *at.entry(query.clone()).or_insert_with(|| {
            judged.push(Judged { query, positives: Vec::new(), documents: HashSet::new() });
            judged.len() - 1
        });
        judged[slot].positives.push(positive);
        judged[slot].documents.extend(document);
    }
    judged
}

impl TrainingJobs {
    /// Up to `negatives` passages for each of `judged`, in its order: the
    /// query's top hybrid hits in `collection` that are neither a judged
    /// document nor a piece of one of its positives, after passing over the
    /// first `skip` such hits.
    pub(crate) async fn mine(
        &self,
        tenant: &TenantId,
        collection: &CollectionRecord,
        judged: &[Judged],
        skip: usize,
        negatives: usize,
    ) -> Result<Vec<Vec<String>>> {
        let mut all = Vec::with_capacity(judged.len());
        for item in judged {
            let depth = (skip + negatives + item.positives.len() + MINING_MARGIN).min(TopK::MAX);
            let request = SearchRequest {
                tenant: tenant.clone(),
                target: collection.index_target(),
                embedder: collection.embedder.clone(),
                query: item.query.clone(),
                top_k: TopK::new(depth)?,
                mode: SearchMode::Hybrid,
                filter: Filter::default(),
                candidates: None,
                rrf_k: None,
                principals: None,
                reranker: None,
            };
            let hits = self.retriever.search(request).await.map_err(ragd_core::Error::from)?.hits;
            let answers: Vec<String> = item.positives.iter().map(|p| normalized(p)).collect();
            let unjudged = hits.iter().map(|hit| {
                let judged_id = hit
                    .payload
                    .metadata
                    .get("beir_id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| item.documents.contains(id));
                let text = normalized(&hit.payload.text);
                let overlaps =
                    answers.iter().any(|answer| answer.contains(&text) || text.contains(answer.as_str()));
                (!judged_id && !overlaps && !text.is_empty())
                    .then(|| ragd_retrieve::passage_text(&hit.payload))
            });
            let mined = take_negatives(unjudged, skip, negatives);
            all.push(mined);
        }
        Ok(all)
    }
}

/// The distinct passages among `ranked` (`None` for a hit that answers the
/// query) from the `skip + 1`th on, at most `negatives` of them.
fn take_negatives(
    ranked: impl Iterator<Item = Option<String>>,
    skip: usize,
    negatives: usize,
) -> Vec<String> {
    let mut distinct: Vec<String> = Vec::new();
    for passage in ranked.flatten() {
        if !distinct.contains(&passage) {
            distinct.push(passage);
        }
        if distinct.len() == skip + negatives {
            break;
        }
    }
    distinct.split_off(skip.min(distinct.len()))
}

/// Lowercase with single spaces, so a chunk is found inside the positive it
/// was cut from whatever the whitespace.
fn normalized(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_found_inside_their_positive_whatever_the_spacing() {
        let positive = normalized("Title  Here\nThe   first sentence. The second.");
        assert!(positive.contains(&normalized("the FIRST sentence.\n The second.")));
        assert!(!positive.contains(&normalized("another passage")));
    }

    #[test]
    fn negatives_are_distinct_unjudged_passages_after_the_skipped_ones() {
        let ranked = |items: &[Option<&str>]| {
            items.iter().map(|p| p.map(str::to_owned)).collect::<Vec<_>>().into_iter()
        };
        let hits = [Some("a"), None, Some("a"), Some("b"), Some("c"), None, Some("d")];
        assert_eq!(take_negatives(ranked(&hits), 0, 2), ["a", "b"]);
        assert_eq!(take_negatives(ranked(&hits), 2, 1), ["c"]);
        assert_eq!(take_negatives(ranked(&hits), 3, 5), ["d"]);
        assert!(take_negatives(ranked(&hits), 4, 1).is_empty());
    }

    #[test]
    fn pairs_are_grouped_by_query_in_first_seen_order() {
        let pair = |q: &str, p: &str, d: Option<&str>| (q.to_owned(), p.to_owned(), d.map(str::to_owned));
        let judged = group_by_query([pair("b", "p1", Some("1")), pair("a", "p2", None), pair("b", "p3", Some("3"))]);
        assert_eq!(judged.iter().map(|j| j.query.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(judged[0].positives, ["p1", "p3"]);
        assert_eq!(judged[0].documents, HashSet::from(["1".to_owned(), "3".to_owned()]));
        assert!(judged[1].documents.is_empty());
    }
}
