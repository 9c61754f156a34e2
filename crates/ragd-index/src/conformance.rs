//! The behaviour every `VectorIndex` backend must show, as a suite any backend
//! can run against a live index: `run_all(&index).await`. Each check creates
//! its own collection (4-dimensional, hand-made vectors) and drops it at the
//! end, so the suite can share an index with other data. Checks panic on
//! failure, like tests.
//!
//! Persistence needs a backend-specific reopen, so it is split in two:
//! [`write_for_reopen`] before closing the index, [`check_after_reopen`] on
//! the reopened one.

use std::collections::BTreeSet;

use ragd_core::{
    point_id, ChunkPayload, CollectionId, CollectionIndexSpec, Condition, DocumentId, ErrorKind, Filter,
    IndexSettings, IndexTarget, Quantization,
    FilterValue, HybridQuery, IndexHit, IndexPoint, SearchMode, SparseVector, TenantId, VectorIndex,
};
use serde_json::{json, Map, Value};
use uuid::Uuid;

const DIMENSIONS: usize = 4;
const COMMON_TERM: u32 = 1;
const RARE_TERM: u32 = 99;

/// Hands every check (except the two persistence halves) to `$each!`, so
/// `run_all` and each backend's one-test-per-check module share one list.
#[macro_export]
macro_rules! conformance_checks {
    ($each:ident) => {
        $each!(
            collection_lifecycle,
            compressed_on_disk_collection,
            dense_search,
            sparse_search,
            hybrid_search,
            hybrid_filters_inside_branches,
            metadata_filters,
            tenant_isolation,
            acl_filter,
            delete_document_keeps_version,
            count_and_overwrite,
            chunks_in_order,
            invalid_input,
            generations_are_apart,
        );
    };
}

/// Runs every check except the two persistence halves.
pub async fn run_all(index: &dyn VectorIndex) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$( $check(index).await; )*};
    }
    crate::conformance_checks!(run);
}

/// Four chunks of tenant A (`a1`..`a4`) and one of tenant B in the same
/// collection, each the single chunk of its own document.
struct Fixture {
    collection: CollectionId,
    tenant_a: TenantId,
    tenant_b: TenantId,
    a1: IndexPoint,
    a2: IndexPoint,
    a3: IndexPoint,
    a4: IndexPoint,
    b1: IndexPoint,
}

impl Fixture {
    async fn seed(index: &dyn VectorIndex) -> Self {
        let collection = new_collection(index).await;
        let tenant_a = TenantId::parse("tenant-a").unwrap();
        let tenant_b = TenantId::parse("tenant-b").unwrap();
        let point = |tenant: &TenantId, dense: [f32; 4], terms: &[u32], metadata: Value, acl: &[&str]| {
            let document = DocumentId::new();
            IndexPoint {
                id: point_id(document, 1, 0),
                dense: dense.to_vec(),
                sparse: sparse(terms),
                payload: ChunkPayload {
                    tenant: tenant.clone(),
                    collection,
                    document,
                    version: 1,
                    chunk_index: 0,
                    title: "Handbook".into(),
                    heading_path: "Handbook > Setup".into(),
                    page: None,
                    text: format!("chunk of {document}"),
                    metadata: object(metadata),
                    acl: acl.iter().map(|p| p.to_string()).collect(),
                },
            }
        };
        let fixture = Self {
            a1: point(
                &tenant_a,
                [1.0, 0.0, 0.0, 0.0],
                &[COMMON_TERM, 2],
                json!({"lang": "en", "year": 2020, "tag": "a"}),
                &[],
            ),
            a2: point(
                &tenant_a,
                [0.9, 0.1, 0.0, 0.0],
                &[COMMON_TERM, 3],
                json!({"lang": "de", "year": 2022, "tag": "b", "draft": true, "extra": {"nested": [1, 2]}}),
                &["alice"],
            ),
            a3: point(
                &tenant_a,
                [0.0, 1.0, 0.0, 0.0],
                &[COMMON_TERM, RARE_TERM],
                json!({"lang": "en", "year": 2024, "tag": "c"}),
                &["bob"],
            ),
            a4: point(
                &tenant_a,
                [0.0, 0.0, 1.0, 0.0],
                &[COMMON_TERM, 2],
                json!({"lang": "fr", "year": 2021}),
                &[],
            ),
            b1: point(
                &tenant_b,
                [1.0, 0.0, 0.0, 0.0],
                &[COMMON_TERM, 2, RARE_TERM],
                json!({"lang": "en"}),
                &[],
            ),
            collection,
            tenant_a,
            tenant_b,
        };
        let points = [&fixture.a1, &fixture.a2, &fixture.a3, &fixture.a4, &fixture.b1];
        index.upsert(at(collection), points.into_iter().cloned().collect()).await.expect("upsert fixture");
        fixture
    }

