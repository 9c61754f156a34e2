//! One suite, written once over a `Store`, run on SQLite (a temp file) and on
//! PostgreSQL (a fresh database per test, dropped afterwards).
//!
//! PostgreSQL is expected at 127.0.0.1:5432 (user postgres, trust auth); set
//! `RAGD_TEST_SKIP_POSTGRES=1` to skip those tests where it does not run.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ragd_core::{
    CollectionId, CollectionName, ContentHash, DocumentId, DocumentStatus, IndexTarget, TenantId, Visibility,
};
use ragd_store::{
    AddOutcome, Backend, BatchId, BlobStore, CollectionRecord, CollectionUpdate, DocumentRecord, Error,
    IndexLayout, IndexedVersion, JobControl, JobState, KeyRejection, NewAuditEntry, NewBatch, NewCollection, NewDocument,
    NewKey, QueuePolicy, ReadyOutcome, Role, Store, StoreConfig, INGEST_JOB_KIND,
};
use sqlx::{Connection, Executor};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LEASE: Duration = Duration::from_secs(60);

/// Runs `test` on a store over a fresh SQLite file.
async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("nested/ragd.db").display());
    let store = Store::connect(&StoreConfig { url, max_connections: 4 }).await.expect("connect");
    assert_eq!(store.backend(), Backend::Sqlite);
    test(store.clone()).await;
    let wal = dir.path().join("nested/ragd.db-wal");
    assert!(wal.exists(), "the database is not in WAL mode");
    store.close().await;
}

/// Runs `test` on a store over a new PostgreSQL database, dropped afterwards
/// even when the test fails.
async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    sqlx::any::install_default_drivers();
    let mut admin = match sqlx::AnyConnection::connect(ADMIN_URL).await {
        Ok(conn) => conn,
        Err(err) if std::env::var("RAGD_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => {
            eprintln!("skipping: PostgreSQL unreachable ({err}) and RAGD_TEST_SKIP_POSTGRES=1");
            return;
        }
        Err(err) => panic!(
            "PostgreSQL is not reachable at {ADMIN_URL}: {err}. Start it (user postgres, trust \
             auth) or set RAGD_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL tests"
        ),
    };
    let name = format!("ragd_test_{}", uuid::Uuid::new_v4().simple());
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let outcome = AssertUnwindSafe(async {
        let store =
            Store::connect(&StoreConfig { url, max_connections: 8 }).await.expect("connect");
        assert_eq!(store.backend(), Backend::Postgres);
        // Closed even on failure, so the database can be dropped.
        let outcome = AssertUnwindSafe(test(store.clone())).catch_unwind().await;
        store.close().await;
        outcome
    })
    .catch_unwind()
    .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("drop database");
    if let Err(panic) = outcome.and_then(|inner| inner) {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_sqlite(super::$test).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_postgres(super::$test).await;
                }
            )*
        }
    };
}

on_both_engines!(
    collections_are_created_listed_and_deleted_per_tenant,
    collection_settings_are_kept_and_updated,
    document_and_its_job_are_inserted_together,
    documents_page_in_id_order,
    document_status_transitions_and_counts,
    each_job_is_claimed_by_exactly_one_worker,
    jobs_are_claimed_and_finished_in_groups,
    expired_lease_is_reclaimed_by_another_worker,
    lease_expired_on_last_attempt_fails_job_and_document,
    only_the_owner_heartbeats_and_completes,
    failed_job_is_retried_until_max_attempts,
    deleting_a_document_cancels_its_job,
    deleting_a_collection_removes_documents_and_cancels_jobs,
    batch_records_counts_and_tags_its_documents,
    same_content_is_a_duplicate,
    same_external_id_makes_a_new_version,
    new_version_waits_for_the_running_job_of_its_document,
    a_failed_group_adds_nothing,
    concurrent_uploads_of_the_same_content_create_one_document,
    the_same_content_under_another_acl_is_another_document,
    submitted_jobs_are_listed_per_tenant_in_pages,
    running_job_reports_progress_metrics_logs_and_artifacts,
    cancelling_a_queued_job_ends_it_and_a_running_one_stops_it,
    cancelled_job_whose_worker_vanished_is_not_run_again,
    keys_authenticate_until_revoked_or_expired,
    keys_are_listed_and_revoked_per_tenant,
    audit_entries_page_newest_first_per_tenant,
    acl_visibility_filters_lists_and_counts,
    a_reindex_builds_the_next_generation_and_swaps,
    a_nul_character_is_stored_or_refused_as_the_callers_fault,
);

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant")
}

fn new_collection(tenant_name: &str, name: &str) -> NewCollection {
    NewCollection {
        tenant: tenant(tenant_name),
        name: CollectionName::parse(name).expect("name"),
        description: format!("the {name} collection"),
        embedder: "all-minilm-l6-v2".to_owned(),
        dimensions: 384,
        settings: serde_json::Map::new(),
    }
}

async fn collection(store: &Store, name: &str) -> CollectionRecord {
    store.create_collection(&new_collection("acme", name)).await.expect("create collection")
}

fn new_document(collection: &CollectionRecord, title: &str) -> NewDocument {
    let mut metadata = serde_json::Map::new();
    metadata.insert("lang".to_owned(), "en".into());
    metadata.insert("pages".to_owned(), 3.into());
    NewDocument {
        id: DocumentId::new(),
        collection: collection.id,
        tenant: collection.tenant.clone(),
        external_id: Some(format!("ext-{title}")),
        title: title.to_owned(),
        source_name: Some(format!("{title}.md")),
        media_type: "text/markdown".to_owned(),
        content_hash: ContentHash::of(title.as_bytes()),
        size_bytes: title.len() as i64,
        metadata,
        acl: vec!["group:staff".to_owned()],
    }
}

async fn a_nul_character_is_stored_or_refused_as_the_callers_fault(store: Store) {
    let mut new = new_collection("acme", "nul");
    new.description = "before\0after".to_owned();
    match (store.backend(), store.create_collection(&new).await) {
        (Backend::Sqlite, Ok(created)) => assert_eq!(created.description, new.description),
        (Backend::Postgres, Err(err)) => {
            let err = ragd_core::Error::from(err);
            assert_eq!(err.kind(), ragd_core::ErrorKind::InvalidInput, "{err}");
            assert!(err.message().contains("NUL"), "{err}");
        }
        (backend, outcome) => panic!("{backend:?}: {outcome:?}"),
    }
}

async fn collection_settings_are_kept_and_updated(store: Store) {
    let mut new = new_collection("acme", "tuned");
    new.settings = serde_json::json!({"retrieval": {"rrf_k": 20}}).as_object().unwrap().clone();
    let created = store.create_collection(&new).await.unwrap();
    let acme = tenant("acme");
    assert_eq!(store.get_collection(&acme, created.id).await.unwrap().settings, new.settings);

    let settings = serde_json::json!({"prompt": {"system": "Be brief."}}).as_object().unwrap().clone();
    let update = CollectionUpdate { description: None, settings: Some(settings.clone()) };
    let updated = store.update_collection(&acme, created.id, &update).await.unwrap();
    assert_eq!(updated.settings, settings);
    assert_eq!(updated.description, created.description, "an absent field is left alone");
    let update = CollectionUpdate { description: Some("retuned".to_owned()), settings: None };
    let updated = store.update_collection(&acme, created.id, &update).await.unwrap();
    assert_eq!((updated.description.as_str(), &updated.settings), ("retuned", &settings));

    let other = store.update_collection(&tenant("other"), created.id, &update).await;
    assert!(matches!(other, Err(ragd_store::Error::NotFound(_))), "{other:?}");
}

