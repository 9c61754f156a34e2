//! Sentence embeddings from a BERT encoder (mean pooling, L2 norm) and
//! their fine-tuning with the multiple-negatives ranking loss.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use ragd_embed::SentenceEncoder;

use crate::{Error, Result};

/// The files of a model directory, base or trained.
pub use ragd_embed::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
/// Copied along when the base has it, for tools that read the vocabulary
/// rather than `tokenizer.json`.
const VOCAB_FILE: &str = "vocab.txt";

/// Scale of the cosine similarities before the softmax, as in
/// sentence-transformers' `MultipleNegativesRankingLoss`.
const SIMILARITY_SCALE: f64 = 20.0;

pub(crate) fn require(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::MissingFile(
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        ))
    }
}

/// A query, a passage that answers it, and optionally one that does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingPair {
    pub query: String,
    pub positive: String,
    pub negative: Option<String>,
}

/// The weights after a finished epoch, from which a retried job resumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Epochs finished, counting from 1.
    pub epoch: usize,
    pub weights: PathBuf,
}

#[derive(Debug, Clone)]
pub struct FinetuneConfig {
    /// The base model directory.
    pub base_dir: PathBuf,
    /// Where the trained model's files are written.
    pub output_dir: PathBuf,
    /// Where each epoch's weights are written.
    pub checkpoint_dir: PathBuf,
    pub epochs: usize,
    /// Pairs per step: each query's positive is scored against the other
    /// pairs' positives and negatives.
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_seq_len: usize,
    /// Decides the validation split and the order of the pairs per epoch.
    pub seed: u64,
    /// Share of the pairs held out for validation.
    pub validation_fraction: f64,
    /// Continue after this checkpoint instead of from the base weights. The
    /// optimizer's moments are not part of it: they start again from zero.
    pub resume: Option<Checkpoint>,
}

