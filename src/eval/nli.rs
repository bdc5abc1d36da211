//! NLI metrics: accuracy, macro-F1 and per-label F1, 3-way or 2-way.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::tasks::factcheck::{decide, Evidence, Verdict};
use crate::tasks::nli::{NliModel, NliPair, Purpose, LABELS};

/// A row of the `nli` schema, or of `factcheck` (claim = hypothesis, evidence = premise, and the
/// evidence's Wikipedia article as its title, as `/v1/factcheck` titles a passage by its source).
#[derive(Debug, Clone, Deserialize)]
pub struct NliRow {
    #[serde(alias = "evidence")]
    pub premise: String,
    #[serde(alias = "claim")]
    pub hypothesis: String,
    #[serde(default, alias = "article")]
    pub title: Option<String>,
    pub label: String,
    /// Fact-check rows: the claim this pair belongs to and the claim's own label.
    #[serde(default)]
    pub claim_id: Option<String>,
    #[serde(default)]
    pub claim_label: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NliScores {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// F1 of every label of the file's scheme.
    pub f1: BTreeMap<String, f64>,
}

impl NliRow {
    /// The row as the NLI model classifies it.
    pub fn pair(&self) -> NliPair {
        NliPair { premise: self.premise.clone(), hypothesis: self.hypothesis.clone(), title: self.title.clone() }
    }
}

/// Scores class probabilities (`LABELS` order) against `rows`. A file whose labels include
/// `not_entailment` is scored 2-way, with neutral and contradiction merged.
pub fn score(rows: &[&NliRow], probs: &[[f32; 3]]) -> NliScores {
    let two_way = rows.iter().any(|r| r.label == "not_entailment");
    let labels: Vec<&str> = if two_way { vec!["entailment", "not_entailment"] } else { LABELS.to_vec() };
    let predicted: Vec<&str> = probs
        .iter()
        .map(|p| {
            if two_way {
                if p[0] >= p[1] + p[2] {
                    "entailment"
                } else {
                    "not_entailment"
                }
            } else {
                let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                LABELS[best]
            }
        })
        .collect();
    let n = rows.len();
    let correct = rows.iter().zip(&predicted).filter(|(r, p)| r.label == **p).count();
    let mut f1 = BTreeMap::new();
    for label in &labels {
        let tp = rows.iter().zip(&predicted).filter(|(r, p)| r.label == *label && **p == *label).count() as f64;
        let predicted_count = predicted.iter().filter(|p| **p == *label).count() as f64;
        let gold_count = rows.iter().filter(|r| r.label == *label).count() as f64;
        let value = if tp == 0.0 { 0.0 } else { 2.0 * tp / (predicted_count + gold_count) };
        f1.insert(label.to_string(), value);
    }
    NliScores {
        n,
        accuracy: correct as f64 / n.max(1) as f64,
        macro_f1: f1.values().sum::<f64>() / f1.len().max(1) as f64,
        f1,
    }
}

/// What `concord eval nli` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NliReport {
    pub model: String,
    #[serde(flatten)]
    pub scores: NliScores,
    /// Claim-level accuracy of the fact-check verdict over each claim's evidence pairs, for
    /// files with `claim_label` (claims labelled DISPUTED are left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<usize>,
    pub pairs_per_s: f64,
    pub seconds: f64,
}

