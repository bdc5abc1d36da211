//! BERT and RoBERTa-style encoders, written out so Concord controls the attention mask, exposes
//! every token's hidden state, and can swap in faster CPU kernels without forking candle.
//!
//! RoBERTa differs only in where positions start (after the padding index) and in having a single
//! token type, so one struct serves both.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    Gelu,
    GeluNew,
    GeluPytorchTanh,
    Relu,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    pub model_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

impl Config {
    /// RoBERTa and XLM-R number positions from `pad_token_id + 1`.
    fn position_offset(&self) -> Option<u32> {
        match self.model_type.as_deref() {
            Some("roberta") | Some("xlm-roberta") | Some("camembert") => Some(self.pad_token_id),
            _ => None,
        }
    }
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    layer_norm: LayerNorm,
    position_offset: Option<u32>,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            word: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type: embedding(cfg.type_vocab_size, cfg.hidden_size, vb.pp("token_type_embeddings"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            position_offset: cfg.position_offset(),
        })
    }

    fn forward(&self, input_ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, seq_len) = input_ids.dims2()?;
        let positions = match self.position_offset {
            // RoBERTa: padded positions keep the padding index, real tokens count from it + 1.
            Some(pad) => {
                let mask = mask.to_dtype(DType::U32)?;
                let cumulative = mask.to_dtype(DType::F32)?.cumsum(1)?.to_dtype(DType::U32)?;
                ((cumulative * &mask)? + pad as f64)?
            }
            None => Tensor::arange(0u32, seq_len as u32, input_ids.device())?
                .unsqueeze(0)?
                .broadcast_as(input_ids.shape())?
                .contiguous()?,
        };
        let words = self.word.forward(input_ids)?;
        let xs = (words + self.token_type.forward(type_ids)?)?;
        let xs = (xs + self.position.forward(&positions)?)?;
        self.layer_norm.forward(&xs)
    }
}

struct SelfAttention {
    qkv: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        // Query, key and value are fused into one matmul: one pass over the activations.
        let sv = vb.pp("self");
        let q = linear(h, h, sv.pp("query"))?;
        let k = linear(h, h, sv.pp("key"))?;
        let v = linear(h, h, sv.pp("value"))?;
        let weight = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
        let bias = match (q.bias(), k.bias(), v.bias()) {
            (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[qb, kb, vb], 0)?),
            _ => None,
        };
        Ok(Self {
            qkv: Linear::new(weight, bias),
            output: linear(h, h, vb.pp("output").pp("dense"))?,
            layer_norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, t, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = (qkv.get(0)? * scale)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask_bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let out = self.output.forward(&context)?;
        self.layer_norm.forward(&(out + xs)?)
    }
}

struct FeedForward {
    intermediate: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    act: HiddenAct,
}

impl FeedForward {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            intermediate: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("output").pp("dense"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.intermediate.forward(xs)?;
        let hidden = match self.act {
            HiddenAct::Gelu => hidden.gelu_erf()?,
            HiddenAct::GeluNew | HiddenAct::GeluPytorchTanh => hidden.gelu()?,
            HiddenAct::Relu => hidden.relu()?,
        };
        let out = self.output.forward(&hidden)?;
        self.layer_norm.forward(&(out + xs)?)
    }
}

struct Layer {
    attention: SelfAttention,
    feed_forward: FeedForward,
}

/// A BERT-family encoder: token ids in, one hidden state per token out.
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        // Checkpoints saved from *ForSequenceClassification nest the encoder under its type name.
        let vb = ["bert", "roberta", "xlm-roberta"]
            .iter()
            .map(|prefix| vb.pp(*prefix))
            .find(|scoped| scoped.contains_tensor("embeddings.word_embeddings.weight"))
            .unwrap_or(vb);
        let embeddings = Embeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let lv = vb.pp(format!("encoder.layer.{i}"));
                Ok(Layer {
                    attention: SelfAttention::load(lv.pp("attention"), cfg)?,
                    feed_forward: FeedForward::load(lv.clone(), cfg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }

    /// `input_ids`, `type_ids`, `mask`: `[batch, seq]` u32, mask 1 for real tokens.
    /// Returns `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(input_ids, type_ids, mask)?;
        let bias = additive_mask(mask, xs.dtype())?;
        for layer in &self.layers {
            xs = layer.attention.forward(&xs, &bias)?;
            xs = layer.feed_forward.forward(&xs)?;
        }
        Ok(xs)
    }
}

/// `[batch, seq]` 1/0 mask → `[batch, 1, 1, seq]` bias: 0 for tokens, a large negative for padding.
pub fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let keep = mask.to_dtype(DType::F32)?;
    let bias = ((keep - 1.0)? * 1e4)?;
    bias.reshape((b, 1, 1, t))?.to_dtype(dtype)
}

/// Mean of the token states where `mask` is 1: `[batch, seq, hidden]` → `[batch, hidden]`.
pub fn masked_mean(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(states.dtype())?.unsqueeze(D::Minus1)?;
    let summed = states.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&counts)
}