/// Ranking quality on the held-out pairs: each query ranks its positive
/// among every held-out positive and negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    pub mrr: f64,
    pub recall_at_1: f64,
    pub pairs: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One optimizer step; `step` counts from 1 over the whole run.
    Step {
        epoch: usize,
        step: usize,
        total_steps: usize,
        loss: f32,
        elapsed_ms: u64,
    },
    /// Epoch 0 is the base model before training.
    Epoch {
        epoch: usize,
        validation: Option<Validation>,
        checkpoint: Option<Checkpoint>,
    },
    /// [`Event::Epoch`] of a generator, whose validation is its loss.
    LossEpoch {
        epoch: usize,
        validation: Option<crate::LossValidation>,
        checkpoint: Option<Checkpoint>,
    },
    Log(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneOutcome {
    pub dimensions: usize,
    pub train_pairs: usize,
    pub validation_pairs: usize,
    pub steps: usize,
    pub validation: Option<Validation>,
}

/// Fine-tunes the base model on `pairs` with in-batch negatives and writes
/// the result to `config.output_dir`. `observe` hears every step and epoch.
/// The run ends with [`Error::Stopped`] when `observe` returns `Break` or
/// when `stop` is set, which is looked at before every step.
pub fn finetune(
    config: &FinetuneConfig,
    pairs: &[TrainingPair],
    stop: &AtomicBool,
    observe: &mut dyn FnMut(Event) -> ControlFlow<()>,
) -> Result<FinetuneOutcome> {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let encoder = SentenceEncoder::with_weights("training", &config.base_dir, vb, config.max_seq_len)?;
    let start_epoch = config.resume.as_ref().map_or(0, |c| c.epoch);
    let weights = match &config.resume {
        Some(checkpoint) => checkpoint.weights.clone(),
        None => config.base_dir.join(WEIGHTS_FILE),
    };
    require(&weights)?;
    varmap.load(&weights)?;

    let (train, validation) = split(pairs, config.seed, config.validation_fraction)?;
    let batches_per_epoch = batch_bounds(train.len(), config.batch_size.max(2)).len();
    let total_steps = batches_per_epoch * config.epochs;
    let check = |flow: ControlFlow<()>| {
        if flow.is_break() || stop.load(Ordering::Relaxed) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    };
    check(observe(Event::Log(format!(
        "{} training pairs, {} held out, {batches_per_epoch} steps per epoch, starting after epoch {start_epoch}",
        train.len(),
        validation.len()
    ))))?;
    let mut last_validation = None;
    if start_epoch == 0 {
        last_validation = validate(&encoder, &validation, config.batch_size)?;
        check(observe(Event::Epoch { epoch: 0, validation: last_validation, checkpoint: None }))?;
    }

    let params = ParamsAdamW { lr: config.learning_rate, weight_decay: 0.01, ..Default::default() };
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    let mut step = start_epoch * batches_per_epoch;
    std::fs::create_dir_all(&config.checkpoint_dir)?;
    for epoch in start_epoch + 1..=config.epochs {
        let order = shuffled(train.len(), config.seed.wrapping_add(epoch as u64));
        for (from, to) in batch_bounds(train.len(), config.batch_size.max(2)) {
            check(ControlFlow::Continue(()))?;
            let started = Instant::now();
            let batch: Vec<&TrainingPair> = order[from..to].iter().map(|&i| train[i]).collect();
            let loss = ranking_loss(&encoder, &batch)?;
            optimizer.backward_step(&loss)?;
            step += 1;
            let event = Event::Step {
                epoch,
                step,
                total_steps,
                loss: loss.to_scalar::<f32>()?,
                elapsed_ms: started.elapsed().as_millis() as u64,
            };
            check(observe(event))?;
        }
        let weights = config.checkpoint_dir.join(format!("epoch-{epoch}.safetensors"));
        varmap.save(&weights)?;
        if epoch > 1 {
            let previous = config.checkpoint_dir.join(format!("epoch-{}.safetensors", epoch - 1));
            if let Err(error) = std::fs::remove_file(&previous) {
                tracing::debug!(%error, "no previous checkpoint to remove");
            }
        }
        last_validation = validate(&encoder, &validation, config.batch_size)?;
        let checkpoint = Some(Checkpoint { epoch, weights });
        check(observe(Event::Epoch { epoch, validation: last_validation, checkpoint }))?;
    }

    std::fs::create_dir_all(&config.output_dir)?;
    varmap.save(config.output_dir.join(WEIGHTS_FILE))?;
    for file in [CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE] {
        let source = config.base_dir.join(file);
        if source.is_file() {
            std::fs::copy(&source, config.output_dir.join(file))?;
        }
    }
    Ok(FinetuneOutcome {
        dimensions: encoder.dimensions(),
        train_pairs: train.len(),
        validation_pairs: validation.len(),
        steps: step,
        validation: last_validation,
    })
}

/// Cross-entropy over the scaled cosine similarities of each query with
/// every passage of the batch; its own positive is the right class.
fn ranking_loss(encoder: &SentenceEncoder, batch: &[&TrainingPair]) -> Result<Tensor> {
    let queries: Vec<&str> = batch.iter().map(|p| p.query.as_str()).collect();
    let passages: Vec<&str> = batch
        .iter()
        .map(|p| p.positive.as_str())
        .chain(batch.iter().filter_map(|p| p.negative.as_deref()))
        .collect();
    let queries = encoder.forward(&queries)?;
    let passages = encoder.forward(&passages)?;
    let logits = (queries.matmul(&passages.t()?)? * SIMILARITY_SCALE)?;
    let labels = Tensor::arange(0u32, batch.len() as u32, encoder.device())?;
    Ok(candle_nn::loss::cross_entropy(&logits, &labels)?)
}

fn validate(encoder: &SentenceEncoder, pairs: &[&TrainingPair], batch_size: usize) -> Result<Option<Validation>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let chunk = batch_size.max(1) * 2;
    let embed = |texts: Vec<&str>| -> Result<Vec<Vec<f32>>> {
        let mut vectors = Vec::with_capacity(texts.len());
        for part in texts.chunks(chunk) {
            vectors.extend(encoder.forward(part)?.detach().to_vec2::<f32>()?);
        }
        Ok(vectors)
    };
    let queries = embed(pairs.iter().map(|p| p.query.as_str()).collect())?;
    let candidates = embed(
        pairs
            .iter()
            .map(|p| p.positive.as_str())
            .chain(pairs.iter().filter_map(|p| p.negative.as_deref()))
            .collect(),
    )?;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (mut reciprocal_ranks, mut hits) = (0.0, 0usize);
    for (i, query) in queries.iter().enumerate() {
        let own = dot(query, &candidates[i]);
        let rank = 1 + candidates.iter().enumerate().filter(|(j, c)| *j != i && dot(query, c) > own).count();
        reciprocal_ranks += 1.0 / rank as f64;
        hits += usize::from(rank == 1);
    }
    let count = pairs.len();
    Ok(Some(Validation {
        mrr: reciprocal_ranks / count as f64,
        recall_at_1: hits as f64 / count as f64,
        pairs: count,
    }))
}

