//! The process memory budget (`[memory]`). Everything ragd holds is bounded
//! by configuration (one document per worker, upload groups, the prompt);
//! the one large term that depends on a throughput setting is ONNX Runtime's
//! working memory for one embedder call, which grows with the texts in the
//! call. So once the engines are loaded, the embedder's batch is sized to
//! what is left of the budget, and a budget too small for even one text is
//! refused at start rather than discovered by the OOM killer.
//!
//! That plan is a prediction, and the allocator's retained pages and
//! fragmentation are not in it, so a guard also watches resident memory
//! while ragd runs and halves the batch whenever it nears the budget.
//!
//! Two allocators hold ragd's memory: mimalloc serves Rust, and glibc's
//! malloc serves ONNX Runtime. glibc gives each thread that calls the
//! embedder an arena of its own and keeps their freed pages, so under a
//! budget its arenas are capped and both allocators are asked to return
//! what they hold free.
//!
//! The budget counts anonymous memory (`RssAnon`): what ragd allocates and
//! only it can give back. Pages mapped from files (ragd's code, an on-disk
//! index) are page cache, which the kernel takes back when it is short, as
//! a container's memory limit makes it do; counting them would have the
//! guard shrink the batch for memory that is not ragd's to free.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ragd_embed::OnnxEmbedder;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySection {
    /// Anonymous memory the process should stay under, in MiB; 0: no
    /// budget (the embedder runs `embedding.batch_size` texts per call).
    pub budget_mib: u64,
    /// The embedder's working memory per text of its longest input.
    pub per_text_mib: u64,
    /// Held for uploads in flight and for generation.
    pub reserve_mib: u64,
}

impl Default for MemorySection {
    fn default() -> Self {
        // 26 MiB: all-MiniLM-L6-v2 at 256 tokens on ONNX Runtime, measured
        // (BENCHMARKS.md, Memory).
        Self { budget_mib: 0, per_text_mib: 26, reserve_mib: 256 }
    }
}

/// How the budget was shared out.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub loaded_mib: u64,
    pub documents_mib: u64,
    pub batch_size: usize,
}

/// The embedder batch that keeps `loaded_mib` (what the process holds with
/// every engine loaded) plus the working sets under the budget.
pub fn plan(config: &Config, loaded_mib: u64) -> anyhow::Result<Plan> {
    let memory = &config.memory;
    // A worker holds one document as bytes, as extracted text and as chunks.
    let per_document = 3 * (config.server.max_document_bytes as u64).div_ceil(MIB);
    let documents_mib = per_document * config.jobs.workers.max(1) as u64;
    let fixed = loaded_mib + documents_mib + memory.reserve_mib;
    let room = memory.budget_mib.saturating_sub(fixed);
    let batch_size = (room / memory.per_text_mib.max(1)) as usize;
    if batch_size == 0 {
        bail!(
            "memory.budget_mib = {} is too small: the loaded engines take {loaded_mib} MiB, {} worker(s) \
             holding a document of up to server.max_document_bytes take {documents_mib} MiB, \
             memory.reserve_mib is {}, and one embedder text needs memory.per_text_mib = {}; \
             raise the budget or lower server.max_document_bytes or jobs.workers",
            memory.budget_mib,
            config.jobs.workers.max(1),
            memory.reserve_mib,
            memory.per_text_mib
        );
    }
    Ok(Plan { loaded_mib, documents_mib, batch_size: batch_size.min(config.embedding.batch_size) })
}

/// glibc arenas ONNX Runtime's threads share under a budget. Measured on a
/// 200 MiB NDJSON ingest: the default (eight per core) left about 300 MiB
/// of freed memory resident in six arenas.
const C_HEAP_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas when there is a budget. Called before the
/// runtime starts its threads, as an arena is made on a thread's first
/// contended allocation and never unmade.
pub fn limit_c_heap(config: &Config) {
    if config.memory.budget_mib > 0 {
        // SAFETY: mallopt only sets a tunable of glibc's allocator.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, C_HEAP_ARENAS) };
    }
}