    fn query(&self, mode: SearchMode, dense: [f32; 4], terms: &[u32]) -> HybridQuery {
        HybridQuery {
            tenant: self.tenant_a.clone(),
            target: at(self.collection),
            dense: dense.to_vec(),
            sparse: sparse(terms),
            mode,
            limit: 10,
            candidates: 10,
            filter: Filter::default(),
            rrf_k: None,
            principals: None,
        }
    }

    async fn drop(self, index: &dyn VectorIndex) {
        index.drop_collection(at(self.collection)).await.expect("drop collection");
    }
}

pub async fn collection_lifecycle(index: &dyn VectorIndex) {
    let collection = new_collection(index).await;
    index.create_collection(&spec(collection)).await.expect("create is idempotent");
    let conflicting = CollectionIndexSpec { dimensions: DIMENSIONS + 1, ..spec(collection) };
    assert_kind(
        index.create_collection(&conflicting).await,
        ErrorKind::Conflict,
        "create with other dimensions",
    );
    assert_eq!(index.count(at(collection)).await.unwrap(), 0);

    index.drop_collection(at(collection)).await.expect("drop");
    assert_kind(index.count(at(collection)).await, ErrorKind::NotFound, "count after drop");
    index.drop_collection(at(collection)).await.expect("drop is idempotent");
    index.create_collection(&spec(collection)).await.expect("create after drop");
    assert_eq!(index.count(at(collection)).await.unwrap(), 0, "a recreated collection starts empty");
    index.drop_collection(at(collection)).await.unwrap();

    let unknown = CollectionId::new();
    assert_kind(index.count(at(unknown)).await, ErrorKind::NotFound, "count of unknown collection");
    let query = dense_query(at(unknown), vec![1.0, 0.0, 0.0, 0.0], 3);
    assert_kind(index.search(&query).await, ErrorKind::NotFound, "search of unknown collection");
    assert_kind(
        index.delete_document(at(unknown), DocumentId::new(), None).await,
        ErrorKind::NotFound,
        "delete in unknown collection",
    );
}

/// A collection stored on disk with int8 vectors finds the same nearest
/// neighbour as an uncompressed one (rescoring uses the originals).
pub async fn compressed_on_disk_collection(index: &dyn VectorIndex) {
    let collection = CollectionId::new();
    let settings = IndexSettings { on_disk: true, quantization: Quantization::Int8, ..IndexSettings::default() };
    index.create_collection(&CollectionIndexSpec { settings, ..spec(collection) }).await.expect("create compressed collection");
    let tenant = TenantId::parse("tenant-q").unwrap();
    let points: Vec<IndexPoint> = (0..20u32)
        .map(|i| {
            let angle = i as f32 / 10.0;
            let document = DocumentId::new();
            IndexPoint {
                id: point_id(document, 1, 0),
                dense: vec![angle.cos(), angle.sin(), 0.1, 0.0],
                sparse: SparseVector { indices: vec![COMMON_TERM], values: vec![1.0] },
                payload: ChunkPayload {
                    tenant: tenant.clone(),
                    collection,
                    document,
                    version: 1,
                    chunk_index: 0,
                    title: format!("point {i}"),
                    heading_path: String::new(),
                    page: None,
                    text: format!("point {i}"),
                    metadata: Map::new(),
                    acl: Vec::new(),
                },
            }
        })
        .collect();
    index.upsert(at(collection), points).await.expect("upsert into compressed collection");
    let target = 1.3f32;
    let query = HybridQuery {
        tenant,
        limit: 1,
        ..dense_query(at(collection), vec![target.cos(), target.sin(), 0.1, 0.0], 10)
    };
    let hits = index.search(&query).await.expect("search compressed collection");
    assert_eq!(hits[0].payload.title, "point 13");
    index.drop_collection(at(collection)).await.unwrap();
}

