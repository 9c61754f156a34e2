use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use ragd_core::{ChatMessage, ChatRole, ErrorKind, GenerationRequest, Generator};
use ragd_generate::{OpenAiCompatible, OpenAiConfig};
use serde_json::{json, Value};

const KEY: &str = "sk-test-secret";

/// A stand-in upstream: answers `failures` requests with `status`, then
/// streams `pieces` as a chat completion.
#[derive(Clone)]
struct Upstream {
    status: StatusCode,
    failures: usize,
    pieces: Vec<&'static str>,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<(HeaderMap, Value)>>>,
}

impl Upstream {
    fn new(status: StatusCode, failures: usize, pieces: Vec<&'static str>) -> Self {
        Self { status, failures, pieces, calls: Arc::default(), last: Arc::default() }
    }

    /// Serves on a free local port and returns the API base URL.
    async fn spawn(&self) -> String {
        let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/v1")
    }
}

async fn completions(
    State(upstream): State<Upstream>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let call = upstream.calls.fetch_add(1, Ordering::SeqCst);
    *upstream.last.lock().unwrap() = Some((headers, body));
    if call < upstream.failures {
        if upstream.status.is_server_error() {
            // Upstreams answer 5xx with anything, here plain text echoing the key.
            return (upstream.status, format!("internal boom for {KEY}")).into_response();
        }
        let error = json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}});
        return (upstream.status, Json(error)).into_response();
    }
    let mut body = String::new();
    for (i, piece) in upstream.pieces.iter().enumerate() {
        let delta =
            if i == 0 { json!({"role": "assistant", "content": piece}) } else { json!({"content": piece}) };
        let chunk = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stand-in",
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}]
        });
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stand-in",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn generator(base_url: String, max_retries: u32) -> OpenAiCompatible {
    OpenAiCompatible::new(OpenAiConfig {
        base_url,
        api_key: Some(KEY.into()),
        model: "stand-in-model".into(),
        timeout_secs: 5,
        max_retries,
        context_tokens: 4096,
    })
    .unwrap()
}

fn request() -> GenerationRequest {
    GenerationRequest {
        messages: vec![
            ChatMessage::new(ChatRole::System, "Be brief."),
            ChatMessage::new(ChatRole::User, "Hi"),
        ],
        max_tokens: 32,
        temperature: 0.0,
        seed: 3,
    }
}

#[tokio::test]
async fn retries_rate_limits_then_streams() {
    let upstream = Upstream::new(StatusCode::TOO_MANY_REQUESTS, 2, vec!["Hel", "lo", " there"]);
    let generator = generator(upstream.spawn().await, 3);
    let pieces: Vec<String> = generator.stream(request()).await.unwrap().map(Result::unwrap).collect().await;
    assert_eq!(pieces, ["Hel", "lo", " there"]);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 3);

    let (headers, body) = upstream.last.lock().unwrap().clone().unwrap();
    assert_eq!(headers[header::AUTHORIZATION], format!("Bearer {KEY}"));
    assert_eq!(body["model"], "stand-in-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_completion_tokens"], 32);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "Hi"}));
}

#[tokio::test]
async fn persistent_server_errors_are_upstream_errors() {
    let upstream = Upstream::new(StatusCode::INTERNAL_SERVER_ERROR, usize::MAX, vec![]);
    let generator = generator(upstream.spawn().await, 2);
    let err = generator.stream(request()).await.err().expect("the upstream keeps failing");
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert!(err.message().contains("500"), "{}", err.message());
    assert!(err.message().contains("internal boom"), "{}", err.message());
    assert!(!err.chain().contains(KEY), "{}", err.chain());
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 3, "one attempt and two retries");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let upstream = Upstream::new(StatusCode::BAD_REQUEST, usize::MAX, vec![]);
    let generator = generator(upstream.spawn().await, 3);
    let err = generator.stream(request()).await.err().expect("the upstream refuses");
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert!(err.message().contains("400"), "{}", err.message());
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unreachable_upstream_is_an_upstream_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let generator = generator(format!("http://{addr}/v1"), 1);
    let err = generator.stream(request()).await.err().expect("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert!(err.message().contains("cannot connect"), "{}", err.message());
}
