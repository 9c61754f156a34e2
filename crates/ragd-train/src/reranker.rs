//! Fine-tuning a cross-encoder reranker from a BERT encoder (the MiniLM the
//! embedder starts from) and a fresh one-output head.
//!
//! The loss is listwise: each query's positive and its hard negatives form
//! one group, and the loss is the softmax cross-entropy of the positive
//! among the group's logits. A reranker is only ever asked to order the
//! candidates of one query, so this trains exactly that; it needs no
//! balance between positive and negative labels and no calibrated
//! probabilities, which pointwise binary cross-entropy would, and hard
//! negatives mined by the retriever it will rerank are what makes the
//! groups informative.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use ragd_embed::{
    CrossEncoder, CLASSIFIER_PREFIX, CONFIG_FILE, ENCODER_PREFIX, TOKENIZER_FILE, WEIGHTS_FILE,
};

use crate::embedder::{batch_bounds, held_out_count, require, shuffled, splitmix};
use crate::{Checkpoint, Error, Event, Result, Validation};

/// Copied along when the base has it, for tools that read the vocabulary
/// rather than `tokenizer.json`.
const VOCAB_FILE: &str = "vocab.txt";

/// Standard deviation of a fresh head's weights, as Hugging Face
/// initialises BERT's (`initializer_range`).
const INIT_STD: f64 = 0.02;

/// Share of a run's steps over which the learning rate climbs from zero to
/// the configured one; it then falls linearly to nearly zero at the last
/// step. A fresh head's first gradients are large and random, and at the
/// full rate they would move the pretrained encoder far from what it knows
/// (the schedule sentence-transformers' CrossEncoder trains with).
const WARMUP_FRACTION: f64 = 0.1;