pub async fn dense_search(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    let mut query = fx.query(SearchMode::Dense, [1.0, 0.0, 0.0, 0.0], &[]);
    query.limit = 2;
    let hits = index.search(&query).await.unwrap();
    assert_eq!(ids(&hits), vec![fx.a1.id, fx.a2.id], "nearest first");
    assert_close(hits[0].score, 1.0, "cosine of identical direction");
    assert_close(hits[1].score, 0.9 / 0.82f32.sqrt(), "cosine of a2");
    for hit in &hits {
        assert_eq!(hit.dense_score, Some(hit.score), "dense score is the ordering score");
        assert_eq!(hit.sparse_score, None, "no sparse branch in dense mode");
    }
    assert_eq!(hits[1].payload, fx.a2.payload, "payload round-trips");
    fx.drop(index).await;
}

pub async fn sparse_search(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    let hits =
        index.search(&fx.query(SearchMode::Sparse, [0.0; 4], &[COMMON_TERM, RARE_TERM])).await.unwrap();
    assert_eq!(hits.first().map(|hit| hit.id), Some(fx.a3.id), "the point sharing the rare term ranks first");
    assert_eq!(ids_set(&hits), set(&[&fx.a1, &fx.a2, &fx.a3, &fx.a4]), "every point sharing a term matches");
    assert!(hits[0].score > hits[1].score, "the rare term outweighs the common one");
    for hit in &hits {
        assert_eq!(hit.sparse_score, Some(hit.score));
        assert_eq!(hit.dense_score, None, "no dense branch in sparse mode");
    }

    let hits = index.search(&fx.query(SearchMode::Sparse, [0.0; 4], &[3])).await.unwrap();
    assert_eq!(ids(&hits), vec![fx.a2.id], "points without a shared term do not match");
    let hits = index.search(&fx.query(SearchMode::Sparse, [0.0; 4], &[])).await.unwrap();
    assert!(hits.is_empty(), "an empty sparse query matches nothing");
    fx.drop(index).await;
}

pub async fn hybrid_search(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    let mut query = fx.query(SearchMode::Hybrid, [1.0, 0.0, 0.0, 0.0], &[RARE_TERM]);
    query.candidates = 2;
    let hits = index.search(&query).await.unwrap();
    // Dense candidates a1, a2; sparse candidate a3: the union, fused.
    assert_eq!(ids_set(&hits), set(&[&fx.a1, &fx.a2, &fx.a3]), "union of both branches");
    let hit = |point: &IndexPoint| hits.iter().find(|hit| hit.id == point.id).unwrap();
    let (a1, a2, a3) = (hit(&fx.a1), hit(&fx.a2), hit(&fx.a3));
    assert_eq!(hits.last().map(|hit| hit.id), Some(fx.a2.id), "second in one branch ranks below two firsts");
    assert_close(a1.score, a3.score, "first in either branch fuses to the same score");
    assert!(a2.score < a1.score);
    assert_close(a1.dense_score.expect("a1 dense score"), 1.0, "a1 cosine");
    assert_eq!(a1.sparse_score, None, "a1 shares no term with the query");
    assert!(a3.sparse_score.expect("a3 sparse score") > 0.0);
    assert_close(a3.dense_score.expect("a3 dense score"), 0.0, "a3 is orthogonal to the query");
    assert_eq!(a2.sparse_score, None);
    assert_eq!(a3.payload, fx.a3.payload);

    assert!(a2.score / a1.score > 0.9, "with the default k ranks 1 and 2 fuse to near scores");
    query.rrf_k = Some(1);
    let sharp = index.search(&query).await.unwrap();
    let sharp_score = |point: &IndexPoint| sharp.iter().find(|hit| hit.id == point.id).unwrap().score;
    assert!(sharp_score(&fx.a2) / sharp_score(&fx.a1) < 0.7, "a small k separates ranks 1 and 2: {sharp:?}");
    query.rrf_k = None;

    query.limit = 1;
    assert_eq!(index.search(&query).await.unwrap().len(), 1, "limit applies after fusion");
    fx.drop(index).await;
}

