//! Context expansion: a hit is often the middle of an argument, so the
//! generator gets it together with its neighbours.

use ragd_core::{ChunkPayload, DocumentId, IndexHit, IndexTarget, VectorIndex};

/// A contiguous run of one document's chunks, in the rank order of the best
/// hit it contains.
#[derive(Debug, Clone)]
pub struct ContextPassage {
    pub document: DocumentId,
    pub version: i64,
    pub title: String,
    pub heading_path: String,
    /// Page the passage starts on, in paginated formats.
    pub page: Option<u32>,
    pub chunk_indices: Vec<u32>,
    /// Ranks (0-based, in the hit list) of the hits this passage contains.
    pub hit_ranks: Vec<usize>,
    pub text: String,
}

/// A run of chunk indices `lo..=hi` of one document version, led by the
/// best-ranked hit in it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    first_rank: usize,
    lo: u32,
    hi: u32,
}

/// Each hit widened by `window` on both sides; spans of the same document
/// version that overlap or touch are merged, so no chunk is fetched twice.
fn plan(hits: &[IndexHit], window: u32) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for (rank, hit) in hits.iter().enumerate() {
        let index = hit.payload.chunk_index;
        let mut span = Span { first_rank: rank, lo: index.saturating_sub(window), hi: index.saturating_add(window) };
        let same_version = |s: &Span| {
            let lead = &hits[s.first_rank].payload;
            lead.document == hit.payload.document && lead.version == hit.payload.version
        };
        // Merging can make a span reach another, so absorb until none touch.
        while let Some(pos) = spans
            .iter()
            .position(|s| same_version(s) && s.lo <= span.hi.saturating_add(1) && span.lo <= s.hi.saturating_add(1))
        {
            let other = spans.remove(pos);
            span = Span { first_rank: other.first_rank.min(span.first_rank), lo: other.lo.min(span.lo), hi: other.hi.max(span.hi) };
        }
        spans.push(span);
    }
    spans.sort_by_key(|s| s.first_rank);
    spans
}

pub async fn expand_hits(
    index: &dyn VectorIndex,
    target: IndexTarget,
    hits: &[IndexHit],
    window: u32,
) -> ragd_core::Result<Vec<ContextPassage>> {
    let mut passages = Vec::new();
    for span in plan(hits, window) {
        let head = &hits[span.first_rank].payload;
        let wanted: Vec<u32> = (span.lo..=span.hi).collect();
        let chunks = if window == 0 {
            hits.iter()
                .filter(|h| h.payload.document == head.document && h.payload.version == head.version && wanted.contains(&h.payload.chunk_index))
                .map(|h| h.payload.clone())
                .collect()
        } else {
            index.chunks(target, head.document, head.version, &wanted).await?
        };
        let mut chunks: Vec<ChunkPayload> = chunks;
        chunks.sort_by_key(|c| c.chunk_index);
        chunks.dedup_by_key(|c| c.chunk_index);
        let hit_ranks = hits
            .iter()
            .enumerate()
            .filter(|(_, h)| h.payload.document == head.document && chunks.iter().any(|c| c.chunk_index == h.payload.chunk_index))
            .map(|(rank, _)| rank)
            .collect();
        passages.push(ContextPassage {
            document: head.document,
            version: head.version,
            title: head.title.clone(),
            heading_path: head.heading_path.clone(),
            page: chunks.first().and_then(|c| c.page),
            chunk_indices: chunks.iter().map(|c| c.chunk_index).collect(),
            hit_ranks,
            text: join_overlapping(chunks.iter().map(|c| c.text.as_str())),
        });
    }
    Ok(passages)
}

/// Joins neighbouring chunks, dropping the overlap the chunker repeated at
/// the start of each chunk so no sentence appears twice.
fn join_overlapping<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for text in texts {
        if out.is_empty() {
            out.push_str(text);
            continue;
        }
        let overlap = longest_suffix_prefix(&out, text);
        let rest = &text[overlap..];
        if overlap == 0 {
            out.push('\n');
        }
        out.push_str(rest);
    }
    out
}

/// Shorter shared runs are likely coincidence ("a" ending one chunk and
/// starting the next), not the chunker's overlap.
const MIN_OVERLAP_BYTES: usize = 12;

/// Length in bytes of the longest suffix of `left` that is a prefix of
/// `right`, or 0 when it is too short to be a real overlap.
fn longest_suffix_prefix(left: &str, right: &str) -> usize {
    let max = left.len().min(right.len());
    (MIN_OVERLAP_BYTES..=max)
        .rev()
        .filter(|&n| right.is_char_boundary(n) && left.is_char_boundary(left.len() - n))
        .find(|&n| left.ends_with(&right[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_merge_when_they_touch() {
        let doc = DocumentId::new();
        let hits: Vec<IndexHit> = [10, 14, 12, 30].iter().map(|&i| hit(doc, i)).collect();
        let spans = plan(&hits, 1);
        assert_eq!(spans, vec![Span { first_rank: 0, lo: 9, hi: 15 }, Span { first_rank: 3, lo: 29, hi: 31 }]);
        assert_eq!(plan(&hits[..1], 0), vec![Span { first_rank: 0, lo: 10, hi: 10 }]);
    }

    #[test]
    fn other_documents_never_merge() {
        let hits = vec![hit(DocumentId::new(), 1), hit(DocumentId::new(), 1)];
        assert_eq!(plan(&hits, 2).len(), 2);
    }

    fn hit(document: DocumentId, chunk_index: u32) -> IndexHit {
        IndexHit {
            id: ragd_core::point_id(document, 1, chunk_index),
            score: 1.0,
            dense_score: None,
            sparse_score: None,
            rerank_score: None,
            payload: ChunkPayload {
                tenant: ragd_core::TenantId::default_tenant(),
                collection: ragd_core::CollectionId::new(),
                document,
                version: 1,
                chunk_index,
                title: String::new(),
                heading_path: String::new(),
                page: None,
                text: format!("chunk {chunk_index}"),
                metadata: Default::default(),
                acl: Vec::new(),
            },
        }
    }

    #[test]
    fn overlap_is_not_repeated() {
        let joined = join_overlapping(["one two three", "two three four", "five"].into_iter());
        assert_eq!(joined, "one two three\ntwo three four\nfive", "short runs are kept");
        let joined = join_overlapping(["the quick brown fox jumps", "brown fox jumps over"].into_iter());
        assert_eq!(joined, "the quick brown fox jumps over");
    }

    #[test]
    fn no_overlap_joins_with_newline() {
        assert_eq!(join_overlapping(["a", "b"].into_iter()), "a\nb");
    }
}
