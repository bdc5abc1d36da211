//! Trains the NLI pair head (see [`crate::tasks::nli`]): a softmax regression over the frozen
//! sentence encoder's embeddings of premise and hypothesis and word-overlap features. Its L2
//! penalty and class weighting are chosen by cross-validation on the training pairs. The weight that mixes it with
//! the cross-encoder is then chosen on dev, like the cross-encoder's epoch: the cross-encoder
//! has seen every training pair, so its outputs there are too confident to fit a mix on.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use super::finetune::{DataFile, DataSummary, Rng};
use super::logistic::{self, Targets};
use super::nli::{allowed, label_weights, selection_score};
use crate::eval::nli::{score, NliRow, NliScores};
use crate::model::heads::{softmax, DenseHead};
use crate::runtime::Engine;
use crate::tasks::nli::{
    embed_pairs, mix, pair_head_input, NliConfig, NliModel, NliPair, PairHeadConfig, CONFIG_FILE, LABELS,
    LEXICAL_FEATURES,
};

/// Candidate L2 penalties (on the mean loss).
const L2_GRID: [f32; 4] = [3e-5, 1e-4, 3e-4, 1e-3];
/// Candidate class-weight powers: within each data file a pair weighs (its label's share of the
/// file × labels)^−power, so 0 keeps each file's balance and 1 balances its labels fully (the
/// rare refutations of Climate-FEVER count for macro-F1 as much as the common neutral pairs).
const POWER_GRID: [f32; 2] = [0.0, 0.5];
/// Candidate cross-encoder weights: 0, 0.1, …, 1.
const MIX_STEPS: usize = 10;
const WEIGHTS_FILE: &str = "pair.safetensors";

/// The pairs of one data file, encoded for the pair head.
pub struct DataSet {
    pub name: String,
    pub rows: Vec<NliRow>,
    pub inputs: Vec<Vec<f32>>,
}

impl DataSet {
    /// Encodes `rows` of data set `name` for the pair head with `encoder`, 64 pairs per call.
    pub async fn encode(name: String, rows: Vec<NliRow>, encoder: &Engine, bar: &ProgressBar) -> Result<Self> {
        let mut inputs = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(64) {
            let pairs: Vec<NliPair> = chunk.iter().map(NliRow::pair).collect();
            for (pair, (u, v)) in pairs.iter().zip(embed_pairs(encoder, &pairs).await?) {
                inputs.push(pair_head_input(&pair.premise, &pair.hypothesis, &u, &v));
            }
            bar.inc(chunk.len() as u64);
        }
        Ok(Self { name, rows, inputs })
    }

    /// Whether the rows are fact-check pairs (they name their claim), mixed at their own weight.
    fn is_factcheck(&self) -> bool {
        self.rows.iter().any(|r| r.claim_id.is_some())
    }