/// The filter must hold inside each branch, not only after fusion: a4 is far
/// from the dense query and shares no term, yet it is the only French chunk.
pub async fn hybrid_filters_inside_branches(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    let mut query = fx.query(SearchMode::Hybrid, [1.0, 0.0, 0.0, 0.0], &[RARE_TERM]);
    query.candidates = 2;
    query.filter = filter(json!({"lang": "fr"}));
    assert_eq!(ids(&index.search(&query).await.unwrap()), vec![fx.a4.id]);
    fx.drop(index).await;
}

pub async fn metadata_filters(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    let cases: Vec<(Filter, Vec<&IndexPoint>)> = vec![
        (filter(json!({"lang": "en"})), vec![&fx.a1, &fx.a3]),
        (filter(json!({"draft": true})), vec![&fx.a2]),
        (filter(json!({"year": 2022})), vec![&fx.a2]),
        (filter(json!({"tag": ["a", "b"]})), vec![&fx.a1, &fx.a2]),
        (filter(json!({"tag": ["a", 7]})), vec![&fx.a1]),
        (filter(json!({"year": [2020, 2024]})), vec![&fx.a1, &fx.a3]),
        (filter(json!({"year": {"gte": 2021, "lte": 2022}})), vec![&fx.a2, &fx.a4]),
        (filter(json!({"year": {"gte": 2023}})), vec![&fx.a3]),
        (filter(json!({"year": {"lte": 2020.5}})), vec![&fx.a1]),
        (filter(json!({"lang": "en", "year": {"lte": 2021}})), vec![&fx.a1]),
        (filter(json!({"lang": "xx"})), vec![]),
        (filter(json!({"missing": "x"})), vec![]),
        (
            Filter {
                must: vec![Condition::Equals { key: "year".into(), value: FilterValue::Text("2022".into()) }],
            },
            vec![],
        ),
    ];
    for (conditions, expected) in cases {
        for mode in [SearchMode::Dense, SearchMode::Hybrid] {
            let mut query = fx.query(mode, [1.0, 0.0, 0.0, 0.0], &[COMMON_TERM]);
            query.filter = conditions.clone();
            let hits = index.search(&query).await.unwrap();
            assert_eq!(ids_set(&hits), set(&expected), "{mode:?} search with {conditions:?}");
        }
    }
    fx.drop(index).await;
}

pub async fn tenant_isolation(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    for (mode, terms) in [
        (SearchMode::Dense, &[][..]),
        (SearchMode::Sparse, &[RARE_TERM][..]),
        (SearchMode::Hybrid, &[RARE_TERM][..]),
    ] {
        let hits = index.search(&fx.query(mode, [1.0, 0.0, 0.0, 0.0], terms)).await.unwrap();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|hit| hit.payload.tenant == fx.tenant_a), "{mode:?} leaked another tenant");
        assert!(!ids(&hits).contains(&fx.b1.id));
    }
    let mut query = fx.query(SearchMode::Hybrid, [1.0, 0.0, 0.0, 0.0], &[RARE_TERM]);
    query.tenant = fx.tenant_b.clone();
    assert_eq!(ids(&index.search(&query).await.unwrap()), vec![fx.b1.id]);
    query.tenant = TenantId::parse("tenant-c").unwrap();
    assert!(index.search(&query).await.unwrap().is_empty());
    fx.drop(index).await;
}

