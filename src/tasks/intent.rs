//! Edit intent: why an edit was made (the IteraTeR taxonomy) and how far it moved the meaning.
//!
//! The model is a linear head over the shared sentence encoder, frozen: it reads the embeddings
//! of the text the edit removed and of the text it inserted (not of the whole sentences, whose
//! unchanged words would drown the change), their interactions, and a few diff features (how
//! much changed, and whether only punctuation, case or whitespace did). The whole sentences are
//! not encoded at all: they were four fifths of the tokens and added nothing the head could use.
//! `semantic_change` is the head's probability of `meaning-changed`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use similar::{Algorithm, ChangeTag, DiffOp};

use crate::model::classifier::SequenceClassifier;
use crate::model::heads::{load_head, softmax, DenseHead};
use crate::model::EmbeddingModel;
use crate::runtime::{off_runtime, Engine, EngineConfig, EngineError, Input, Want};
use crate::tasks::embed::{embed, shared_encoder};
use crate::text::diff::{bounded_ops, TokenDiff};
use crate::text::offsets::{range_from_bytes, OffsetIndex, OffsetUnit};
use crate::text::segment;

/// The labels, in the order of the head's outputs (IteraTeR's five intents, then `other`).
pub const LABELS: [&str; 6] = ["clarity", "fluency", "coherence", "style", "meaning-changed", "other"];
/// The index of `meaning-changed` in [`LABELS`]: its probability is `semantic_change`.
const MEANING_CHANGED: usize = 4;

pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/intent");
pub const CONFIG_FILE: &str = "intent.json";

/// `intent.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntentConfig {
    /// The sentence encoder the head reads (folder or hub id).
    pub base_model: String,
    /// Safetensors file with the head `heads.intent` (labels × [`head_inputs`]).
    pub weights: String,
    pub labels: Vec<String>,
}

/// What kind of change a diff is, from the most specific to the most general.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// Nothing changed.
    None,
    /// Only whitespace changed.
    Whitespace,
    /// Only letter case changed.
    Case,
    /// Only punctuation changed.
    Punctuation,
    /// Text was only added.
    Insert,
    /// Text was only removed.
    Delete,
    /// Removed words came back elsewhere, unchanged.
    Move,
    Replace,
}

/// One changed run of words, with byte ranges into both versions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// `insert`, `delete` or `replace`.
    pub op: &'static str,
    pub before_start: usize,
    pub before_end: usize,
    pub after_start: usize,
    pub after_end: usize,
    /// The new text (`insert`, `replace`) or the removed text (`delete`).
    pub text: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Diff {
    pub kind: DiffKind,
    pub chars_added: usize,
    pub chars_removed: usize,
    pub changes: Vec<Change>,
}

/// The word-level diff of an edit (offsets are bytes; the API converts them).
pub fn diff(before: &str, after: &str) -> Diff {
    let text_diff = TokenDiff::unicode_words(Algorithm::Patience, before, after);
    let mut changes: Vec<Change> = Vec::new();
    let (mut b, mut a) = (0usize, 0usize);
    let (mut added, mut removed) = (0usize, 0usize);
    let mut removed_words: Vec<String> = Vec::new();
    let mut added_words: Vec<String> = Vec::new();
    for (tag, value) in text_diff.changes() {
        let len = value.len();
        match tag {
            ChangeTag::Equal => {
                b += len;
                a += len;
                continue;
            }
            ChangeTag::Delete => {
                removed += value.chars().count();
                if !value.trim().is_empty() {
                    removed_words.push(value.to_string());
                }
                extend(&mut changes, b..b + len, a..a);
                b += len;
            }
            ChangeTag::Insert => {
                added += value.chars().count();
                if !value.trim().is_empty() {
                    added_words.push(value.to_string());
                }
                extend(&mut changes, b..b, a..a + len);
                a += len;
            }
        }
    }
    for change in &mut changes {
        change.op = match (change.before_start == change.before_end, change.after_start == change.after_end) {
            (true, _) => "insert",
            (_, true) => "delete",
            _ => "replace",
        };
        change.text = if change.op == "delete" {
            before[change.before_start..change.before_end].to_string()
        } else {
            after[change.after_start..change.after_end].to_string()
        };
    }
    let kind = classify(before, after, &changes, &removed_words, &added_words);
    Diff { kind, chars_added: added, chars_removed: removed, changes }
}