    fn scores(&self, probs: &[[f32; 3]]) -> NliScores {
        score(&self.rows.iter().collect::<Vec<_>>(), probs)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub l2: f32,
    pub class_weight_power: f32,
    /// [`selection_score`] of the out-of-fold predictions, per training file and overall.
    pub cv: BTreeMap<String, NliScores>,
    pub cv_score: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MixCandidate {
    pub cross_encoder_weight: f32,
    pub dev: BTreeMap<String, NliScores>,
    /// [`selection_score`] over the NLI dev files (over all of them when each is a fact-check
    /// file).
    pub dev_score: f64,
    /// [`selection_score`] over the fact-check dev files, when there are some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factcheck_dev_score: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PairTrainReport {
    pub encoder: String,
    #[serde(flatten)]
    pub data: DataSummary,
    pub folds: usize,
    pub seed: u64,
    pub candidates: Vec<Candidate>,
    pub l2: f32,
    pub class_weight_power: f32,
    pub mix_candidates: Vec<MixCandidate>,
    pub cross_encoder_weight: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factcheck_cross_encoder_weight: Option<f32>,
    /// Dev scores of the pair head alone, the cross-encoder alone and the mix shipped.
    pub dev_pair_head: BTreeMap<String, NliScores>,
    pub dev_cross_encoder: BTreeMap<String, NliScores>,
    pub dev: BTreeMap<String, NliScores>,
}

/// Fits the pair head on `pairs` (data file index, row index) of `sets` with penalty `l2` and
/// class weights of `power` (see [`POWER_GRID`]).
pub fn fit(sets: &[DataSet], pairs: &[(usize, usize)], l2: f32, power: f32) -> Result<DenseHead> {
    ensure!(!pairs.is_empty(), "no training pairs");
    // Labels are balanced within each data file.
    let mut raw = vec![0f32; pairs.len()];
    for (f, set) in sets.iter().enumerate() {
        let members: Vec<usize> = (0..pairs.len()).filter(|&p| pairs[p].0 == f).collect();
        let labels: Vec<&str> = members.iter().map(|&p| set.rows[pairs[p].1].label.as_str()).collect();
        for (&p, weight) in members.iter().zip(label_weights(&labels, power)) {
            raw[p] = weight;
        }
    }
    let mean = raw.iter().sum::<f32>() / raw.len() as f32;
    let weights: Vec<f32> = raw.iter().map(|w| w / mean).collect();
    let mask: Vec<f32> =
        pairs.iter().map(|&(f, i)| allowed(&sets[f].rows[i].label)).collect::<Result<Vec<_>>>()?.concat();
    let inputs: Vec<&[f32]> = pairs.iter().map(|&(f, i)| sets[f].inputs[i].as_slice()).collect();
    let scaled_from = inputs[0].len().saturating_sub(LEXICAL_FEATURES);
    logistic::fit_softmax(&inputs, scaled_from, Targets::Allowed { mask, weights }, LABELS.len(), l2)
}

fn probabilities(head: &DenseHead, inputs: &[Vec<f32>]) -> Vec<[f32; 3]> {
    inputs
        .iter()
        .map(|x| {
            let p = softmax(&head.apply(x));
            [p[0], p[1], p[2]]
        })
        .collect()
}

/// Chooses the L2 penalty and class weighting by `folds`-fold cross-validation over all
/// training pairs (seeded split) and refits on all of them.
pub fn train_head(
    train: &[DataSet],
    folds: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<(DenseHead, Vec<Candidate>, Candidate)> {
    let all: Vec<(usize, usize)> =
        train.iter().enumerate().flat_map(|(f, set)| (0..set.rows.len()).map(move |i| (f, i))).collect();
    ensure!(folds >= 2 && all.len() >= folds, "need at least {folds} training pairs for {folds} folds");
    let mut order: Vec<usize> = (0..all.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut fold_of = vec![0usize; all.len()];
    for (rank, &i) in order.iter().enumerate() {
        fold_of[i] = rank % folds;
    }
    bar.set_length((L2_GRID.len() * POWER_GRID.len() * folds) as u64);
    bar.set_position(0);
    bar.set_message("cross-validation");
    let mut candidates = Vec::new();
    for &l2 in &L2_GRID {
        for &power in &POWER_GRID {
            let mut held_out: Vec<Vec<[f32; 3]>> = train.iter().map(|set| vec![[0.0; 3]; set.rows.len()]).collect();
            for fold in 0..folds {
                let part = |inside: bool| -> Vec<(usize, usize)> {
                    all.iter().zip(&fold_of).filter(|(_, &k)| (k == fold) == inside).map(|(&p, _)| p).collect()
                };
                let head = fit(train, &part(false), l2, power)?;
                for (f, i) in part(true) {
                    let p = softmax(&head.apply(&train[f].inputs[i]));
                    held_out[f][i] = [p[0], p[1], p[2]];
                }
                bar.inc(1);
            }
            let cv: BTreeMap<String, NliScores> =
                train.iter().zip(&held_out).map(|(set, probs)| (set.name.clone(), set.scores(probs))).collect();
            let cv_score = selection_score(cv.values());
            candidates.push(Candidate { l2, class_weight_power: power, cv, cv_score });
        }
    }
    let chosen = candidates.iter().max_by(|a, b| a.cv_score.total_cmp(&b.cv_score)).context("no candidates")?.clone();
    Ok((fit(train, &all, chosen.l2, chosen.class_weight_power)?, candidates, chosen))
}

/// A dev set with the cross-encoder's and the pair head's probabilities of its pairs.
pub struct Judged<'a> {
    pub set: &'a DataSet,
    pub cross_encoder: Vec<[f32; 3]>,
    pub pair_head: Vec<[f32; 3]>,
}

/// Scores every cross-encoder weight of the grid on `dev` and returns the best weight for NLI
/// pairs, the best for fact-check pairs (when a dev file has them) and all candidates.
pub fn choose_mix(dev: &[Judged]) -> (f32, Option<f32>, Vec<MixCandidate>) {
    let is_factcheck: Vec<bool> = dev.iter().map(|judged| judged.set.is_factcheck()).collect();
    let only_factcheck = is_factcheck.iter().all(|&f| f);
    let candidates: Vec<MixCandidate> = (0..=MIX_STEPS)
        .map(|step| {
            let weight = step as f32 / MIX_STEPS as f32;
            let scores: BTreeMap<String, NliScores> = dev
                .iter()
                .map(|judged| {
                    let mixed: Vec<[f32; 3]> =
                        judged.cross_encoder.iter().zip(&judged.pair_head).map(|(&c, &p)| mix(c, p, weight)).collect();
                    (judged.set.name.clone(), judged.set.scores(&mixed))
                })
                .collect();
            let score_of_kind = |factcheck: bool| {
                selection_score(
                    dev.iter().zip(&is_factcheck).filter(|(_, &f)| f == factcheck).map(|(j, _)| &scores[&j.set.name]),
                )
            };
            MixCandidate {
                cross_encoder_weight: weight,
                dev_score: if only_factcheck { selection_score(scores.values()) } else { score_of_kind(false) },
                factcheck_dev_score: is_factcheck.contains(&true).then(|| score_of_kind(true)),
                dev: scores,
            }
        })
        .collect();
    let best = |score: fn(&MixCandidate) -> Option<f64>| {
        candidates
            .iter()
            .filter_map(|c| Some((score(c)?, c.cross_encoder_weight)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, weight)| weight)
    };
    let nli_weight = best(|c| Some(c.dev_score)).unwrap_or(1.0);
    let factcheck_weight = best(|c| c.factcheck_dev_score);
    (nli_weight, factcheck_weight, candidates)
}

/// Trains the pair head for the NLI model folder `out` (which holds the cross-encoder), picks
/// its mix on `dev` and adds both to the folder.
#[allow(clippy::too_many_arguments)]
pub async fn train(
    encoder: &Engine,
    cross_encoder: &NliModel,
    (train_files, train): (&[DataFile], Vec<DataSet>),
    (dev_files, dev): (&[DataFile], Vec<DataSet>),
    folds: usize,
    seed: u64,
    out: &Path,
    bar: &ProgressBar,
) -> Result<PairTrainReport> {
    bar.set_length(dev.iter().map(|s| s.rows.len() as u64).sum());
    bar.set_position(0);
    bar.set_message("cross-encoder on dev");
    let mut cross = Vec::new();
    for set in &dev {
        let mut probs = Vec::with_capacity(set.rows.len());
        for chunk in set.rows.chunks(32) {
            let pairs: Vec<NliPair> = chunk.iter().map(NliRow::pair).collect();
            probs.extend(cross_encoder.cross_encoder_probabilities(&pairs).await?);
            bar.inc(chunk.len() as u64);
        }
        cross.push(probs);
    }
    let (head, candidates, chosen) = train_head(&train, folds, seed, bar)?;
    let judged: Vec<Judged> = dev
        .iter()
        .zip(cross)
        .map(|(set, cross_encoder)| Judged { set, cross_encoder, pair_head: probabilities(&head, &set.inputs) })
        .collect();
    let (weight, factcheck_weight, mix_candidates) = choose_mix(&judged);
    let dev_at = |w: f32| mix_candidates.iter().find(|c| c.cross_encoder_weight == w).map(|c| &c.dev);
    let scores_at = |w: f32| -> BTreeMap<String, NliScores> { dev_at(w).cloned().unwrap_or_default() };
    // What the saved model scores: each dev file at the weight its kind of pairs gets.
    let served: BTreeMap<String, NliScores> = judged
        .iter()
        .filter_map(|j| {
            let w = if j.set.is_factcheck() { factcheck_weight.unwrap_or(weight) } else { weight };
            Some((j.set.name.clone(), dev_at(w)?.get(&j.set.name)?.clone()))
        })
        .collect();
    save(out, &encoder.info().id, &head, weight, factcheck_weight)?;
    Ok(PairTrainReport {
        encoder: encoder.info().id.clone(),
        data: DataSummary::new(
            (train_files, dev_files),
            (train.iter().map(|s| s.rows.len()).sum(), dev.iter().map(|s| s.rows.len()).sum()),
        ),
        folds,
        seed,
        candidates,
        l2: chosen.l2,
        class_weight_power: chosen.class_weight_power,
        dev_pair_head: scores_at(0.0),
        dev_cross_encoder: scores_at(1.0),
        dev: served,
        mix_candidates,
        cross_encoder_weight: weight,
        factcheck_cross_encoder_weight: factcheck_weight,
    })
}

/// Writes the head to `pair.safetensors` in `out` and names it, with its mix, in `nli.json`.
fn save(
    out: &Path,
    encoder: &str,
    head: &DenseHead,
    cross_encoder_weight: f32,
    factcheck_cross_encoder_weight: Option<f32>,
) -> Result<()> {
    let config_path = out.join(CONFIG_FILE);
    let raw = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: NliConfig =
        serde_json::from_str(&raw).with_context(|| format!("parsing {}", config_path.display()))?;
    candle_core::safetensors::save(&head.to_tensors("heads.pair")?, out.join(WEIGHTS_FILE))
        .with_context(|| format!("writing {}", out.join(WEIGHTS_FILE).display()))?;
    config.pair_head = Some(PairHeadConfig {
        weights: WEIGHTS_FILE.to_string(),
        encoder: encoder.to_string(),
        cross_encoder_weight,
        factcheck_cross_encoder_weight,
    });
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", config_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, labels: &[&str], claim_id: Option<&str>) -> DataSet {
        let rows = labels
            .iter()
            .map(|label| NliRow {
                premise: "p".into(),
                hypothesis: "h".into(),
                title: None,
                label: label.to_string(),
                claim_id: claim_id.map(str::to_string),
                claim_label: None,
            })
            .collect();
        DataSet { name: name.into(), rows, inputs: Vec::new() }
    }

    /// Probabilities that put 0.9 on each row's label (`right`) or on the next label (wrong).
    fn probs(set: &DataSet, right: bool) -> Vec<[f32; 3]> {
        set.rows
            .iter()
            .map(|r| {
                let gold = LABELS.iter().position(|l| *l == r.label).unwrap_or(0);
                let mut p = [0.05; 3];
                p[if right { gold } else { (gold + 1) % 3 }] = 0.9;
                p
            })
            .collect()
    }

    #[test]
    fn fact_check_files_get_their_own_mix_weight() {
        let labels = ["entailment", "neutral", "contradiction", "neutral"];
        // The pair head is right on the NLI file and the cross-encoder on the fact-check file.
        let nli = set("sick", &labels, None);
        let factcheck = set("climate_fever", &labels, Some("1"));
        let judged = [
            Judged { set: &nli, cross_encoder: probs(&nli, false), pair_head: probs(&nli, true) },
            Judged { set: &factcheck, cross_encoder: probs(&factcheck, true), pair_head: probs(&factcheck, false) },
        ];
        // Every weight under 0.5 gets the NLI file right and every one over 0.5 the other.
        let (weight, factcheck_weight, candidates) = choose_mix(&judged);
        assert!(weight < 0.5, "{weight}");
        assert!(factcheck_weight.is_some_and(|w| w > 0.5), "{factcheck_weight:?}");
        assert_eq!(candidates.len(), MIX_STEPS + 1);
        // Without fact-check files there is one weight.
        let (weight, factcheck_weight, _) = choose_mix(&judged[..1]);
        assert!(weight < 0.5 && factcheck_weight.is_none(), "{weight} {factcheck_weight:?}");
        // With only fact-check files, both weights are chosen on them.
        let (weight, factcheck_weight, _) = choose_mix(&judged[1..]);
        assert!(weight > 0.5 && factcheck_weight == Some(weight), "{weight} {factcheck_weight:?}");
    }
}
