//! Trains the edit-intent model: (before, after) encoded together by the shared encoder with its
//! top layers fine-tuned, a head over the mean states of each side, their difference and the
//! diff features, and a
//! class-weighted cross-entropy (style and coherence edits are rare). Also fits the map from
//! embedding distance to `semantic_change`.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{Tensor, D};
use candle_nn::{Linear, Module};
use indicatif::ProgressBar;
use serde::Serialize;

use super::finetune::{
    linear_head, masked_mean, read_rows, train_epochs, Batch, Cached, DataFile, FinetuneOptions, Params, Rng, Session,
    TopLayers, TrainReport,
};
use super::logistic;
use crate::eval::intent::{score, IntentRow, IntentScores};
use crate::model::Tokenized;
use crate::tasks::intent::{features, IntentConfig, LogisticMap, CONFIG_FILE, FEATURES, LABELS};

#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev: IntentScores,
}

struct Label {
    class: usize,
    features: [f32; FEATURES],
}

struct Model {
    top: TopLayers,
    head: Linear,
}

impl Model {
    /// The head reads the mean states of the `before` tokens and of the `after` tokens, their
    /// difference, and the diff features.
    fn logits(&self, batch: &Batch, examples: &[&Cached<Label>], rate: f32, rng: &mut Rng) -> Result<Tensor> {
        let device = batch.states.device();
        let xs = self.top.forward(batch, rate, rng)?;
        let longest = batch.longest();
        let segment = |which: u32| -> Result<Tensor> {
            let mut mask = vec![0f32; examples.len() * longest];
            for (row, e) in examples.iter().enumerate() {
                for (t, &type_id) in e.tokens.type_ids.iter().enumerate() {
                    if type_id == which {
                        mask[row * longest + t] = 1.0;
                    }
                }
            }
            Ok(Tensor::from_vec(mask, (examples.len(), longest), device)?)
        };
        let before = masked_mean(&xs, &segment(0)?)?;
        let after = masked_mean(&xs, &segment(1)?)?;
        let features: Vec<f32> = examples.iter().flat_map(|e| e.label.features).collect();
        let features = Tensor::from_vec(features, (examples.len(), FEATURES), device)?;
        let difference = (&before - &after)?;
        Ok(self.head.forward(&Tensor::cat(&[&before, &after, &difference, &features], 1)?)?)
    }
}

fn class_of(row: &IntentRow) -> Result<usize> {
    let label = row.canonical_label();
    LABELS.iter().position(|l| *l == label).with_context(|| format!("unknown intent label '{}'", row.label))
}

/// `1 − cosine` of the base model's sentence embeddings of each row's two versions.
fn embedding_distances(session: &Session, rows: &[IntentRow]) -> Result<Vec<f32>> {
    let tokenizer = &session.base.tokenizer;
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(32) {
        let tokens: Vec<Tokenized> =
            chunk.iter().flat_map(|r| [&r.before, &r.after]).map(|t| tokenizer.encode(t)).collect::<Result<_>>()?;
        let refs: Vec<&Tokenized> = tokens.iter().collect();
        let states = session.base.encoder.forward(&refs)?;
        let pooled: Vec<Vec<f32>> =
            states.iter().map(|s| Ok(session.base.pooling.apply(s)?.to_vec1::<f32>()?)).collect::<Result<_>>()?;
        for pair in pooled.chunks(2) {
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            let dot: f32 = pair[0].iter().zip(&pair[1]).map(|(a, b)| a * b).sum();
            out.push(1.0 - dot / (norm(&pair[0]) * norm(&pair[1])));
        }
    }
    Ok(out)
}