/// Grows the last change when this piece touches it, else starts a new one.
fn extend(changes: &mut Vec<Change>, before: Range<usize>, after: Range<usize>) {
    if let Some(last) = changes.last_mut() {
        if last.before_end == before.start && last.after_end == after.start {
            last.before_end = before.end;
            last.after_end = after.end;
            return;
        }
    }
    changes.push(Change {
        op: "",
        before_start: before.start,
        before_end: before.end,
        after_start: after.start,
        after_end: after.end,
        text: String::new(),
    });
}

fn classify(before: &str, after: &str, changes: &[Change], removed: &[String], added: &[String]) -> DiffKind {
    if before == after {
        return DiffKind::None;
    }
    let strip = |s: &str, keep: fn(char) -> bool| s.chars().filter(|&c| keep(c)).collect::<String>();
    if strip(before, |c| !c.is_whitespace()) == strip(after, |c| !c.is_whitespace()) {
        return DiffKind::Whitespace;
    }
    if before.to_lowercase() == after.to_lowercase() {
        return DiffKind::Case;
    }
    let words = |c: char| c.is_alphanumeric() || c.is_whitespace();
    let normalized = |s: &str| strip(s, words).split_whitespace().collect::<Vec<_>>().join(" ");
    if normalized(before) == normalized(after) {
        return DiffKind::Punctuation;
    }
    let mut removed_sorted = removed.to_vec();
    let mut added_sorted = added.to_vec();
    removed_sorted.sort();
    added_sorted.sort();
    if !removed.is_empty() && removed_sorted == added_sorted && changes.len() >= 2 {
        return DiffKind::Move;
    }
    if changes.iter().all(|c| c.before_start == c.before_end) {
        DiffKind::Insert
    } else if changes.iter().all(|c| c.after_start == c.after_end) {
        DiffKind::Delete
    } else {
        DiffKind::Replace
    }
}

/// Number of diff features the head reads after the two embeddings.
pub const FEATURES: usize = 9;

/// Diff features in 0..1: character and word similarity, share of characters added and removed,
/// punctuation-, case- and whitespace-only flags, number of changed runs, length ratio.
/// `d` is the edit's [`diff`].
pub fn features(before: &str, after: &str, d: &Diff) -> [f32; FEATURES] {
    let longest = before.chars().count().max(after.chars().count()).max(1) as f32;
    let char_ratio = TokenDiff::chars(Algorithm::Myers, before, after).ratio();
    let word_ratio = TokenDiff::unicode_words(Algorithm::Myers, before, after).ratio();
    let flag = |k: DiffKind| if d.kind == k { 1.0 } else { 0.0 };
    let (b, a) = (before.chars().count().max(1) as f32, after.chars().count() as f32);
    [
        char_ratio,
        word_ratio,
        (d.chars_added as f32 / longest).min(1.0),
        (d.chars_removed as f32 / longest).min(1.0),
        flag(DiffKind::Punctuation),
        flag(DiffKind::Case),
        flag(DiffKind::Whitespace),
        (d.changes.len() as f32 / 10.0).min(1.0),
        (a / b / 2.0).min(1.0),
    ]
}

/// Inputs at the end of the head's input that are scalars made by hand (the diff features and
/// the cosine of the two embeddings), standardised in training; the embeddings before them are not.
pub const SCALAR_INPUTS: usize = FEATURES + 1;

/// Inputs of the intent head for an encoder of `dimensions`: the embeddings of the removed text
/// `r` and of the inserted text `i`, `|r − i|` and `r ⊙ i` (a linear head cannot form these
/// itself, and they say whether the new words mean what the old ones did), then the diff
/// features and the cosine of `r` and `i`.
pub fn head_inputs(dimensions: usize) -> usize {
    4 * dimensions + SCALAR_INPUTS
}

