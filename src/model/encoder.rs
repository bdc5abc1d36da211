//! Loads any supported encoder from a model folder, chosen by `config.json`'s `model_type`,
//! behind one `forward` that returns every token's hidden state.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{debertav2, distilbert};

use super::bert;
use super::delta::Overlay;
use super::Tokenized;

/// The architectures Concord runs; `model_type` values map onto these.
// One value per loaded model, so the variants' size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
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
    /// Linear layers run in int8 (`--dtype q8`, BERT family on the CPU).
    pub int8: bool,
}

/// Which implementation a `model_type` runs on.
enum Family {
    Bert,
    DistilBert,
    DebertaV2,
}

impl Family {
    fn of(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" | "roberta" | "xlm-roberta" | "camembert" => Some(Family::Bert),
            "distilbert" => Some(Family::DistilBert),
            "deberta-v2" => Some(Family::DebertaV2),
            _ => None,
        }
    }
}

/// The subset of `config.json` that selects an architecture and sizes the encoder.
#[derive(serde::Deserialize)]
struct CommonConfig {
    model_type: String,
    max_position_embeddings: Option<usize>,
    pad_token_id: Option<u32>,
}

impl Encoder {
    /// Loads `dir`'s encoder; tensors in `overrides` (safetensors files, later ones win) replace
    /// the base checkpoint's, or change them by a stored delta ([`super::delta`]), which is how
    /// fine-tuned top layers ride on a shared base model.
    pub fn load(dir: &Path, overrides: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let config_path = dir.join("config.json");
        let raw =
            std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let common: CommonConfig = serde_json::from_str(&raw)
            .with_context(|| format!("{} has no usable model_type", config_path.display()))?;
        let Some(family) = Family::of(&common.model_type) else {
            bail!(
                "model_type '{}' is not supported (supported: bert, roberta, xlm-roberta, camembert, distilbert, deberta-v2)",
                common.model_type
            );
        };
        let overlay = Overlay::open(&dir.join("model.safetensors"), overrides)?;
        let vb = VarBuilder::from_backend(Box::new(overlay), dtype, device.clone());
        let model_type = common.model_type.clone();
        let (arch, hidden_size) = match family {
            Family::Bert => {
                let cfg: bert::Config = serde_json::from_str(&raw).context("parsing BERT config")?;
                let hidden = cfg.hidden_size;
                (Architecture::Bert(bert::BertModel::load(vb, &cfg)?), hidden)
            }
            Family::DistilBert => {
                let cfg: distilbert::Config = serde_json::from_str(&raw).context("parsing DistilBERT config")?;
                let hidden = cfg.dim;
                let vb = if vb.contains_tensor("distilbert.embeddings.word_embeddings.weight") {
                    vb.pp("distilbert")
                } else {
                    vb
                };
                (Architecture::DistilBert(distilbert::DistilBertModel::load(vb, &cfg)?), hidden)
            }
            Family::DebertaV2 => {
                let cfg: debertav2::Config = serde_json::from_str(&raw).context("parsing DeBERTa-v2 config")?;
                let hidden = cfg.hidden_size;
                let vb =
                    if vb.contains_tensor("deberta.embeddings.word_embeddings.weight") { vb.pp("deberta") } else { vb };
                (Architecture::DebertaV2(debertav2::DebertaV2Model::load(vb, &cfg)?), hidden)
            }
        };
        let positions = common.max_position_embeddings.unwrap_or(512);
        // RoBERTa-style position tables reserve the first pad_token_id + 1 rows.
        let max_positions = match model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => {
                positions.saturating_sub(common.pad_token_id.unwrap_or(1) as usize + 1)
            }
            _ => positions,
        };
        let int8 = super::int8::enabled() && device.is_cpu();
        if int8 && !matches!(arch, Architecture::Bert(_)) {
            tracing::warn!(model_type, "dtype q8 covers BERT-family encoders; this one runs f32");
        }
        let int8 = int8 && matches!(arch, Architecture::Bert(_));
        Ok(Self { arch, model_type, hidden_size, max_positions, device: device.clone(), dtype, int8 })
    }

    /// Runs the encoder on a batch; returns each sequence's hidden states, `[len, hidden]` f32.
    pub fn forward(&self, batch: &[&Tokenized]) -> Result<Vec<Tensor>> {
        match &self.arch {
            // Packed: no padding work at all, whatever the spread of lengths.
            Architecture::Bert(model) => self.forward_bert(model, batch, model.num_layers()),
            Architecture::DistilBert(model) => {
                let padded = self.pad(batch)?;
                // DistilBERT's mask marks what to hide, the inverse of the usual convention.
                let (n, longest) = padded.mask.dims2()?;
                let hide = padded.mask.eq(0u32)?.reshape((n, 1, 1, longest))?;
                split_padded(&model.forward(&padded.ids, &hide)?, batch)
            }
            Architecture::DebertaV2(model) => {
                let padded = self.pad(batch)?;
                let mask = padded.mask.to_dtype(DType::I64)?;
                split_padded(&model.forward(&padded.ids, Some(padded.type_ids), Some(mask))?, batch)
            }
        }
    }

    /// Hidden states after the first `layers` layers, for fine-tuning the layers above them.
    /// Only the BERT family exposes its layers this way.
    pub fn forward_through(&self, batch: &[&Tokenized], layers: usize) -> Result<Vec<Tensor>> {
        match &self.arch {
            Architecture::Bert(model) => self.forward_bert(model, batch, layers),
            _ => bail!("fine-tuning needs a BERT-family encoder, not {}", self.model_type),
        }
    }

    /// Number of transformer layers (BERT family; others report 0).
    pub fn num_layers(&self) -> usize {
        match &self.arch {
            Architecture::Bert(model) => model.num_layers(),
            _ => 0,
        }
    }

    fn forward_bert(&self, model: &bert::BertModel, batch: &[&Tokenized], layers: usize) -> Result<Vec<Tensor>> {
        let ids: Vec<u32> = batch.iter().flat_map(|t| t.ids.iter().copied()).collect();
        let type_ids: Vec<u32> = batch.iter().flat_map(|t| t.type_ids.iter().copied()).collect();
        let lengths: Vec<usize> = batch.iter().map(|t| t.ids.len()).collect();
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let type_ids = Tensor::from_vec(type_ids, total, &self.device)?;
        let states = model.forward_packed_through(&ids, &type_ids, &lengths, layers)?.to_dtype(DType::F32)?;
        let mut start = 0;
        lengths
            .iter()
            .map(|&len| {
                let seq = states.narrow(0, start, len)?;
                start += len;
                Ok(seq)
            })
            .collect()
    }

    /// Pads to the longest sequence, for architectures that take a mask.
    fn pad(&self, batch: &[&Tokenized]) -> Result<Padded> {
        let n = batch.len();
        let longest = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; n * longest];
        let mut type_ids = vec![0u32; n * longest];
        let mut mask = vec![0u32; n * longest];
        for (row, tokens) in batch.iter().enumerate() {
            let at = row * longest;
            ids[at..at + tokens.ids.len()].copy_from_slice(&tokens.ids);
            type_ids[at..at + tokens.type_ids.len()].copy_from_slice(&tokens.type_ids);
            mask[at..at + tokens.ids.len()].fill(1);
        }
        Ok(Padded {
            ids: Tensor::from_vec(ids, (n, longest), &self.device)?,
            type_ids: Tensor::from_vec(type_ids, (n, longest), &self.device)?,
            mask: Tensor::from_vec(mask, (n, longest), &self.device)?,
        })
    }
}

struct Padded {
    ids: Tensor,
    type_ids: Tensor,
    mask: Tensor,
}

/// `[batch, longest, hidden]` → each sequence's `[len, hidden]` f32 states, padding dropped.
fn split_padded(states: &Tensor, batch: &[&Tokenized]) -> Result<Vec<Tensor>> {
    let states = states.to_dtype(DType::F32)?;
    batch.iter().enumerate().map(|(row, t)| Ok(states.get(row)?.narrow(0, 0, t.ids.len())?)).collect()
}
