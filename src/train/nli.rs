//! Trains Concord's own NLI cross-encoder: premise and hypothesis encoded together by the
//! shared encoder with its top layers fine-tuned, a 3-way head over the mean-pooled states.
//!
//! 3-way rows (SICK, Climate-FEVER) train on their label; 2-way rows (RTE's `not_entailment`)
//! train on the probability of the set {neutral, contradiction}, so one head learns from both.
//! Rows of the data sets named to be balanced weigh more the rarer their label is in their file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{Linear, Module};
use indicatif::ProgressBar;
use serde::Serialize;

use super::finetune::{
    linear_head, read_rows, train_epochs, Batch, Cached, DataFile, FinetuneOptions, Params, Rng, Session, TopLayers,
    TrainReport,
};
use crate::eval::nli::{score, NliRow, NliScores};
use crate::tasks::nli::{titled_premise, NliConfig, CONFIG_FILE, LABELS};

/// Dev metrics of one epoch, per dev file.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev: BTreeMap<String, NliScores>,
}

impl EpochReport {
    /// What selects the best epoch: see [`selection_score`].
    fn score(&self) -> f64 {
        selection_score(self.dev.values())
    }
}

/// What model choices on NLI data maximise: the mean over data files of the mean of accuracy
/// and macro-F1.
pub fn selection_score<'a>(files: impl Iterator<Item = &'a NliScores>) -> f64 {
    let values: Vec<f64> = files.map(|s| (s.accuracy + s.macro_f1) / 2.0).collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Which of the 3 labels a row allows: one for 3-way rows, two for `not_entailment`.
pub fn allowed(label: &str) -> Result<[f32; 3]> {
    Ok(match label {
        "entailment" => [1.0, 0.0, 0.0],
        "neutral" => [0.0, 1.0, 0.0],
        "contradiction" => [0.0, 0.0, 1.0],
        "not_entailment" => [0.0, 1.0, 1.0],
        other => anyhow::bail!("unknown NLI label '{other}'"),
    })
}

/// `-log Σ_{allowed} softmax(logits)`, times each row's weight, averaged over the batch.
fn set_cross_entropy(logits: &Tensor, allowed: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let all = logits.log_sum_exp(D::Minus1)?;
    let hidden = ((allowed - 1.0)? * 1e4)?;
    let gold = (logits + hidden)?.log_sum_exp(D::Minus1)?;
    Ok(((all - gold)? * weights)?.mean_all()?)
}

/// Loss weights that balance labels: `(share of the entry's label in labels × distinct
/// labels)^-power` for each entry. The cross-encoder uses power 0.5 on the data sets named to
/// be balanced; the pair head chooses its power by cross-validation (`train::nli_pair`).
pub fn label_weights(labels: &[&str], power: f32) -> Vec<f32> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for label in labels {
        *counts.entry(label).or_default() += 1;
    }
    let distinct = counts.len() as f32;
    labels.iter().map(|label| (counts[label] as f32 / labels.len() as f32 * distinct).powf(-power)).collect()
}

/// What `concord train nli` reports (and writes as `metrics.json`).
#[derive(Debug, Serialize)]
pub struct NliTrainReport {
    #[serde(flatten)]
    pub report: TrainReport<EpochReport>,
    /// The data sets whose rows were weighted by [`label_weights`].
    pub balanced: Vec<String>,
}

/// A training row with its loss weight.
struct Example {
    row: NliRow,
    weight: f32,
}

struct Model {
    top: TopLayers,
    head: Linear,
}

impl Model {
    fn logits(&self, batch: &Batch, rate: f32, rng: &mut Rng) -> Result<Tensor> {
        let xs = self.top.forward(batch, rate, rng)?;
        Ok(self.head.forward(&batch.mean_pool(&xs)?)?)
    }

    /// Class probabilities for `examples`, in their order.
    fn predict(&self, examples: &[Cached<Example>], device: &Device) -> Result<Vec<[f32; 3]>> {
        let mut out = vec![[0f32; 3]; examples.len()];
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| examples[i].tokens.ids.len());
        let mut rng = Rng::new(0);
        for chunk in order.chunks(64) {
            let cached: Vec<&[f32]> = chunk.iter().map(|&i| examples[i].states.as_slice()).collect();
            let batch = Batch::assemble(&cached, self.top.hidden, device)?;
            let probs = candle_nn::ops::softmax(&self.logits(&batch, 0.0, &mut rng)?, D::Minus1)?.to_vec2::<f32>()?;
            for (&i, p) in chunk.iter().zip(probs) {
                out[i] = [p[0], p[1], p[2]];
            }
        }
        Ok(out)
    }
}

