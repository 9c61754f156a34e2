//! The conformance suite against a live Qdrant server, when `QDRANT_URL`
//! (its gRPC address, e.g. `http://127.0.0.1:6334`) is set; without it each
//! test says it was skipped and passes. Every test uses its own collection
//! name prefix, so runs can share a server.

use ragd_core::{CollectionId, IndexSettings};

use super::*;
use crate::conformance;

const URL_VAR: &str = "QDRANT_URL";

async fn connect() -> Option<QdrantServerIndex> {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!(
            "skipped: set {URL_VAR} to a Qdrant server's gRPC address to run the Qdrant server backend tests"
        );
        return None;
    };
    let config = QdrantServerConfig {
        url,
        collection_prefix: format!("ragdtest_{}_", &Uuid::new_v4().simple().to_string()[..8]),
        ..QdrantServerConfig::default()
    };
    Some(QdrantServerIndex::connect(config).await.expect("connect to the Qdrant server at QDRANT_URL"))
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            let Some(index) = connect().await else { return };
            conformance::$check(&index).await;
        }
    )*};
}

crate::conformance_checks!(conformance_tests);

#[tokio::test]
async fn a_new_client_sees_the_points() {
    let Some(index) = connect().await else { return };
    let collection = conformance::write_for_reopen(&index).await;
    let reopened = QdrantServerIndex::connect(index.config.clone()).await.unwrap();
    drop(index);
    conformance::check_after_reopen(&reopened, collection).await;
}

/// Shards, replicas, on-disk storage and int8 quantization reach the
/// collection Qdrant creates.
#[tokio::test]
// Qdrant 1.18 reports storage placement in the `on_disk` flags, which later
// servers replace with `memory`.
#[allow(deprecated)]
async fn collection_settings_reach_the_server() {
    let Some(index) = connect().await else { return };
    let collection = CollectionId::new();
    let settings = IndexSettings {
        shard_number: Some(3),
        replication_factor: Some(1),
        on_disk: true,
        quantization: Quantization::Int8,
    };
    index.create_collection(&CollectionIndexSpec { target: IndexTarget::new(collection, 0), dimensions: 8, settings }).await.unwrap();
    let info = index.client.collection_info(index.name(IndexTarget::new(collection, 0))).await.unwrap().result.unwrap();
    let config = info.config.unwrap();
    let params = config.params.unwrap();
    assert_eq!(params.shard_number, 3);
    assert_eq!(params.replication_factor, Some(1));
    assert!(params.on_disk_payload);
    let Some(VectorsConfigKind::ParamsMap(map)) = params.vectors_config.and_then(|v| v.config) else {
        panic!("named vectors expected");
    };
    assert_eq!(map.map[DENSE_VECTOR].on_disk, Some(true));
    let quantization = config.quantization_config.and_then(|q| q.quantization);
    let Some(qdrant_client::qdrant::quantization_config::Quantization::Scalar(scalar)) = quantization else {
        panic!("scalar quantization expected: {quantization:?}");
    };
    assert_eq!(scalar.r#type, i32::from(QuantizationType::Int8));
    for field in [schema::TENANT, schema::COLLECTION, schema::DOCUMENT, schema::ACL, schema::VERSION] {
        assert!(info.payload_schema.contains_key(field), "payload index on {field}");
    }
    index.drop_collection(IndexTarget::new(collection, 0)).await.unwrap();

    let zero = IndexSettings { shard_number: Some(0), ..IndexSettings::default() };
    let error = index
        .create_collection(&CollectionIndexSpec { target: IndexTarget::new(collection, 0), dimensions: 8, settings: zero })
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ragd_core::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let config = QdrantServerConfig {
        url: "http://127.0.0.1:9".to_owned(),
        timeout_secs: 2,
        ..QdrantServerConfig::default()
    };
    let error = match QdrantServerIndex::connect(config).await {
        Ok(_) => panic!("nothing listens on port 9"),
        Err(error) => error,
    };
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
}
