//! The heads of Hugging Face classification checkpoints, applied in plain Rust to final states:
//! `*ForSequenceClassification` reads the first token, and every supported architecture's head
//! is `out(activation(dense(state)))` under architecture-specific tensor names;
//! `*ForTokenClassification` is one `classifier` layer applied to every token.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::heads::{sigmoid, DenseHead};

#[derive(Debug, Clone, Copy)]
enum Activation {
    Tanh,
    Relu,
    Gelu,
}

impl Activation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
            // The tanh approximation: within 1e-3 of exact GELU, far below label-flip scale.
            Activation::Gelu => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh()),
        }
    }
}

#[derive(Deserialize)]
struct HeadConfig {
    model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
    problem_type: Option<String>,
    pooler_hidden_act: Option<String>,
}

impl HeadConfig {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))
    }

    /// Label names in output order from `id2label`; `LABEL_i` when it does not name every output.
    fn labels(&self, outputs: usize) -> Result<Vec<String>> {
        let mut labels: Vec<(usize, String)> = self
            .id2label
            .iter()
            .map(|(id, label)| {
                Ok((id.parse::<usize>().with_context(|| format!("id2label key '{id}'"))?, label.clone()))
            })
            .collect::<Result<_>>()?;
        labels.sort();
        Ok(if labels.len() == outputs {
            labels.into_iter().map(|(_, l)| l).collect()
        } else {
            (0..outputs).map(|i| format!("LABEL_{i}")).collect()
        })
    }
}

fn read_weights(dir: &Path) -> Result<(std::path::PathBuf, HashMap<String, candle_core::Tensor>)> {
    let weights = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", weights.display()))?;
    Ok((weights, tensors))
}

/// Which head a checkpoint carries, from its `architectures` (sequence classification unless it
/// says `*ForTokenClassification`).
pub fn is_token_classifier(dir: &Path) -> Result<bool> {
    Ok(HeadConfig::read(dir)?.architectures.iter().any(|a| a.ends_with("ForTokenClassification")))
}

/// A sequence-classification head with its labels.
pub struct SequenceClassifier {
    dense: DenseHead,
    activation: Activation,
    out: DenseHead,
    /// Label names in output order, from `id2label`.
    pub labels: Vec<String>,
    /// `problem_type: multi_label_classification`: one sigmoid per label instead of a softmax.
    pub multi_label: bool,
}

impl SequenceClassifier {
    /// Reads the head of the checkpoint in `dir`; fails when it has none.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = HeadConfig::read(dir)?;
        let (dense, activation, out) = match config.model_type.as_str() {
            "bert" => ("pooler.dense", Activation::Tanh, "classifier"),
            "roberta" | "xlm-roberta" | "camembert" => ("classifier.dense", Activation::Tanh, "classifier.out_proj"),
            "distilbert" => ("pre_classifier", Activation::Relu, "classifier"),
            "deberta-v2" => {
                let activation = match config.pooler_hidden_act.as_deref().unwrap_or("gelu") {
                    "gelu" | "gelu_new" | "gelu_python" => Activation::Gelu,
                    "tanh" => Activation::Tanh,
                    "relu" => Activation::Relu,
                    other => bail!("pooler_hidden_act '{other}' is not supported"),
                };
                ("pooler.dense", activation, "classifier")
            }
            other => bail!("no sequence-classification head known for model_type '{other}'"),
        };
        let (weights, tensors) = read_weights(dir)?;
        // BERT keeps its pooler inside the encoder (`bert.pooler`); the others at the top level.
        let find = |name: &str| -> Result<DenseHead> {
            ["", "bert."]
                .iter()
                .map(|prefix| format!("{prefix}{name}"))
                .find(|full| tensors.contains_key(&format!("{full}.weight")))
                .with_context(|| format!("{} has no classification head tensor {name}.weight", weights.display()))
                .and_then(|full| DenseHead::from_tensors(&tensors, &full))
        };
        let (dense, out) = (find(dense)?, find(out)?);
        let labels = config.labels(out.outputs())?;
        Ok(Self {
            dense,
            activation,
            out,
            labels,
            multi_label: config.problem_type.as_deref() == Some("multi_label_classification"),
        })
    }

    /// Per-label probabilities for the first token's state.
    pub fn probabilities(&self, first_token: &[f32]) -> Vec<f32> {
        let hidden: Vec<f32> = self.dense.apply(first_token).into_iter().map(|x| self.activation.apply(x)).collect();
        let logits = self.out.apply(&hidden);
        if self.multi_label {
            logits.into_iter().map(sigmoid).collect()
        } else {
            super::heads::softmax(&logits)
        }
    }
}

/// A token-classification head: the probability that a token is offending is one minus that of
/// the background label (`O`, or the first label when none is called that), so BIO tagging
/// schemes and plain two-label ones both work.
pub struct TokenClassifier {
    classifier: DenseHead,
    background: usize,
    pub labels: Vec<String>,
}

impl TokenClassifier {
    pub fn load(dir: &Path) -> Result<Self> {
        let config = HeadConfig::read(dir)?;
        let (weights, tensors) = read_weights(dir)?;
        if !tensors.contains_key("classifier.weight") {
            bail!("{} has no token-classification head tensor classifier.weight", weights.display());
        }
        let classifier = DenseHead::from_tensors(&tensors, "classifier")?;
        if classifier.outputs() < 2 {
            bail!("a token classifier needs at least two labels, {} has {}", dir.display(), classifier.outputs());
        }
        let labels = config.labels(classifier.outputs())?;
        let background = labels.iter().position(|l| l.eq_ignore_ascii_case("O")).unwrap_or(0);
        Ok(Self { classifier, background, labels })
    }

    /// The probability that the token with final state `state` is not background.
    pub fn probability(&self, state: &[f32]) -> f32 {
        1.0 - super::heads::softmax(&self.classifier.apply(state))[self.background]
    }
}