/// Runs `model` over `rows` and scores it.
pub async fn evaluate(model: &NliModel, rows: &[NliRow], purpose: Purpose, bar: &ProgressBar) -> Result<NliReport> {
    let started = Instant::now();
    bar.set_length(rows.len() as u64);
    let calls = rows.chunks(32).map(|chunk| {
        let pairs = chunk.iter().map(NliRow::pair).collect();
        async move { model.classify(pairs, purpose).await }
    });
    let mut results = futures::stream::iter(calls).buffered(4);
    let mut probs = Vec::with_capacity(rows.len());
    while let Some(result) = results.next().await {
        let part = result?;
        bar.inc(part.len() as u64);
        probs.extend(part.into_iter().map(|r| r.probabilities()));
    }
    let seconds = started.elapsed().as_secs_f64();
    let refs: Vec<&NliRow> = rows.iter().collect();
    let claims = claim_verdicts(rows, &probs);
    Ok(NliReport {
        model: model.id().to_string(),
        scores: score(&refs, &probs),
        claim_accuracy: (!claims.is_empty())
            .then(|| claims.iter().filter(|(gold, verdict)| gold == verdict).count() as f64 / claims.len() as f64),
        claims: (!claims.is_empty()).then_some(claims.len()),
        pairs_per_s: rows.len() as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// `(gold, predicted)` verdicts per claim: the pairs of one `claim_id` are its evidence, decided
/// as `/v1/factcheck` decides.
fn claim_verdicts(rows: &[NliRow], probs: &[[f32; 3]]) -> Vec<(Verdict, Verdict)> {
    let mut claims: BTreeMap<&str, (Verdict, Vec<Evidence>)> = BTreeMap::new();
    for (row, p) in rows.iter().zip(probs) {
        let (Some(id), Some(label)) = (&row.claim_id, &row.claim_label) else { continue };
        let gold = match label.as_str() {
            "SUPPORTS" => Verdict::Supported,
            "REFUTES" => Verdict::Refuted,
            "NOT_ENOUGH_INFO" => Verdict::NotEnoughInfo,
            _ => continue,
        };
        let scores = LABELS.iter().zip(p).map(|(l, &v)| (l.to_string(), v)).collect();
        let evidence =
            Evidence { source_id: String::new(), range: 0..0, text: String::new(), retrieval_score: 1.0, scores };
        claims.entry(id).or_insert_with(|| (gold, Vec::new())).1.push(evidence);
    }
    claims.into_values().map(|(gold, evidence)| (gold, decide(&evidence).0)).collect()
}

/// The report as aligned `metric value` lines.
pub fn table(report: &NliReport) -> String {
    let mut lines = vec![
        format!("model            {}", report.model),
        format!("n                {}", report.scores.n),
        format!("accuracy         {:.4}", report.scores.accuracy),
        format!("macro_f1         {:.4}", report.scores.macro_f1),
    ];
    for (label, f1) in &report.scores.f1 {
        lines.push(format!("f1 {label:<13} {f1:.4}"));
    }
    if let (Some(accuracy), Some(claims)) = (report.claim_accuracy, report.claims) {
        lines.push(format!("claim_accuracy   {accuracy:.4} ({claims} claims)"));
    }
    lines.push(format!("pairs_per_s      {:.1}", report.pairs_per_s));
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str) -> NliRow {
        NliRow {
            premise: "p".into(),
            hypothesis: "h".into(),
            title: None,
            label: label.into(),
            claim_id: None,
            claim_label: None,
        }
    }

    #[test]
    fn three_way_scores() {
        let rows = [row("entailment"), row("neutral"), row("contradiction"), row("neutral")];
        let refs: Vec<&NliRow> = rows.iter().collect();
        let probs = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]];
        let scores = score(&refs, &probs);
        assert_eq!(scores.accuracy, 0.75);
        assert_eq!(scores.f1["entailment"], 1.0);
        assert_eq!(scores.f1["contradiction"], 0.0);
        assert!((scores.f1["neutral"] - 0.8).abs() < 1e-12);
    }

    #[test]
    fn two_way_files_merge_neutral_and_contradiction() {
        let rows = [row("entailment"), row("not_entailment")];
        let refs: Vec<&NliRow> = rows.iter().collect();
        // Entailment is the single most likely label of the second pair, but not more likely
        // than neutral and contradiction together.
        let scores = score(&refs, &[[0.6, 0.3, 0.1], [0.4, 0.3, 0.3]]);
        assert_eq!(scores.accuracy, 1.0);
        assert_eq!(scores.f1.len(), 2);
    }

    #[test]
    fn fact_check_rows_title_their_evidence_by_its_article() {
        let row: NliRow = serde_json::from_str(
            r#"{"claim": "It melts.", "evidence": "It is melting.", "article": "Arctic sea ice", "label": "entailment", "claim_id": "7"}"#,
        )
        .expect("row");
        let pair = row.pair();
        assert_eq!((pair.premise.as_str(), pair.hypothesis.as_str()), ("It is melting.", "It melts."));
        assert_eq!(pair.titled_premise(), "Arctic sea ice. It is melting.");
        let plain: NliRow = serde_json::from_str(
            r#"{"premise": "A man sings.", "hypothesis": "A person sings.", "label": "entailment"}"#,
        )
        .expect("row");
        assert_eq!(plain.pair().titled_premise(), "A man sings.");
    }
}
