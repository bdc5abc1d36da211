//! Loads any supported encoder from a model folder, chosen by `config.json`'s `model_type`,
//! behind one `forward` that returns every token's hidden state.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{debertav2, distilbert};

use super::bert;

/// The architectures Concord runs; `model_type` values map onto these.
pub enum Architecture {
    /// BERT, RoBERTa, XLM-RoBERTa and CamemBERT share this implementation.
    Bert(bert::BertModel),
    DistilBert(distilbert::DistilBertModel),
    DebertaV2(debertav2::DebertaV2Model),
}

/// A loaded encoder plus the facts the rest of Concord needs about it.
pub struct Encoder {
    arch: Architecture,
    pub model_type: String,
    pub hidden_size: usize,
    /// Longest input, in tokens including special tokens, the position table allows.
    pub max_positions: usize,
    pub device: Device,
    pub dtype: DType,
}

/// The subset of `config.json` that selects an architecture and sizes the encoder.
#[derive(serde::Deserialize)]
struct CommonConfig {
    model_type: String,
    max_position_embeddings: Option<usize>,
    pad_token_id: Option<u32>,
}

impl Encoder {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config_path = dir.join("config.json");
        let raw = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let common: CommonConfig = serde_json::from_str(&raw)
            .with_context(|| format!("{} has no usable model_type", config_path.display()))?;
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only; Concord never writes model files while serving.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device) }
            .with_context(|| format!("mapping {}", weights.display()))?;
        let model_type = common.model_type.clone();
        let (arch, hidden_size) = match model_type.as_str() {
            "bert" | "roberta" | "xlm-roberta" | "camembert" => {
                let cfg: bert::Config = serde_json::from_str(&raw).context("parsing BERT config")?;
                let hidden = cfg.hidden_size;
                (Architecture::Bert(bert::BertModel::load(vb, &cfg)?), hidden)
            }
            "distilbert" => {
                let cfg: distilbert::Config =
                    serde_json::from_str(&raw).context("parsing DistilBERT config")?;
                let hidden = cfg.dim;
                let vb = if vb.contains_tensor("distilbert.embeddings.word_embeddings.weight") {
                    vb.pp("distilbert")
                } else {
                    vb
                };
                (Architecture::DistilBert(distilbert::DistilBertModel::load(vb, &cfg)?), hidden)
            }
            "deberta-v2" => {
                let cfg: debertav2::Config =
                    serde_json::from_str(&raw).context("parsing DeBERTa-v2 config")?;
                let hidden = cfg.hidden_size;
                let vb = if vb.contains_tensor("deberta.embeddings.word_embeddings.weight") {
                    vb.pp("deberta")
                } else {
                    vb
                };
                (Architecture::DebertaV2(debertav2::DebertaV2Model::load(vb, &cfg)?), hidden)
            }
            other => bail!(
                "model_type '{other}' is not supported (supported: bert, roberta, xlm-roberta, camembert, distilbert, deberta-v2)"
            ),
        };
        let positions = common.max_position_embeddings.unwrap_or(512);
        // RoBERTa-style position tables reserve the first pad_token_id + 1 rows.
        let max_positions = match model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => {
                positions.saturating_sub(common.pad_token_id.unwrap_or(1) as usize + 1)
            }
            _ => positions,
        };
        Ok(Self { arch, model_type, hidden_size, max_positions, device: device.clone(), dtype })
    }

    /// Runs the encoder. `ids`, `type_ids`, `mask`: `[batch, seq]` u32 (mask 1 for real tokens).
    /// Returns `[batch, seq, hidden]` hidden states in f32.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let states = match &self.arch {
            Architecture::Bert(model) => model.forward(ids, type_ids, mask)?,
            Architecture::DistilBert(model) => {
                // DistilBERT's mask marks what to hide, the inverse of the usual convention.
                let (b, t) = mask.dims2()?;
                let hide = mask.eq(0u32)?.reshape((b, 1, 1, t))?;
                model.forward(ids, &hide)?
            }
            Architecture::DebertaV2(model) => {
                model.forward(ids, Some(type_ids.clone()), Some(mask.to_dtype(DType::I64)?))?
            }
        };
        Ok(states.to_dtype(DType::F32)?)
    }
}