/// What an edit removed and what it inserted: its changed runs, each side joined with " … ".
/// Embedding these instead of the whole sentences keeps the unchanged words from drowning the
/// change (and they are short, so cheap to encode).
/// `d` is the edit's [`diff`].
pub fn changed_text(before: &str, after: &str, d: &Diff) -> (String, String) {
    let changes = &d.changes;
    let join = |parts: Vec<&str>| parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" … ");
    (
        join(changes.iter().map(|c| before[c.before_start..c.before_end].trim()).collect()),
        join(changes.iter().map(|c| after[c.after_start..c.after_end].trim()).collect()),
    )
}

/// An edit as the head and the semantic-change map read it.
#[derive(Debug, Clone)]
pub struct EncodedEdit {
    /// [`head_inputs`] values.
    pub input: Vec<f32>,
    /// The word diff the inputs were read from (offsets in bytes).
    pub diff: Diff,
}

/// Encodes `edits` with `engine`, a sentence-embedding model: the removed and the inserted text
/// of every edit in one call. An empty side embeds as zeros.
pub async fn encode_edits(engine: &Engine, edits: &[(String, String)]) -> Result<Vec<EncodedEdit>, EngineError> {
    let owned = edits.to_vec();
    let (diffs, sides, diff_features) = off_runtime(move || {
        let diffs: Vec<Diff> = owned.iter().map(|(b, a)| diff(b, a)).collect();
        let sides: Vec<(String, String)> = owned.iter().zip(&diffs).map(|((b, a), d)| changed_text(b, a, d)).collect();
        let diff_features: Vec<[f32; FEATURES]> =
            owned.iter().zip(&diffs).map(|((b, a), d)| features(b, a, d)).collect();
        (diffs, sides, diff_features)
    })
    .await?;
    let mut texts = Vec::with_capacity(2 * edits.len());
    for (removed, inserted) in &sides {
        texts.extend([removed, inserted].into_iter().filter(|t| !t.trim().is_empty()).cloned());
    }
    let mut vectors = embed(engine, texts, true).await?.vectors.into_iter();
    let dimensions = engine.info().dimensions;
    let mut next = |text: &str| {
        if text.trim().is_empty() {
            vec![0f32; dimensions]
        } else {
            vectors.next().unwrap_or_else(|| vec![0f32; dimensions])
        }
    };
    Ok(sides
        .into_iter()
        .zip(diffs)
        .zip(diff_features)
        .map(|(((removed, inserted), diff), diff_features)| {
            let (removed, inserted) = (next(&removed), next(&inserted));
            let mut input = Vec::with_capacity(head_inputs(dimensions));
            input.extend(&removed);
            input.extend(&inserted);
            let product: Vec<f32> = removed.iter().zip(&inserted).map(|(r, i)| r * i).collect();
            input.extend(removed.iter().zip(&inserted).map(|(r, i)| (r - i).abs()));
            input.extend(&product);
            input.extend(diff_features);
            // Unit vectors (or zeros for an empty side): the cosine is the sum of the product.
            input.push(product.iter().sum());
            EncodedEdit { input, diff }
        })
        .collect())
}

/// One edit's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntentResult {
    pub intent: String,
    pub scores: std::collections::BTreeMap<String, f32>,
    /// How far the meaning moved, 0..1: the model's probability of `meaning-changed` (0 when
    /// nothing changed).
    pub semantic_change: f32,
    pub diff: Diff,
}

/// A loaded intent model.
pub struct IntentModel {
    engine: Engine,
    kind: Kind,
    id: String,
}

enum Kind {
    /// Concord's own: a head over the sentence embeddings of its base model (`engine`).
    Concord { head: DenseHead },
    /// A Hugging Face sequence-classification checkpoint over (before, after) pairs, e.g. an
    /// IteraTeR RoBERTa intent model; `order[i]` is the index in [`LABELS`] of its label `i`.
    Hub { classifier: SequenceClassifier, order: Vec<usize> },
}

