//! Fine-tuning and quantization of ragd's models with candle: pure
//! functions over model files, run by the job workers. Empty until the
//! training jobs are built (issues 8 and 9).
//!
//! Invariant: no HTTP, no database; it depends only on `ragd-core` and candle.
