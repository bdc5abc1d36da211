//! BERT and RoBERTa-style encoders, written out so Concord controls the attention mask, exposes
//! every token's hidden state, and can swap in faster CPU kernels without forking candle.
//!
//! RoBERTa differs only in where positions start (after the padding index) and in having a single
//! token type, so one struct serves both.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::{attention, int8, kernels, packed};

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
            position: embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embeddings"))?,
            token_type: embedding(cfg.type_vocab_size, cfg.hidden_size, vb.pp("token_type_embeddings"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            position_offset: cfg.position_offset(),
        })
    }

    fn forward(&self, input_ids: &Tensor, type_ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let xs = (self.word.forward(input_ids)? + self.token_type.forward(type_ids)?)?;
        let xs = (xs + self.position.forward(positions)?)?;
        self.layer_norm.forward(&xs)
    }
}

/// A linear layer: on x86 CPUs with AVX-512 or AVX2 Concord's own kernels over weights packed
/// at load (int8 when `--dtype q8` turned it on), elsewhere candle's.
enum Dense {
    Float(Linear),
    Packed(packed::PackedLinear),
    Int8(int8::Int8Linear),
}

/// Which layers `--dtype q8` may turn into int8.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quantize {
    Always,
    /// Only where the int8 kernel keeps 8-bit weights. The feed-forward output projection has
    /// the widest weight outliers of the layer (largest weight ≈ 4.7σ against ≈ 3.4σ for the
    /// others in MiniLM); AVX2's 7-bit weights cost it most of the q8 error (min cosine to
    /// f32 on the reference sentences 0.9949 with it in int8, 0.9973 with it in f32).
    WithFullByteWeights,
}

impl Dense {
    fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::with(weight, bias, Quantize::Always)
    }

    fn with(weight: Tensor, bias: Option<Tensor>, quantize: Quantize) -> Result<Self> {
        let cpu_f32 = weight.device().is_cpu() && weight.dtype() == DType::F32;
        let int8 = int8::enabled() && (quantize == Quantize::Always || int8::full_byte_weights());
        if int8 && cpu_f32 {
            Ok(Self::Int8(int8::Int8Linear::new(&weight, bias.as_ref())?))
        } else if packed::supported() && cpu_f32 {
            Ok(Self::Packed(packed::PackedLinear::new(&weight, bias.as_ref())?))
        } else {
            Ok(Self::Float(Linear::new(weight, bias)))
        }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(linear) => linear.forward(xs),
            Self::Packed(linear) => linear.forward(xs),
            Self::Int8(linear) => linear.forward(xs),
        }
    }
}

fn without_bias(linear: &Linear, quantize: Quantize) -> Result<Dense> {
    Dense::with(linear.weight().clone(), None, quantize)
}

struct SelfAttention {
    qkv: Dense,
    /// The output projection, without its bias: the bias is added by `add_norm`.
    output: Dense,
    add_norm: kernels::AddNorm,
    num_heads: usize,
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
        let output = linear(h, h, vb.pp("output").pp("dense"))?;
        Ok(Self {
            qkv: Dense::new(weight, bias)?,
            output: without_bias(&output, Quantize::Always)?,
            add_norm: kernels::AddNorm::new(
                output.bias().cloned(),
                layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            )?,
            num_heads: cfg.num_attention_heads,
        })
    }

    /// `xs`: `[tokens, hidden]`, the sequences of `lengths` packed end to end. Each sequence
    /// attends only to itself, so no padding and no mask are needed.
    fn forward(&self, xs: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let qkv = self.qkv.forward(xs)?;
        let context = if attention::supported(&qkv) {
            attention::packed(&qkv, lengths, self.num_heads)?
        } else {
            attention::with_candle_ops(&qkv, lengths, self.num_heads)?
        };
        self.add_norm.forward(&self.output.forward(&context)?, xs)
    }
}

struct FeedForward {
    intermediate: Dense,
    /// Without its bias, which `add_norm` adds.
    output: Dense,
    add_norm: kernels::AddNorm,
    act: HiddenAct,
}

impl FeedForward {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let output = linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("output").pp("dense"))?;
        let intermediate = linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?;
        Ok(Self {
            intermediate: Dense::new(intermediate.weight().clone(), intermediate.bias().cloned())?,
            output: without_bias(&output, Quantize::WithFullByteWeights)?,
            add_norm: kernels::AddNorm::new(
                output.bias().cloned(),
                layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            )?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.intermediate.forward(xs)?;
        let hidden = match self.act {
            HiddenAct::Gelu => kernels::gelu_erf(&hidden)?,
            HiddenAct::GeluNew | HiddenAct::GeluPytorchTanh => hidden.gelu()?,
            HiddenAct::Relu => hidden.relu()?,
        };
        self.add_norm.forward(&self.output.forward(&hidden)?, xs)
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

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs sequences packed end to end: `input_ids` and `type_ids` are `[tokens]` u32, and
    /// `lengths` says where each sequence ends. Returns `[tokens, hidden]`.
    pub fn forward_packed(&self, input_ids: &Tensor, type_ids: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        self.forward_packed_through(input_ids, type_ids, lengths, self.layers.len())
    }

    /// Like [`Self::forward_packed`], but stops after the first `layers` layers: training caches
    /// these states once and fine-tunes only the layers above them.
    pub fn forward_packed_through(
        &self,
        input_ids: &Tensor,
        type_ids: &Tensor,
        lengths: &[usize],
        layers: usize,
    ) -> Result<Tensor> {
        let offset = self.embeddings.position_offset.map_or(0, |pad| pad + 1);
        let positions: Vec<u32> = lengths.iter().flat_map(|&len| offset..offset + len as u32).collect();
        let positions = Tensor::from_vec(positions, input_ids.dims1()?, input_ids.device())?;
        let mut xs = self.embeddings.forward(input_ids, type_ids, &positions)?;
        for layer in self.layers.iter().take(layers) {
            xs = layer.attention.forward(&xs, lengths)?;
            xs = layer.feed_forward.forward(&xs)?;
        }
        Ok(xs)
    }
}
