//! Edit-intent metrics: accuracy, macro-F1 over IteraTeR's five intents, per-class precision,
//! recall and F1, and a confusion matrix.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::tasks::intent::{align, IntentModel, LABELS};
use crate::text::offsets::{range_from_bytes, OffsetUnit};

/// The five intents macro-F1 averages over (`other` is reported, not averaged).
pub const MACRO_LABELS: [&str; 5] = ["clarity", "fluency", "coherence", "style", "meaning-changed"];

/// A row of the `intent` schema.
#[derive(Debug, Clone, Deserialize)]
pub struct IntentRow {
    pub before: String,
    pub after: String,
    pub label: String,
}

impl IntentRow {
    /// The label in Concord's spelling (`others` → `other`).
    pub fn canonical_label(&self) -> &str {
        if self.label == "others" {
            "other"
        } else {
            &self.label
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntentScores {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub classes: BTreeMap<String, ClassScores>,
    /// `confusion[gold][predicted]`, rows and columns in `LABELS` order.
    pub confusion: Vec<Vec<usize>>,
}

pub fn score(gold: &[&str], predicted: &[&str]) -> IntentScores {
    let index = |l: &str| LABELS.iter().position(|x| *x == l).unwrap_or(LABELS.len() - 1);
    let mut confusion = vec![vec![0usize; LABELS.len()]; LABELS.len()];
    for (g, p) in gold.iter().zip(predicted) {
        confusion[index(g)][index(p)] += 1;
    }
    let mut classes = BTreeMap::new();
    for (i, label) in LABELS.iter().enumerate() {
        let tp = confusion[i][i] as f64;
        let support: usize = confusion[i].iter().sum();
        let predicted_count: usize = confusion.iter().map(|row| row[i]).sum();
        let precision = if predicted_count == 0 { 0.0 } else { tp / predicted_count as f64 };
        let recall = if support == 0 { 0.0 } else { tp / support as f64 };
        let f1 = if tp == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        classes.insert(label.to_string(), ClassScores { precision, recall, f1, support });
    }
    let correct: usize = (0..LABELS.len()).map(|i| confusion[i][i]).sum();
    IntentScores {
        n: gold.len(),
        accuracy: correct as f64 / gold.len().max(1) as f64,
        macro_f1: MACRO_LABELS.iter().map(|l| classes[*l].f1).sum::<f64>() / MACRO_LABELS.len() as f64,
        classes,
        confusion,
    }
}

/// A document revision of `iterater_human/doc_*.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct DocumentRow {
    pub before: String,
    pub after: String,
    pub edits: Vec<DocumentEditRow>,
}

/// An annotated edit: character offsets into `before` (equal for additions).
#[derive(Debug, Clone, Deserialize)]
pub struct DocumentEditRow {
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocumentReport {
    pub documents: usize,
    pub annotated_edits: usize,
    /// Share of annotated edits that overlap a region Concord reports (an addition counts when
    /// its insertion point lies within or at the edge of a region).
    pub edits_found: f64,
    pub regions: usize,
}

/// How many annotated edits the document alignment finds.
pub fn document_regions(rows: &[DocumentRow]) -> DocumentReport {
    let (mut annotated, mut found, mut regions) = (0usize, 0usize, 0usize);
    for row in rows {
        let aligned = align(&row.before, &row.after);
        regions += aligned.len();
        // Regions in character offsets, the unit of the annotations.
        let ranges: Vec<[usize; 2]> =
            aligned.iter().map(|r| range_from_bytes(&row.before, r.before.clone(), OffsetUnit::Char)).collect();
        for edit in &row.edits {
            annotated += 1;
            if ranges.iter().any(|&[start, end]| start <= edit.end && edit.start <= end) {
                found += 1;
            }
        }
    }
    DocumentReport {
        documents: rows.len(),
        annotated_edits: annotated,
        edits_found: found as f64 / annotated.max(1) as f64,
        regions,
    }
}

pub fn document_table(report: &DocumentReport) -> String {
    format!(
        "documents        {}\nannotated_edits  {}\nedits_found      {:.4}\nregions          {}\n",
        report.documents, report.annotated_edits, report.edits_found, report.regions
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct IntentReport {
    pub model: String,
    #[serde(flatten)]
    pub scores: IntentScores,
    pub edits_per_s: f64,
    pub seconds: f64,
}

pub async fn evaluate(model: &IntentModel, rows: &[IntentRow], bar: &ProgressBar) -> Result<IntentReport> {
    let started = Instant::now();
    bar.set_length(rows.len() as u64);
    let calls = rows.chunks(32).map(|chunk| {
        let edits: Vec<(String, String)> = chunk.iter().map(|r| (r.before.clone(), r.after.clone())).collect();
        async move { model.classify(&edits).await }
    });
    let mut results = futures::stream::iter(calls).buffered(4);
    let mut predicted = Vec::with_capacity(rows.len());
    while let Some(result) = results.next().await {
        let part = result?;
        bar.inc(part.len() as u64);
        predicted.extend(part.into_iter().map(|r| r.intent));
    }
    let seconds = started.elapsed().as_secs_f64();
    let gold: Vec<&str> = rows.iter().map(IntentRow::canonical_label).collect();
    let predicted: Vec<&str> = predicted.iter().map(String::as_str).collect();
    Ok(IntentReport {
        model: model.id().to_string(),
        scores: score(&gold, &predicted),
        edits_per_s: rows.len() as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// Metrics, per-class scores and the confusion matrix as text.
pub fn table(report: &IntentReport) -> String {
    let s = &report.scores;
    let mut lines = vec![
        format!("model            {}", report.model),
        format!("n                {}", s.n),
        format!("accuracy         {:.4}", s.accuracy),
        format!("macro_f1         {:.4}  (clarity, fluency, coherence, style, meaning-changed)", s.macro_f1),
        format!("edits_per_s      {:.1}", report.edits_per_s),
        String::new(),
        format!("{:<16} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support"),
    ];
    for label in LABELS {
        let c = &s.classes[label];
        lines.push(format!("{label:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}", c.precision, c.recall, c.f1, c.support));
    }
    lines.push(String::new());
    let short = |l: &str| l.chars().take(8).collect::<String>();
    lines.push(format!(
        "{:<16} {}",
        "gold \\ predicted",
        LABELS.iter().map(|l| format!("{:>9}", short(l))).collect::<String>()
    ));
    for (label, row) in LABELS.iter().zip(&s.confusion) {
        lines.push(format!("{label:<16} {}", row.iter().map(|c| format!("{c:>9}")).collect::<String>()));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_averages_the_five_intents_only() {
        let gold = ["clarity", "fluency", "other", "style"];
        let predicted = ["clarity", "fluency", "clarity", "style"];
        let s = score(&gold, &predicted);
        assert_eq!(s.accuracy, 0.75);
        // clarity: P 0.5, R 1 → 2/3; fluency 1; style 1; coherence and meaning-changed 0.
        assert!((s.macro_f1 - (2.0 / 3.0 + 2.0) / 5.0).abs() < 1e-12);
        assert_eq!(s.classes["other"].support, 1);
        assert_eq!(s.confusion[5][0], 1);
    }
}
