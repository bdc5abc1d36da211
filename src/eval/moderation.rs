//! Moderation metrics: SemEval-2021 Task 5 span F1 and binary flag metrics (macro-F1, AUC).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::Instant;

use anyhow::Result;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::tasks::moderate::{Moderator, Thresholds};

/// A row of the `moderation` schema of `../shared/data/README.md`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModerationRow {
    #[serde(default)]
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Character offsets, end-exclusive; `None`: the data set has no span annotation.
    #[serde(default)]
    pub spans: Option<Vec<[usize; 2]>>,
}

impl ModerationRow {
    /// The binary label the row carries (`offensive`, else `toxic`), with its name.
    pub fn flag(&self) -> Option<(&'static str, bool)> {
        ["offensive", "toxic"]
            .into_iter()
            .find_map(|name| self.labels.get(name).and_then(serde_json::Value::as_i64).map(|v| (name, v != 0)))
    }

    /// True when the row's binary label says the text is neither offensive nor toxic, so no
    /// part of it is an offending span.
    pub fn labelled_clean(&self) -> bool {
        self.flag().is_some_and(|(_, flagged)| !flagged)
    }

    /// OLID subtask A (`OFF`/`NOT`): offensive language as OLID defines it.
    pub fn olid_offensive(&self) -> Option<bool> {
        self.labels.get("subtask_a").and_then(|v| v.as_str()).map(|a| a == "OFF")
    }

    /// OLID subtask B: a targeted insult or threat (`TIN`); `NOT` and untargeted (`UNT`) are not.
    pub fn olid_targeted(&self) -> Option<bool> {
        self.olid_offensive().map(|off| off && self.labels.get("subtask_b").and_then(|v| v.as_str()) == Some("TIN"))
    }

    /// Davidson et al.'s hate-speech class.
    pub fn hate_speech(&self) -> Option<bool> {
        self.labels.get("hate_speech").and_then(serde_json::Value::as_i64).map(|v| v != 0)
    }

    /// Gold span characters, when the row is span-annotated.
    pub fn gold_chars(&self) -> Option<HashSet<usize>> {
        self.spans.as_ref().map(|spans| spans.iter().flat_map(|&[start, end]| start..end).collect())
    }
}

/// The character indices covered by byte `ranges` of `text`.
pub fn chars_of_byte_ranges(text: &str, ranges: &[Range<usize>]) -> HashSet<usize> {
    text.char_indices()
        .enumerate()
        .filter(|(_, (byte, _))| ranges.iter().any(|r| r.contains(byte)))
        .map(|(index, _)| index)
        .collect()
}

/// SemEval-2021 Task 5's per-post F1 over character offsets: 1 when both are empty, 0 when
/// only one is.
pub fn span_f1(gold: &HashSet<usize>, predicted: &HashSet<usize>) -> f64 {
    if gold.is_empty() || predicted.is_empty() {
        return if gold.is_empty() && predicted.is_empty() { 1.0 } else { 0.0 };
    }
    let overlap = gold.intersection(predicted).count() as f64;
    let precision = overlap / predicted.len() as f64;
    let recall = overlap / gold.len() as f64;
    if overlap == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// The shape of a post's gold spans. Toxic Spans' test split differs from its trial split in
/// this mix (see `../shared/data/toxic_spans/SOURCE.md`: a fifth of the test posts mark
/// nothing, and the rest average 9 toxic characters, about one word), so span F1 per shape
/// lets a dev score be reweighted to another mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoldShape {
    /// No span marked.
    None,
    /// One range of at most [`SHORT_SPAN_CHARS`] characters.
    Short,
    /// Several ranges, or a longer one.
    Long,
}

/// The longest single range counted as [`GoldShape::Short`]: a word or two.
pub const SHORT_SPAN_CHARS: usize = 12;

impl GoldShape {
    /// The name in reports, as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Short => "short",
            Self::Long => "long",
        }
    }

    pub fn of(spans: &[[usize; 2]]) -> Self {
        match spans {
            [] => Self::None,
            [[start, end]] if end.saturating_sub(*start) <= SHORT_SPAN_CHARS => Self::Short,
            _ => Self::Long,
        }
    }
}

/// Span F1 over the posts of one [`GoldShape`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShapeScore {
    pub posts: usize,
    pub span_f1: f64,
    /// Gold characters per post.
    pub gold_chars: f64,
}