impl IntentModel {
    /// Loads `spec`: a Concord intent folder (`intent.json`), whose base model runs on one of
    /// `running` when one of them is that model (the server's embedding engine, usually), else
    /// on an engine of its own; or a Hugging Face pair classifier (folder or hub id) whose
    /// `id2label` names IteraTeR intents (`others` reads as `other`).
    pub fn load(spec: &str, running: &[Engine], device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let dir = Path::new(spec);
        if !dir.join(CONFIG_FILE).is_file() {
            return Self::load_hub(spec, device, dtype, engine);
        }
        let path = dir.join(CONFIG_FILE);
        let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: IntentConfig = serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(config.labels == LABELS, "{} must list the labels {LABELS:?}", path.display());
        let engine = shared_encoder(running, &config.base_model, device, dtype, engine)?;
        let weights = dir.join(&config.weights);
        let head = load_head(&weights, "heads.intent", LABELS.len(), head_inputs(engine.info().dimensions))?;
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { engine, kind: Kind::Concord { head }, id: format!("concord/{name}") })
    }

    fn load_hub(spec: &str, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let model =
            EmbeddingModel::load(spec, device, dtype).with_context(|| format!("loading intent model '{spec}'"))?;
        let classifier = SequenceClassifier::load(&model.info.path)?;
        ensure!(!classifier.multi_label, "'{spec}' is multi-label; an intent model picks one label per edit");
        let order = classifier
            .labels
            .iter()
            .map(|label| {
                let label = if label.eq_ignore_ascii_case("others") { "other" } else { label.as_str() };
                LABELS
                    .iter()
                    .position(|l| l.eq_ignore_ascii_case(label))
                    .with_context(|| format!("'{spec}' has label '{label}'; intent labels are {LABELS:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { engine: Engine::start(model, engine)?, kind: Kind::Hub { classifier, order }, id: spec.to_string() })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Classifies `(before, after)` edits.
    pub async fn classify(&self, edits: &[(String, String)]) -> Result<Vec<IntentResult>, EngineError> {
        let scored: Vec<(Vec<f32>, Diff)> = match &self.kind {
            Kind::Concord { head } => encode_edits(&self.engine, edits)
                .await?
                .into_iter()
                .map(|edit| (softmax(&head.apply(&edit.input)), edit.diff))
                .collect(),
            Kind::Hub { classifier, order } => {
                let inputs = edits.iter().map(|(b, a)| Input::Pair(b.clone(), a.clone())).collect();
                let want = Want { normalize: false, token_states: true };
                let owned = edits.to_vec();
                let diffs: Vec<Diff> = off_runtime(move || owned.iter().map(|(b, a)| diff(b, a)).collect()).await?;
                self.engine
                    .encode(inputs, want, true)
                    .await?
                    .iter()
                    .zip(diffs)
                    .map(|(item, diff)| {
                        let first = item.token_states.as_ref().and_then(|s| s.first()).map_or(&[][..], Vec::as_slice);
                        let mut probs = vec![0f32; LABELS.len()];
                        for (&index, prob) in order.iter().zip(classifier.probabilities(first)) {
                            probs[index] += prob;
                        }
                        (probs, diff)
                    })
                    .collect()
            }
        };
        Ok(edits
            .iter()
            .zip(scored)
            .map(|((before, after), (probs, diff))| {
                let best = (0..probs.len()).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap_or(0);
                IntentResult {
                    intent: LABELS[best].to_string(),
                    scores: LABELS.iter().zip(&probs).map(|(l, &p)| (l.to_string(), p)).collect(),
                    semantic_change: if before == after { 0.0 } else { probs[MEANING_CHANGED] },
                    diff,
                }
            })
            .collect())
    }
}

impl Diff {
    /// The same diff with offsets in `unit` instead of bytes.
    pub fn in_unit(mut self, before: &str, after: &str, unit: OffsetUnit) -> Self {
        for change in &mut self.changes {
            [change.before_start, change.before_end] =
                range_from_bytes(before, change.before_start..change.before_end, unit);
            [change.after_start, change.after_end] =
                range_from_bytes(after, change.after_start..change.after_end, unit);
        }
        self
    }
}

/// One edited region of a document with its intent; offsets in the unit asked for.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentEdit {
    /// `replace`, `insert`, `delete` or `move`.
    pub op: &'static str,
    pub before_start: usize,
    pub before_end: usize,
    pub after_start: usize,
    pub after_end: usize,
    pub before: String,
    pub after: String,
    #[serde(flatten)]
    pub result: IntentResult,
}

impl IntentModel {
    /// Aligns two versions of a document and classifies every edited region.
    pub async fn classify_document(
        &self,
        before: &str,
        after: &str,
        unit: OffsetUnit,
    ) -> Result<Vec<DocumentEdit>, EngineError> {
        let regions = {
            let (before, after) = (before.to_owned(), after.to_owned());
            off_runtime(move || align(&before, &after)).await?
        };
        let pairs: Vec<(String, String)> = regions
            .iter()
            .map(|r| (before[r.before.clone()].to_string(), after[r.after.clone()].to_string()))
            .collect();
        let results = if pairs.is_empty() { Vec::new() } else { self.classify(&pairs).await? };
        let (before_offsets, after_offsets) = (OffsetIndex::new(before, unit), OffsetIndex::new(after, unit));
        Ok(regions
            .into_iter()
            .zip(pairs)
            .zip(results)
            .map(|((region, (before_text, after_text)), mut result)| {
                result.diff = result.diff.in_unit(&before_text, &after_text, unit);
                let [before_start, before_end] = before_offsets.range(region.before);
                let [after_start, after_end] = after_offsets.range(region.after);
                DocumentEdit {
                    op: region.op,
                    before_start,
                    before_end,
                    after_start,
                    after_end,
                    before: before_text,
                    after: after_text,
                    result,
                }
            })
            .collect())
    }
}

/// An edited region of a document: byte ranges in both versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub before: Range<usize>,
    pub after: Range<usize>,
    /// `replace`, `insert`, `delete`, or `move` (a sentence deleted here and inserted elsewhere).
    pub op: &'static str,
}

/// Aligns two versions of a document sentence by sentence (patience diff over sentences, so
/// split and merged sentences form one region) and returns every edited region. A sentence
/// deleted in one place and inserted unchanged in another is reported as two `move` regions.
pub fn align(before: &str, after: &str) -> Vec<Region> {
    let (bs, as_) = (segment::sentence_ranges(before), segment::sentence_ranges(after));
    let b_texts: Vec<&str> = bs.iter().map(|r| &before[r.clone()]).collect();
    let a_texts: Vec<&str> = as_.iter().map(|r| &after[r.clone()]).collect();
    let ops = bounded_ops(Algorithm::Patience, &b_texts, &a_texts);
    // Where an insertion or deletion sits when it has no sentence on one side: the gap after
    // the previous sentence.
    let gap = |ranges: &[Range<usize>], index: usize, text: &str| -> Range<usize> {
        let at = if index == 0 { 0 } else { ranges[index - 1].end.min(text.len()) };
        at..at
    };
    let span = |ranges: &[Range<usize>], indices: &[usize]| match (indices.first(), indices.last()) {
        (Some(&first), Some(&last)) => Some(ranges[first].start..ranges[last].end),
        _ => None,
    };
    let changed: Vec<(Range<usize>, Range<usize>)> = ops
        .iter()
        .filter(|op| op.tag() != similar::DiffTag::Equal)
        .map(|op| (op.old_range(), op.new_range()))
        .collect();
    // A sentence removed in one place and added unchanged in another moved; each removed
    // sentence takes the first unmatched added sentence with its text.
    let mut unmatched_after: HashMap<&str, VecDeque<usize>> = HashMap::new();
    for j in changed.iter().flat_map(|(_, new)| new.clone()) {
        unmatched_after.entry(a_texts[j]).or_default().push_back(j);
    }
    let mut moves: Vec<(usize, usize)> = Vec::new();
    for i in changed.iter().flat_map(|(old, _)| old.clone()) {
        if let Some(j) = unmatched_after.get_mut(b_texts[i]).and_then(VecDeque::pop_front) {
            moves.push((i, j));
        }
    }
    let moved_before: HashSet<usize> = moves.iter().map(|m| m.0).collect();
    let moved_after: HashSet<usize> = moves.iter().map(|m| m.1).collect();
    let mut regions = Vec::new();
    for (old, new) in changed {
        let old: Vec<usize> = old.clone().filter(|i| !moved_before.contains(i)).collect();
        let new: Vec<usize> = new.clone().filter(|j| !moved_after.contains(j)).collect();
        let (before_range, after_range) = match (span(&bs, &old), span(&as_, &new)) {
            (None, None) => continue,
            (Some(b), Some(a)) => (b, a),
            (Some(b), None) => (b, gap(&as_, new_start(&ops, &old), after)),
            (None, Some(a)) => (gap(&bs, old_start(&ops, &new), before), a),
        };
        let op = match (before_range.is_empty(), after_range.is_empty()) {
            (true, _) => "insert",
            (_, true) => "delete",
            _ => "replace",
        };
        regions.push(Region { before: before_range, after: after_range, op });
    }
    for (i, j) in moves {
        regions.push(Region { before: bs[i].clone(), after: as_[j].clone(), op: "move" });
    }
    regions.sort_by_key(|r| (r.before.start, r.after.start));
    regions
}

/// Index of the after-side sentence where a deletion of `old` sentences sits.
fn new_start(ops: &[DiffOp], old: &[usize]) -> usize {
    let first = old.first().copied().unwrap_or(0);
    ops.iter().find(|op| op.old_range().contains(&first)).map_or(0, |op| op.new_range().start)
}

/// Index of the before-side sentence where an insertion of `new` sentences sits.
fn old_start(ops: &[DiffOp], new: &[usize]) -> usize {
    let first = new.first().copied().unwrap_or(0);
    ops.iter().find(|op| op.new_range().contains(&first)).map_or(0, |op| op.old_range().start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_kinds() {
        assert_eq!(diff("Hello world.", "Hello world.").kind, DiffKind::None);
        assert_eq!(diff("Hello  world.", "Hello world.").kind, DiffKind::Whitespace);
        assert_eq!(diff("hello world.", "Hello World.").kind, DiffKind::Case);
        assert_eq!(diff("Hello world.", "Hello, world!").kind, DiffKind::Punctuation);
        assert_eq!(diff("Hello world.", "Hello big world.").kind, DiffKind::Insert);
        assert_eq!(diff("Hello big world.", "Hello world.").kind, DiffKind::Delete);
        assert_eq!(diff("Hello world.", "Goodbye world.").kind, DiffKind::Replace);
        assert_eq!(diff("red green blue", "green blue red").kind, DiffKind::Move);
    }

    #[test]
    fn changes_carry_offsets_into_both_versions() {
        let (before, after) = ("The cat sat on the mat.", "The dog sat on the red mat.");
        let d = diff(before, after);
        assert_eq!(d.changes.len(), 2);
        let first = &d.changes[0];
        assert_eq!(
            (first.op, &before[first.before_start..first.before_end], first.text.as_str()),
            ("replace", "cat", "dog")
        );
        let second = &d.changes[1];
        assert_eq!(second.op, "insert");
        assert_eq!(&after[second.after_start..second.after_end], "red ");
        assert_eq!((d.chars_added, d.chars_removed), (7, 3));
    }

    #[test]
    fn alignment_finds_replaced_inserted_deleted_and_moved_sentences() {
        let before = "Alpha is first. Beta is second. Gamma is third. Delta is last.";
        let after = "Alpha is first. Beta is the second one. Delta is last. New closing words. Gamma is third.";
        let regions = align(before, after);
        let describe: Vec<(&str, &str, &str)> =
            regions.iter().map(|r| (r.op, &before[r.before.clone()], &after[r.after.clone()])).collect();
        assert!(describe.contains(&("replace", "Beta is second.", "Beta is the second one.")), "{describe:?}");
        assert!(describe.contains(&("move", "Gamma is third.", "Gamma is third.")), "{describe:?}");
        assert!(describe.contains(&("insert", "", "New closing words.")), "{describe:?}");
        assert_eq!(regions.len(), 3, "{describe:?}");
        assert!(align(before, before).is_empty());
    }

    #[test]
    fn semantic_change_reads_the_meaning_changed_output() {
        assert_eq!(LABELS[MEANING_CHANGED], "meaning-changed");
    }

    #[test]
    fn features_are_bounded() {
        for (b, a) in [("", "x"), ("A long sentence here.", ""), ("Same.", "Same."), ("a, b", "a b")] {
            assert!(features(b, a, &diff(b, a)).iter().all(|f| (0.0..=1.0).contains(f)), "{b:?} → {a:?}");
        }
    }
}