pub async fn acl_filter(index: &dyn VectorIndex) {
    let fx = Fixture::seed(index).await;
    let cases: Vec<(Option<Vec<&str>>, Vec<&IndexPoint>)> = vec![
        (None, vec![&fx.a1, &fx.a2, &fx.a3, &fx.a4]),
        (Some(vec![]), vec![&fx.a1, &fx.a4]),
        (Some(vec!["alice"]), vec![&fx.a1, &fx.a2, &fx.a4]),
        (Some(vec!["bob", "carol"]), vec![&fx.a1, &fx.a3, &fx.a4]),
        (Some(vec!["alice", "bob"]), vec![&fx.a1, &fx.a2, &fx.a3, &fx.a4]),
        (Some(vec!["mallory"]), vec![&fx.a1, &fx.a4]),
    ];
    for (principals, expected) in cases {
        for mode in [SearchMode::Dense, SearchMode::Hybrid] {
            let mut query = fx.query(mode, [1.0, 0.0, 0.0, 0.0], &[COMMON_TERM]);
            query.principals = principals.as_ref().map(|p| p.iter().map(|s| s.to_string()).collect());
            let hits = index.search(&query).await.unwrap();
            assert_eq!(ids_set(&hits), set(&expected), "{mode:?} search as {principals:?}");
        }
    }
    fx.drop(index).await;
}

pub async fn delete_document_keeps_version(index: &dyn VectorIndex) {
    let collection = new_collection(index).await;
    let document = DocumentId::new();
    let other = DocumentId::new();
    let mut points = chunk_points(collection, document, 1, &[0, 1]);
    points.extend(chunk_points(collection, document, 2, &[0, 1, 2]));
    points.extend(chunk_points(collection, other, 1, &[0]));
    index.upsert(at(collection), points).await.unwrap();
    assert_eq!(index.count(at(collection)).await.unwrap(), 6);

    index.delete_document(at(collection), document, Some(2)).await.unwrap();
    assert_eq!(index.count(at(collection)).await.unwrap(), 4, "only version 1 is gone");
    assert!(index.chunks(at(collection), document, 1, &[0, 1]).await.unwrap().is_empty());
    assert_eq!(index.chunks(at(collection), document, 2, &[0, 1, 2]).await.unwrap().len(), 3);
    assert_eq!(index.chunks(at(collection), other, 1, &[0]).await.unwrap().len(), 1, "other documents stay");

    index.delete_document(at(collection), DocumentId::new(), None).await.expect("deleting an absent document");
    index.delete_document(at(collection), document, None).await.unwrap();
    assert_eq!(index.count(at(collection)).await.unwrap(), 1, "every version is gone");
    index.drop_collection(at(collection)).await.unwrap();
}

pub async fn count_and_overwrite(index: &dyn VectorIndex) {
    let collection = new_collection(index).await;
    let document = DocumentId::new();
    let mut points = chunk_points(collection, document, 1, &[0, 1, 2]);
    index.upsert(at(collection), points.clone()).await.unwrap();
    assert_eq!(index.count(at(collection)).await.unwrap(), 3);

    points[1].payload.text = "rewritten".into();
    index.upsert(at(collection), vec![points[1].clone()]).await.unwrap();
    assert_eq!(index.count(at(collection)).await.unwrap(), 3, "upsert by id overwrites");
    let chunks = index.chunks(at(collection), document, 1, &[1]).await.unwrap();
    assert_eq!(chunks.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), ["rewritten"]);
    index.upsert(at(collection), vec![]).await.expect("empty upsert");
    index.drop_collection(at(collection)).await.unwrap();
}

pub async fn chunks_in_order(index: &dyn VectorIndex) {
    let collection = new_collection(index).await;
    let document = DocumentId::new();
    let mut points = chunk_points(collection, document, 3, &[5, 1, 3, 0, 4, 2]);
    points.extend(chunk_points(collection, document, 2, &[0, 1, 2]));
    index.upsert(at(collection), points).await.unwrap();

    let chunks = index.chunks(at(collection), document, 3, &[4, 0, 2, 2, 9]).await.unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.chunk_index).collect::<Vec<_>>(),
        [0, 2, 4],
        "in index order, missing skipped"
    );
    assert!(chunks.iter().all(|c| c.version == 3 && c.document == document));
    assert!(index.chunks(at(collection), document, 3, &[]).await.unwrap().is_empty());
    assert!(index.chunks(at(collection), DocumentId::new(), 3, &[0]).await.unwrap().is_empty());
    index.drop_collection(at(collection)).await.unwrap();
}

