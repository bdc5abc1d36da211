//! Fine-tuning the top layers of a BERT-family encoder, with differentiable candle ops.
//!
//! The inference path (`model::bert`) uses fused CPU kernels that have no backward pass, so the
//! layers being trained are rebuilt here from plain ops: manual layer norm, `softmax`,
//! `gelu_erf`. The layers below them stay frozen and are run once by the inference encoder;
//! their outputs are cached (see [`TopLayers::cache_lower`]), so an epoch costs only the top
//! layers' forward and backward passes. Saved tensors keep the base checkpoint's names, so the
//! inference encoder loads them as overrides of the shared base weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use indicatif::ProgressBar;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::eval::read_jsonl;
use crate::model::{delta, source, EmbeddingModel, Encoder, TextTokenizer, Tokenized};

/// Everything that determines a fine-tuning run besides the data.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneOptions {
    pub base_model: String,
    /// Encoder layers fine-tuned, counted from the top.
    pub layers: usize,
    /// With a rank, the layers' weight matrices stay frozen and each learns a low-rank update
    /// instead (LoRA); biases and norms train in full either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub head_learning_rate: f64,
    pub dropout: f32,
    pub seed: u64,
    /// Tokens per training text (longer ones are cut).
    pub max_tokens: usize,
}

/// What a fine-tuning run reports (and writes as `metrics.json`); `E` is the task's per-epoch
/// dev report.
#[derive(Debug, Serialize)]
pub struct TrainReport<E> {
    pub options: FinetuneOptions,
    #[serde(flatten)]
    pub data: DataSummary,
    pub trainable_parameters: usize,
    pub epochs: Vec<E>,
    pub best_epoch: usize,
}

/// The data a training run read, as every training report lists it (its fields appear at the
/// top level of the report's JSON).
#[derive(Debug, Serialize)]
pub struct DataSummary {
    pub train_files: Vec<DataFile>,
    pub dev_files: Vec<DataFile>,
    pub train_rows: usize,
    pub dev_rows: usize,
}

impl DataSummary {
    pub fn new((train_files, dev_files): (&[DataFile], &[DataFile]), (train_rows, dev_rows): (usize, usize)) -> Self {
        Self { train_files: train_files.to_vec(), dev_files: dev_files.to_vec(), train_rows, dev_rows }
    }
}

/// The frozen base model a run starts from, with a tokenizer cut at the training length.
pub struct Session {
    pub base: EmbeddingModel,
    pub base_dir: PathBuf,
    pub tokenizer: TextTokenizer,
    pub device: Device,
}

impl Session {
    pub fn start(options: &FinetuneOptions) -> Result<Self> {
        let device = Device::Cpu;
        let base = EmbeddingModel::load(&options.base_model, &device, DType::F32)?;
        let base_dir = source::resolve(&options.base_model)?;
        let tokenizer = TextTokenizer::load(&base_dir.join("tokenizer.json"), options.max_tokens)?;
        Ok(Self { base, base_dir, tokenizer, device })
    }

    /// The trainable top of the base encoder that `options` asks for (layers, LoRA rank).
    pub fn top_layers(&self, options: &FinetuneOptions, params: &mut Params, rng: &mut Rng) -> Result<TopLayers> {
        let tuning = (options.layers, options.lora_rank);
        TopLayers::load(&self.base_dir, &self.base.encoder, tuning, params, rng, &self.device)
    }

    /// Caches every example's lower-layer states, longest first, in batches of about 4k tokens.
    pub fn cache<L>(&self, top: &TopLayers, examples: &mut [Cached<L>], bar: &ProgressBar) -> Result<()> {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(examples[i].tokens.ids.len()));
        let mut start = 0;
        while start < order.len() {
            let longest = examples[order[start]].tokens.ids.len().max(1);
            let end = (start + (4096 / longest).max(1)).min(order.len());
            let batch: Vec<&Tokenized> = order[start..end].iter().map(|&i| &examples[i].tokens).collect();
            let states = top.cache_lower(&self.base.encoder, &batch)?;
            for (&i, s) in order[start..end].iter().zip(states) {
                examples[i].states = s;
            }
            bar.inc((end - start) as u64);
            start = end;
        }
        Ok(())
    }
}

