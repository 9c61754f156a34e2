use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ragd_core::CollectionId;

use super::*;
use crate::conformance;

fn open(dir: &Path) -> EdgeIndex {
    EdgeIndex::open(dir, EdgeIndexConfig::default()).expect("open edge index")
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            let dir = tempfile::tempdir().unwrap();
            conformance::$check(&open(dir.path())).await;
        }
    )*};
}

crate::conformance_checks!(conformance_tests);

#[tokio::test]
async fn shards_and_replicas_need_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    for settings in [
        IndexSettings { shard_number: Some(2), ..IndexSettings::default() },
        IndexSettings { replication_factor: Some(3), ..IndexSettings::default() },
    ] {
        let spec = CollectionIndexSpec { target: IndexTarget::new(CollectionId::new(), 0), dimensions: 4, settings };
        let error = index.create_collection(&spec).await.unwrap_err();
        assert_eq!(error.kind(), ragd_core::ErrorKind::InvalidInput);
        assert!(error.message().contains("Qdrant server"), "{}", error.message());
    }
}

#[tokio::test]
async fn whole_suite_shares_one_index() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&open(dir.path())).await;
}

#[tokio::test]
async fn reopened_index_keeps_points() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let collection = conformance::write_for_reopen(&index).await;
    drop(index);
    conformance::check_after_reopen(&open(dir.path()), collection).await;
}

const KILL_DIR_VAR: &str = "RAGD_INDEX_KILL_TEST_DIR";

/// Runs in a child process started by `writes_survive_kill_9`: writes, says
/// so, then waits to be killed.
#[tokio::test]
#[ignore = "child half of writes_survive_kill_9"]
async fn kill_9_child() {
    let Ok(dir) = std::env::var(KILL_DIR_VAR) else { return };
    let index = open(Path::new(&dir));
    let collection = conformance::write_for_reopen(&index).await;
    println!("written {collection}");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "edge::tests::kill_9_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(KILL_DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let collection = stdout
        .lines()
        .map_while(std::result::Result::ok)
        // libtest prints "test <name> ... " before the child's own output.
        .find_map(|line| line.split_once("written ").map(|(_, id)| id.trim().to_owned()))
        .expect("the child wrote its collection");
    let in_use = EdgeIndex::open(dir.path(), EdgeIndexConfig::default()).err();
    assert!(matches!(in_use, Some(Error::Locked(_))), "a second process opened the index: {in_use:?}");
    // `Child::kill` is SIGKILL on Unix: no destructor, no final flush; the
    // directory lock goes with the process.
    child.kill().unwrap();
    child.wait().unwrap();
    conformance::check_after_reopen(&open(dir.path()), collection.parse().unwrap()).await;
}

#[test]
fn one_index_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let second = EdgeIndex::open(dir.path(), EdgeIndexConfig::default()).err();
    let message = second.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(second, Some(Error::Locked(_))), "{second:?}");
    assert!(message.contains("another process") && message.contains("data_dir"), "{message}");
    drop(index);
    open(dir.path());
}

#[tokio::test]
async fn interrupted_drop_is_cleaned_up_and_unknown_dirs_are_not_collections() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir.path().join(format!("{DROPPED_PREFIX}{}", CollectionId::new()));
    std::fs::create_dir_all(leftover.join("segments")).unwrap();
    let stray = IndexTarget::new(CollectionId::new(), 0);
    std::fs::create_dir_all(dir.path().join(stray.to_string())).unwrap();

    let index = open(dir.path());
    assert!(!leftover.exists());
    assert_eq!(index.count(stray).await.unwrap_err().kind(), ragd_core::ErrorKind::NotFound);
    index.create_collection(&CollectionIndexSpec { target: stray, dimensions: 4, settings: Default::default() }).await.unwrap();
    assert_eq!(index.count(stray).await.unwrap(), 0);
}

#[tokio::test]
async fn optimizer_builds_hnsw_and_search_still_finds_points() {
    let dir = tempfile::tempdir().unwrap();
    // With a 1 KiB threshold the first write below crosses it, so the
    // optimisers move its points into an HNSW-indexed segment.
    let config = EdgeIndexConfig { indexing_threshold_kb: 1, ..EdgeIndexConfig::default() };
    let index = EdgeIndex::open(dir.path(), config).unwrap();
    let collection = CollectionId::new();
    let target = IndexTarget::new(collection, 0);
    index.create_collection(&CollectionIndexSpec { target, dimensions: 4, settings: Default::default() }).await.unwrap();
    let document = DocumentId::new();
    let points = (0..200u32)
        .map(|i| {
            let angle = i as f32 / 200.0 * std::f32::consts::FRAC_PI_2;
            IndexPoint {
                id: ragd_core::point_id(document, 1, i),
                dense: vec![angle.cos(), angle.sin(), 0.0, 0.0],
                sparse: SparseVector { indices: vec![i], values: vec![1.0] },
                payload: ChunkPayload {
                    tenant: ragd_core::TenantId::default_tenant(),
                    collection,
                    document,
                    version: 1,
                    chunk_index: i,
                    title: String::new(),
                    heading_path: String::new(),
                    page: None,
                    text: format!("chunk {i}"),
                    metadata: serde_json::Map::new(),
                    acl: Vec::new(),
                },
            }
        })
        .collect::<Vec<_>>();
    index.upsert(target, points).await.unwrap();
    assert!(!index.optimize(target).await.unwrap(), "the write already ran the optimisers");

    let query = HybridQuery {
        tenant: ragd_core::TenantId::default_tenant(),
        target,
        dense: vec![1.0, 0.0, 0.0, 0.0],
        sparse: SparseVector { indices: vec![150], values: vec![1.0] },
        mode: SearchMode::Hybrid,
        limit: 3,
        candidates: 20,
        filter: ragd_core::Filter::default(),
        rrf_k: None,
        principals: None,
    };
    let hits = index.search(&query).await.unwrap();
    let indices = hits.iter().map(|hit| hit.payload.chunk_index).collect::<Vec<_>>();
    assert_eq!(indices[..2].iter().copied().collect::<HashSet<_>>(), HashSet::from([0, 150]));

    index.delete_document(target, document, None).await.unwrap();
    assert_eq!(index.count(target).await.unwrap(), 0);
}

#[test]
fn config_defaults_and_unknown_keys() {
    let config: EdgeIndexConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, EdgeIndexConfig::default());
    assert!(serde_json::from_str::<EdgeIndexConfig>(r#"{"hnsw_mm": 8}"#).is_err());
    let dir = tempfile::tempdir().unwrap();
    let bad = EdgeIndexConfig { rrf_k: 0, ..EdgeIndexConfig::default() };
    assert!(matches!(EdgeIndex::open(dir.path(), bad), Err(Error::Config(_))));
}
