//! Models: where they come from ([`source`]), the encoders ([`encoder`], [`bert`]), how token
//! states become one vector ([`Pooling`]), and the device they run on ([`device`]).

pub mod attention;
pub mod bert;
pub mod classifier;
pub mod delta;
pub mod device;
pub mod encoder;
pub mod heads;
pub mod int8;
pub mod kernels;
pub mod packed;
pub mod source;
pub mod tiles;
pub mod tokenize;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use encoder::Encoder;
pub use tokenize::{TextTokenizer, Tokenized};

/// How a sentence vector is made from token states (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(serde::Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(serde::Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

impl Pooling {
    /// Reads `1_Pooling/config.json`; models without one (plain HF checkpoints) use mean pooling.
    fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("1_Pooling").join("config.json");
        if !path.is_file() {
            return Ok(Pooling::Mean);
        }
        let cfg: PoolingConfig = read_json(&path)?;
        Ok(if cfg.pooling_mode_cls_token && !cfg.pooling_mode_mean_tokens { Pooling::Cls } else { Pooling::Mean })
    }

    /// One sequence's `[len, hidden]` states → `[hidden]`.
    pub fn apply(self, states: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Pooling::Mean => states.mean(0),
            Pooling::Cls => states.get(0),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))
}

/// Public facts about a loaded model, as `/info` reports them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub id: String,
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub model_type: String,
    pub dimensions: usize,
    pub max_input_tokens: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub device: String,
    pub dtype: String,
}

/// An encoder with its tokenizer and sentence-embedding recipe: everything a worker needs.
pub struct EmbeddingModel {
    pub encoder: Encoder,
    pub tokenizer: TextTokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    pub info: ModelInfo,
}

impl EmbeddingModel {
    /// Resolves `spec` (folder or hub id) and loads it onto `device`.
    pub fn load(spec: &str, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with_overrides(spec, &[], device, dtype)
    }

    /// Loads `spec` with some of its tensors replaced by those in `overrides` (see [`Encoder::load`]).
    pub fn load_with_overrides(spec: &str, overrides: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let dir = source::resolve(spec)?;
        let encoder = Encoder::load(&dir, overrides, device, dtype)
            .with_context(|| format!("loading encoder weights from {}", dir.display()))?;
        let pooling = Pooling::from_dir(&dir)?;
        let modules = dir.join("modules.json");
        let normalize = if modules.is_file() {
            let entries: Vec<ModuleEntry> = read_json(&modules)?;
            entries.iter().any(|m| m.kind.ends_with(".Normalize"))
        } else {
            false
        };
        let sbert = dir.join("sentence_bert_config.json");
        let configured_max =
            if sbert.is_file() { read_json::<SentenceBertConfig>(&sbert)?.max_seq_length } else { None };
        let max_tokens = configured_max.unwrap_or(encoder.max_positions).min(encoder.max_positions);
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), max_tokens)?;
        let info = ModelInfo {
            id: spec.to_string(),
            path: dir,
            model_type: encoder.model_type.clone(),
            dimensions: encoder.hidden_size,
            max_input_tokens: max_tokens,
            pooling,
            normalize,
            device: device::describe(device),
            dtype: if encoder.int8 { "q8".to_string() } else { format!("{dtype:?}").to_lowercase() },
        };
        Ok(Self { encoder, tokenizer, pooling, normalize, info })
    }
}