/// One training or dev example: its tokens, its label and, once cached, its lower-layer states.
pub struct Cached<L> {
    pub tokens: Tokenized,
    pub label: L,
    pub states: Vec<f32>,
}

impl<L> Cached<L> {
    pub fn new(tokens: Tokenized, label: L) -> Self {
        Self { tokens, label, states: Vec::new() }
    }
}

/// A data file, optionally with how many of its rows to draw (`FILE@ROWS`: a seeded sample).
#[derive(Debug, Clone, Serialize)]
pub struct DataFile {
    pub path: PathBuf,
    pub rows: Option<usize>,
}

impl DataFile {
    /// The data set's name in reports: its folder (`…/rte/dev.jsonl` → `rte`).
    pub fn name(&self) -> String {
        self.path
            .parent()
            .and_then(|p| p.file_name())
            .map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }
}

impl std::str::FromStr for DataFile {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec.rsplit_once('@') {
            Some((path, rows)) if !rows.is_empty() && rows.bytes().all(|b| b.is_ascii_digit()) => {
                let rows = rows.parse().map_err(|e| format!("{spec}: {e}"))?;
                Ok(Self { path: PathBuf::from(path), rows: Some(rows) })
            }
            _ => Ok(Self { path: PathBuf::from(spec), rows: None }),
        }
    }
}

/// Reads every file's rows, sampling those with a row count.
pub fn read_rows<T: DeserializeOwned>(files: &[DataFile], rng: &mut Rng) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for file in files {
        let mut part: Vec<T> = read_jsonl(&file.path)?;
        if let Some(cap) = file.rows.filter(|&cap| cap < part.len()) {
            rng.shuffle(&mut part);
            part.truncate(cap);
        }
        rows.extend(part);
    }
    Ok(rows)
}

fn gaussian(rng: &mut Rng, count: usize, std: f32) -> Vec<f32> {
    (0..count)
        .map(|_| {
            let (u, v) = (rng.next_f32().max(1e-7), rng.next_f32());
            std * (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
        })
        .collect()
}

/// A new trainable `outputs × hidden` head named `name` (initialised N(0, 0.02), bias 0).
pub fn linear_head(
    name: &str,
    outputs: usize,
    hidden: usize,
    params: &mut Params,
    rng: &mut Rng,
    device: &Device,
) -> Result<Linear> {
    let weight = Tensor::from_vec(gaussian(rng, outputs * hidden, 0.02), (outputs, hidden), device)?;
    let bias = Tensor::zeros(outputs, DType::F32, device)?;
    Ok(Linear::new(params.add(format!("{name}.weight"), &weight)?, Some(params.add(format!("{name}.bias"), &bias)?)))
}

/// Batches of similar length (less padding), in a seeded random order.
pub fn length_bucketed_batches<L>(examples: &[Cached<L>], batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut order);
    let mut batches = Vec::new();
    for pool in order.chunks(batch_size * 50) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| examples[i].tokens.ids.len());
        batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

impl<E> TrainReport<E> {
    /// The report of a run over `train_rows` and `dev_rows` that trained `params`.
    pub fn new(
        options: &FinetuneOptions,
        files: (&[DataFile], &[DataFile]),
        rows: (usize, usize),
        params: &Params,
        (epochs, best_epoch): (Vec<E>, usize),
    ) -> Self {
        Self {
            options: options.clone(),
            data: DataSummary::new(files, rows),
            trainable_parameters: params.count(),
            epochs,
            best_epoch,
        }
    }
}