/// Trains on `train_files`, keeps the epoch with the best dev macro-F1, writes the folder `out`.
pub fn train(
    train_files: &[DataFile],
    dev_files: &[DataFile],
    out: &Path,
    options: &FinetuneOptions,
    bar: &ProgressBar,
) -> Result<TrainReport<EpochReport>> {
    let session = Session::start(options)?;
    let device = session.device.clone();
    let mut rng = Rng::new(options.seed);
    let train_rows: Vec<IntentRow> = read_rows(train_files, &mut rng)?;
    let dev_rows: Vec<IntentRow> = read_rows(dev_files, &mut rng)?;
    ensure!(!train_rows.is_empty() && !dev_rows.is_empty(), "no training or no dev rows");
    let encode = |row: &IntentRow| -> Result<Cached<Label>> {
        let label = Label { class: class_of(row)?, features: features(&row.before, &row.after) };
        Ok(Cached::new(session.tokenizer.encode_pair(&row.before, &row.after)?, label))
    };
    let mut train: Vec<Cached<Label>> = train_rows.iter().map(encode).collect::<Result<_>>()?;
    let mut dev: Vec<Cached<Label>> = dev_rows.iter().map(encode).collect::<Result<_>>()?;

    bar.set_message("semantic change calibration");
    let distances = embedding_distances(&session, &train_rows)?;
    let meaning: Vec<f32> =
        train_rows.iter().map(|r| if r.canonical_label() == "meaning-changed" { 1.0 } else { 0.0 }).collect();
    let rows: Vec<Vec<f32>> = distances.iter().map(|&d| vec![d]).collect();
    let (mean, std) = logistic::standardize_stats(&rows);
    let standardized: Vec<Vec<f32>> = rows.iter().map(|r| vec![(r[0] - mean[0]) / std[0]]).collect();
    let (w, b) = logistic::fit(&standardized, &meaning, 0.0, 2000);
    let semantic_change = LogisticMap { weight: w[0] / std[0], bias: b - w[0] * mean[0] / std[0] };

    let mut params = Params::default();
    let top = TopLayers::load(&session.base_dir, &session.base.encoder, options.layers, &mut params, &device)?;
    let head = linear_head("heads.intent", LABELS.len(), 3 * top.hidden + FEATURES, &mut params, &mut rng, &device)?;
    let model = Model { top, head };

    bar.set_length((train.len() + dev.len()) as u64);
    bar.set_message("caching frozen layers");
    session.cache(&model.top, &mut train, bar)?;
    session.cache(&model.top, &mut dev, bar)?;

    // Inverse square-root class frequency, normalised to mean 1 over the examples.
    let mut counts = [0usize; LABELS.len()];
    train.iter().for_each(|e| counts[e.label.class] += 1);
    let raw: Vec<f32> = counts.iter().map(|&c| 1.0 / (c.max(1) as f32).sqrt()).collect();
    let mean_weight = train.iter().map(|e| raw[e.label.class]).sum::<f32>() / train.len() as f32;
    let class_weights: Vec<f32> = raw.iter().map(|w| w / mean_weight).collect();

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let loss = |batch: &Batch, examples: &[&Cached<Label>], rng: &mut Rng| -> Result<Tensor> {
        let logits = model.logits(batch, examples, options.dropout, rng)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let mut mask = vec![0f32; examples.len() * LABELS.len()];
        for (i, e) in examples.iter().enumerate() {
            mask[i * LABELS.len() + e.label.class] = class_weights[e.label.class];
        }
        let mask = Tensor::from_vec(mask, (examples.len(), LABELS.len()), &device)?;
        let total = mask.sum_all()?.to_scalar::<f32>()?.max(1e-6);
        Ok(((log_probs * mask)?.sum_all()?.neg()? / total as f64)?)
    };
    let evaluate = |epoch: usize, train_loss: f64| {
        let mut predicted = vec![0usize; dev.len()];
        let mut order: Vec<usize> = (0..dev.len()).collect();
        order.sort_by_key(|&i| dev[i].tokens.ids.len());
        let mut eval_rng = Rng::new(0);
        for chunk in order.chunks(64) {
            let examples: Vec<&Cached<Label>> = chunk.iter().map(|&i| &dev[i]).collect();
            let cached: Vec<&[f32]> = examples.iter().map(|e| e.states.as_slice()).collect();
            let batch = Batch::assemble(&cached, model.top.hidden, &device)?;
            let logits = model.logits(&batch, &examples, 0.0, &mut eval_rng)?;
            for (&i, best) in chunk.iter().zip(logits.argmax(D::Minus1)?.to_vec1::<u32>()?) {
                predicted[i] = best as usize;
            }
        }
        let gold: Vec<&str> = dev.iter().map(|e| LABELS[e.label.class]).collect();
        let predicted: Vec<&str> = predicted.iter().map(|&p| LABELS[p]).collect();
        let report = EpochReport { epoch, train_loss, dev: score(&gold, &predicted) };
        bar.suspend(|| {
            eprintln!(
                "epoch {epoch}: loss {train_loss:.4}, dev accuracy {:.4}, macro-F1 {:.4}",
                report.dev.accuracy, report.dev.macro_f1
            )
        });
        let score = report.dev.macro_f1;
        Ok((report, score))
    };
    let outcome =
        train_epochs(options, &params, &train, model.top.hidden, &mut rng, bar, loss, evaluate, |_: &EpochReport| {
            save(out, options, &params, semantic_change)
        })?;
    Ok(TrainReport::new(options, (train_files, dev_files), (train.len(), dev.len()), &params, outcome))
}

fn save(out: &Path, options: &FinetuneOptions, params: &Params, semantic_change: LogisticMap) -> Result<()> {
    let weights = "weights.safetensors";
    params.save(&out.join(weights))?;
    let config = IntentConfig {
        base_model: options.base_model.clone(),
        weights: weights.to_string(),
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
        semantic_change,
    };
    std::fs::write(out.join(CONFIG_FILE), serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", out.join(CONFIG_FILE).display()))
}