/// A query, a passage that answers it, and passages that look relevant but
/// are not (mined from the retriever's top candidates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankExample {
    pub query: String,
    pub positive: String,
    pub negatives: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RerankerConfig {
    /// The base model directory: a BERT encoder, or a reranker trained
    /// earlier.
    pub base_dir: PathBuf,
    /// Where the trained model's files are written.
    pub output_dir: PathBuf,
    /// Where each epoch's weights are written.
    pub checkpoint_dir: PathBuf,
    pub epochs: usize,
    /// Queries per step; each brings its positive and `negatives` passages.
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Tokens of a query and passage read together.
    pub max_seq_len: usize,
    /// Decides the validation split, the order per epoch and the fresh
    /// head's weights.
    pub seed: u64,
    /// Negatives per query; an example with fewer hard negatives is topped
    /// up with other queries' positives.
    pub negatives: usize,
    /// Share of the queries held out for validation.
    pub validation_fraction: f64,
    /// Continue after this checkpoint instead of from the base weights. The
    /// optimizer's moments are not part of it: they start again from zero.
    pub resume: Option<Checkpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RerankerOutcome {
    pub train_examples: usize,
    pub validation_examples: usize,
    pub steps: usize,
    /// MRR and recall@1 of the positive within its group, held-out queries.
    pub validation: Option<Validation>,
}

/// Fine-tunes a cross-encoder on `examples` and writes it to
/// `config.output_dir` in the layout of a Hugging Face
/// `BertForSequenceClassification` with one label. `observe` hears every
/// step and epoch; the run ends with [`Error::Stopped`] when `observe`
/// returns `Break` or when `stop` is set, which is looked at before every
/// step.
pub fn finetune_reranker(
    config: &RerankerConfig,
    examples: &[RerankExample],
    stop: &AtomicBool,
    observe: &mut dyn FnMut(Event) -> ControlFlow<()>,
) -> Result<RerankerOutcome> {
    train(config, examples, stop, observe).map(|(_, outcome)| outcome)
}

/// [`finetune_reranker`], also returning the trained model as it is in
/// memory.
fn train(
    config: &RerankerConfig,
    examples: &[RerankExample],
    stop: &AtomicBool,
    observe: &mut dyn FnMut(Event) -> ControlFlow<()>,
) -> Result<(CrossEncoder, RerankerOutcome)> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = CrossEncoder::with_weights("training", &config.base_dir, vb, config.max_seq_len)?;
    let start_epoch = config.resume.as_ref().map_or(0, |c| c.epoch);
    let weights = match &config.resume {
        Some(checkpoint) => checkpoint.weights.clone(),
        None => config.base_dir.join(WEIGHTS_FILE),
    };
    require(&weights)?;
    load_weights(&varmap, &weights, config.seed, &device)?;

    let (train, validation) = split(examples, config.seed, config.validation_fraction)?;
    let batch_size = config.batch_size.max(1);
    let batches_per_epoch = batch_bounds(train.len(), batch_size).len();
    let total_steps = batches_per_epoch * config.epochs;
    let check = |flow: ControlFlow<()>| {
        if flow.is_break() || stop.load(Ordering::Relaxed) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    };
    check(observe(Event::Log(format!(
        "{} training examples, {} held out, groups of 1 positive + {} negatives, {batches_per_epoch} steps \
         per epoch, starting after epoch {start_epoch}; the learning rate warms up over {} steps, then \
         decays linearly",
        train.len(),
        validation.len(),
        config.negatives,
        warmup_steps(total_steps)
    ))))?;
    let mut last_validation = None;
    if start_epoch == 0 {
        last_validation = validate(&model, &validation, examples, config.negatives)?;
        check(observe(Event::Epoch { epoch: 0, validation: last_validation, checkpoint: None }))?;
    }

    let params = ParamsAdamW { lr: config.learning_rate, weight_decay: 0.01, ..Default::default() };
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    let mut step = start_epoch * batches_per_epoch;
    std::fs::create_dir_all(&config.checkpoint_dir)?;
    for epoch in start_epoch + 1..=config.epochs {
        let order = shuffled(train.len(), config.seed.wrapping_add(epoch as u64));
        let epoch_examples: Vec<&RerankExample> = order.iter().map(|&i| train[i]).collect();
        for (from, to) in batch_bounds(train.len(), batch_size) {
            check(ControlFlow::Continue(()))?;
            let started = Instant::now();
            let groups: Vec<(&str, Vec<&str>)> = (from..to)
                .map(|i| {
                    let example = epoch_examples[i];
                    (example.query.as_str(), group(example, &epoch_examples, i, config.negatives))
                })
                .filter(|(_, passages)| passages.len() > 1)
                .collect();
            step += 1;
            optimizer.set_learning_rate(scheduled_learning_rate(config.learning_rate, step, total_steps));
            let loss = if groups.is_empty() {
                // No positive of the batch has a passage to be ranked
                // against (no negatives asked for, or none that differ).
                0.0
            } else {
                let loss = listwise_loss(&model, &groups)?;
                optimizer.backward_step(&loss)?;
                loss.to_scalar::<f32>()?
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            check(observe(Event::Step { epoch, step, total_steps, loss, elapsed_ms }))?;
        }
        let weights = config.checkpoint_dir.join(format!("epoch-{epoch}.safetensors"));
        varmap.save(&weights)?;
        if epoch > 1 {
            let previous = config.checkpoint_dir.join(format!("epoch-{}.safetensors", epoch - 1));
            if let Err(error) = std::fs::remove_file(&previous) {
                tracing::debug!(%error, "no previous checkpoint to remove");
            }
        }
        last_validation = validate(&model, &validation, examples, config.negatives)?;
        let checkpoint = Some(Checkpoint { epoch, weights });
        check(observe(Event::Epoch { epoch, validation: last_validation, checkpoint }))?;
    }

    std::fs::create_dir_all(&config.output_dir)?;
    varmap.save(config.output_dir.join(WEIGHTS_FILE))?;
    write_classifier_config(&config.base_dir.join(CONFIG_FILE), &config.output_dir.join(CONFIG_FILE))?;
    for file in [TOKENIZER_FILE, VOCAB_FILE] {
        let source = config.base_dir.join(file);
        if source.is_file() {
            std::fs::copy(&source, config.output_dir.join(file))?;
        }
    }
    let outcome = RerankerOutcome {
        train_examples: train.len(),
        validation_examples: validation.len(),
        steps: step,
        validation: last_validation,
    };
    Ok((model, outcome))
}

fn warmup_steps(total_steps: usize) -> usize {
    ((total_steps as f64 * WARMUP_FRACTION).ceil() as usize).max(1)
}

/// The learning rate of `step` (counted from 1) of `total_steps`: linear
/// warmup to `peak`, then linear decay, so that a run resumed after a
/// checkpoint goes on where the schedule was.
fn scheduled_learning_rate(peak: f64, step: usize, total_steps: usize) -> f64 {
    let warmup = warmup_steps(total_steps);
    if step <= warmup {
        peak * step as f64 / warmup as f64
    } else {
        peak * (total_steps.saturating_sub(step) + 1) as f64 / (total_steps - warmup + 1) as f64
    }
}

/// Sets every variable from `weights`: a sequence classifier's own names
/// (`bert.*`, `classifier.*`), or a bare encoder's (`embeddings.*`,
/// `encoder.*`, `pooler.*`) for the `bert.*` ones. A head the file lacks
/// starts from seeded normal weights and zero bias, as does a pooler.
fn load_weights(varmap: &VarMap, weights: &Path, seed: u64, device: &Device) -> Result<()> {
    let tensors = candle_core::safetensors::load(weights, device)?;
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut names: Vec<&String> = data.keys().collect();
    // Fresh weights are drawn in name order, so a seed gives the same head.
    names.sort();
    let mut state = seed;
    let encoder_prefix = format!("{ENCODER_PREFIX}.");
    for name in names {
        let var = &data[name];
        let found = tensors.get(name.as_str()).or_else(|| tensors.get(name.strip_prefix(&encoder_prefix)?));
        match found {
            Some(tensor) => var.set(&tensor.to_dtype(DType::F32)?)?,
            None if name.starts_with(CLASSIFIER_PREFIX) || name.contains(".pooler.") => {
                let shape = var.shape().clone();
                let fresh = if name.ends_with(".bias") {
                    Tensor::zeros(shape, DType::F32, device)?
                } else {
                    Tensor::from_vec(normal(&mut state, shape.elem_count()), shape, device)?
                };
                var.set(&fresh)?;
            }
            None => return Err(Error::Config(format!("the base model has no tensor {name}"))),
        }
    }
    Ok(())
}

/// `count` draws from N(0, INIT_STD²) (Box-Muller over splitmix64).
fn normal(state: &mut u64, count: usize) -> Vec<f32> {
    let mut uniform = || (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64;
    (0..count)
        .map(|_| {
            let (u, v) = (uniform().max(f64::MIN_POSITIVE), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * INIT_STD) as f32
        })
        .collect()
}

/// The base's `config.json` declared as a one-label sequence classifier.
fn write_classifier_config(base: &Path, target: &Path) -> Result<()> {
    require(base)?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base)?).map_err(|e| Error::Config(e.to_string()))?;
    let Some(fields) = config.as_object_mut() else {
        return Err(Error::Config("config.json is not a JSON object".to_owned()));
    };
    fields.insert("architectures".to_owned(), serde_json::json!(["BertForSequenceClassification"]));
    fields.insert("num_labels".to_owned(), serde_json::json!(1));
    fields.insert("id2label".to_owned(), serde_json::json!({"0": "LABEL_0"}));
    fields.insert("label2id".to_owned(), serde_json::json!({"LABEL_0": 0}));
    let text = serde_json::to_vec_pretty(&config).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(target, text)?;
    Ok(())
}