/// Runs `options.epochs` epochs of AdamW over `train` (heads, named `heads.*`, at their own
/// rate; linear warm-up over the first 1/16 of the steps, then linear decay). `loss` computes a
/// batch's loss; `evaluate` gets the epoch number and mean training loss and returns the
/// epoch's dev report with its score; `save` runs whenever an epoch scores best so far.
/// Returns every epoch's report and the best epoch.
#[allow(clippy::too_many_arguments)]
pub fn train_epochs<L, E>(
    options: &FinetuneOptions,
    params: &Params,
    train: &[Cached<L>],
    hidden: usize,
    rng: &mut Rng,
    bar: &ProgressBar,
    mut loss: impl FnMut(&Batch, &[&Cached<L>], &mut Rng) -> Result<Tensor>,
    mut evaluate: impl FnMut(usize, f64) -> Result<(E, f64)>,
    mut save: impl FnMut(&E) -> Result<()>,
) -> Result<(Vec<E>, usize)> {
    let mut reports = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    let device = Device::Cpu;
    let is_head = |name: &str| name.starts_with("heads.");
    let adam = |lr: f64| ParamsAdamW { lr, weight_decay: 0.01, ..Default::default() };
    let mut optimizers = [
        (AdamW::new(params.vars_where(|n| !is_head(n)), adam(options.learning_rate))?, options.learning_rate),
        (AdamW::new(params.vars_where(is_head), adam(options.head_learning_rate))?, options.head_learning_rate),
    ];
    let steps_per_epoch = train.len().div_ceil(options.batch_size.max(1));
    let total_steps = (steps_per_epoch * options.epochs).max(1);
    let warmup = (total_steps / 16).max(1);
    let mut step = 0;
    for epoch in 1..=options.epochs {
        bar.reset();
        bar.set_length(steps_per_epoch as u64);
        bar.set_message(format!("epoch {epoch}/{}", options.epochs));
        let mut loss_sum = 0.0;
        for indices in length_bucketed_batches(train, options.batch_size.max(1), rng) {
            let examples: Vec<&Cached<L>> = indices.iter().map(|&i| &train[i]).collect();
            let cached: Vec<&[f32]> = examples.iter().map(|e| e.states.as_slice()).collect();
            let batch = Batch::assemble(&cached, hidden, &device)?;
            let batch_loss = loss(&batch, &examples, rng)?;
            let factor = if step < warmup {
                (step + 1) as f64 / warmup as f64
            } else {
                (total_steps - step) as f64 / (total_steps - warmup).max(1) as f64
            };
            let grads = batch_loss.backward()?;
            for (optimizer, base_rate) in optimizers.iter_mut() {
                optimizer.set_learning_rate(*base_rate * factor);
                optimizer.step(&grads)?;
            }
            loss_sum += batch_loss.to_scalar::<f32>()? as f64;
            step += 1;
            bar.inc(1);
        }
        let (report, score) = evaluate(epoch, loss_sum / steps_per_epoch.max(1) as f64)?;
        if best.is_none_or(|(_, best_score)| score > best_score) {
            best = Some((epoch, score));
            save(&report)?;
        }
        reports.push(report);
    }
    Ok((reports, best.map_or(0, |(epoch, _)| epoch)))
}

/// Trainable tensors with the names they are saved under.
#[derive(Default)]
pub struct Params {
    named: Vec<Param>,
}

struct Param {
    name: String,
    var: Var,
    /// The base checkpoint's value, for tensors fine-tuned from it: matrices are saved as the
    /// difference from it ([`crate::model::delta`]).
    base: Option<Tensor>,
}

impl Params {
    /// Registers `initial` as a trainable tensor called `name`; returns the tensor to compute with.
    pub fn add(&mut self, name: impl Into<String>, initial: &Tensor) -> Result<Tensor> {
        self.register(name.into(), initial, None)
    }

    /// Registers the base checkpoint's tensor `name` for fine-tuning.
    pub fn add_tuned(&mut self, name: impl Into<String>, base: &Tensor) -> Result<Tensor> {
        self.register(name.into(), base, Some(base.clone()))
    }

    fn register(&mut self, name: String, initial: &Tensor, base: Option<Tensor>) -> Result<Tensor> {
        let var = Var::from_tensor(&initial.to_dtype(DType::F32)?)?;
        let tensor = var.as_tensor().clone();
        self.named.push(Param { name, var, base });
        Ok(tensor)
    }