/// Span F1 per gold shape from `(gold spans, post F1)` pairs.
pub fn span_f1_by_shape<'a>(
    posts: impl IntoIterator<Item = (&'a [[usize; 2]], f64)>,
) -> BTreeMap<GoldShape, ShapeScore> {
    let mut sums: BTreeMap<GoldShape, (usize, f64, usize)> = BTreeMap::new();
    for (spans, f1) in posts {
        let entry = sums.entry(GoldShape::of(spans)).or_default();
        entry.0 += 1;
        entry.1 += f1;
        entry.2 += spans.iter().map(|[start, end]| end.saturating_sub(*start)).sum::<usize>();
    }
    sums.into_iter()
        .map(|(shape, (posts, f1, chars))| {
            (shape, ShapeScore { posts, span_f1: f1 / posts as f64, gold_chars: chars as f64 / posts as f64 })
        })
        .collect()
}

/// Accuracy and the F1 of each class of a binary decision.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BinaryScores {
    pub accuracy: f64,
    pub f1_positive: f64,
    pub f1_negative: f64,
}

impl BinaryScores {
    pub fn macro_f1(&self) -> f64 {
        (self.f1_positive + self.f1_negative) / 2.0
    }
}

pub fn binary_scores(predicted: &[bool], gold: &[bool]) -> BinaryScores {
    let count = |p: bool, g: bool| predicted.iter().zip(gold).filter(|&(&a, &b)| a == p && b == g).count() as f64;
    let (tp, tn, fp, fneg) = (count(true, true), count(false, false), count(true, false), count(false, true));
    let f1 = |tp: f64, fp: f64, fneg: f64| {
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fneg)
        }
    };
    BinaryScores {
        accuracy: (tp + tn) / (gold.len().max(1) as f64),
        f1_positive: f1(tp, fp, fneg),
        f1_negative: f1(tn, fneg, fp),
    }
}

/// Area under the ROC curve (the Mann–Whitney statistic, ties counted half); `None` when only
/// one class is present.
pub fn auc(scores: &[f32], gold: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = gold.iter().filter(|&&g| g).count() as f64;
    let negatives = gold.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Average ranks over tied scores.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| gold[k]).count() as f64 * average_rank;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// The threshold in 0.05..0.95 that maximises `objective` (ties: the one nearest 0.5).
pub fn best_threshold(objective: impl Fn(f32) -> f64) -> (f32, f64) {
    let mut best = (0.5f32, f64::MIN);
    for step in 1..=19 {
        let threshold = step as f32 / 20.0;
        let value = objective(threshold);
        let nearer = (threshold - 0.5).abs() < (best.0 - 0.5).abs();
        if value > best.1 + 1e-12 || ((value - best.1).abs() <= 1e-12 && nearer) {
            best = (threshold, value);
        }
    }
    best
}

/// What `concord eval moderation` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModerationReport {
    pub model: String,
    pub n: usize,
    /// Mean per-post span F1 over the span-annotated rows (absent without any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_f1: Option<f64>,
    /// Span F1 per shape of the gold spans (absent without span-annotated rows).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub span_f1_by_shape: BTreeMap<GoldShape, ShapeScore>,
    /// The binary label scored (`offensive` or `toxic`) and the score used for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_score: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_accuracy: Option<f64>,
    /// Mean of both classes' F1 (absent when the file has only one class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_auc: Option<f64>,
    /// Share of the rows labelled clean (binary label 0) that got at least one span: spans an
    /// editor would underline in text nobody finds offensive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_with_spans: Option<f64>,
    pub texts_per_s: f64,
    pub seconds: f64,
}

/// Texts per call to the model, and calls in flight, so the engine can batch.
const CHUNK: usize = 64;
const IN_FLIGHT: usize = 8;

