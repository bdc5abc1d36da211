//! Trains the edit-intent head: a softmax regression over what [`encode_edits`] gives (the frozen
//! sentence encoder's embeddings of the removed and the inserted text, their interactions, and
//! diff features). The L2 penalty and the class weighting are chosen by cross-validation on the
//! training edits, so dev stays an honest estimate.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use super::finetune::{DataSummary, Rng};
use super::logistic;
use crate::eval::intent::{score, IntentRow, IntentScores};
use crate::model::heads::DenseHead;
use crate::runtime::Engine;
use crate::tasks::intent::{encode_edits, IntentConfig, CONFIG_FILE, LABELS, SCALAR_INPUTS};

/// Candidate L2 penalties (on the mean loss) and class-weight powers (weight = count^−power:
/// 0 keeps the data's balance, 0.5 lifts the rare intents).
const L2_GRID: [f32; 4] = [1.5e-5, 5e-5, 1.5e-4, 5e-4];
const POWER_GRID: [f32; 2] = [0.0, 0.5];

/// One labelled edit, encoded.
pub struct Example {
    pub input: Vec<f32>,
    pub class: usize,
}

/// Encodes `rows` with `engine` (the base sentence encoder), 64 edits per call.
pub async fn examples(engine: &Engine, rows: &[IntentRow], bar: &ProgressBar) -> Result<Vec<Example>> {
    bar.set_length(rows.len() as u64);
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(64) {
        let edits: Vec<(String, String)> = chunk.iter().map(|r| (r.before.clone(), r.after.clone())).collect();
        for (row, edit) in chunk.iter().zip(encode_edits(engine, &edits).await?) {
            let class = LABELS
                .iter()
                .position(|l| *l == row.canonical_label())
                .with_context(|| format!("unknown intent label '{}'", row.label))?;
            out.push(Example { input: edit.input, class });
        }
        bar.inc(chunk.len() as u64);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Candidate {
    pub l2: f32,
    pub class_weight_power: f32,
    pub cv_accuracy: f64,
    pub cv_macro_f1: f64,
}

#[derive(Debug, Serialize)]
pub struct IntentTrainReport {
    pub base_model: String,
    #[serde(flatten)]
    pub data: DataSummary,
    pub folds: usize,
    pub seed: u64,
    /// Every setting tried, with its cross-validated scores on the training edits.
    pub candidates: Vec<Candidate>,
    /// The one with the best mean of accuracy and macro-F1, refitted on all training edits.
    pub chosen: Candidate,
    pub dev: IntentScores,
}

/// Softmax regression with penalty `l2`, each example weighted by its class count^−`power`
/// (weights averaging 1); inputs from `scaled_from` on (the hand-made features) standardised.
pub fn fit(examples: &[&Example], scaled_from: usize, l2: f32, power: f32) -> Result<DenseHead> {
    ensure!(!examples.is_empty(), "no examples to fit");
    let (n, labels) = (examples.len(), LABELS.len());
    let mut counts = vec![0usize; labels];
    examples.iter().for_each(|e| counts[e.class] += 1);
    let raw: Vec<f32> = counts.iter().map(|&c| (c.max(1) as f32).powf(-power)).collect();
    let mean_weight = examples.iter().map(|e| raw[e.class]).sum::<f32>() / n as f32;
    let mut targets = vec![0f32; n * labels];
    for (i, e) in examples.iter().enumerate() {
        targets[i * labels + e.class] = raw[e.class] / mean_weight / n as f32;
    }
    let rows: Vec<&[f32]> = examples.iter().map(|e| e.input.as_slice()).collect();
    logistic::fit_softmax(&rows, scaled_from, logistic::Targets::Weighted(targets), labels, l2)
}

fn predict(head: &DenseHead, input: &[f32]) -> usize {
    head.apply(input).iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

fn evaluate(head: &DenseHead, examples: &[&Example]) -> IntentScores {
    let gold: Vec<&str> = examples.iter().map(|e| LABELS[e.class]).collect();
    let predicted: Vec<&str> = examples.iter().map(|e| LABELS[predict(head, &e.input)]).collect();
    score(&gold, &predicted)
}

/// Chooses the L2 penalty and class weighting by `folds`-fold cross-validation on `train`
/// (seeded split), refits on all of it and scores `dev`.
pub fn train(
    train: &[Example],
    dev: &[Example],
    folds: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<(DenseHead, Vec<Candidate>, Candidate, IntentScores)> {
    ensure!(folds >= 2 && train.len() >= folds, "need at least {folds} training edits for {folds} folds");
    let scaled_from = train[0].input.len().saturating_sub(SCALAR_INPUTS);
    let mut order: Vec<usize> = (0..train.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut fold_of = vec![0usize; train.len()];
    for (rank, &i) in order.iter().enumerate() {
        fold_of[i] = rank % folds;
    }
    bar.set_length((L2_GRID.len() * POWER_GRID.len() * folds) as u64);
    bar.set_position(0);
    bar.set_message("cross-validation");
    let mut candidates = Vec::new();
    for &l2 in &L2_GRID {
        for &power in &POWER_GRID {
            let (mut accuracy, mut macro_f1) = (0.0, 0.0);
            for fold in 0..folds {
                let part = |inside: bool| -> Vec<&Example> {
                    train.iter().zip(&fold_of).filter(|(_, &f)| (f == fold) == inside).map(|(e, _)| e).collect()
                };
                let (held, kept) = (part(true), part(false));
                let scores = evaluate(&fit(&kept, scaled_from, l2, power)?, &held);
                accuracy += scores.accuracy / folds as f64;
                macro_f1 += scores.macro_f1 / folds as f64;
                bar.inc(1);
            }
            candidates.push(Candidate { l2, class_weight_power: power, cv_accuracy: accuracy, cv_macro_f1: macro_f1 });
        }
    }
    let objective = |c: &Candidate| c.cv_accuracy + c.cv_macro_f1;
    let chosen = *candidates.iter().max_by(|a, b| objective(a).total_cmp(&objective(b))).context("no candidates")?;
    let all: Vec<&Example> = train.iter().collect();
    let head = fit(&all, scaled_from, chosen.l2, chosen.class_weight_power)?;
    let dev_scores = evaluate(&head, &dev.iter().collect::<Vec<_>>());
    Ok((head, candidates, chosen, dev_scores))
}

/// Writes the model folder: `intent.json` and the head in `weights.safetensors`.
pub fn save(out: &Path, base_model: &str, head: &DenseHead) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let weights = "weights.safetensors";
    candle_core::safetensors::save(&head.to_tensors("heads.intent")?, out.join(weights))
        .with_context(|| format!("writing {}", out.join(weights).display()))?;
    let config = IntentConfig {
        base_model: base_model.to_string(),
        weights: weights.to_string(),
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
    };
    std::fs::write(out.join(CONFIG_FILE), serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", out.join(CONFIG_FILE).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes told apart by one of two inputs, each far from zero and on its own scale,
    /// so predictions in the raw space are right only if the standardisation is folded in well.
    #[test]
    fn fitted_head_separates_classes_in_the_raw_input_space() -> Result<()> {
        let mut rng = Rng::new(7);
        let examples: Vec<Example> = (0..300)
            .map(|i| {
                let class = i % 3;
                let signal = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)][class];
                Example {
                    input: vec![
                        1000.0 + 50.0 * signal.0 + 10.0 * (rng.next_f32() - 0.5),
                        -3.0 + 0.2 * signal.1 + 0.04 * (rng.next_f32() - 0.5),
                    ],
                    class,
                }
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let head = fit(&refs, 0, 1e-4, 0.0)?;
        let correct = examples.iter().filter(|e| predict(&head, &e.input) == e.class).count();
        assert!(correct >= 290, "{correct} of 300 right");
        Ok(())
    }
}