async fn collections_are_created_listed_and_deleted_per_tenant(store: Store) {
    let docs = collection(&store, "docs").await;
    let notes = collection(&store, "notes").await;
    let other = store
        .create_collection(&new_collection("globex", "docs"))
        .await
        .expect("same name, other tenant");

    assert_eq!(store.get_collection(&tenant("acme"), docs.id).await.expect("get"), docs);
    let listed = store.list_collections(&tenant("acme")).await.expect("list");
    assert_eq!(listed, vec![docs.clone(), notes.clone()]);
    assert_eq!(store.list_collections(&tenant("globex")).await.expect("list"), vec![other.clone()]);

    let duplicate = store.create_collection(&new_collection("acme", "docs")).await;
    assert!(matches!(duplicate, Err(Error::Conflict(_))), "{duplicate:?}");

    // Another tenant's collection is invisible, and so cannot be deleted.
    let foreign = store.get_collection(&tenant("acme"), other.id).await;
    assert!(matches!(foreign, Err(Error::NotFound(_))), "{foreign:?}");
    let foreign = store.delete_collection(&tenant("acme"), other.id).await;
    assert!(matches!(foreign, Err(Error::NotFound(_))), "{foreign:?}");

    store.delete_collection(&tenant("acme"), docs.id).await.expect("delete");
    let gone = store.get_collection(&tenant("acme"), docs.id).await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    assert_eq!(store.list_collections(&tenant("acme")).await.expect("list"), vec![notes]);
    store.create_collection(&new_collection("acme", "docs")).await.expect("name is free again");
}

async fn document_and_its_job_are_inserted_together(store: Store) {
    let docs = collection(&store, "docs").await;
    let new = new_document(&docs, "guide");
    let (record, job_id) = store.insert_document_with_job(&new).await.expect("insert");
    assert_eq!(record.status, DocumentStatus::Queued);
    assert_eq!((record.version, record.chunk_count, record.failure.as_deref()), (1, 0, None));
    assert_eq!(store.get_document(docs.id, new.id).await.expect("get"), record);

    let job = store.get_job(job_id).await.expect("job");
    assert_eq!(job.kind, INGEST_JOB_KIND);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0);
    assert_eq!(
        job.payload,
        serde_json::json!({"document": new.id.to_string(), "collection": docs.id.to_string()})
    );
    assert_eq!(store.pending_job_count().await.expect("count"), 1);

    let again = store.insert_document_with_job(&new).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");

    // Neither a missing collection nor another tenant's gets a document, and
    // a failed insert leaves no job behind.
    let mut orphan = new_document(&docs, "orphan");
    orphan.collection = CollectionId::new();
    let missing = store.insert_document_with_job(&orphan).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    let mut foreign = new_document(&docs, "foreign");
    foreign.tenant = tenant("globex");
    let missing = store.insert_document_with_job(&foreign).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    assert_eq!(store.pending_job_count().await.expect("count"), 1);

    let absent = store.get_document(docs.id, DocumentId::new()).await;
    assert!(matches!(absent, Err(Error::NotFound(_))), "{absent:?}");
    let other = collection(&store, "other").await;
    let wrong_collection = store.get_document(other.id, new.id).await;
    assert!(matches!(wrong_collection, Err(Error::NotFound(_))), "{wrong_collection:?}");
}

async fn documents_page_in_id_order(store: Store) {
    let docs = collection(&store, "docs").await;
    let other = collection(&store, "other").await;
    store.insert_document_with_job(&new_document(&other, "elsewhere")).await.expect("insert");
    let mut ids = Vec::new();
    for i in 0..7 {
        let (record, _) = store
            .insert_document_with_job(&new_document(&docs, &format!("doc{i}")))
            .await
            .expect("insert");
        ids.push(record.id);
    }
    ids.sort();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_documents(docs.id, after, 3).await.expect("list");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|doc| doc.id));
    }
    assert_eq!(seen, ids);
    assert!(store.list_documents(docs.id, None, 0).await.expect("list").is_empty());
}

async fn document_status_transitions_and_counts(store: Store) {
    let docs = collection(&store, "docs").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let (record, _) = store
            .insert_document_with_job(&new_document(&docs, &format!("doc{i}")))
            .await
            .expect("insert");
        ids.push(record.id);
    }
    let counts = store.document_status_counts(docs.id).await.expect("counts");
    assert_eq!(
        (counts.queued, counts.processing, counts.ready, counts.failed, counts.chunks),
        (4, 0, 0, 0, 0)
    );

    store.mark_document_processing(ids[0]).await.expect("processing");
    store.mark_document_processing(ids[1]).await.expect("processing");
    store.mark_document_ready(ids[1], 2, 17).await.expect("ready");
    store.mark_document_processing(ids[2]).await.expect("processing");
    store.mark_document_ready(ids[2], 1, 5).await.expect("ready");
    store.mark_document_failed(ids[3], "unsupported file type").await.expect("failed");

    let counts = store.document_status_counts(docs.id).await.expect("counts");
    assert_eq!(
        (counts.queued, counts.processing, counts.ready, counts.failed, counts.chunks),
        (0, 1, 2, 1, 22)
    );

    let ready = store.get_document(docs.id, ids[1]).await.expect("get");
    assert_eq!((ready.status, ready.version, ready.chunk_count), (DocumentStatus::Ready, 2, 17));
    assert!(ready.updated_at >= ready.created_at);
    let failed = store.get_document(docs.id, ids[3]).await.expect("get");
    assert_eq!(failed.status, DocumentStatus::Failed);
    assert_eq!(failed.failure.as_deref(), Some("unsupported file type"));

    // Reprocessing clears the failure.
    store.mark_document_processing(ids[3]).await.expect("processing");
    let retried = store.get_document(docs.id, ids[3]).await.expect("get");
    assert_eq!((retried.status, retried.failure), (DocumentStatus::Processing, None));

    let missing = store.mark_document_ready(DocumentId::new(), 1, 1).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    let empty = collection(&store, "empty").await;
    let counts = store.document_status_counts(empty.id).await.expect("counts");
    assert_eq!((counts.queued, counts.ready, counts.chunks), (0, 0, 0));
}