/// The example's positive first, then up to `negatives` passages: its own
/// hard negatives, then positives of other queries, taken from `pool` in
/// order after position `at`, so a group is fixed by the pool's order.
fn group<'a>(
    example: &'a RerankExample,
    pool: &[&'a RerankExample],
    at: usize,
    negatives: usize,
) -> Vec<&'a str> {
    let mut seen: HashSet<&str> = HashSet::from([example.positive.as_str()]);
    let mut group = vec![example.positive.as_str()];
    let own = example.negatives.iter().map(String::as_str);
    let others = (1..pool.len())
        .map(|offset| pool[(at + offset) % pool.len()])
        .filter(|other| other.query != example.query)
        .map(|other| other.positive.as_str());
    for passage in own.chain(others) {
        if group.len() > negatives {
            break;
        }
        if seen.insert(passage) {
            group.push(passage);
        }
    }
    group
}

/// Mean over the groups of the cross-entropy of the positive (first) among
/// the group's logits; every pair of the batch goes through one forward
/// pass. A group is a query and its passages.
fn listwise_loss(model: &CrossEncoder, groups: &[(&str, Vec<&str>)]) -> Result<Tensor> {
    let pairs: Vec<(&str, &str)> = groups
        .iter()
        .flat_map(|(query, passages)| passages.iter().map(move |passage| (*query, *passage)))
        .collect();
    let logits = model.logits(&pairs)?;
    let mut offset = 0;
    let mut losses = Vec::with_capacity(groups.len());
    for (_, passages) in groups {
        let scores = logits.narrow(0, offset, passages.len())?;
        offset += passages.len();
        let log_probs = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
        losses.push(log_probs.get(0)?.neg()?);
    }
    Ok(Tensor::stack(&losses, 0)?.mean_all()?)
}

