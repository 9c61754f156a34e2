//! Black-box tests of the HTTP API: each test spawns the real `ragd serve`
//! binary on a random port with its own data directory and talks to it over
//! real HTTP. The real embedder, index, database and local generator run.

mod helpers;

mod bulk;
mod collections;
mod crash;
mod documents;
mod errors;
mod eval;
mod fuzz;
mod ingest;
mod jobs;
mod lora;
mod openai;
mod openapi;
mod quantize;
mod query;
mod reindex;
mod rerank;
mod search;
mod security;
mod settings;
mod workers;