/// Training and held-out pairs, chosen by `seed`. At least two pairs stay
/// for training, since a query needs another pair's passage as a negative.
fn split(
    pairs: &[TrainingPair],
    seed: u64,
    fraction: f64,
) -> Result<(Vec<&TrainingPair>, Vec<&TrainingPair>)> {
    if pairs.len() < 2 {
        return Err(Error::TooFewPairs(pairs.len()));
    }
    let order = shuffled(pairs.len(), seed);
    let held_out = held_out_count(pairs.len(), fraction);
    let validation = order[..held_out].iter().map(|&i| &pairs[i]).collect();
    let train = order[held_out..].iter().map(|&i| &pairs[i]).collect();
    Ok((train, validation))
}

/// How many of `len` items (`len` >= 2) a validation `fraction` holds out:
/// at least two always stay for training.
pub(crate) fn held_out_count(len: usize, fraction: f64) -> usize {
    ((len as f64 * fraction.clamp(0.0, 1.0)).round() as usize).min(len - 2)
}

/// `[from, to)` of each batch over `len` items: full batches, then the
/// rest; a single item left over joins the last batch, since a batch of one
/// has no in-batch negative.
pub(crate) fn batch_bounds(len: usize, batch_size: usize) -> Vec<(usize, usize)> {
    let mut bounds: Vec<(usize, usize)> =
        (0..len).step_by(batch_size).map(|from| (from, (from + batch_size).min(len))).collect();
    if bounds.len() > 1 && bounds.last().is_some_and(|(from, to)| to - from == 1) {
        bounds.pop();
        if let Some(last) = bounds.last_mut() {
            last.1 = len;
        }
    }
    bounds
}

/// A permutation of `0..len` from `seed` (Fisher-Yates over splitmix64), so
/// that runs repeat exactly.
pub(crate) fn shuffled(len: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The next number of the splitmix64 sequence in `state`.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (items, batch size, expected bounds)
    type BatchCase = (usize, usize, &'static [(usize, usize)]);

    #[test]
    fn batches_never_leave_a_single_pair() {
        let cases: [BatchCase; 5] = [
            (8, 4, &[(0, 4), (4, 8)]),
            (9, 4, &[(0, 4), (4, 9)]),
            (10, 4, &[(0, 4), (4, 8), (8, 10)]),
            (3, 4, &[(0, 3)]),
            (2, 2, &[(0, 2)]),
        ];
        for (len, size, expected) in cases {
            assert_eq!(batch_bounds(len, size), expected, "{len} items in batches of {size}");
        }
    }

    #[test]
    fn shuffles_are_permutations_repeatable_by_seed() {
        let a = shuffled(50, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(50, 7));
        assert_ne!(a, shuffled(50, 8));
    }

    #[test]
    fn split_keeps_two_pairs_for_training() {
        let pair =
            |n: usize| TrainingPair { query: format!("q{n}"), positive: format!("p{n}"), negative: None };
        let pairs: Vec<_> = (0..10).map(pair).collect();
        let (train, held) = split(&pairs, 1, 0.2).expect("split");
        assert_eq!((train.len(), held.len()), (8, 2));
        let (train, held) = split(&pairs[..3], 1, 0.9).expect("split");
        assert_eq!((train.len(), held.len()), (2, 1));
        assert!(matches!(split(&pairs[..1], 1, 0.0), Err(Error::TooFewPairs(1))));
    }
}