fn validate(
    model: &CrossEncoder,
    held_out: &[&RerankExample],
    all: &[RerankExample],
    negatives: usize,
) -> Result<Option<Validation>> {
    if held_out.is_empty() {
        return Ok(None);
    }
    let pool: Vec<&RerankExample> = all.iter().collect();
    let (mut reciprocal_ranks, mut hits) = (0.0, 0usize);
    for example in held_out {
        let at = pool.iter().position(|e| std::ptr::eq(*e, *example)).unwrap_or(0);
        let group = group(example, &pool, at, negatives);
        let pairs: Vec<(&str, &str)> =
            group.iter().map(|passage| (example.query.as_str(), *passage)).collect();
        let scores = model.score_pairs(&pairs)?;
        let rank = 1 + scores[1..].iter().filter(|score| **score > scores[0]).count();
        reciprocal_ranks += 1.0 / rank as f64;
        hits += usize::from(rank == 1);
    }
    let count = held_out.len();
    Ok(Some(Validation {
        mrr: reciprocal_ranks / count as f64,
        recall_at_1: hits as f64 / count as f64,
        pairs: count,
    }))
}

/// Training and held-out examples, split by query (chosen by `seed`), so
/// no held-out query was seen in training. At least two queries stay for
/// training, since a query may need another's positive as a negative.
fn split(
    examples: &[RerankExample],
    seed: u64,
    fraction: f64,
) -> Result<(Vec<&RerankExample>, Vec<&RerankExample>)> {
    let mut queries: Vec<&str> = Vec::new();
    let mut known = HashSet::new();
    for example in examples {
        if known.insert(example.query.as_str()) {
            queries.push(&example.query);
        }
    }
    if queries.len() < 2 {
        return Err(Error::TooFewPairs(queries.len()));
    }
    let order = shuffled(queries.len(), seed);
    let held_out = held_out_count(queries.len(), fraction);
    let held: HashSet<&str> = order[..held_out].iter().map(|&i| queries[i]).collect();
    let (validation, train): (Vec<&RerankExample>, Vec<&RerankExample>) =
        examples.iter().partition(|example| held.contains(example.query.as_str()));
    Ok((train, validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(query: &str, positive: &str, negatives: &[&str]) -> RerankExample {
        RerankExample {
            query: query.to_owned(),
            positive: positive.to_owned(),
            negatives: negatives.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn groups_take_own_negatives_then_other_queries_positives() {
        let examples = [
            example("q1", "p1", &["n1", "p1", "n1"]),
            example("q1", "p1b", &[]),
            example("q2", "p2", &[]),
            example("q3", "p3", &[]),
        ];
        let pool: Vec<&RerankExample> = examples.iter().collect();
        // Own negatives first, without the positive or repeats; then the
        // pool after position 0, skipping the same query's other positive.
        assert_eq!(group(pool[0], &pool, 0, 3), ["p1", "n1", "p2", "p3"]);
        assert_eq!(group(pool[0], &pool, 0, 1), ["p1", "n1"]);
        assert_eq!(group(pool[2], &pool, 2, 2), ["p2", "p3", "p1"]);
        assert_eq!(group(pool[2], &pool, 2, 0), ["p2"]);
    }

    #[test]
    fn split_holds_out_whole_queries() {
        let examples: Vec<RerankExample> = (0..10)
            .flat_map(|q| (0..2).map(move |p| example(&format!("q{q}"), &format!("p{q}-{p}"), &[])))
            .collect();
        let (train, held) = split(&examples, 1, 0.3).expect("split");
        assert_eq!((train.len(), held.len()), (14, 6));
        let held_queries: HashSet<&str> = held.iter().map(|e| e.query.as_str()).collect();
        assert!(train.iter().all(|e| !held_queries.contains(e.query.as_str())));
        assert!(matches!(split(&examples[..2], 1, 0.0), Err(Error::TooFewPairs(1))));
    }

    fn base_dir() -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2");
        assert!(dir.join(WEIGHTS_FILE).is_file(), "model files are missing: run scripts/fetch-models first");
        dir
    }

    const TOPICS: [&str; 8] = ["cats", "tides", "chess", "bees", "jazz", "tea", "saturn", "wolves"];

    /// Each query names its topic; the negatives are passages on others.
    fn topic_examples() -> Vec<RerankExample> {
        (0..TOPICS.len())
            .map(|i| RerankExample {
                query: format!("tell me about {}", TOPICS[i]),
                positive: format!("a passage on {}", TOPICS[i]),
                negatives: (1..4)
                    .map(|d| format!("a passage on {}", TOPICS[(i + d * 3) % TOPICS.len()]))
                    .collect(),
            })
            .collect()
    }

    fn config(dir: &Path) -> RerankerConfig {
        RerankerConfig {
            base_dir: base_dir(),
            output_dir: dir.join("model"),
            checkpoint_dir: dir.join("checkpoints"),
            epochs: 4,
            batch_size: 4,
            learning_rate: 3e-4,
            max_seq_len: 24,
            seed: 5,
            negatives: 3,
            validation_fraction: 0.25,
            resume: None,
        }
    }

    #[test]
    fn training_lowers_the_loss_and_the_saved_model_scores_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        let mut losses = Vec::new();
        let mut validations = Vec::new();
        let (model, outcome) = train(&config, &topic_examples(), &AtomicBool::new(false), &mut |event| {
            match event {
                Event::Step { loss, .. } => losses.push(loss),
                Event::Epoch { validation, .. } => validations.push(validation),
                Event::LossEpoch { .. } | Event::Log(_) => {}
            }
            ControlFlow::Continue(())
        })
        .expect("training");
        // 8 queries, 2 held out: 6 in batches of 4 and 2, for 4 epochs.
        assert_eq!((outcome.train_examples, outcome.validation_examples, outcome.steps), (6, 2, 8));
        assert_eq!(validations.len(), 5, "the base, then every epoch");
        let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean(&losses[6..]) < mean(&losses[..2]) * 0.7, "loss did not go down: {losses:?}");

        for file in [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE] {
            assert!(config.output_dir.join(file).is_file(), "{file} missing");
        }
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(config.output_dir.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(saved["architectures"][0], "BertForSequenceClassification");
        let names =
            candle_core::safetensors::load(config.output_dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        for name in
            ["bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"]
        {
            assert!(names.contains_key(name), "{name} not saved");
        }
        assert_eq!(names["classifier.weight"].dims(), [1, 384]);

        let loaded = CrossEncoder::load("loaded", &config.output_dir, config.max_seq_len).expect("loads");
        let pairs = [("tell me about tea", "a passage on tea"), ("tell me about tea", "a passage on bees")];
        let (trained, reloaded) = (model.score_pairs(&pairs).unwrap(), loaded.score_pairs(&pairs).unwrap());
        for (a, b) in trained.iter().zip(&reloaded) {
            assert!((a - b).abs() < 1e-5, "in memory {trained:?}, loaded {reloaded:?}");
        }
        assert!(reloaded[0] > reloaded[1], "{reloaded:?}");

        // With its Linear weights in Q8_0 it scores nearly the same.
        let quantized_dir = dir.path().join("q8_0");
        std::fs::create_dir_all(&quantized_dir).unwrap();
        let summary = ragd_embed::quantize_bert(&config.output_dir, &quantized_dir, &mut |_, _, _| {
            ControlFlow::Continue(())
        })
        .expect("quantize");
        // 6 layers of 6 Linear layers, the pooler and the head.
        assert_eq!(summary.quantized, 38, "{summary:?}");
        let quantized = CrossEncoder::load("q8_0", &quantized_dir, config.max_seq_len).expect("loads");
        let scores = quantized.score_pairs(&pairs).unwrap();
        for (a, b) in reloaded.iter().zip(&scores) {
            assert!((a - b).abs() < 0.05 * a.abs().max(1.0), "f32 {reloaded:?}, q8_0 {scores:?}");
        }
    }

    #[test]
    fn a_run_resumes_after_its_checkpoint_and_stops_on_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = RerankerConfig { epochs: 2, ..config(dir.path()) };
        let never = AtomicBool::new(false);
        let mut saved = None;
        let stopped = finetune_reranker(&config, &topic_examples(), &never, &mut |event| match event {
            Event::Epoch { epoch: 1, checkpoint, .. } => {
                saved = checkpoint;
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        assert!(matches!(stopped, Err(Error::Stopped)), "{stopped:?}");
        let resumed = RerankerConfig { resume: saved, ..config.clone() };
        let mut steps = Vec::new();
        let outcome = finetune_reranker(&resumed, &topic_examples(), &never, &mut |event| {
            if let Event::Step { step, .. } = event {
                steps.push(step);
            }
            ControlFlow::Continue(())
        })
        .expect("resumed");
        assert_eq!((steps, outcome.steps), (vec![3, 4], 4));

        let stop = AtomicBool::new(true);
        let outcome =
            finetune_reranker(&config, &topic_examples(), &stop, &mut |_| ControlFlow::Continue(()));
        assert!(matches!(outcome, Err(Error::Stopped)), "{outcome:?}");
    }

    #[test]
    fn the_learning_rate_warms_up_then_decays_linearly() {
        let rates: Vec<f64> = (1..=20).map(|step| scheduled_learning_rate(1.0, step, 20)).collect();
        assert_eq!(&rates[..3], [0.5, 1.0, 18.0 / 19.0]);
        assert!(rates[1..].windows(2).all(|w| w[0] > w[1]), "{rates:?}");
        assert_eq!(rates[19], 1.0 / 19.0);
        assert_eq!(scheduled_learning_rate(3e-4, 1, 1), 3e-4);
    }

    #[test]
    fn fresh_weights_repeat_by_seed_and_have_the_set_spread() {
        let (mut a, mut b) = (7, 7);
        let draws = normal(&mut a, 20_000);
        assert_eq!(draws, normal(&mut b, 20_000));
        let mean = draws.iter().map(|x| f64::from(*x)).sum::<f64>() / draws.len() as f64;
        let std =
            (draws.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / draws.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (std - INIT_STD).abs() < 1e-3, "mean {mean}, std {std}");
    }
}