    /// The variables whose names satisfy `keep` (to give groups their own learning rate).
    pub fn vars_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Var> {
        self.named.iter().filter(|p| keep(&p.name)).map(|p| p.var.clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.named.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Writes every tensor to `path`: fine-tuned matrices as int8 deltas from the base, the rest
    /// (LoRA factors, biases, norms, heads) as f16, which keeps the committed files a few MB.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for Param { name, var, base } in &self.named {
            let value = var.as_tensor();
            match base {
                Some(base) if value.rank() == 2 => {
                    let (codes, scales) = delta::encode(value, base).with_context(|| format!("encoding {name}"))?;
                    tensors.insert(format!("{name}{}", delta::CODES), codes);
                    tensors.insert(format!("{name}{}", delta::SCALES), scales);
                }
                _ => {
                    tensors.insert(name.clone(), value.to_dtype(DType::F16)?);
                }
            }
        }
        candle_core::safetensors::save(&tensors, path).with_context(|| format!("writing {}", path.display()))
    }
}

/// A deterministic source of randomness (SplitMix64): the same seed gives the same run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Inverted dropout drawn from [`Rng`], so training is reproducible on any device.
pub fn dropout(xs: &Tensor, rate: f32, rng: &mut Rng) -> Result<Tensor> {
    if rate <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 / (1.0 - rate);
    let mask: Vec<f32> = (0..xs.elem_count()).map(|_| if rng.next_f32() < rate { 0.0 } else { keep }).collect();
    Ok((xs * Tensor::from_vec(mask, xs.shape(), xs.device())?)?)
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centred = xs.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// A dense layer being fine-tuned: every weight (full fine-tuning), or the frozen base weight
/// plus a trained low-rank update `up · down` (LoRA, Hu et al. 2021), which is all that needs
/// saving. The bias trains in both.
enum Projection {
    Full(Linear),
    LowRank { base: Linear, down: Linear, up: Linear },
}

impl Projection {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Full(linear) => linear.forward(xs),
            Self::LowRank { base, down, up } => base.forward(xs)? + up.forward(&down.forward(xs)?)?,
        }
    }
}

/// One BERT layer built from differentiable ops; same maths as `model::bert`'s layer.
struct TrainableLayer {
    query: Projection,
    key: Projection,
    value: Projection,
    attention_out: Projection,
    attention_norm: Norm,
    intermediate: Projection,
    output: Projection,
    output_norm: Norm,
    num_heads: usize,
}

/// Base checkpoint tensors by name, in f32 on the training device.
pub type Checkpoint = HashMap<String, Tensor>;

impl TrainableLayer {
    fn load(base: &Checkpoint, prefix: &str, shape: LayerShape, params: &mut Params, rng: &mut Rng) -> Result<Self> {
        let get = |name: &str| -> Result<(String, &Tensor)> {
            let full = format!("{prefix}.{name}");
            let tensor = base.get(&full).with_context(|| format!("base checkpoint has no tensor {full}"))?;
            Ok((full, tensor))
        };
        let mut linear = |name: &str, params: &mut Params| -> Result<Projection> {
            let (weight_name, weight) = get(&format!("{name}.weight"))?;
            let (bias_name, bias) = get(&format!("{name}.bias"))?;
            let Some(rank) = shape.lora_rank else {
                let weight = params.add_tuned(weight_name, weight)?;
                return Ok(Projection::Full(Linear::new(weight, Some(params.add_tuned(bias_name, bias)?))));
            };
            let bias = Some(params.add_tuned(bias_name, bias)?);
            let (outputs, inputs) = weight.dims2()?;
            // The update starts at zero (`up` is zero), so training starts from the base model.
            let down = Tensor::from_vec(
                gaussian(rng, rank * inputs, (inputs as f32).powf(-0.5)),
                (rank, inputs),
                weight.device(),
            )?;
            let up = Tensor::zeros((outputs, rank), DType::F32, weight.device())?;
            Ok(Projection::LowRank {
                base: Linear::new(weight.to_dtype(DType::F32)?, bias),
                down: Linear::new(params.add(format!("{weight_name}{}", delta::LORA_DOWN), &down)?, None),
                up: Linear::new(params.add(format!("{weight_name}{}", delta::LORA_UP), &up)?, None),
            })
        };
        let query = linear("attention.self.query", params)?;
        let key = linear("attention.self.key", params)?;
        let value = linear("attention.self.value", params)?;
        let attention_out = linear("attention.output.dense", params)?;
        let intermediate = linear("intermediate.dense", params)?;
        let output = linear("output.dense", params)?;
        let mut norm = |name: &str| -> Result<Norm> {
            let (weight_name, weight) = get(&format!("{name}.weight"))?;
            let (bias_name, bias) = get(&format!("{name}.bias"))?;
            Ok(Norm {
                weight: params.add_tuned(weight_name, weight)?,
                bias: params.add_tuned(bias_name, bias)?,
                eps: shape.eps,
            })
        };
        Ok(Self {
            query,
            key,
            value,
            attention_out,
            attention_norm: norm("attention.output.LayerNorm")?,
            intermediate,
            output,
            output_norm: norm("output.LayerNorm")?,
            num_heads: shape.num_heads,
        })
    }