/// Applies the budget to the loaded embedder; no budget, no change.
pub fn fit(config: &Config, embedder: &OnnxEmbedder) -> anyhow::Result<()> {
    if config.memory.budget_mib == 0 {
        return Ok(());
    }
    // Loading freed a lot (the generator's requantisation, ONNX Runtime's
    // graph optimisation) that mimalloc would otherwise keep resident and
    // count against the budget.
    return_free_memory();
    let plan = plan(config, resident_mib()?)?;
    if plan.batch_size < config.embedding.batch_size {
        tracing::warn!(
            budget_mib = config.memory.budget_mib,
            loaded_mib = plan.loaded_mib,
            documents_mib = plan.documents_mib,
            from = config.embedding.batch_size,
            to = plan.batch_size,
            "embedding batch lowered to fit the memory budget"
        );
    } else {
        tracing::info!(budget_mib = config.memory.budget_mib, loaded_mib = plan.loaded_mib, "memory budget fits");
    }
    embedder.limit_batch_size(plan.batch_size);
    Ok(())
}

/// Resident memory at which the guard acts: 90% of the budget, so that the
/// batch running when it is seen still fits.
fn guard_threshold_mib(budget_mib: u64) -> u64 {
    budget_mib - budget_mib / 10
}

const GUARD_INTERVAL: Duration = Duration::from_millis(100);
/// Time for a lowered batch to reach the embedder before lowering again.
const GUARD_SETTLE: Duration = Duration::from_secs(2);

/// Watches resident memory until `shutdown`; no budget, no guard. Near the
/// budget it first returns the allocator's free pages to the system, and if
/// that is not enough, halves the embedder's batch (never below one text;
/// it is not raised again).
pub fn spawn_guard(config: &Config, embedder: Arc<OnnxEmbedder>, shutdown: CancellationToken) {
    let budget_mib = config.memory.budget_mib;
    if budget_mib == 0 {
        return;
    }
    let threshold = guard_threshold_mib(budget_mib);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(GUARD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Ok(resident) = resident_mib() else { return };
            if resident < threshold {
                continue;
            }
            return_free_memory();
            let after = resident_mib().unwrap_or(resident);
            if after < threshold {
                continue;
            }
            let batch = embedder.batch_size();
            if batch > 1 {
                embedder.limit_batch_size(batch / 2);
                tracing::warn!(
                    budget_mib,
                    resident_mib = after,
                    from = batch,
                    to = embedder.batch_size(),
                    "resident memory near the budget: embedding batch halved"
                );
            }
            // A forced collection is not free: at one text, not ten a second.
            tokio::time::sleep(GUARD_SETTLE).await;
        }
    });
}

fn return_free_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps, which it locks;
    // malloc_trim locks each glibc arena in turn and releases its free pages.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libc::malloc_trim(0);
    }
}

/// Resident anonymous memory (see the module's comment).
fn resident_mib() -> anyhow::Result<u64> {
    Ok(process_status_kib("RssAnon")? / 1024)
}

/// A memory field of `/proc/self/status`, in KiB.
pub(crate) fn process_status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(budget_mib: u64) -> Config {
        let mut config = Config::default();
        config.memory.budget_mib = budget_mib;
        config.server.max_document_bytes = 32 * MIB as usize;
        config.jobs.workers = 1;
        config.embedding.batch_size = 32;
        config
    }

    #[test]
    fn the_batch_takes_what_the_budget_leaves() {
        // 500 loaded + 96 for one 32 MiB document + 256 reserve = 852.
        let fitted = plan(&config(852 + 8 * 26), 500).unwrap();
        assert_eq!((fitted.documents_mib, fitted.batch_size), (96, 8));
        assert_eq!(plan(&config(100_000), 500).unwrap().batch_size, 32, "never above embedding.batch_size");
    }

    #[test]
    fn a_budget_without_room_for_one_text_is_refused() {
        let error = plan(&config(852 + 25), 500).unwrap_err().to_string();
        assert!(error.contains("memory.budget_mib = 877 is too small"), "{error}");
    }

    #[test]
    fn the_guard_acts_before_the_budget() {
        assert_eq!(guard_threshold_mib(1280), 1152);
    }

    #[test]
    fn the_process_knows_its_resident_memory() {
        assert!(resident_mib().unwrap() > 0);
    }
}
