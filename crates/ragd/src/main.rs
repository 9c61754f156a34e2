//! `ragd`: the only place that reads configuration and the environment. It
//! builds every engine from typed config and runs the server or a tool.

mod bench;
mod config;
#[cfg(test)]
mod deploy_tests;
mod eval;
mod ingest;
mod keys;
mod memory;
mod serve;
mod worker;

use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ragd", version, about = "A retrieval-augmented generation server")]
struct Cli {
    /// Configuration file (default: config/ragd.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API with job workers in the same process (jobs.workers of
    /// them; 0 when `ragd worker` processes do the work).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks one).
        #[arg(long)]
        listen: Option<String>,
        /// Directory for all state (database, blobs, index).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run only job workers, no API: any number of these share the API's
    /// database, blobs directory and index.
    Worker(worker::WorkerArgs),
    /// Measure retrieval quality on a BEIR dataset (nDCG@10, Recall@10/100, MRR@10, latency).
    Eval(eval::EvalArgs),
    /// Upload a file or folder to a running server, with progress, and wait
    /// until it is ingested.
    Ingest(ingest::IngestArgs),
    /// Measure performance: `ragd bench ingest`, `perplexity`, `encoder`.
    Bench(bench::BenchArgs),
    /// Create, list and revoke API keys, in the database directly.
    Keys(keys::KeysArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { listen, data_dir } => {
            let overrides = config::Overrides {
                data_dir,
                server: listen.map(|listen| config::ServerOverrides { listen }),
            };
            let config = config::load(cli.config.as_deref(), &overrides)?;
            serve::init_tracing(&config.log)?;
            memory::limit_c_heap(&config);
            runtime()?.block_on(serve::run(config))
        }
        Command::Worker(args) => {
            let overrides = config::Overrides { data_dir: args.data_dir.clone(), server: None };
            let config = config::load(cli.config.as_deref(), &overrides)?;
            serve::init_tracing(&config.log)?;
            memory::limit_c_heap(&config);
            runtime()?.block_on(worker::run(config, args))
        }
        Command::Eval(args) => {
            let overrides = config::Overrides { data_dir: args.data_dir.clone(), server: None };
            let config = config::load(cli.config.as_deref(), &overrides)?;
            serve::init_tracing(&config.log)?;
            runtime()?.block_on(eval::run(config, args))
        }
        Command::Ingest(args) => runtime()?.block_on(ingest::run(args)),
        Command::Bench(bench::BenchArgs { command: bench::BenchCommand::Ingest(args) }) => {
            let (data_dir, _temporary) = args.fresh_data_dir()?;
            let overrides = config::Overrides { data_dir: Some(data_dir), server: None };
            let config = config::load(cli.config.as_deref(), &overrides)?;
            serve::init_tracing(&config.log)?;
            runtime()?.block_on(bench::run(config, args))
        }
        Command::Bench(bench::BenchArgs { command: bench::BenchCommand::Perplexity(args) }) => {
            let config = config::load(cli.config.as_deref(), &config::Overrides::default())?;
            serve::init_tracing(&config.log)?;
            bench::perplexity(args)
        }
        Command::Bench(bench::BenchArgs { command: bench::BenchCommand::Encoder(args) }) => {
            let config = config::load(cli.config.as_deref(), &config::Overrides::default())?;
            serve::init_tracing(&config.log)?;
            bench::encoder(args)
        }
        Command::Keys(args) => {
            let overrides = config::Overrides { data_dir: args.data_dir.clone(), server: None };
            let config = config::load(cli.config.as_deref(), &overrides)?;
            runtime()?.block_on(keys::run(config, args.command))
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}
