//! Fine-tuning the real base model (`models/all-minilm-l6-v2`, laid out by
//! `scripts/fetch-models`) for a few steps: a run stopped after an epoch
//! resumes from its checkpoint, and a stop request ends a run before its
//! next step.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ragd_train::{finetune, Checkpoint, Error, Event, FinetuneConfig, TrainingPair};

fn base_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "model files are missing: run scripts/fetch-models first"
    );
    dir
}

fn pairs() -> Vec<TrainingPair> {
    ["cats", "tides", "chess", "bees", "jazz", "tea", "saturn", "wolves"]
        .iter()
        .enumerate()
        .map(|(i, topic)| TrainingPair {
            query: format!("code word {i}"),
            positive: format!("a passage about {topic}"),
            negative: (i % 2 == 0).then(|| format!("nothing about {topic} here")),
        })
        .collect()
}

fn config(dir: &Path) -> FinetuneConfig {
    FinetuneConfig {
        base_dir: base_dir(),
        output_dir: dir.join("model"),
        checkpoint_dir: dir.join("checkpoints"),
        epochs: 2,
        batch_size: 4,
        learning_rate: 1e-4,
        max_seq_len: 16,
        seed: 3,
        validation_fraction: 0.0,
        resume: None,
    }
}

#[test]
fn a_stopped_run_resumes_after_its_last_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let never = AtomicBool::new(false);

    let mut saved: Option<Checkpoint> = None;
    let mut first_steps = Vec::new();
    let stopped = finetune(&config, &pairs(), &never, &mut |event| match event {
        Event::Step { step, total_steps, .. } => {
            first_steps.push((step, total_steps));
            ControlFlow::Continue(())
        }
        Event::Epoch { epoch: 1, checkpoint, .. } => {
            saved = checkpoint;
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    assert!(matches!(stopped, Err(Error::Stopped)), "{stopped:?}");
    assert_eq!(first_steps, [(1, 4), (2, 4)]);
    let saved = saved.expect("a checkpoint after epoch 1");
    assert_eq!(saved.epoch, 1);
    assert!(saved.weights.is_file());
    assert!(!config.output_dir.exists(), "a stopped run registers nothing");

    let resumed = FinetuneConfig { resume: Some(saved), ..config.clone() };
    let mut events = Vec::new();
    let outcome = finetune(&resumed, &pairs(), &never, &mut |event| {
        events.push(event);
        ControlFlow::Continue(())
    })
    .expect("resumed run");
    let steps: Vec<usize> = events
        .iter()
        .filter_map(|e| if let Event::Step { step, .. } = e { Some(*step) } else { None })
        .collect();
    assert_eq!(steps, [3, 4], "the second epoch only");
    assert!(!events.iter().any(|e| matches!(e, Event::Epoch { epoch: 0 | 1, .. })), "{events:?}");
    assert_eq!((outcome.steps, outcome.dimensions, outcome.validation), (4, 384, None));

    let encoder = ragd_embed::SentenceEncoder::load("trained", &config.output_dir, 16).expect("trained model loads");
    let vectors = encoder.embed(&["code word 1"]).expect("embed");
    assert_eq!(vectors[0].len(), 384);
}

#[test]
fn a_stop_request_ends_the_run_before_its_next_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = AtomicBool::new(true);
    let mut steps = 0;
    let outcome = finetune(&config(dir.path()), &pairs(), &stop, &mut |event| {
        steps += usize::from(matches!(event, Event::Step { .. }));
        ControlFlow::Continue(())
    });
    assert!(matches!(outcome, Err(Error::Stopped)), "{outcome:?}");
    assert_eq!(steps, 0);
}