    /// `xs`: `[batch, len, hidden]`; `mask`: `[batch, 1, 1, len]`, 0 for tokens and a large
    /// negative number for padding.
    fn forward(&self, xs: &Tensor, mask: &Tensor, rate: f32, rng: &mut Rng) -> Result<Tensor> {
        let (n, len, hidden) = xs.dims3()?;
        let head_dim = hidden / self.num_heads;
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((n, len, self.num_heads, head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads((self.query.forward(xs)? / (head_dim as f64).sqrt())?)?;
        let k = heads(self.key.forward(xs)?)?;
        let v = heads(self.value.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = dropout(&candle_nn::ops::softmax(&scores, D::Minus1)?, rate, rng)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, len, hidden))?;
        let attended = dropout(&self.attention_out.forward(&context)?, rate, rng)?;
        let xs = self.attention_norm.forward(&(attended + xs)?)?;
        let inner = self.intermediate.forward(&xs)?.gelu_erf()?;
        let out = dropout(&self.output.forward(&inner)?, rate, rng)?;
        self.output_norm.forward(&(out + xs)?)
    }
}

/// How each trainable layer is built.
#[derive(Clone, Copy)]
struct LayerShape {
    num_heads: usize,
    eps: f64,
    lora_rank: Option<usize>,
}

/// The subset of a BERT `config.json` the trainable layers need.
#[derive(serde::Deserialize)]
struct LayerConfig {
    num_attention_heads: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

/// The trainable top of an encoder: layers `first..` of the base checkpoint.
pub struct TopLayers {
    layers: Vec<TrainableLayer>,
    /// Index of the first trainable layer: how many frozen layers run below.
    pub first: usize,
    pub hidden: usize,
}

impl TopLayers {
    /// Copies the top `count` layers of the checkpoint in `dir` into `params`, every weight
    /// trainable or, with `lora_rank`, low-rank updates of the frozen matrices (initialised from
    /// `rng`).
    pub fn load(
        dir: &Path,
        encoder: &Encoder,
        (count, lora_rank): (usize, Option<usize>),
        params: &mut Params,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let total = encoder.num_layers();
        if total == 0 {
            bail!("fine-tuning needs a BERT-family encoder, not {}", encoder.model_type);
        }
        if count == 0 || count > total {
            bail!("cannot train {count} layers of a {total}-layer encoder");
        }
        let raw = std::fs::read_to_string(dir.join("config.json")).context("reading config.json")?;
        let cfg: LayerConfig = serde_json::from_str(&raw).context("parsing config.json")?;
        if cfg.hidden_act != "gelu" {
            bail!("fine-tuning supports hidden_act \"gelu\", not \"{}\"", cfg.hidden_act);
        }
        if lora_rank == Some(0) {
            bail!("a LoRA rank must be at least 1");
        }
        let shape = LayerShape { num_heads: cfg.num_attention_heads, eps: cfg.layer_norm_eps, lora_rank };
        let base = candle_core::safetensors::load(dir.join("model.safetensors"), device)
            .context("reading the base weights")?;
        let prefix = layer_prefix(&base)?;
        let first = total - count;
        let layers = (first..total)
            .map(|i| TrainableLayer::load(&base, &format!("{prefix}encoder.layer.{i}"), shape, params, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, first, hidden: encoder.hidden_size })
    }