pub async fn invalid_input(index: &dyn VectorIndex) {
    let collection = new_collection(index).await;
    let document = DocumentId::new();
    let mut point = chunk_points(collection, document, 1, &[0]).remove(0);
    point.dense = vec![1.0, 0.0, 0.0];
    assert_kind(
        index.upsert(at(collection), vec![point.clone()]).await,
        ErrorKind::InvalidInput,
        "wrong dimensions",
    );
    point.dense = vec![1.0, 0.0, 0.0, 0.0];
    point.sparse = SparseVector { indices: vec![1, 1], values: vec![1.0, 2.0] };
    assert_kind(
        index.upsert(at(collection), vec![point.clone()]).await,
        ErrorKind::InvalidInput,
        "duplicate sparse indices",
    );
    point.sparse = SparseVector { indices: vec![1, 2], values: vec![1.0] };
    assert_kind(index.upsert(at(collection), vec![point]).await, ErrorKind::InvalidInput, "ragged sparse vector");
    assert_eq!(index.count(at(collection)).await.unwrap(), 0, "rejected batches write nothing");

    let mut query = dense_query(at(collection), vec![1.0, 0.0], 3);
    assert_kind(index.search(&query).await, ErrorKind::InvalidInput, "query with wrong dimensions");
    query.mode = SearchMode::Hybrid;
    assert_kind(index.search(&query).await, ErrorKind::InvalidInput, "hybrid query with wrong dimensions");
    query.dense = vec![1.0, 0.0, 0.0, 0.0];
    query.sparse = SparseVector { indices: vec![4, 4], values: vec![1.0, 1.0] };
    assert_kind(index.search(&query).await, ErrorKind::InvalidInput, "query with duplicate sparse indices");
    query.sparse = SparseVector::default();
    query.filter =
        Filter { must: vec![Condition::Equals { key: "a.b".into(), value: FilterValue::Bool(true) }] };
    assert_kind(index.search(&query).await, ErrorKind::InvalidInput, "filter key outside metadata");
    query.filter = Filter::default();
    query.limit = 0;
    assert!(index.search(&query).await.unwrap().is_empty(), "limit 0");
    index.drop_collection(at(collection)).await.unwrap();
}

/// First half of the persistence check: writes a collection to be checked
/// by [`check_after_reopen`] once the index has been closed and reopened.
pub async fn write_for_reopen(index: &dyn VectorIndex) -> CollectionId {
    let collection = new_collection(index).await;
    let document = DocumentId::new();
    let mut points = chunk_points(collection, document, 1, &[0, 1]);
    points.extend(chunk_points(collection, document, 2, &[0, 1, 2]));
    index.upsert(at(collection), points).await.unwrap();
    index.delete_document(at(collection), document, Some(2)).await.unwrap();
    collection
}

pub async fn check_after_reopen(index: &dyn VectorIndex, collection: CollectionId) {
    assert_eq!(index.count(at(collection)).await.unwrap(), 3, "upserts and deletes survived");
    let hits = index
        .search(&dense_query(at(collection), vec![0.0, 0.0, 1.0, 0.0], 10))
        .await
        .unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].payload.chunk_index, 2, "nearest to chunk 2's vector");
    assert!(hits.iter().all(|hit| hit.payload.version == 2));
    index
        .upsert(at(collection), chunk_points(collection, DocumentId::new(), 1, &[0]))
        .await
        .expect("writes after reopen");
    assert_eq!(index.count(at(collection)).await.unwrap(), 4);
    index.drop_collection(at(collection)).await.unwrap();
}

async fn new_collection(index: &dyn VectorIndex) -> CollectionId {
    let collection = CollectionId::new();
    index.create_collection(&spec(collection)).await.expect("create collection");
    collection
}

fn spec(collection: CollectionId) -> CollectionIndexSpec {
    CollectionIndexSpec { target: at(collection), dimensions: DIMENSIONS, settings: IndexSettings::default() }
}