/// Trains on `train_files`, picks the best epoch on `dev_files`, writes the model folder `out`.
/// Rows of the training files whose data set name ([`DataFile::name`]) is in `balanced` get
/// [`label_weights`] of power 0.5.
pub fn train(
    train_files: &[DataFile],
    dev_files: &[DataFile],
    balanced: &[String],
    out: &Path,
    options: &FinetuneOptions,
    bar: &ProgressBar,
) -> Result<NliTrainReport> {
    // Checked before the encoder loads, so a typo fails at once.
    if let Some(unknown) = balanced.iter().find(|name| !train_files.iter().any(|f| &f.name() == *name)) {
        let names: Vec<String> = train_files.iter().map(DataFile::name).collect();
        anyhow::bail!("--balance {unknown} names no training file's data set (they are: {})", names.join(", "));
    }
    let session = Session::start(options)?;
    let device = session.device.clone();
    let mut rng = Rng::new(options.seed);
    let encode = |(row, weight): (NliRow, f32)| -> Result<Cached<Example>> {
        allowed(&row.label)?;
        Ok(Cached::new(
            session.tokenizer.encode_pair(&titled_premise(row.title.as_deref(), &row.premise), &row.hypothesis)?,
            Example { row, weight },
        ))
    };
    let mut train: Vec<Cached<Example>> = Vec::new();
    for file in train_files {
        let rows = read_rows::<NliRow>(std::slice::from_ref(file), &mut rng)?;
        let weights = if balanced.contains(&file.name()) {
            label_weights(&rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), 0.5)
        } else {
            vec![1.0; rows.len()]
        };
        for example in rows.into_iter().zip(weights) {
            train.push(encode(example)?);
        }
    }
    let mut devs: Vec<(String, Vec<Cached<Example>>)> = Vec::new();
    for file in dev_files {
        let rows = read_rows::<NliRow>(std::slice::from_ref(file), &mut rng)?;
        devs.push((file.name(), rows.into_iter().map(|row| encode((row, 1.0))).collect::<Result<_>>()?));
    }
    ensure!(!train.is_empty(), "no training rows");

    let mut params = Params::default();
    let top = session.top_layers(options, &mut params, &mut rng)?;
    let head = linear_head("heads.nli", LABELS.len(), top.hidden, &mut params, &mut rng, &device)?;
    let model = Model { top, head };

    bar.set_length((train.len() + devs.iter().map(|(_, d)| d.len()).sum::<usize>()) as u64);
    bar.set_message("caching frozen layers");
    session.cache(&model.top, &mut train, bar)?;
    for (_, dev) in devs.iter_mut() {
        session.cache(&model.top, dev, bar)?;
    }

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let loss = |batch: &Batch, examples: &[&Cached<Example>], rng: &mut Rng| -> Result<Tensor> {
        let allowed: Vec<f32> =
            examples.iter().map(|e| allowed(&e.label.row.label)).collect::<Result<Vec<_>>>()?.concat();
        let allowed = Tensor::from_vec(allowed, (examples.len(), LABELS.len()), &device)?;
        let weights = Tensor::from_vec(examples.iter().map(|e| e.label.weight).collect(), examples.len(), &device)?;
        set_cross_entropy(&model.logits(batch, options.dropout, rng)?, &allowed, &weights)
    };
    let evaluate = |epoch: usize, train_loss: f64| {
        let mut dev_scores = BTreeMap::new();
        for (name, dev) in &devs {
            let probs = model.predict(dev, &device)?;
            let rows: Vec<&NliRow> = dev.iter().map(|e| &e.label.row).collect();
            dev_scores.insert(name.clone(), score(&rows, &probs));
        }
        let report = EpochReport { epoch, train_loss, dev: dev_scores };
        bar.suspend(|| {
            let summary: Vec<String> = report
                .dev
                .iter()
                .map(|(name, s)| format!("{name} acc {:.4} macro-F1 {:.4}", s.accuracy, s.macro_f1))
                .collect();
            eprintln!("epoch {epoch}: loss {train_loss:.4}, {}", summary.join(", "));
        });
        let score = report.score();
        Ok((report, score))
    };
    let outcome =
        train_epochs(options, &params, &train, model.top.hidden, &mut rng, bar, loss, evaluate, |_: &EpochReport| {
            save(out, options, &params)
        })?;
    let report = TrainReport::new(
        options,
        (train_files, dev_files),
        (train.len(), devs.iter().map(|(_, d)| d.len()).sum()),
        &params,
        outcome,
    );
    Ok(NliTrainReport { report, balanced: balanced.to_vec() })
}

fn save(out: &Path, options: &FinetuneOptions, params: &Params) -> Result<()> {
    let weights = "weights.safetensors";
    params.save(&out.join(weights))?;
    let config = NliConfig {
        base_model: options.base_model.clone(),
        weights: weights.to_string(),
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
        pair_head: None,
    };
    std::fs::write(out.join(CONFIG_FILE), serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", out.join(CONFIG_FILE).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cross_entropy_sums_the_allowed_probabilities() -> Result<()> {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[2f32, 1.0, 0.0], [2.0, 1.0, 0.0]], &device)?;
        let allowed = Tensor::new(&[[1f32, 0.0, 0.0], [0.0, 1.0, 1.0]], &device)?;
        let weights = Tensor::new(&[1f32, 3.0], &device)?;
        let z: f32 = [2f32, 1.0, 0.0].iter().map(|x| x.exp()).sum();
        let expected = (-(2f32.exp() / z).ln() - 3.0 * ((1f32.exp() + 1.0) / z).ln()) / 2.0;
        let got = set_cross_entropy(&logits, &allowed, &weights)?.to_scalar::<f32>()?;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        Ok(())
    }

    #[test]
    fn rarer_labels_weigh_more() {
        let labels = ["neutral", "neutral", "neutral", "contradiction"];
        // Shares 3/4 and 1/4 over two labels: (1.5)^-0.5 and (0.5)^-0.5.
        let weights = label_weights(&labels, 0.5);
        assert!((weights[0] - 1.5f32.powf(-0.5)).abs() < 1e-6 && (weights[3] - 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(label_weights(&labels, 0.0), [1.0; 4]);
    }
}
