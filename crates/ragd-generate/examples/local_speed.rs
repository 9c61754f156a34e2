//! Prefill and decode speed of the local GGUF generator.
//!
//! `cargo run -p ragd-generate --example local_speed [model.gguf] [--keep-quantisation]`
//! prints one `generation finished` line per run with `prefill_tokens_per_s`
//! and `decode_tokens_per_s`; the first run includes warm-up.

use futures::StreamExt;
use ragd_core::{ChatMessage, ChatRole, GenerationRequest, Generator};
use ragd_generate::{LocalGguf, LocalGgufConfig};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/smollm2-135m-instruct/model.gguf");
const PASSAGE: &str = "The Rhine rises in the Swiss Alps, forms part of the Swiss-Austrian, \
    Swiss-Liechtenstein, Swiss-German and Franco-German borders, and flows through the Rhineland \
    before emptying into the North Sea in the Netherlands. ";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("ragd_generate=info").init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_path = args.iter().find(|a| !a.starts_with("--")).map_or(MODEL, String::as_str);
    let config = LocalGgufConfig {
        model_path: model_path.into(),
        requantize_slow_weights: !args.iter().any(|a| a == "--keep-quantisation"),
        ..LocalGgufConfig::default()
    };
    let model = LocalGguf::load(&config)?;

    for (passages, max_tokens) in [(1, 8), (1, 64), (20, 64), (20, 64)] {
        let request = GenerationRequest {
            messages: vec![
                ChatMessage::new(ChatRole::System, "Answer from the context."),
                ChatMessage::new(
                    ChatRole::User,
                    format!("{}\nWhere does the Rhine flow?", PASSAGE.repeat(passages)),
                ),
            ],
            max_tokens,
            temperature: 0.0,
            seed: 0,
        };
        let answer: Vec<String> = model.stream(request).await?.map(|p| p.unwrap_or_default()).collect().await;
        println!("{:?}", answer.concat());
    }
    Ok(())
}