async fn each_job_is_claimed_by_exactly_one_worker(store: Store) {
    let docs = collection(&store, "docs").await;
    let mut expected = HashSet::new();
    for i in 0..20 {
        let (_, job) = store
            .insert_document_with_job(&new_document(&docs, &format!("doc{i}")))
            .await
            .expect("insert");
        expected.insert(job);
    }
    let claims = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let claims = claims.clone();
        workers.push(tokio::spawn(async move {
            let worker = format!("worker-{w}");
            while let Some(job) =
                store.claim_job(&worker, &[INGEST_JOB_KIND], LEASE).await.expect("claim")
            {
                assert_eq!((job.state, job.attempts), (JobState::Running, 1));
                assert_eq!(job.worker.as_deref(), Some(worker.as_str()));
                claims.lock().expect("lock").push(job.id);
                store.complete_job(job.id, &worker).await.expect("complete");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker task");
    }
    let claims = claims.lock().expect("lock").clone();
    let unique: HashSet<_> = claims.iter().copied().collect();
    assert_eq!(claims.len(), 20, "a job was claimed twice");
    assert_eq!(unique, expected);
    for id in expected {
        assert_eq!(store.get_job(id).await.expect("job").state, JobState::Succeeded);
    }
    assert_eq!(store.pending_job_count().await.expect("count"), 0);
}

async fn jobs_are_claimed_and_finished_in_groups(store: Store) {
    let docs = collection(&store, "docs").await;
    let mut inserted = Vec::new();
    for i in 0..5 {
        inserted.push(
            store.insert_document_with_job(&new_document(&docs, &format!("doc{i}"))).await.expect("insert"),
        );
    }
    let first = store.claim_jobs("a", &[INGEST_JOB_KIND], LEASE, 3).await.expect("claim");
    let claimed: Vec<_> = first.iter().map(|job| job.id).collect();
    let oldest: Vec<_> = inserted[..3].iter().map(|(_, job)| *job).collect();
    assert_eq!(claimed, oldest, "the oldest jobs, in order");
    let rest = store.claim_jobs("b", &[INGEST_JOB_KIND], LEASE, 10).await.expect("claim");
    assert_eq!(rest.len(), 2);
    assert!(store.claim_jobs("c", &[INGEST_JOB_KIND], LEASE, 10).await.expect("claim").is_empty());

    // A deleted document's running job is no longer held.
    store.delete_document(docs.id, inserted[0].0.id).await.expect("delete");
    let held = store.heartbeat_jobs(&claimed, "a", LEASE).await.expect("heartbeat");
    assert_eq!(held, claimed[1..]);
    assert!(store.heartbeat_jobs(&claimed, "b", LEASE).await.expect("heartbeat").is_empty());

    let ids: Vec<DocumentId> = inserted[..3].iter().map(|(doc, _)| doc.id).collect();
    assert_eq!(store.mark_documents_processing(&ids).await.expect("processing"), 2);
    let indexed: Vec<IndexedVersion> =
        ids.iter().map(|&document| IndexedVersion { document, version: 1, chunk_count: 3, layout: docs.layout() }).collect();
    let outcomes = store.mark_documents_ready(&indexed).await.expect("ready");
    assert_eq!(outcomes, [ReadyOutcome::Missing, ReadyOutcome::Ready, ReadyOutcome::Ready]);
    assert_eq!(store.complete_jobs(&claimed, "a").await.expect("complete"), 2);
    assert_eq!(store.complete_jobs(&claimed, "a").await.expect("complete"), 0, "already done");
    let counts = store.document_status_counts(docs.id).await.expect("counts");
    assert_eq!((counts.ready, counts.chunks, counts.processing), (2, 6, 0));
    assert_eq!(store.get_job(claimed[0]).await.expect("job").state, JobState::Cancelled);
    assert_eq!(store.get_job(claimed[1]).await.expect("job").state, JobState::Succeeded);
}

async fn expired_lease_is_reclaimed_by_another_worker(store: Store) {
    let docs = collection(&store, "docs").await;
    let (_, job_id) =
        store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");
    assert!(
        store.claim_job("w", &["reindex"], LEASE).await.expect("claim").is_none(),
        "wrong kind"
    );
    assert!(store.claim_job("w", &[], LEASE).await.expect("claim").is_none());

    let first =
        store.claim_job("a", &["reindex", INGEST_JOB_KIND], Duration::ZERO).await.expect("claim");
    assert_eq!(first.map(|job| job.id), Some(job_id));
    tokio::time::sleep(Duration::from_millis(20)).await;

    let second =
        store.claim_job("b", &[INGEST_JOB_KIND], LEASE).await.expect("claim").expect("reclaimed");
    assert_eq!((second.id, second.attempts), (job_id, 2));
    assert_eq!(second.worker.as_deref(), Some("b"));
    assert!(
        store.claim_job("c", &[INGEST_JOB_KIND], LEASE).await.expect("claim").is_none(),
        "lease is live"
    );

    // The first worker has lost the job.
    assert!(!store.heartbeat_job(job_id, "a", LEASE).await.expect("heartbeat"));
    let late = store.complete_job(job_id, "a").await;
    assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
    store.complete_job(job_id, "b").await.expect("complete");
}

async fn lease_expired_on_last_attempt_fails_job_and_document(store: Store) {
    let store = store.with_queue_policy(QueuePolicy { max_attempts: 1, ..QueuePolicy::default() });
    let docs = collection(&store, "docs").await;
    let (doc, job_id) =
        store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");
    store.claim_job("a", &[INGEST_JOB_KIND], Duration::ZERO).await.expect("claim").expect("job");
    store.mark_document_processing(doc.id).await.expect("processing");
    tokio::time::sleep(Duration::from_millis(20)).await;

    assert!(store.claim_job("b", &[INGEST_JOB_KIND], LEASE).await.expect("claim").is_none());
    let job = store.get_job(job_id).await.expect("job");
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
    let doc = store.get_document(docs.id, doc.id).await.expect("doc");
    assert_eq!(doc.status, DocumentStatus::Failed);
    assert!(doc.failure.is_some());
}

async fn only_the_owner_heartbeats_and_completes(store: Store) {
    let docs = collection(&store, "docs").await;
    let (_, job_id) =
        store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");
    assert!(!store.heartbeat_job(job_id, "a", LEASE).await.expect("heartbeat"), "not claimed yet");
    let job = store
        .claim_job("a", &[INGEST_JOB_KIND], Duration::from_secs(1))
        .await
        .expect("claim")
        .expect("job");
    let first_lease = job.lease_until.expect("lease");

    assert!(!store.heartbeat_job(job_id, "b", LEASE).await.expect("heartbeat"));
    assert!(store.heartbeat_job(job_id, "a", LEASE).await.expect("heartbeat"));
    let job = store.get_job(job_id).await.expect("job");
    assert!(job.lease_until.expect("lease") > first_lease);

    let stolen = store.complete_job(job_id, "b").await;
    assert!(matches!(stolen, Err(Error::Conflict(_))), "{stolen:?}");
    let stolen = store.fail_job(job_id, "b", "boom", true).await;
    assert!(matches!(stolen, Err(Error::Conflict(_))), "{stolen:?}");
    store.complete_job(job_id, "a").await.expect("complete");
    assert!(!store.heartbeat_job(job_id, "a", LEASE).await.expect("heartbeat"), "finished");
    let twice = store.complete_job(job_id, "a").await;
    assert!(matches!(twice, Err(Error::Conflict(_))), "{twice:?}");

    let unknown = store.get_job(ragd_core::JobId::new()).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    let unknown = store.complete_job(ragd_core::JobId::new(), "a").await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
}

async fn failed_job_is_retried_until_max_attempts(store: Store) {
    let policy = QueuePolicy { max_attempts: 3, retry_base_ms: 10, retry_max_ms: 40 };
    let store = store.with_queue_policy(policy);
    let docs = collection(&store, "docs").await;
    let (_, job_id) =
        store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");
    assert_eq!(store.get_job(job_id).await.expect("job").max_attempts, 3);

    for attempt in 1..=3 {
        let job = loop {
            // Not due before its backoff has passed.
            match store.claim_job("w", &[INGEST_JOB_KIND], LEASE).await.expect("claim") {
                Some(job) => break job,
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        assert_eq!((job.id, job.attempts), (job_id, attempt));
        store.fail_job(job_id, "w", &format!("failure {attempt}"), true).await.expect("fail");
        let job = store.get_job(job_id).await.expect("job");
        assert_eq!(job.error.as_deref(), Some(format!("failure {attempt}").as_str()));
        if attempt < 3 {
            assert_eq!(job.state, JobState::Queued);
            assert!(job.run_after > job.updated_at, "retry is delayed");
            assert_eq!(job.lease_until, None);
        } else {
            assert_eq!(job.state, JobState::Failed);
        }
    }
    assert!(store.claim_job("w", &[INGEST_JOB_KIND], LEASE).await.expect("claim").is_none());
    assert_eq!(store.pending_job_count().await.expect("count"), 0);

    // Without retry the first failure is final.
    let (_, job_id) =
        store.insert_document_with_job(&new_document(&docs, "doc2")).await.expect("insert");
    store.claim_job("w", &[INGEST_JOB_KIND], LEASE).await.expect("claim").expect("job");
    store.fail_job(job_id, "w", "unsupported", false).await.expect("fail");
    let job = store.get_job(job_id).await.expect("job");
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
}

async fn deleting_a_document_cancels_its_job(store: Store) {
    let docs = collection(&store, "docs").await;
    let (queued, queued_job) =
        store.insert_document_with_job(&new_document(&docs, "queued")).await.expect("insert");
    let (kept, kept_job) =
        store.insert_document_with_job(&new_document(&docs, "kept")).await.expect("insert");

    let deleted = store.delete_document(docs.id, queued.id).await.expect("delete");
    assert_eq!(deleted, queued);
    assert_eq!(store.get_job(queued_job).await.expect("job").state, JobState::Cancelled);
    let gone = store.get_document(docs.id, queued.id).await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let again = store.delete_document(docs.id, queued.id).await;
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");

    // A running job is cancelled too: its worker sees it at the next heartbeat.
    let job = store.claim_job("w", &[INGEST_JOB_KIND], LEASE).await.expect("claim").expect("job");
    assert_eq!(job.id, kept_job);
    store.delete_document(docs.id, kept.id).await.expect("delete");
    assert!(!store.heartbeat_job(kept_job, "w", LEASE).await.expect("heartbeat"));
    assert_eq!(store.get_job(kept_job).await.expect("job").state, JobState::Cancelled);
    let missing = store.mark_document_ready(kept.id, 1, 3).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    assert_eq!(store.pending_job_count().await.expect("count"), 0);
}

async fn deleting_a_collection_removes_documents_and_cancels_jobs(store: Store) {
    let docs = collection(&store, "docs").await;
    let other = collection(&store, "other").await;
    let (doc, job) =
        store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");
    let (_, other_job) =
        store.insert_document_with_job(&new_document(&other, "doc")).await.expect("insert");

    store.delete_collection(&tenant("acme"), docs.id).await.expect("delete");
    let gone = store.get_document(docs.id, doc.id).await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    assert_eq!(store.get_job(job).await.expect("job").state, JobState::Cancelled);
    assert_eq!(store.get_job(other_job).await.expect("job").state, JobState::Queued);
    assert_eq!(store.pending_job_count().await.expect("count"), 1);
}

#[tokio::test]
async fn blobs_roundtrip_and_put_is_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = BlobStore::open(&dir.path().join("blobs")).expect("open");
    let hash = blobs.put(b"hello world").await.expect("put");
    assert_eq!(hash, ContentHash::of(b"hello world"));
    assert_eq!(blobs.put(b"hello world").await.expect("put again"), hash);
    assert_eq!(blobs.get(&hash).await.expect("get"), b"hello world");
    let empty = blobs.put(b"").await.expect("put empty");
    assert_eq!(blobs.get(&empty).await.expect("get empty"), b"");

    // One file per content, and no temporary file left behind.
    let hex = hash.as_str();
    let fan_out = dir.path().join("blobs/sha256").join(&hex[..2]);
    let names: Vec<_> = std::fs::read_dir(&fan_out)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(names, vec![hex[2..].to_owned()]);

    std::fs::write(fan_out.join(&hex[2..]), b"tampered").expect("tamper");
    assert!(matches!(blobs.get(&hash).await, Err(Error::Corrupt(_))));

    blobs.delete(&hash).await.expect("delete");
    assert!(matches!(blobs.get(&hash).await, Err(Error::NotFound(_))));
    blobs.delete(&hash).await.expect("deleting an absent blob");
}

#[tokio::test]
async fn sqlite_file_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a/b/ragd.sqlite").display());
    let config = StoreConfig { url, max_connections: 2 };
    let store = Store::connect(&config).await.expect("connect");
    let created = collection(&store, "docs").await;
    store.close().await;

    let store = Store::connect(&config).await.expect("reconnect, migrations already applied");
    assert_eq!(store.list_collections(&tenant("acme")).await.expect("list"), vec![created]);
    store.close().await;
}

/// A document of `docs` whose content is `text`.
fn with_content(docs: &CollectionRecord, text: &str, external_id: Option<&str>) -> NewDocument {
    let mut new = new_document(docs, text);
    new.external_id = external_id.map(str::to_owned);
    new.content_hash = ContentHash::of(text.as_bytes());
    new
}

fn created(outcome: &AddOutcome) -> (&DocumentRecord, ragd_core::JobId) {
    match outcome {
        AddOutcome::Created { record, job } => (record, *job),
        other => panic!("expected a new document, got {other:?}"),
    }
}

fn new_version(outcome: &AddOutcome) -> (&DocumentRecord, ragd_core::JobId) {
    match outcome {
        AddOutcome::NewVersion { record, job } => (record, *job),
        other => panic!("expected a new version, got {other:?}"),
    }
}

fn duplicate(outcome: &AddOutcome) -> &DocumentRecord {
    match outcome {
        AddOutcome::Duplicate(existing) => existing,
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

async fn batch_records_counts_and_tags_its_documents(store: Store) {
    let docs = collection(&store, "docs").await;
    let batch = BatchId::new();
    let news: Vec<NewDocument> =
        (0..3).map(|i| with_content(&docs, &format!("text {i}"), None)).collect();
    let outcomes = store.insert_documents_with_jobs(Some(batch), &news).await.expect("insert");
    assert_eq!(outcomes.len(), 3);
    let mut ids = Vec::new();
    for (outcome, new) in outcomes.iter().zip(&news) {
        let (record, job) = created(outcome);
        assert_eq!((record.id, record.batch, record.version), (new.id, Some(batch), 1));
        assert_eq!(store.get_document(docs.id, new.id).await.expect("get"), *record);
        assert_eq!(store.get_job(job).await.expect("job").state, JobState::Queued);
        ids.push(record.id);
    }
    assert_eq!(store.pending_job_count().await.expect("count"), 3);
    let single =
        store.insert_document_with_job(&new_document(&docs, "single")).await.expect("insert");
    assert_eq!(single.0.batch, None);

    let new = NewBatch {
        id: batch,
        collection: docs.id,
        tenant: docs.tenant.clone(),
        accepted: 3,
        duplicates: 0,
        rejected: 2,
    };
    let record = store.create_batch(&new).await.expect("create batch");
    assert_eq!(
        (record.id, record.collection, record.accepted, record.rejected),
        (batch, docs.id, 3, 2)
    );
    assert_eq!(store.get_batch(&docs.tenant, batch).await.expect("get batch"), record);
    let again = store.create_batch(&new).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    let foreign = store.get_batch(&tenant("globex"), batch).await;
    assert!(matches!(foreign, Err(Error::NotFound(_))), "{foreign:?}");
    let unknown = store.get_batch(&docs.tenant, BatchId::new()).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    let orphan = store
        .create_batch(&NewBatch {
            id: BatchId::new(),
            collection: CollectionId::new(),
            ..new.clone()
        })
        .await;
    assert!(matches!(orphan, Err(Error::NotFound(_))), "{orphan:?}");

    store.mark_document_processing(ids[0]).await.expect("processing");
    store.mark_document_ready(ids[1], 1, 4).await.expect("ready");
    store.mark_document_failed(ids[2], "no text").await.expect("failed");
    let counts = store.batch_status_counts(batch, &Visibility::All).await.expect("counts");
    assert_eq!(
        (counts.queued, counts.processing, counts.ready, counts.failed, counts.chunks),
        (0, 1, 1, 1, 4)
    );
    assert_eq!(store.batch_status_counts(BatchId::new(), &Visibility::All).await.expect("counts").queued, 0);

    // Deleting the collection takes its batches along.
    store.delete_collection(&docs.tenant, docs.id).await.expect("delete");
    let gone = store.get_batch(&docs.tenant, batch).await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
}

async fn same_content_is_a_duplicate(store: Store) {
    let docs = collection(&store, "docs").await;
    let other = collection(&store, "other").await;
    let (first, _) =
        store.insert_document_with_job(&with_content(&docs, "alpha", None)).await.expect("insert");

    // Against the stored documents and against earlier ones of the slice;
    // a new external id does not make equal content new.
    let slice = [
        with_content(&docs, "alpha", None),
        with_content(&docs, "beta", None),
        with_content(&docs, "beta", Some("b-2")),
        with_content(&other, "alpha", None),
    ];
    let outcomes = store.insert_documents_with_jobs(None, &slice).await.expect("insert");
    assert_eq!(duplicate(&outcomes[0]), &first);
    let (beta, _) = created(&outcomes[1]);
    assert_eq!(duplicate(&outcomes[2]).id, beta.id);
    created(&outcomes[3]);
    for new in [&slice[0], &slice[2]] {
        let absent = store.get_document(docs.id, new.id).await;
        assert!(matches!(absent, Err(Error::NotFound(_))), "{absent:?}");
    }
    assert_eq!(store.pending_job_count().await.expect("count"), 3);

    // A failed document does not count: its content can be uploaded anew.
    store.mark_document_failed(first.id, "parse error").await.expect("failed");
    let outcomes = store
        .insert_documents_with_jobs(None, &[with_content(&docs, "alpha", None)])
        .await
        .expect("insert");
    assert_ne!(created(&outcomes[0]).0.id, first.id);
    // A deleted one neither.
    store.delete_document(docs.id, beta.id).await.expect("delete");
    let outcomes = store
        .insert_documents_with_jobs(None, &[with_content(&docs, "beta", None)])
        .await
        .expect("insert");
    created(&outcomes[0]);
    assert!(store.insert_documents_with_jobs(None, &[]).await.expect("nothing").is_empty());
}

async fn same_external_id_makes_a_new_version(store: Store) {
    let docs = collection(&store, "docs").await;
    let outcomes = store
        .insert_documents_with_jobs(None, &[with_content(&docs, "cats", Some("doc-1"))])
        .await
        .expect("insert");
    let (first, first_job) = created(&outcomes[0]);
    let first = first.clone();

    let batch = BatchId::new();
    let mut changed = with_content(&docs, "submarines", Some("doc-1"));
    changed.title = "Submarines".to_owned();
    let outcomes =
        store.insert_documents_with_jobs(Some(batch), &[changed.clone()]).await.expect("insert");
    let (second, second_job) = new_version(&outcomes[0]);
    assert_eq!((second.id, second.version, second.status), (first.id, 2, DocumentStatus::Queued));
    assert_eq!(
        (second.title.as_str(), &second.content_hash),
        ("Submarines", &changed.content_hash)
    );
    assert_eq!(
        (second.external_id.as_deref(), second.batch, second.created_at),
        (Some("doc-1"), Some(batch), first.created_at)
    );
    assert_eq!(store.get_document(docs.id, first.id).await.expect("get"), *second);
    let cancelled = store.get_job(first_job).await.expect("job");
    assert_eq!(
        cancelled.state,
        JobState::Cancelled,
        "the queued job would ingest the same content"
    );
    assert_eq!(store.get_job(second_job).await.expect("job").state, JobState::Queued);
    assert_eq!(store.pending_job_count().await.expect("count"), 1);

    // The same content again is a duplicate; within one slice the second
    // of two uploads versions the first.
    let outcomes =
        store.insert_documents_with_jobs(None, &[changed.clone()]).await.expect("insert");
    assert_eq!(duplicate(&outcomes[0]).version, 2);
    let outcomes = store
        .insert_documents_with_jobs(
            None,
            &[with_content(&docs, "one", Some("doc-2")), with_content(&docs, "two", Some("doc-2"))],
        )
        .await
        .expect("insert");
    let (one, _) = created(&outcomes[0]);
    let (two, _) = new_version(&outcomes[1]);
    assert_eq!((two.id, two.version), (one.id, 2));

    // A failed document uploaded again unchanged is retried.
    store.mark_document_failed(first.id, "embedder down").await.expect("failed");
    let outcomes =
        store.insert_documents_with_jobs(None, &[changed.clone()]).await.expect("insert");
    let (retried, _) = new_version(&outcomes[0]);
    assert_eq!(
        (retried.version, retried.status, retried.failure.as_deref()),
        (3, DocumentStatus::Queued, None)
    );

    // Directly by id.
    let mut direct = with_content(&docs, "periscopes", None);
    direct.id = first.id;
    let (record, _) = store.new_document_version(&direct, None).await.expect("new version");
    assert_eq!(
        (record.version, record.batch, record.external_id.as_deref()),
        (4, None, Some("doc-1"))
    );
    direct.id = DocumentId::new();
    let missing = store.new_document_version(&direct, None).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    let mut foreign = with_content(&docs, "periscopes", None);
    foreign.id = first.id;
    foreign.tenant = tenant("globex");
    let missing = store.new_document_version(&foreign, None).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
}

async fn new_version_waits_for_the_running_job_of_its_document(store: Store) {
    let docs = collection(&store, "docs").await;
    let outcomes = store
        .insert_documents_with_jobs(None, &[with_content(&docs, "v1", Some("doc"))])
        .await
        .expect("insert");
    let (v1, v1_job) = created(&outcomes[0]);
    let v1 = v1.clone();
    let other =
        store.insert_document_with_job(&new_document(&docs, "other")).await.expect("insert").1;
    let running =
        store.claim_job("a", &[INGEST_JOB_KIND], LEASE).await.expect("claim").expect("job");
    assert_eq!(running.id, v1_job);
    store.mark_document_processing(v1.id).await.expect("processing");

    let outcomes = store
        .insert_documents_with_jobs(None, &[with_content(&docs, "v2", Some("doc"))])
        .await
        .expect("insert");
    let (_, v2_job) = new_version(&outcomes[0]);
    assert_eq!(store.get_job(v1_job).await.expect("job").state, JobState::Running, "not cancelled");

    // Other documents' jobs go ahead; this document's new job waits.
    let next = store.claim_job("b", &[INGEST_JOB_KIND], LEASE).await.expect("claim").expect("job");
    assert_eq!(next.id, other);
    assert!(store.claim_job("b", &[INGEST_JOB_KIND], LEASE).await.expect("claim").is_none());

    // The old job finishing does not publish over the queued version.
    store.mark_document_ready(v1.id, 1, 5).await.expect("stale ready is a no-op");
    let doc = store.get_document(docs.id, v1.id).await.expect("get");
    assert_eq!((doc.status, doc.version), (DocumentStatus::Queued, 2));
    store.complete_job(v1_job, "a").await.expect("complete");

    let next = store.claim_job("b", &[INGEST_JOB_KIND], LEASE).await.expect("claim").expect("job");
    assert_eq!(next.id, v2_job);
    store.mark_document_ready(v1.id, 2, 7).await.expect("ready");
    let doc = store.get_document(docs.id, v1.id).await.expect("get");
    assert_eq!((doc.status, doc.version, doc.chunk_count), (DocumentStatus::Ready, 2, 7));
}

async fn a_failed_group_adds_nothing(store: Store) {
    let docs = collection(&store, "docs").await;
    let mut orphan = with_content(&docs, "orphan", None);
    orphan.collection = CollectionId::new();
    let failed =
        store.insert_documents_with_jobs(None, &[with_content(&docs, "fine", None), orphan]).await;
    assert!(matches!(failed, Err(Error::NotFound(_))), "{failed:?}");
    let (existing, _) =
        store.insert_document_with_job(&new_document(&docs, "taken")).await.expect("insert");
    let mut taken = with_content(&docs, "new content", None);
    taken.id = existing.id;
    let failed =
        store.insert_documents_with_jobs(None, &[with_content(&docs, "fine", None), taken]).await;
    assert!(matches!(failed, Err(Error::Conflict(_))), "{failed:?}");
    assert_eq!(store.list_documents(docs.id, None, 10).await.expect("list"), vec![existing]);
    assert_eq!(store.pending_job_count().await.expect("count"), 1);
}

async fn concurrent_uploads_of_the_same_content_create_one_document(store: Store) {
    let docs = collection(&store, "docs").await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let store = store.clone();
        let docs = docs.clone();
        tasks.push(tokio::spawn(async move {
            let slice = [
                with_content(&docs, &format!("own {i}"), None),
                with_content(&docs, "shared", Some("shared")),
            ];
            store.insert_documents_with_jobs(None, &slice).await.expect("insert")
        }));
    }
    let mut created_shared = 0;
    for task in tasks {
        let outcomes = task.await.expect("task");
        created(&outcomes[0]);
        if matches!(outcomes[1], AddOutcome::Created { .. }) {
            created_shared += 1;
        } else {
            duplicate(&outcomes[1]);
        }
    }
    assert_eq!(created_shared, 1);
    assert_eq!(store.list_documents(docs.id, None, 10).await.expect("list").len(), 5);
}

const TRAIN_KIND: &str = "finetune-embedder";

async fn submitted_jobs_are_listed_per_tenant_in_pages(store: Store) {
    let mut ids = Vec::new();
    for n in 0..5 {
        let job = store
            .submit_job(&tenant("acme"), TRAIN_KIND, &serde_json::json!({"n": n}))
            .await
            .expect("submit");
        assert_eq!(
            (job.state, job.progress, job.tenant.clone()),
            (JobState::Queued, 0.0, Some(tenant("acme")))
        );
        assert!(job.artifacts.is_empty() && job.checkpoint.is_none() && !job.cancel_requested);
        ids.push(job.id);
    }
    store.submit_job(&tenant("other"), TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    // Ingest jobs have no owner and are not listed.
    let docs = collection(&store, "docs").await;
    store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");

    let first = store.list_jobs(&tenant("acme"), None, 3).await.expect("list");
    let second = store.list_jobs(&tenant("acme"), first.last().map(|job| job.id), 3).await.expect("list");
    let listed: Vec<_> = first.iter().chain(&second).map(|job| job.id).collect();
    assert_eq!(listed, ids);
    assert_eq!(first[1].payload, serde_json::json!({"n": 1}));

    let foreign = store.get_tenant_job(&tenant("other"), ids[0]).await;
    assert!(matches!(foreign, Err(Error::NotFound(_))), "{foreign:?}");
    let foreign = store.request_job_cancel(&tenant("other"), ids[0]).await;
    assert!(matches!(foreign, Err(Error::NotFound(_))), "{foreign:?}");
}

async fn running_job_reports_progress_metrics_logs_and_artifacts(store: Store) {
    let job = store.submit_job(&tenant("acme"), TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    let stolen = store.report_job_progress(job.id, "w", 0.5, "step 1", &[]).await;
    assert!(matches!(stolen, Err(Error::Conflict(_))), "not claimed yet: {stolen:?}");
    store.claim_job("w", &[TRAIN_KIND], LEASE).await.expect("claim").expect("job");

    for step in 1..=3 {
        let control = store
            .report_job_progress(
                job.id,
                "w",
                step as f64 / 4.0,
                &format!("step {step}"),
                &[("loss", step, 1.0 / step as f64)],
            )
            .await
            .expect("report");
        assert_eq!(control, JobControl::Continue);
    }
    // A retried step overwrites its value.
    store
        .report_job_progress(job.id, "w", 0.75, "step 3", &[("loss", 3, 0.25), ("val_mrr", 0, 0.5)])
        .await
        .expect("report");
    let stolen = store.report_job_progress(job.id, "other", 0.9, "step 4", &[]).await;
    assert!(matches!(stolen, Err(Error::Conflict(_))), "{stolen:?}");

    for n in 0..4 {
        store.append_job_log(job.id, &format!("line {n}")).await.expect("log");
    }
    store.record_job_checkpoint(job.id, "w", &serde_json::json!({"epoch": 1})).await.expect("checkpoint");
    store.add_job_artifact(job.id, "w", serde_json::json!({"name": "a"})).await.expect("artifact");
    store.add_job_artifact(job.id, "w", serde_json::json!({"name": "b"})).await.expect("artifact");
    let stolen = store.add_job_artifact(job.id, "other", serde_json::json!({})).await;
    assert!(matches!(stolen, Err(Error::Conflict(_))), "{stolen:?}");

    let record = store.get_tenant_job(&tenant("acme"), job.id).await.expect("job");
    assert_eq!((record.progress, record.step.as_deref()), (0.75, Some("step 3")));
    assert_eq!(record.checkpoint, Some(serde_json::json!({"epoch": 1})));
    assert_eq!(record.artifacts, [serde_json::json!({"name": "a"}), serde_json::json!({"name": "b"})]);
    let metrics: Vec<_> = store
        .job_metrics(job.id)
        .await
        .expect("metrics")
        .into_iter()
        .map(|m| (m.name, m.step, m.value))
        .collect();
    assert_eq!(
        metrics,
        [
            ("loss".to_owned(), 1, 1.0),
            ("loss".to_owned(), 2, 0.5),
            ("loss".to_owned(), 3, 0.25),
            ("val_mrr".to_owned(), 0, 0.5)
        ]
    );
    let logs: Vec<_> =
        store.job_logs(job.id, 2).await.expect("logs").into_iter().map(|l| l.message).collect();
    assert_eq!(logs, ["line 2", "line 3"]);
    store.complete_job(job.id, "w").await.expect("complete");
}

async fn cancelling_a_queued_job_ends_it_and_a_running_one_stops_it(store: Store) {
    let acme = tenant("acme");
    let queued = store.submit_job(&acme, TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    let cancelled = store.request_job_cancel(&acme, queued.id).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(
        store.claim_job("w", &[TRAIN_KIND], LEASE).await.expect("claim").is_none(),
        "cancelled job claimed"
    );
    assert_eq!(store.request_job_cancel(&acme, queued.id).await.expect("again").state, JobState::Cancelled);

    let running = store.submit_job(&acme, TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    store.claim_job("w", &[TRAIN_KIND], LEASE).await.expect("claim").expect("job");
    let flagged = store.request_job_cancel(&acme, running.id).await.expect("cancel");
    assert_eq!((flagged.state, flagged.cancel_requested), (JobState::Running, true));
    let control = store.report_job_progress(running.id, "w", 0.1, "step 1", &[]).await.expect("report");
    assert_eq!(control, JobControl::Stop);
    store.finish_cancelled_job(running.id, "w").await.expect("finish");
    let job = store.get_job(running.id).await.expect("job");
    assert_eq!((job.state, job.lease_until), (JobState::Cancelled, None));

    // A failure after the request cancels instead of retrying.
    let failing = store.submit_job(&acme, TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    store.claim_job("w", &[TRAIN_KIND], LEASE).await.expect("claim").expect("job");
    store.request_job_cancel(&acme, failing.id).await.expect("cancel");
    store.fail_job(failing.id, "w", "interrupted", true).await.expect("fail");
    assert_eq!(store.get_job(failing.id).await.expect("job").state, JobState::Cancelled);

    let done = store.submit_job(&acme, TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    store.claim_job("w", &[TRAIN_KIND], LEASE).await.expect("claim").expect("job");
    store.complete_job(done.id, "w").await.expect("complete");
    let late = store.request_job_cancel(&acme, done.id).await;
    assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
}

async fn cancelled_job_whose_worker_vanished_is_not_run_again(store: Store) {
    let acme = tenant("acme");
    let job = store.submit_job(&acme, TRAIN_KIND, &serde_json::json!({})).await.expect("submit");
    store.claim_job("a", &[TRAIN_KIND], Duration::ZERO).await.expect("claim").expect("job");
    store.request_job_cancel(&acme, job.id).await.expect("cancel");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.claim_job("b", &[TRAIN_KIND], LEASE).await.expect("claim").is_none());
    assert_eq!(store.get_job(job.id).await.expect("job").state, JobState::Cancelled);
}

fn new_key(tenant_name: Option<&str>, role: Role) -> NewKey {
    NewKey {
        tenant: tenant_name.map(tenant),
        name: format!("{role} key"),
        role,
        on_behalf_of: role == Role::Read,
        expires_at: None,
    }
}

async fn keys_authenticate_until_revoked_or_expired(store: Store) {
    assert_eq!(store.key_count().await.expect("count"), 0);
    let (record, token) = store.create_key(&new_key(Some("acme"), Role::Read)).await.expect("key");
    let key = token.expose();
    assert!(key.starts_with(&format!("ragd_{}_", record.id)), "{key}");
    assert!(!format!("{token:?}").contains(&key[40..]), "the secret leaks through Debug");
    let found = store.authenticate(key).await.expect("authenticate").expect("valid");
    assert_eq!(found, record);
    assert!(found.on_behalf_of);

    // A wrong secret, a wrong id, or no key at all.
    let mut wrong = key.to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let other_id = format!("ragd_{}{}", "0".repeat(32), &key[37..]);
    for bad in [wrong.as_str(), other_id.as_str(), "", "ragd_", "not a key"] {
        let outcome = store.authenticate(bad).await.expect("authenticate");
        assert_eq!(outcome, Err(KeyRejection::Invalid), "{bad:?}");
    }

    // Revoked keys and expired keys stop working.
    store.revoke_key(record.id, None).await.expect("revoke");
    assert_eq!(store.authenticate(key).await.expect("authenticate"), Err(KeyRejection::Revoked));
    let expired = NewKey { expires_at: Some(1), ..new_key(None, Role::Admin) };
    let (_, token) = store.create_key(&expired).await.expect("key");
    let outcome = store.authenticate(token.expose()).await.expect("authenticate");
    assert_eq!(outcome, Err(KeyRejection::Expired));
    let later = NewKey { expires_at: Some(i64::MAX), ..new_key(None, Role::Admin) };
    let (operator, token) = store.create_key(&later).await.expect("key");
    let found = store.authenticate(token.expose()).await.expect("authenticate").expect("valid");
    assert_eq!((found.tenant, found.role), (None, Role::Admin));
    assert_eq!(found.id, operator.id);
    assert_eq!(store.key_count().await.expect("count"), 3);
}

async fn keys_are_listed_and_revoked_per_tenant(store: Store) {
    let (acme, _) = store.create_key(&new_key(Some("acme"), Role::Write)).await.expect("key");
    let (globex, _) = store.create_key(&new_key(Some("globex"), Role::Admin)).await.expect("key");
    let (operator, _) = store.create_key(&new_key(None, Role::Admin)).await.expect("key");
    let ids = |keys: Vec<ragd_store::KeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_keys(Some(&tenant("acme"))).await.expect("list")), [acme.id]);
    assert_eq!(ids(store.list_keys(None).await.expect("list")), [acme.id, globex.id, operator.id]);

    // A tenant cannot revoke another tenant's key, nor an operator key.
    for id in [globex.id, operator.id] {
        let outcome = store.revoke_key(id, Some(&tenant("acme"))).await;
        assert!(matches!(outcome, Err(Error::NotFound(_))), "{outcome:?}");
    }
    let revoked = store.revoke_key(acme.id, Some(&tenant("acme"))).await.expect("revoke");
    let first = revoked.revoked_at.expect("revoked");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.revoke_key(acme.id, None).await.expect("revoke again");
    assert_eq!(again.revoked_at, Some(first), "revoking twice keeps the first time");
}

async fn audit_entries_page_newest_first_per_tenant(store: Store) {
    let entry = |tenant_name: Option<&str>, action: &str| NewAuditEntry {
        key_id: Some("k1".to_owned()),
        tenant: tenant_name.map(tenant),
        action: action.to_owned(),
        target: "/v1/x".to_owned(),
        outcome: "ok".to_owned(),
        status: 201,
    };
    for (t, action) in [
        (Some("acme"), "a1"),
        (Some("globex"), "g1"),
        (None, "o1"),
        (Some("acme"), "a2"),
        (Some("acme"), "a3"),
    ] {
        store.record_audit(&entry(t, action)).await.expect("record");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let actions = |records: &[ragd_store::AuditRecord]| {
        records.iter().map(|r| r.entry.action.clone()).collect::<Vec<_>>()
    };
    let all = store.list_audit(None, None, 10).await.expect("list");
    assert_eq!(actions(&all), ["a3", "a2", "o1", "g1", "a1"]);
    assert_eq!(all[2].entry, entry(None, "o1"));
    let acme = tenant("acme");
    let page = store.list_audit(Some(&acme), None, 2).await.expect("list");
    assert_eq!(actions(&page), ["a3", "a2"]);
    let next = store.list_audit(Some(&acme), Some(&page[1].id), 2).await.expect("list");
    assert_eq!(actions(&next), ["a1"]);
    let next = store.list_audit(None, Some(&all[1].id), 2).await.expect("list");
    assert_eq!(actions(&next), ["o1", "g1"]);
}

async fn acl_visibility_filters_lists_and_counts(store: Store) {
    let docs = collection(&store, "docs").await;
    let batch = BatchId::new();
    let with_acl = |text: &str, acl: &[&str]| NewDocument {
        acl: acl.iter().map(|p| p.to_string()).collect(),
        ..with_content(&docs, text, None)
    };
    let news =
        [with_acl("public", &[]), with_acl("alice only", &["alice"]), with_acl("eng", &["eng", "ops"])];
    store.insert_documents_with_jobs(Some(batch), &news).await.expect("insert");
    let principals = |p: &[&str]| Visibility::Principals(p.iter().map(|s| s.to_string()).collect());
    let cases = [
        (Visibility::All, vec!["public", "alice only", "eng"]),
        (Visibility::public(), vec!["public"]),
        (principals(&["alice"]), vec!["public", "alice only"]),
        (principals(&["bob", "ops"]), vec!["public", "eng"]),
        (principals(&["alice", "eng"]), vec!["public", "alice only", "eng"]),
        // Principals match whole entries, not parts of the JSON text.
        (principals(&["ali", "\"alice\""]), vec!["public"]),
    ];
    for (visibility, expected) in cases {
        let listed = store.list_visible_documents(docs.id, None, 10, &visibility).await.expect("list");
        let titles: Vec<&str> = listed.iter().map(|d| d.title.as_str()).collect();
        assert_eq!(titles, expected, "{visibility:?}");
        let paged =
            store.list_visible_documents(docs.id, Some(listed[0].id), 10, &visibility).await.expect("list");
        assert_eq!(paged.len(), expected.len() - 1, "{visibility:?} after the first");
        let counts = store.visible_document_counts(docs.id, &visibility).await.expect("counts");
        assert_eq!(counts.queued as usize, expected.len(), "{visibility:?}");
        let counts = store.batch_status_counts(batch, &visibility).await.expect("counts");
        assert_eq!(counts.queued as usize, expected.len(), "{visibility:?}");
    }
}

async fn the_same_content_under_another_acl_is_another_document(store: Store) {
    let docs = collection(&store, "docs").await;
    let mut secret = with_content(&docs, "the same words", None);
    secret.acl = vec!["alice".to_owned()];
    let mut open = with_content(&docs, "the same words", None);
    open.acl = Vec::new();
    let outcomes = store.insert_documents_with_jobs(None, &[secret.clone()]).await.expect("insert");
    let (first, _) = created(&outcomes[0]);
    let outcomes = store.insert_documents_with_jobs(None, &[open]).await.expect("insert");
    assert_ne!(created(&outcomes[0]).0.id, first.id);
    secret.id = DocumentId::new();
    let outcomes = store.insert_documents_with_jobs(None, &[secret]).await.expect("insert");
    assert!(matches!(&outcomes[0], AddOutcome::Duplicate(existing) if existing.id == first.id), "{outcomes:?}");

    // With an external id, new permissions make a new version.
    let mut versioned = with_content(&docs, "versioned words", Some("v"));
    store.insert_documents_with_jobs(None, &[versioned.clone()]).await.expect("insert");
    versioned.id = DocumentId::new();
    versioned.acl = vec!["hr".to_owned()];
    let outcomes = store.insert_documents_with_jobs(None, &[versioned]).await.expect("insert");
    assert!(matches!(&outcomes[0], AddOutcome::NewVersion { record, .. } if record.version == 2), "{outcomes:?}");
}

async fn a_reindex_builds_the_next_generation_and_swaps(store: Store) {
    let docs = collection(&store, "docs").await;
    assert_eq!((docs.index_generation, docs.pending.clone()), (0, None));
    assert_eq!(docs.write_targets().len(), 1);
    let params = serde_json::json!({});
    let submit = || store.submit_job(&docs.tenant, "reindex", &params);
    let (job, other_job) = (submit().await.expect("job").id, submit().await.expect("job").id);

    let building = store.begin_reindex(&docs.tenant, docs.id, "tuned", 768, job).await.expect("begin");
    let pending = building.pending.clone().expect("pending");
    assert_eq!((pending.generation, pending.embedder.as_str(), pending.dimensions, pending.job), (1, "tuned", 768, job));
    let targets: Vec<IndexTarget> = building.write_targets().iter().map(|t| t.target).collect();
    assert_eq!(targets, [IndexTarget::new(docs.id, 0), IndexTarget::new(docs.id, 1)]);
    let resumed = store.begin_reindex(&docs.tenant, docs.id, "tuned", 768, job).await.expect("a retry resumes");
    assert_eq!(resumed.pending, building.pending);
    let busy = store.begin_reindex(&docs.tenant, docs.id, "other", 384, other_job).await;
    assert!(matches!(busy, Err(Error::Conflict(_))), "{busy:?}");

    // A document indexed before the reindex began is not published: its
    // chunks are missing from generation 1.
    let (doc, _) = store.insert_document_with_job(&new_document(&docs, "doc")).await.expect("insert");
    let stale = IndexedVersion { document: doc.id, version: 1, chunk_count: 2, layout: docs.layout() };
    assert_eq!(store.mark_documents_ready(&[stale]).await.expect("ready"), [ReadyOutcome::IndexMoved]);
    let current = IndexedVersion { document: doc.id, version: 1, chunk_count: 2, layout: building.layout() };
    assert_eq!(store.mark_documents_ready(&[current]).await.expect("ready"), [ReadyOutcome::Ready]);

    assert!(matches!(store.finish_reindex(docs.id, other_job).await, Err(Error::Conflict(_))));
    assert_eq!(store.finish_reindex(docs.id, job).await.expect("finish"), 0, "generation 0 was searched before");
    let swapped = store.get_collection(&docs.tenant, docs.id).await.expect("get");
    assert_eq!((swapped.index_generation, swapped.embedder.as_str(), swapped.dimensions, swapped.pending.clone()), (1, "tuned", 768, None));
    assert_eq!(swapped.layout(), IndexLayout { generation: 1, pending: None });

    let again = store.begin_reindex(&docs.tenant, docs.id, "other", 384, other_job).await.expect("begin");
    assert_eq!(again.pending.as_ref().map(|p| p.generation), Some(2));
    assert_eq!(store.abandon_reindex(docs.id, job).await.expect("not this job's"), None);
    assert_eq!(store.abandon_reindex(docs.id, other_job).await.expect("abandon"), Some(2));
    let kept = store.get_collection(&docs.tenant, docs.id).await.expect("get");
    assert_eq!((kept.index_generation, kept.embedder.as_str(), kept.pending), (1, "tuned", None));

    // A reindex whose job ended without finishing it is taken over.
    store.begin_reindex(&docs.tenant, docs.id, "other", 384, other_job).await.expect("begin");
    store.request_job_cancel(&docs.tenant, other_job).await.expect("cancel the queued job");
    let third = submit().await.expect("job").id;
    let taken = store.begin_reindex(&docs.tenant, docs.id, "third", 384, third).await.expect("take over");
    assert_eq!(taken.pending.map(|p| (p.generation, p.job)), Some((2, third)));
}