/// Generation 0 of a collection.
fn at(collection: CollectionId) -> IndexTarget {
    IndexTarget::new(collection, 0)
}

/// Two generations of one collection are separate stores: each has its own
/// points and dimensions, and dropping one leaves the other.
pub async fn generations_are_apart(index: &dyn VectorIndex) {
    let collection = new_collection(index).await;
    let next = IndexTarget::new(collection, 1);
    let wider = CollectionIndexSpec { target: next, dimensions: DIMENSIONS + 2, settings: IndexSettings::default() };
    index.create_collection(&wider).await.expect("create the next generation");
    let document = DocumentId::new();
    let mut points = chunk_points(collection, document, 1, &[0, 1]);
    for point in &mut points {
        point.dense.extend([0.0, 0.0]);
    }
    index.upsert(next, points).await.expect("upsert into the next generation");
    assert_eq!(index.count(at(collection)).await.unwrap(), 0, "generation 0 is untouched");
    assert_eq!(index.count(next).await.unwrap(), 2);
    let query = dense_query(next, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 3);
    let hits = index.search(&query).await.expect("search the next generation");
    assert_eq!(hits.len(), 2, "the collection filter matches the points of every generation");
    assert_eq!(hits[0].payload.collection, collection);
    index.drop_collection(at(collection)).await.unwrap();
    assert_eq!(index.count(next).await.unwrap(), 2, "dropping generation 0 leaves generation 1");
    index.drop_collection(next).await.unwrap();
}

/// Points of the default tenant whose dense vector points along axis
/// `index % 4` and whose text names the chunk.
fn chunk_points(
    collection: CollectionId,
    document: DocumentId,
    version: i64,
    indices: &[u32],
) -> Vec<IndexPoint> {
    indices
        .iter()
        .map(|&index| {
            let mut dense = vec![0.1; DIMENSIONS];
            dense[index as usize % DIMENSIONS] = 1.0;
            IndexPoint {
                id: point_id(document, version, index),
                dense,
                sparse: sparse(&[COMMON_TERM, 100 + index]),
                payload: ChunkPayload {
                    tenant: TenantId::default_tenant(),
                    collection,
                    document,
                    version,
                    chunk_index: index,
                    title: "Doc".into(),
                    heading_path: String::new(),
                    page: None,
                    text: format!("version {version} chunk {index}"),
                    metadata: Map::new(),
                    acl: Vec::new(),
                },
            }
        })
        .collect()
}

/// A dense query of the default tenant that looks at `limit` candidates.
fn dense_query(target: IndexTarget, dense: Vec<f32>, limit: usize) -> HybridQuery {
    HybridQuery {
        tenant: TenantId::default_tenant(),
        target,
        dense,
        sparse: SparseVector::default(),
        mode: SearchMode::Dense,
        limit,
        candidates: limit,
        filter: Filter::default(),
        rrf_k: None,
        principals: None,
    }
}

fn sparse(terms: &[u32]) -> SparseVector {
    SparseVector { indices: terms.to_vec(), values: vec![1.0; terms.len()] }
}

fn filter(json: Value) -> Filter {
    Filter::from_json(&json).expect("valid filter")
}

fn object(json: Value) -> Map<String, Value> {
    match json {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn ids(hits: &[IndexHit]) -> Vec<Uuid> {
    hits.iter().map(|hit| hit.id).collect()
}

fn ids_set(hits: &[IndexHit]) -> BTreeSet<Uuid> {
    hits.iter().map(|hit| hit.id).collect()
}

fn set(points: &[&IndexPoint]) -> BTreeSet<Uuid> {
    points.iter().map(|point| point.id).collect()
}

fn assert_close(actual: f32, expected: f32, what: &str) {
    assert!((actual - expected).abs() < 1e-4, "{what}: {actual} is not {expected}");
}

fn assert_kind<T: std::fmt::Debug>(result: ragd_core::Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Err(err) => assert_eq!(err.kind(), kind, "{what}: {}", err.chain()),
        Ok(value) => panic!("{what}: expected a {kind:?} error, got {value:?}"),
    }
}