    /// Runs the frozen layers below the trainable ones; returns each sequence's `[len, hidden]`
    /// states flattened, ready for [`Batch::assemble`].
    pub fn cache_lower(&self, encoder: &Encoder, batch: &[&Tokenized]) -> Result<Vec<Vec<f32>>> {
        encoder
            .forward_through(batch, self.first)?
            .into_iter()
            .map(|states| Ok(states.flatten_all()?.to_vec1::<f32>()?))
            .collect()
    }

    pub fn forward(&self, batch: &Batch, rate: f32, rng: &mut Rng) -> Result<Tensor> {
        let mut xs = batch.states.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, &batch.attention_mask, rate, rng)?;
        }
        Ok(xs)
    }
}

/// `""` or `"bert."`: how the base checkpoint names its layers.
fn layer_prefix(base: &Checkpoint) -> Result<String> {
    ["", "bert.", "roberta."]
        .iter()
        .find(|p| base.contains_key(&format!("{p}encoder.layer.0.attention.self.query.weight")))
        .map(|p| p.to_string())
        .context("the base checkpoint has no BERT-style encoder.layer.N tensors")
}

/// Cached lower-layer states of several sequences, padded to the longest.
pub struct Batch {
    /// `[n, len, hidden]`.
    pub states: Tensor,
    /// `[n, 1, 1, len]` additive attention mask.
    pub attention_mask: Tensor,
    /// `[n, len]`: 1 for real tokens, 0 for padding.
    pub token_mask: Tensor,
    pub lengths: Vec<usize>,
}

impl Batch {
    pub fn assemble(cached: &[&[f32]], hidden: usize, device: &Device) -> Result<Self> {
        let n = cached.len();
        let lengths: Vec<usize> = cached.iter().map(|c| c.len() / hidden).collect();
        let longest = lengths.iter().copied().max().unwrap_or(1).max(1);
        let mut states = vec![0f32; n * longest * hidden];
        let mut token_mask = vec![0f32; n * longest];
        for (row, (seq, &len)) in cached.iter().zip(&lengths).enumerate() {
            let at = row * longest * hidden;
            states[at..at + seq.len()].copy_from_slice(seq);
            token_mask[row * longest..row * longest + len].fill(1.0);
        }
        let additive: Vec<f32> = token_mask.iter().map(|&m| if m > 0.0 { 0.0 } else { -1e4 }).collect();
        Ok(Self {
            states: Tensor::from_vec(states, (n, longest, hidden), device)?,
            attention_mask: Tensor::from_vec(additive, (n, 1, 1, longest), device)?,
            token_mask: Tensor::from_vec(token_mask, (n, longest), device)?,
            lengths,
        })
    }

    pub fn longest(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(1).max(1)
    }

    /// Mean over each sequence's real tokens, as `Pooling::Mean` does at inference: `[n, hidden]`.
    pub fn mean_pool(&self, xs: &Tensor) -> Result<Tensor> {
        masked_mean(xs, &self.token_mask)
    }
}

/// Mean of `xs` (`[n, len, hidden]`) over the positions where `mask` (`[n, len]`) is 1.
fn masked_mean(xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let summed = xs.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// Binary cross-entropy on logits, averaged over the entries where `mask` is 1 (stable form).
pub fn masked_bce(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_entry = ((logits.relu()? - (logits * targets)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let total = (per_entry * mask)?.sum_all()?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok((total / count as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_bce_matches_the_formula_and_ignores_masked_entries() -> Result<()> {
        let device = Device::Cpu;
        let logits = Tensor::new(&[0.5f32, -2.0, 3.0], &device)?;
        let targets = Tensor::new(&[1f32, 0.0, 0.0], &device)?;
        let mask = Tensor::new(&[1f32, 1.0, 0.0], &device)?;
        let loss = masked_bce(&logits, &targets, &mask)?.to_scalar::<f32>()?;
        let expected = ((1.0 + (-0.5f32).exp()).ln() + (1.0 + (-2.0f32).exp()).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        Ok(())
    }

    #[test]
    fn rng_is_reproducible_and_shuffle_permutes() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!((0..5).map(|_| a.next_u64()).collect::<Vec<_>>(), (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        let mut items: Vec<u32> = (0..50).collect();
        Rng::new(1).shuffle(&mut items);
        assert_ne!(items, (0..50).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
    }
}