/// Runs `moderator` over `rows` and scores what it says against their labels.
pub async fn evaluate(moderator: &Moderator, rows: &[ModerationRow], bar: &ProgressBar) -> Result<ModerationReport> {
    let started = Instant::now();
    bar.set_length(rows.len() as u64);
    let calibrated = Thresholds::default();
    let calls = rows.chunks(CHUNK).map(|chunk| {
        let texts: Vec<String> = chunk.iter().map(|r| r.text.clone()).collect();
        let calibrated = &calibrated;
        async move { moderator.moderate(&texts, calibrated).await }
    });
    let mut results = futures::stream::iter(calls).buffered(IN_FLIGHT);
    let mut outputs = Vec::with_capacity(rows.len());
    while let Some(result) = results.next().await {
        let part = result?;
        bar.inc(part.len() as u64);
        outputs.extend(part);
    }
    let seconds = started.elapsed().as_secs_f64();

    let span_scores: Vec<(&[[usize; 2]], f64)> = rows
        .iter()
        .zip(&outputs)
        .filter_map(|(row, out)| {
            let spans = row.spans.as_deref()?;
            let gold = row.gold_chars()?;
            let ranges: Vec<Range<usize>> = out.spans.iter().map(|s| s.range.clone()).collect();
            Some((spans, span_f1(&gold, &chars_of_byte_ranges(&row.text, &ranges))))
        })
        .collect();
    let mut report = ModerationReport {
        model: moderator.id().to_string(),
        n: rows.len(),
        span_f1: (!span_scores.is_empty())
            .then(|| span_scores.iter().map(|(_, f1)| f1).sum::<f64>() / span_scores.len() as f64),
        span_f1_by_shape: span_f1_by_shape(span_scores.iter().copied()),
        flag_label: None,
        flag_score: None,
        flag_accuracy: None,
        flag_macro_f1: None,
        flag_auc: None,
        clean_with_spans: None,
        texts_per_s: rows.len() as f64 / seconds.max(1e-9),
        seconds,
    };
    let flagged: Vec<(&str, bool, f32, bool)> = rows
        .iter()
        .zip(&outputs)
        .filter_map(|(row, out)| {
            let (label, gold) = row.flag()?;
            // The category of the same name when the model has one, else any category.
            let (score, predicted) = match (out.category_scores.get(label), out.categories.get(label)) {
                (Some(&score), Some(&flag)) => (score, flag),
                _ => (out.category_scores.values().copied().fold(0.0, f32::max), out.flagged),
            };
            Some((label, gold, score, predicted))
        })
        .collect();
    if let Some(&(label, ..)) = flagged.first() {
        let gold: Vec<bool> = flagged.iter().map(|f| f.1).collect();
        let predicted: Vec<bool> = flagged.iter().map(|f| f.3).collect();
        let scores: Vec<f32> = flagged.iter().map(|f| f.2).collect();
        let binary = binary_scores(&predicted, &gold);
        let both_classes = gold.iter().any(|&g| g) && gold.iter().any(|&g| !g);
        report.flag_label = Some(label.to_string());
        report.flag_score = Some(if moderator.categories().any(|c| c == label) {
            label.to_string()
        } else {
            "flagged (any category)".to_string()
        });
        report.flag_accuracy = Some(binary.accuracy);
        report.flag_macro_f1 = both_classes.then(|| binary.macro_f1());
        report.flag_auc = auc(&scores, &gold);
    }
    report.clean_with_spans = share_of_true(
        rows.iter().zip(&outputs).filter(|(row, _)| row.labelled_clean()).map(|(_, out)| !out.spans.is_empty()),
    );
    Ok(report)
}

/// The share of `flags` that are true; `None` when there are none. For `clean_with_spans`: one
/// flag per text labelled clean, true when it got a span.
pub fn share_of_true(flags: impl IntoIterator<Item = bool>) -> Option<f64> {
    let (count, set) =
        flags.into_iter().fold((0usize, 0usize), |(count, set), flag| (count + 1, set + usize::from(flag)));
    (count > 0).then(|| set as f64 / count as f64)
}

