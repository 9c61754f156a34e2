use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

/// Every (method, path) the router serves; a route added without its
/// `#[utoipa::path]` fails here.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/{key_id}"),
    ("get", "/v1/audit"),
    ("get", "/v1/collections"),
    ("post", "/v1/collections"),
    ("get", "/v1/collections/{collection}"),
    ("patch", "/v1/collections/{collection}"),
    ("delete", "/v1/collections/{collection}"),
    ("get", "/v1/collections/{collection}/documents"),
    ("post", "/v1/collections/{collection}/documents"),
    ("get", "/v1/collections/{collection}/documents/{document}"),
    ("delete", "/v1/collections/{collection}/documents/{document}"),
    ("get", "/v1/batches/{batch}"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job}"),
    ("post", "/v1/jobs/{job}/cancel"),
    ("post", "/v1/collections/{collection}/search"),
    ("post", "/v1/collections/{collection}/query"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model}"),
    ("post", "/v1/embeddings"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target);
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();

    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    // Every reference resolves (schemathesis, in fuzz.rs, checks the rest
    // of its structure when it loads it).
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("ref {target}"));
        assert!(document["components"]["schemas"][name].is_object(), "{target} does not resolve");
    }

    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path)| (method.to_string(), path.to_string())).collect();
    assert_eq!(documented, served);

    // Errors are problem details; the API asks for a bearer key except
    // where health checks opt out.
    let problem = &document["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(problem["properties"][field].is_object(), "Problem.{field}");
    }
    let not_found = &document["paths"]["/v1/collections/{collection}"]["get"]["responses"]["404"];
    assert!(not_found["content"]["application/problem+json"].is_object(), "{not_found}");
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(document["security"][0]["bearer"], serde_json::json!([]));
    assert_eq!(document["paths"]["/healthz"]["get"]["security"], serde_json::json!([{}]));

    // Limits that depend on the configuration are the server's own.
    let dimensions = &document["components"]["schemas"]["EmbeddingsBody"]["properties"]["dimensions"];
    assert_eq!(dimensions["maximum"], 384);
    let upload =
        &document["paths"]["/v1/collections/{collection}/documents"]["post"]["requestBody"]["content"];
    for media_type in [
        "application/json",
        "application/x-ndjson",
        "multipart/form-data",
        "application/zip",
        "application/x-tar",
        "application/gzip",
    ] {
        assert!(upload[media_type]["schema"].is_object(), "{media_type} upload is documented");
    }
}
