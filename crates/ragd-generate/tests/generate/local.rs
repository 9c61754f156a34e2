use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ragd_core::{ChatMessage, ChatRole, ErrorKind, GenerationRequest, Generator};
use ragd_generate::{LocalGguf, LocalGgufConfig};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/smollm2-135m-instruct/model.gguf");

fn model() -> &'static LocalGguf {
    static MODEL_ONCE: OnceLock<LocalGguf> = OnceLock::new();
    MODEL_ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt().with_env_filter("ragd_generate=info").with_test_writer().try_init();
        let path = PathBuf::from(MODEL);
        assert!(path.exists(), "{} is missing: run scripts/fetch-models", path.display());
        LocalGguf::load(&LocalGgufConfig { model_path: path, ..LocalGgufConfig::default() })
            .expect("the local model loads")
    })
}

fn question(text: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        messages: vec![
            ChatMessage::new(ChatRole::System, "You are a concise assistant."),
            ChatMessage::new(ChatRole::User, text),
        ],
        max_tokens,
        temperature: 0.0,
        seed: 7,
    }
}

#[test]
fn tokenizer_matches_the_vocabulary() {
    let model = model();
    let tokenizer = model.tokenizer();
    for text in ["Hello world 123", "  leading spaces, tabs\tand\nnewlines", "naïve café — 東京 🎉"] {
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(tokenizer.decode(ids.get_ids(), false).unwrap(), text);
    }
    let digits = tokenizer.encode("123", false).unwrap();
    assert_eq!(digits.len(), 3, "digits are split one by one");

    let ids = tokenizer.encode("<|im_start|>user", false).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], tokenizer.token_to_id("<|im_start|>").unwrap());
    assert_eq!(tokenizer.decode(&ids[1..], false).unwrap(), "user");

    assert_eq!(
        model.count_tokens("Hello world 123"),
        tokenizer.encode("Hello world 123", false).unwrap().len()
    );
    assert_eq!(model.model(), "smollm2-135m-instruct");
    assert_eq!(model.context_tokens(), 2048);
}

#[test]
fn renders_the_chat_template() {
    let prompt = model().render_prompt(&question("Hi", 1).messages);
    assert!(prompt.contains("<|im_start|>system\nYou are a concise assistant.<|im_end|>"), "{prompt}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_answer_streams_in_pieces() {
    let model = model();
    let started = Instant::now();
    let mut stream = model.stream(question("What is the capital of France?", 16)).await.unwrap();
    let mut pieces = Vec::new();
    let mut first_piece = None;
    while let Some(piece) = stream.next().await {
        pieces.push(piece.unwrap());
        first_piece.get_or_insert_with(|| started.elapsed());
    }
    let total = started.elapsed();
    let answer = pieces.concat();
    let tokens = model.count_tokens(&answer);
    println!(
        "answer {answer:?}: {} pieces, ~{tokens} tokens, first piece after {:?}, total {:?}",
        pieces.len(),
        first_piece.unwrap_or_default(),
        total
    );
    assert!(!answer.trim().is_empty());
    assert!(pieces.len() >= 3, "{pieces:?}");
    assert!(tokens <= 17, "max_tokens is respected: {tokens}");

    let again: Vec<String> = model
        .stream(question("What is the capital of France?", 16))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(again.concat(), answer, "greedy decoding is deterministic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_seed() {
    let model = model();
    let sample = |seed| {
        let request = GenerationRequest { temperature: 1.0, seed, ..question("Tell me a story.", 6) };
        async move { model.stream(request).await.unwrap().map(Result::unwrap).collect::<Vec<_>>().await.concat() }
    };
    assert_eq!(sample(1).await, sample(1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_frees_the_model() {
    let model = model();
    let mut stream = model.stream(question("Count from one to one hundred.", 1000)).await.unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    // The next request waits for the model; it gets it only if the dropped
    // generation stopped long before its 1000 tokens.
    let next = tokio::time::timeout(Duration::from_secs(60), async {
        model.stream(question("Hi", 1)).await.unwrap().collect::<Vec<_>>().await
    })
    .await
    .expect("the abandoned generation stops");
    assert!(next.len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_requests() {
    let model = model();
    let long = "lorem ipsum ".repeat(2048);
    let err = model.stream(question(&long, 8)).await.err().expect("the prompt overflows");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("2048"), "{}", err.message());

    let nothing: Vec<_> = model.stream(question("Hi", 0)).await.unwrap().collect().await;
    assert!(nothing.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_file_as_quantised_when_asked() {
    let config = LocalGgufConfig {
        model_path: MODEL.into(),
        requantize_slow_weights: false,
        ..LocalGgufConfig::default()
    };
    let model = LocalGguf::load(&config).unwrap();
    let answer: Vec<String> = model
        .stream(question("What is the capital of France?", 2))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(!answer.concat().is_empty());
}

#[test]
fn missing_model_is_unavailable() {
    let config =
        LocalGgufConfig { model_path: "/nonexistent/model.gguf".into(), ..LocalGgufConfig::default() };
    let err = ragd_core::Error::from(LocalGguf::load(&config).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.chain().contains("/nonexistent/model.gguf"));
}

/// The optional larger model (`scripts/fetch-models --with
/// qwen2.5-coder-0.5b-instruct`); skipped where it is not installed, since
/// tests never require it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_answers_from_numbered_sources_when_installed() {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/qwen2.5-coder-0.5b-instruct/model.gguf"
    ));
    if !path.exists() {
        eprintln!("skipped: {} is not installed", path.display());
        return;
    }
    let config = LocalGgufConfig {
        model_path: path,
        name: Some("qwen2.5-coder-0.5b-instruct".into()),
        ..LocalGgufConfig::default()
    };
    let model = LocalGguf::load(&config).unwrap();
    let request = GenerationRequest {
        messages: vec![
            ChatMessage::new(
                ChatRole::System,
                "You are a careful assistant. Answer the question using only the numbered sources. After each \
                 fact, cite its source number in square brackets, like [1]. If the sources do not contain the \
                 answer, say that you do not know.",
            ),
            ChatMessage::new(
                ChatRole::User,
                "Sources:\n[1] The Zorblax bridge in Tallinn was opened in 1987 and is 412 metres long.\n\
                 [2] Tallinn is the capital of Estonia.\n\nQuestion: How long is the Zorblax bridge?",
            ),
        ],
        max_tokens: 40,
        temperature: 0.0,
        seed: 7,
    };
    let started = Instant::now();
    let answer: String =
        model.stream(request).await.unwrap().map(Result::unwrap).collect::<Vec<_>>().await.concat();
    println!("qwen answer in {:?}: {answer:?}", started.elapsed());
    assert!(answer.contains("412"), "{answer}");
    assert!(answer.contains("[1]"), "{answer}");
    assert!(!answer.contains("<|im_end|>"), "the end-of-turn token stops generation: {answer}");
}