/// The report as aligned `metric value` lines.
pub fn table(report: &ModerationReport) -> String {
    let mut lines = vec![format!("model            {}", report.model), format!("n                {}", report.n)];
    let metric = |name: &str, value: Option<f64>| value.map(|value| format!("{name:<16} {value:.4}"));
    lines.extend(metric("span_f1", report.span_f1));
    lines.extend(report.span_f1_by_shape.iter().map(|(shape, score)| {
        format!(
            "  gold {:<9} {:.4}  ({} posts, {:.1} gold chars each)",
            shape.name(),
            score.span_f1,
            score.posts,
            score.gold_chars
        )
    }));
    lines.extend(metric("flag_accuracy", report.flag_accuracy));
    lines.extend(metric("flag_macro_f1", report.flag_macro_f1));
    lines.extend(metric("flag_auc", report.flag_auc));
    lines.extend(metric("clean_with_spans", report.clean_with_spans));
    lines.extend(metric("texts_per_s", Some(report.texts_per_s)));
    if let (Some(label), Some(score)) = (&report.flag_label, &report.flag_score) {
        lines.push(format!("flag             gold `{label}` vs model `{score}`"));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_of_true_counts_the_set_flags() {
        assert_eq!(share_of_true([]), None);
        assert_eq!(share_of_true([true, false, false, true]), Some(0.5));
        assert_eq!(share_of_true([false]), Some(0.0));
    }

    #[test]
    fn span_f1_by_shape_sorts_posts_by_their_gold_spans() {
        let none: &[[usize; 2]] = &[];
        let word: &[[usize; 2]] = &[[4, 10]];
        let phrase: &[[usize; 2]] = &[[0, 20]];
        let two_words: &[[usize; 2]] = &[[0, 3], [8, 12]];
        let shapes = span_f1_by_shape([(none, 1.0), (none, 0.0), (word, 0.5), (phrase, 0.2), (two_words, 0.6)]);
        assert_eq!(shapes[&GoldShape::None], ShapeScore { posts: 2, span_f1: 0.5, gold_chars: 0.0 });
        assert_eq!(shapes[&GoldShape::Short], ShapeScore { posts: 1, span_f1: 0.5, gold_chars: 6.0 });
        assert_eq!(shapes[&GoldShape::Long].posts, 2);
        assert!((shapes[&GoldShape::Long].span_f1 - 0.4).abs() < 1e-12);
        assert_eq!(shapes[&GoldShape::Long].gold_chars, 13.5);
        assert_eq!(GoldShape::of(&[[0, SHORT_SPAN_CHARS]]), GoldShape::Short);
        assert_eq!(GoldShape::of(&[[0, SHORT_SPAN_CHARS + 1]]), GoldShape::Long);
        for shape in [GoldShape::None, GoldShape::Short, GoldShape::Long] {
            assert_eq!(serde_json::to_value(shape).ok(), Some(serde_json::Value::from(shape.name())));
        }
    }

    #[test]
    fn span_f1_follows_the_shared_task_definition() {
        let set = |r: Range<usize>| r.collect::<HashSet<usize>>();
        assert_eq!(span_f1(&set(0..0), &set(0..0)), 1.0);
        assert_eq!(span_f1(&set(0..4), &set(0..0)), 0.0);
        assert_eq!(span_f1(&set(0..0), &set(2..3)), 0.0);
        // 2 of 4 predicted are right, 2 of 2 gold found: P 0.5, R 1.0.
        assert!((span_f1(&set(2..4), &set(0..4)) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn byte_ranges_map_to_character_indices() {
        let text = "é idiot 😀 x";
        let start = text.find("idiot").unwrap_or(0);
        let chars = chars_of_byte_ranges(text, std::slice::from_ref(&(start..start + 5)));
        assert_eq!(chars, (2..7).collect());
    }

    #[test]
    fn binary_scores_and_auc() {
        let gold = [true, true, false, false];
        let scores = binary_scores(&[true, false, false, false], &gold);
        assert_eq!(scores.accuracy, 0.75);
        assert!((scores.f1_positive - 2.0 / 3.0).abs() < 1e-12);
        assert!((scores.f1_negative - 0.8).abs() < 1e-12);
        assert_eq!(auc(&[0.9, 0.8, 0.1, 0.2], &gold), Some(1.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &gold), Some(0.5));
        assert_eq!(auc(&[0.1, 0.9], &[true, true]), None);
    }

    #[test]
    fn best_threshold_finds_the_separating_cut() {
        let scores = [0.1f32, 0.2, 0.7, 0.8];
        let gold = [false, false, true, true];
        let (threshold, value) = best_threshold(|t| {
            let predicted: Vec<bool> = scores.iter().map(|&s| s >= t).collect();
            binary_scores(&predicted, &gold).macro_f1()
        });
        assert_eq!(value, 1.0);
        assert!(threshold > 0.2 && threshold <= 0.7);
    }
}
