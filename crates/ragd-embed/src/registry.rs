//! The local model registry: `config/models.toml` names each model and its
//! files; the files live at `<models_dir>/<name>/<path>`, laid out by
//! `scripts/fetch-models`.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    #[serde(rename = "model", default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    /// What loads the model: `embedder`, `runtime`, `generator-gguf`, ...
    pub kind: String,
    pub description: String,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Left out of a plain `scripts/fetch-models` run (a large model only
    /// some installs want); fetched with `--with <name>`.
    #[serde(default)]
    pub optional: bool,
    pub files: Vec<ModelFile>,
}

/// One file of a model. The source fields tell `scripts/fetch-models` where
/// the file comes from; ragd itself only reads `path` and `sha256`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Relative to the model's directory.
    pub path: String,
    /// Lowercase hex; when absent the file is not verified.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub pypi: Option<String>,
    #[serde(default)]
    pub member: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub python: Option<String>,
    /// A file too large for one wheel: the members of these wheels,
    /// concatenated in order.
    #[serde(default)]
    pub parts: Vec<FilePart>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePart {
    pub pypi: String,
    pub member: String,
}

impl ModelManifest {
    pub fn parse(toml_text: &str) -> Result<Self> {
        let mut manifest: Self =
            toml::from_str(toml_text).map_err(|err| Error::Config(format!("model manifest: {err}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn get(&self, name: &str) -> Result<&ModelEntry> {
        self.models.iter().find(|model| model.name == name).ok_or_else(|| Error::UnknownModel {
            name: name.to_owned(),
            known: self.models.iter().map(|model| model.name.clone()).collect(),
        })
    }

    fn validate(&mut self) -> Result<()> {
        let mut names = HashSet::new();
        for model in &mut self.models {
            // The name becomes a directory, so it must be one plain path component.
            if !is_plain_relative(&model.name) || model.name.contains(['/', '\\']) {
                return Err(Error::Config(format!("model manifest: invalid model name {:?}", model.name)));
            }
            if !names.insert(model.name.clone()) {
                return Err(Error::Config(format!("model manifest: model {:?} is listed twice", model.name)));
            }
            if model.files.is_empty() {
                return Err(Error::Config(format!("model manifest: model {:?} has no files", model.name)));
            }
            for file in &mut model.files {
                if !is_plain_relative(&file.path) {
                    return Err(Error::Config(format!(
                        "model manifest: model {:?}: file path {:?} must be relative and stay inside the model directory",
                        model.name, file.path
                    )));
                }
                if !file.parts.is_empty() && (file.pypi.is_some() || file.member.is_some()) {
                    return Err(Error::Config(format!(
                        "model manifest: model {:?}: file {:?} has both `parts` and a single `pypi` source",
                        model.name, file.path
                    )));
                }
                if let Some(sha) = &mut file.sha256 {
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(Error::Config(format!(
                            "model manifest: model {:?}: sha256 of {:?} is not 64 hex digits",
                            model.name, file.path
                        )));
                    }
                    sha.make_ascii_lowercase();
                }
            }
        }
        Ok(())
    }
}

fn is_plain_relative(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

#[derive(Debug, Clone)]
pub struct ModelRegistry {
    manifest: ModelManifest,
    models_dir: PathBuf,
}

/// A model whose files all exist on disk.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub entry: ModelEntry,
    pub dir: PathBuf,
}

impl ResolvedModel {
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }
}

impl ModelRegistry {
    pub fn new(manifest: ModelManifest, models_dir: PathBuf) -> Self {
        Self { manifest, models_dir }
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn resolve(&self, name: &str) -> Result<ResolvedModel> {
        let entry = self.manifest.get(name)?;
        let dir = self.models_dir.join(&entry.name);
        for file in &entry.files {
            let path = dir.join(&file.path);
            if !path.is_file() {
                return Err(Error::ModelMissing { name: entry.name.clone(), path });
            }
        }
        Ok(ResolvedModel { entry: entry.clone(), dir })
    }

    /// Checks every file that has a sha256 in the manifest. Reads the files
    /// in full, so it costs about a second per few hundred MB.
    pub fn verify(&self, name: &str) -> Result<()> {
        let model = self.resolve(name)?;
        let span = tracing::info_span!(
            "verify_model",
            model = name,
            bytes = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty
        );
        let _guard = span.enter();
        let started = Instant::now();
        let mut bytes = 0u64;
        for file in &model.entry.files {
            let Some(expected) = &file.sha256 else {
                tracing::debug!(file = %file.path, "no sha256 in the manifest, skipping check");
                continue;
            };
            let path = model.file(&file.path);
            let (actual, size) = sha256_file(&path)?;
            bytes += size;
            if &actual != expected {
                return Err(Error::ChecksumMismatch {
                    name: name.to_owned(),
                    path,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        span.record("bytes", bytes);
        span.record("elapsed_ms", started.elapsed().as_millis() as u64);
        tracing::info!("model files verified");
        Ok(())
    }
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let io_error = |source| Error::Io { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io_error)?;
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[model]]
name = "tiny"
kind = "embedder"
description = "a test model"
dimensions = 3
files = [{ path = "weights.bin", sha256 = "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824", pypi = "x==1", member = "x/w" }]
"#;

    #[test]
    fn parses_the_shipped_manifest() {
        let text = include_str!("../../../config/models.toml");
        let manifest = ModelManifest::parse(text).unwrap();
        let minilm = manifest.get("minilm-l6-onnx").unwrap();
        assert_eq!(
            (minilm.kind.as_str(), minilm.dimensions, minilm.max_tokens),
            ("embedder", Some(384), Some(256))
        );
        assert!(minilm.files.iter().any(|f| f.path == "model.onnx" && f.sha256.is_some()));
        assert_eq!(
            manifest.get("onnxruntime").unwrap().files[0].platform.as_deref(),
            Some("manylinux_2_28_x86_64")
        );
        let qwen = manifest.get("qwen2.5-coder-0.5b-instruct").unwrap();
        assert!(qwen.optional && !minilm.optional);
        assert_eq!(qwen.files[0].parts.len(), 6);
    }

    #[test]
    fn unknown_model_lists_known_names() {
        let manifest = ModelManifest::parse(ONE).unwrap();
        let err = manifest.get("huge").unwrap_err();
        assert!(matches!(&err, Error::UnknownModel { known, .. } if known == &["tiny"]), "{err}");
    }

    #[test]
    fn rejects_bad_manifests() {
        let with = |from: &str, to: &str| ONE.replace(from, to);
        let cases = [
            with("kind =", "knd ="),
            with("weights.bin", "../weights.bin"),
            with("weights.bin", "/etc/passwd"),
            with("weights.bin", ""),
            with("\"tiny\"", "\"a/b\""),
            with("2CF24DBA", "zz"),
            with("pypi =", "pypy ="),
            with("member = \"x/w\"", "member = \"x/w\", parts = [{ pypi = \"y==1\", member = \"y/w\" }]"),
            ONE.lines().filter(|line| !line.starts_with("files")).collect::<Vec<_>>().join("\n")
                + "\nfiles = []",
            format!("{ONE}{ONE}"),
        ];
        for text in cases {
            assert!(ModelManifest::parse(&text).is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn resolve_and_verify_check_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let registry = ModelRegistry::new(ModelManifest::parse(ONE).unwrap(), dir.path().to_owned());

        let err = registry.resolve("tiny").unwrap_err();
        assert!(
            matches!(err, Error::ModelMissing { .. }) && err.to_string().contains("scripts/fetch-models"),
            "{err}"
        );

        std::fs::create_dir(dir.path().join("tiny")).unwrap();
        std::fs::write(dir.path().join("tiny/weights.bin"), b"hello").unwrap();
        let model = registry.resolve("tiny").unwrap();
        assert_eq!(model.file("weights.bin"), dir.path().join("tiny/weights.bin"));
        registry.verify("tiny").unwrap();

        std::fs::write(dir.path().join("tiny/weights.bin"), b"hellO").unwrap();
        let err = registry.verify("tiny").unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    }
}
