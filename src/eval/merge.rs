//! `concord eval merge`: how often the suggested resolution is what a person committed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::{char_similarity, read_jsonl};
use crate::runtime::Engine;
use crate::tasks::merge::{self, normalize_ws, MergeOptions, Scorer};

/// A row of `../shared/data/merge/*.jsonl` (hunks, whole files or clean merges).
#[derive(Debug, Clone, Deserialize)]
pub struct MergeRow {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub merge_commit: String,
    pub base: String,
    pub ours: String,
    pub theirs: String,
    pub resolved: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub exact_match_top1: f64,
    pub exact_match_top3: f64,
    pub mean_similarity: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub n: usize,
    pub exact_match_top1: f64,
    pub exact_match_top3: f64,
    pub mean_similarity: f64,
    /// Share of rows Concord merged without any conflict.
    pub clean_rate: f64,
    /// Share of rows merged cleanly *and* equal to the committed result.
    pub clean_and_exact: f64,
    /// Fixed baselines: `ours`, `theirs` and `union` (ours followed by theirs).
    pub baselines: BTreeMap<String, Figures>,
    pub rows_per_s: f64,
}

pub async fn evaluate(engine: &Engine, scorer: &Scorer, data: &Path, progress: &ProgressBar) -> Result<MergeReport> {
    let rows: Vec<MergeRow> = read_jsonl(data)?;
    anyhow::ensure!(!rows.is_empty(), "{} has no rows", data.display());
    progress.set_length(rows.len() as u64);
    let started = Instant::now();
    let (mut top1, mut top3, mut sim, mut clean, mut clean_exact) = (0usize, 0usize, 0f64, 0usize, 0usize);
    let mut base_fig = [(0usize, 0f64); 3];
    for row in &rows {
        let outcome = merge::merge(engine, scorer, &row.base, &row.ours, &row.theirs, MergeOptions::default()).await?;
        let target = normalize_ws(&row.resolved);
        let exact = normalize_ws(&outcome.merged) == target;
        top1 += exact as usize;
        top3 += outcome.alternatives.iter().take(3).any(|a| normalize_ws(&a.text) == target) as usize;
        sim += char_similarity(&outcome.merged, &row.resolved) as f64;
        if outcome.clean {
            clean += 1;
            clean_exact += exact as usize;
        }
        let union = format!("{}{}", row.ours, row.theirs);
        for (slot, text) in [&row.ours, &row.theirs, &union].into_iter().enumerate() {
            base_fig[slot].0 += (normalize_ws(text) == target) as usize;
            base_fig[slot].1 += char_similarity(text, &row.resolved) as f64;
        }
        progress.inc(1);
    }
    let n = rows.len() as f64;
    let baselines = ["ours", "theirs", "union"]
        .iter()
        .zip(base_fig)
        .map(|(name, (exact, sim))| {
            let figures = Figures {
                exact_match_top1: exact as f64 / n,
                exact_match_top3: exact as f64 / n,
                mean_similarity: sim / n,
            };
            (name.to_string(), figures)
        })
        .collect();
    Ok(MergeReport {
        n: rows.len(),
        exact_match_top1: top1 as f64 / n,
        exact_match_top3: top3 as f64 / n,
        mean_similarity: sim / n,
        clean_rate: clean as f64 / n,
        clean_and_exact: clean_exact as f64 / n,
        baselines,
        rows_per_s: n / started.elapsed().as_secs_f64(),
    })
}

/// The report as a plain-text table, Concord first, then the fixed baselines.
pub fn table(report: &MergeReport) -> String {
    let mut out = format!(
        "n = {}   clean merges: {:.3}   clean and exact: {:.3}   {:.1} rows/s\n\n{:<10} {:>8} {:>8} {:>10}\n",
        report.n, report.clean_rate, report.clean_and_exact, report.rows_per_s, "", "top1", "top3", "similarity"
    );
    out.push_str(&format!(
        "{:<10} {:>8.3} {:>8.3} {:>10.3}\n",
        "concord", report.exact_match_top1, report.exact_match_top3, report.mean_similarity
    ));
    for (name, f) in &report.baselines {
        out.push_str(&format!(
            "{:<10} {:>8.3} {:>8.3} {:>10.3}\n",
            name, f.exact_match_top1, f.exact_match_top3, f.mean_similarity
        ));
    }
    out
}
