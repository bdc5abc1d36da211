//! Natural language inference: does a premise entail, contradict or say nothing about a
//! hypothesis? Concord's own model is a cross-encoder: the pair is encoded together by the
//! shared encoder with fine-tuned top layers, and a 3-way head reads the mean-pooled states.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::model::classifier::SequenceClassifier;
use crate::model::heads::{load_heads, softmax, DenseHead};
use crate::model::EmbeddingModel;
use crate::runtime::{Engine, EngineConfig, EngineError, Input, Want};

/// The labels, in the order of the head's outputs.
pub const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// Where the default NLI model lives: the folder committed with the source.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/nli");

pub const CONFIG_FILE: &str = "nli.json";

/// `nli.json`: what an NLI model folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NliConfig {
    /// The encoder the fine-tuned layers ride on (folder or hub id).
    pub base_model: String,
    /// Safetensors file, relative to the folder: fine-tuned layers and the head `heads.nli`.
    pub weights: String,
    pub labels: Vec<String>,
}

/// One pair's verdict.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NliResult {
    pub label: String,
    /// Probability of each label; they sum to 1.
    pub scores: BTreeMap<String, f32>,
}

impl NliResult {
    /// Probabilities in [`LABELS`] order.
    pub fn probabilities(&self) -> [f32; 3] {
        LABELS.map(|l| self.scores.get(l).copied().unwrap_or(0.0))
    }
}

/// How pooled or first-token states become label probabilities.
enum Head {
    /// Concord's own: a 3-way softmax over the mean-pooled states.
    Concord(DenseHead),
    /// A Hugging Face sequence-classification head; `order[i]` is the [`LABELS`] index of its
    /// output `i`.
    Hub { classifier: SequenceClassifier, order: Vec<usize> },
}

/// A loaded NLI model, ready to classify pairs.
pub struct NliModel {
    engine: Engine,
    head: Head,
    id: String,
}

impl NliModel {
    /// Loads `spec`: a Concord NLI folder (with `nli.json`), or any Hugging Face NLI
    /// cross-encoder (folder or hub id) of the supported encoders, its labels read from
    /// `id2label`.
    pub fn load(spec: &str, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let dir = Path::new(spec);
        if dir.join(CONFIG_FILE).is_file() {
            return Self::load_concord(dir, device, dtype, engine);
        }
        let model = EmbeddingModel::load(spec, device, dtype).with_context(|| format!("loading NLI model '{spec}'"))?;
        let classifier = SequenceClassifier::load(&model.info.path)?;
        let order = classifier
            .labels
            .iter()
            .map(|label| {
                LABELS
                    .iter()
                    .position(|l| l.eq_ignore_ascii_case(label))
                    .with_context(|| format!("'{spec}' has label '{label}'; an NLI model needs {LABELS:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(order.contains(&0), "'{spec}' has no entailment label");
        Ok(Self { engine: Engine::start(model, engine)?, head: Head::Hub { classifier, order }, id: spec.to_string() })
    }

    fn load_concord(dir: &Path, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: NliConfig = serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(config.labels == LABELS, "{} must list the labels {LABELS:?}", path.display());
        let weights = dir.join(&config.weights);
        let model =
            EmbeddingModel::load_with_overrides(&config.base_model, std::slice::from_ref(&weights), device, dtype)
                .with_context(|| format!("loading the NLI encoder ({} + {})", config.base_model, weights.display()))?;
        let head = load_heads(&weights, &["heads.nli"])?.remove(0);
        ensure!(
            head.outputs() == LABELS.len() && head.inputs() == model.info.dimensions,
            "heads.nli must be {}×{}",
            LABELS.len(),
            model.info.dimensions
        );
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { engine: Engine::start(model, engine)?, head: Head::Concord(head), id: format!("concord/{name}") })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Classifies `(premise, hypothesis)` pairs; over-long pairs are cut (longest side first).
    pub async fn classify(&self, pairs: Vec<(String, String)>) -> Result<Vec<NliResult>, EngineError> {
        let inputs = pairs.into_iter().map(|(premise, hypothesis)| Input::Pair(premise, hypothesis)).collect();
        let want = Want { normalize: false, token_states: matches!(self.head, Head::Hub { .. }) };
        let encoded = self.engine.encode(inputs, want, true).await?;
        Ok(encoded
            .iter()
            .map(|item| {
                let probs: [f32; 3] = match &self.head {
                    Head::Concord(head) => {
                        let p = softmax(&head.apply(&item.pooled));
                        [p[0], p[1], p[2]]
                    }
                    Head::Hub { classifier, order } => {
                        let first = item.token_states.as_ref().and_then(|s| s.first()).map_or(&[][..], Vec::as_slice);
                        let mut p = [0f32; 3];
                        for (&index, prob) in order.iter().zip(classifier.probabilities(first)) {
                            p[index] = prob;
                        }
                        p
                    }
                };
                let best = (0..3).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap_or(0);
                NliResult {
                    label: LABELS[best].to_string(),
                    scores: LABELS.iter().zip(probs).map(|(l, p)| (l.to_string(), p)).collect(),
                }
            })
            .collect())
    }
}
