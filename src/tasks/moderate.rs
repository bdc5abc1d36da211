//! Moderation: per-category scores for a text and the character spans that make it offensive.
//! Hugging Face sequence-classification (scores) and token-classification (spans) checkpoints can
//! replace the default model or be mixed with it per category in a setup file.
//!
//! The model is the shared encoder with its top layers fine-tuned (loaded as overrides of the
//! base weights) plus two heads: a sentence head with one sigmoid per category over the
//! mean-pooled states, and a token head whose positive tokens become spans. Long texts are cut
//! into windows at sentence boundaries; a text's category score is its highest window's.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::InvalidRequest;
use crate::model::classifier::{is_token_classifier, SequenceClassifier, TokenClassifier};
use crate::model::heads::{load_heads, sigmoid, DenseHead};
use crate::model::EmbeddingModel;
use crate::runtime::{Admission, Engine, EngineConfig, EngineError, Input, Want};
use crate::text::offsets::{self, OffsetUnit};
use crate::text::segment;

/// Where the default moderation model lives: the folder committed with the source.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/moderation");

/// The model folder's description file.
pub const CONFIG_FILE: &str = "moderation.json";

/// Longest window, in bytes, scored in one pass; about 130 tokens of English, the length the
/// default model was trained on.
pub const WINDOW_BYTES: usize = 512;

/// `moderation.json`: what a moderation model folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModerationConfig {
    /// The encoder the fine-tuned layers ride on (folder or hub id).
    pub base_model: String,
    /// Safetensors file, relative to the folder: fine-tuned layers (base names) and the heads
    /// `heads.sentence` (one row per category) and `heads.token` (one row).
    pub weights: String,
    pub categories: Vec<String>,
    /// Default decision threshold per category, calibrated on dev data.
    pub thresholds: BTreeMap<String, f32>,
    /// Token probability from which a token belongs to an offending span.
    pub span_threshold: f32,
    /// Share of the strongest word's score in a window that any other word of a span must
    /// reach to be kept (0 keeps them all); see [`SpanDecoding::relative`].
    #[serde(default)]
    pub span_relative_threshold: f32,
}

/// How per-token probabilities become spans, calibrated on dev with the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanDecoding {
    /// Token probability from which a token belongs to a span.
    pub threshold: f32,
    /// A word of a span (scored by its strongest token) is kept only when its score reaches
    /// this share of the strongest word's in its window; 0 keeps every span whole. Where one
    /// word clearly offends, annotators mostly leave the weaker candidates around it unmarked
    /// (Toxic Spans trial: 100 of its 363 one-word posts got the gold word plus others).
    pub relative: f32,
}

impl SpanDecoding {
    /// Every span at or above `threshold`.
    pub fn absolute(threshold: f32) -> Self {
        Self { threshold, relative: 0.0 }
    }
}

/// A request's own decision thresholds, each replacing the model's calibrated one where given.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    /// Per category.
    pub categories: BTreeMap<String, f32>,
    /// [`SpanDecoding::threshold`].
    pub span: Option<f32>,
    /// [`SpanDecoding::relative`].
    pub span_relative: Option<f32>,
}

impl Thresholds {
    /// Refuses thresholds for names not in `categories`, span thresholds where no model marks
    /// spans (`spans` false), and any outside 0..1. With no moderation model, pass no
    /// categories and `spans` false.
    pub fn check<S: AsRef<str>>(&self, categories: &[S], spans: bool) -> Result<(), InvalidRequest> {
        for (name, &value) in &self.categories {
            if !categories.iter().any(|c| c.as_ref() == name) {
                let known: Vec<&str> = categories.iter().map(AsRef::as_ref).collect();
                let known = if known.is_empty() {
                    "no moderation model here scores categories".to_string()
                } else {
                    format!("the model has {}", known.join(", "))
                };
                return Err(InvalidRequest::new("unknown_category", format!("no category '{name}'; {known}")));
            }
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidRequest::new(
                    "invalid_threshold",
                    format!("threshold for '{name}' must be within 0..1"),
                ));
            }
        }
        for (name, value) in [("span_threshold", self.span), ("span_relative_threshold", self.span_relative)] {
            let Some(value) = value else { continue };
            if !spans {
                return Err(InvalidRequest::new(
                    "invalid_threshold",
                    format!("`{name}` needs a moderation model that marks spans, and none here does"),
                ));
            }
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidRequest::new("invalid_threshold", format!("`{name}` must be within 0..1")));
            }
        }
        Ok(())
    }

    fn span_decoding(&self, calibrated: SpanDecoding) -> SpanDecoding {
        SpanDecoding {
            threshold: self.span.unwrap_or(calibrated.threshold),
            relative: self.span_relative.unwrap_or(calibrated.relative),
        }
    }
}

/// A loaded moderation setup, ready to score texts: one model or several (each with its own
/// engine), routed to the categories and to the spans.
pub struct Moderator {
    sources: Vec<Source>,
    categories: Vec<Category>,
    spans: Option<SpanRoute>,
    id: String,
}

/// One loaded model.
struct Source {
    spec: String,
    engine: Engine,
    heads: Heads,
}

/// Where a model's category scores and token probabilities come from.
enum Heads {
    /// Concord's own: one sigmoid per category over the mean-pooled states, and a token head.
    Concord { sentence: DenseHead, token: DenseHead, config: ModerationConfig },
    /// A Hugging Face sequence-classification checkpoint (e.g. a toxic-bert style multi-label
    /// model): its labels are its categories, scored from the first token; no spans.
    Sequence(SequenceClassifier),
    /// A Hugging Face token-classification checkpoint: spans only.
    Token(TokenClassifier),
}

/// A reported category: the model and output it is read from, and its default threshold.
struct Category {
    name: String,
    source: usize,
    output: usize,
    threshold: f32,
}

/// The model whose token probabilities make the spans.
struct SpanRoute {
    source: usize,
    decoding: SpanDecoding,
}

/// A moderation setup file: which model scores each category and which marks the spans, so
/// models can be mixed (e.g. a hub toxicity classifier for `toxic`, Concord's own model for the
/// spans). Relative model paths are relative to the file's folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationSetup {
    pub categories: BTreeMap<String, CategorySetup>,
    #[serde(default)]
    pub spans: Option<SpanSetup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySetup {
    /// Concord moderation folder or Hugging Face sequence classifier (folder or hub id).
    pub model: String,
    /// The model's own name for the category; defaults to the category's name.
    #[serde(default)]
    pub label: Option<String>,
    /// Defaults to the model's calibrated threshold (Concord) or 0.5.
    #[serde(default)]
    pub threshold: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanSetup {
    /// Concord moderation folder or Hugging Face token classifier (folder or hub id).
    pub model: String,
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Defaults to the model's calibrated one (Concord) or 0 (every span kept).
    #[serde(default)]
    pub relative_threshold: Option<f32>,
}

/// A span of the input, as a byte range, with the highest token probability inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSpan {
    pub range: Range<usize>,
    pub score: f32,
}

/// One text's result as the API and the CLI report it, offsets in the caller's unit.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModerationResult {
    pub flagged: bool,
    pub categories: BTreeMap<String, bool>,
    pub category_scores: BTreeMap<String, f32>,
    pub spans: Vec<SpanResult>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SpanResult {
    pub start: usize,
    pub end: usize,
    /// The highest token probability inside the span.
    pub score: f32,
    pub text: String,
}

/// One text's moderation result; span ranges are byte offsets into the text.
#[derive(Debug, Clone)]
pub struct Moderation {
    pub flagged: bool,
    pub categories: BTreeMap<String, bool>,
    pub category_scores: BTreeMap<String, f32>,
    pub spans: Vec<ScoredSpan>,
}

impl Moderation {
    /// The result for `text` with span offsets in `unit`.
    pub fn report(self, text: &str, unit: OffsetUnit) -> ModerationResult {
        ModerationResult {
            flagged: self.flagged,
            categories: self.categories,
            category_scores: self.category_scores,
            spans: self
                .spans
                .into_iter()
                .map(|span| {
                    let [start, end] = offsets::range_from_bytes(text, span.range.clone(), unit);
                    SpanResult { start, end, score: span.score, text: text[span.range].to_string() }
                })
                .collect(),
        }
    }
}

impl ModerationConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
        for category in &config.categories {
            ensure!(
                config.thresholds.contains_key(category),
                "{} has no threshold for category '{category}'",
                path.display()
            );
        }
        Ok(config)
    }

    /// The calibrated span decoding.
    pub fn span_decoding(&self) -> SpanDecoding {
        SpanDecoding { threshold: self.span_threshold, relative: self.span_relative_threshold }
    }
}

impl Heads {
    /// Category names in the order [`Self::scores`] gives them, with their default thresholds.
    fn outputs(&self) -> Vec<(String, f32)> {
        match self {
            Heads::Concord { config, .. } => config
                .categories
                .iter()
                .map(|c| (c.clone(), config.thresholds.get(c).copied().unwrap_or(0.5)))
                .collect(),
            Heads::Sequence(classifier) => classifier.labels.iter().map(|l| (l.clone(), 0.5)).collect(),
            Heads::Token(_) => Vec::new(),
        }
    }

    /// The default span decoding, for models that mark spans.
    fn span_decoding(&self) -> Option<SpanDecoding> {
        match self {
            Heads::Concord { config, .. } => Some(config.span_decoding()),
            Heads::Sequence(_) => None,
            Heads::Token(_) => Some(SpanDecoding::absolute(0.5)),
        }
    }

    /// Category probabilities of one window from its pooled vector and token states.
    fn scores(&self, pooled: &[f32], states: &[Vec<f32>]) -> Vec<f32> {
        match self {
            Heads::Concord { sentence, .. } => sentence.apply(pooled).into_iter().map(sigmoid).collect(),
            Heads::Sequence(classifier) => classifier.probabilities(states.first().map_or(&[][..], Vec::as_slice)),
            Heads::Token(_) => Vec::new(),
        }
    }

    /// Per-token probabilities of belonging to an offending span.
    fn token_probabilities(&self, states: &[Vec<f32>]) -> Vec<f32> {
        match self {
            Heads::Concord { token, .. } => states.iter().map(|s| sigmoid(token.apply(s)[0])).collect(),
            Heads::Token(classifier) => states.iter().map(|s| classifier.probability(s)).collect(),
            Heads::Sequence(_) => Vec::new(),
        }
    }
}

impl Source {
    /// Loads a Concord moderation folder (with `moderation.json`) or a Hugging Face
    /// sequence- or token-classification checkpoint (folder or hub id).
    fn load(spec: &str, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let dir = Path::new(spec);
        if dir.join(CONFIG_FILE).is_file() {
            let config = ModerationConfig::read(dir)?;
            let weights: PathBuf = dir.join(&config.weights);
            let model =
                EmbeddingModel::load_with_overrides(&config.base_model, std::slice::from_ref(&weights), device, dtype)
                    .with_context(|| {
                        format!("loading the moderation encoder ({} + {})", config.base_model, weights.display())
                    })?;
            let hidden = model.info.dimensions;
            let mut heads = load_heads(&weights, &["heads.sentence", "heads.token"])?.into_iter();
            let (Some(sentence), Some(token)) = (heads.next(), heads.next()) else {
                anyhow::bail!("{} lacks its heads", weights.display());
            };
            ensure!(
                sentence.outputs() == config.categories.len() && sentence.inputs() == hidden,
                "heads.sentence is {}×{}, expected {}×{hidden}",
                sentence.outputs(),
                sentence.inputs(),
                config.categories.len()
            );
            ensure!(token.outputs() == 1 && token.inputs() == hidden, "heads.token must be 1×{hidden}");
            let engine = Engine::start(model, engine)?;
            return Ok(Self { spec: spec.to_string(), engine, heads: Heads::Concord { sentence, token, config } });
        }
        let model =
            EmbeddingModel::load(spec, device, dtype).with_context(|| format!("loading moderation model '{spec}'"))?;
        let heads = if is_token_classifier(&model.info.path)? {
            Heads::Token(TokenClassifier::load(&model.info.path)?)
        } else {
            Heads::Sequence(SequenceClassifier::load(&model.info.path)?)
        };
        let engine = Engine::start(model, engine)?;
        Ok(Self { spec: spec.to_string(), engine, heads })
    }

    /// How responses name the model: `concord/<folder>` for Concord's own, else the spec.
    fn id(&self) -> String {
        match &self.heads {
            Heads::Concord { .. } => {
                let dir = Path::new(&self.spec);
                let name = dir.file_name().map_or_else(|| self.spec.clone(), |n| n.to_string_lossy().into_owned());
                format!("concord/{name}")
            }
            _ => self.spec.clone(),
        }
    }
}

impl Moderator {
    /// Loads `spec`: a moderation setup file (see [`ModerationSetup`]), a Concord moderation
    /// folder (with `moderation.json`), or a Hugging Face checkpoint of the supported encoders
    /// (folder or hub id). A sequence classifier's `id2label` names become the categories
    /// (sigmoid per label when its `problem_type` is multi-label, else softmax; threshold 0.5;
    /// no spans); a token classifier gives spans and no categories.
    pub fn load(spec: &str, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            return Self::from_setup(path, device, dtype, engine);
        }
        let source = Source::load(spec, device, dtype, engine)?;
        let categories = source
            .heads
            .outputs()
            .into_iter()
            .enumerate()
            .map(|(output, (name, threshold))| Category { name, source: 0, output, threshold })
            .collect();
        let spans = source.heads.span_decoding().map(|decoding| SpanRoute { source: 0, decoding });
        Ok(Self { id: source.id(), sources: vec![source], categories, spans })
    }

    fn from_setup(path: &Path, device: &Device, dtype: DType, engine: EngineConfig) -> Result<Self> {
        let raw = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let setup: ModerationSetup =
            serde_json::from_str(&raw).with_context(|| format!("parsing moderation setup {}", path.display()))?;
        ensure!(
            !setup.categories.is_empty() || setup.spans.is_some(),
            "{} names no categories and no span model",
            path.display()
        );
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut sources: Vec<Source> = Vec::new();
        let source_of = |sources: &mut Vec<Source>, model: &str| -> Result<usize> {
            let local = folder.join(model);
            let spec = if local.exists() { local.to_string_lossy().into_owned() } else { model.to_string() };
            if let Some(index) = sources.iter().position(|s| s.spec == spec) {
                return Ok(index);
            }
            sources.push(Source::load(&spec, device, dtype, engine.clone())?);
            Ok(sources.len() - 1)
        };
        let check = |what: &str, threshold: f32| {
            ensure!((0.0..=1.0).contains(&threshold), "{}: threshold of {what} must be within 0..1", path.display());
            Ok(())
        };
        let mut categories = Vec::new();
        for (name, route) in &setup.categories {
            let source = source_of(&mut sources, &route.model)?;
            let outputs = sources[source].heads.outputs();
            let label = route.label.as_deref().unwrap_or(name);
            let Some(output) = outputs.iter().position(|(l, _)| l == label) else {
                let known: Vec<&str> = outputs.iter().map(|(l, _)| l.as_str()).collect();
                anyhow::bail!(
                    "{}: category '{name}': model '{}' has no label '{label}' (it has: {})",
                    path.display(),
                    route.model,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                );
            };
            let threshold = route.threshold.unwrap_or(outputs[output].1);
            check(name, threshold)?;
            categories.push(Category { name: name.clone(), source, output, threshold });
        }
        let spans = match &setup.spans {
            Some(route) => {
                let source = source_of(&mut sources, &route.model)?;
                let Some(default) = sources[source].heads.span_decoding() else {
                    anyhow::bail!("{}: spans: model '{}' marks no spans", path.display(), route.model);
                };
                let decoding = SpanDecoding {
                    threshold: route.threshold.unwrap_or(default.threshold),
                    relative: route.relative_threshold.unwrap_or(default.relative),
                };
                check("spans", decoding.threshold)?;
                check("spans (relative)", decoding.relative)?;
                Some(SpanRoute { source, decoding })
            }
            None => None,
        };
        let stem = path.file_stem().map_or_else(|| "moderation".into(), |s| s.to_string_lossy().into_owned());
        Ok(Self { sources, categories, spans, id: format!("setup/{stem}") })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The models loaded, by the spec they were loaded from.
    pub fn models(&self) -> Vec<String> {
        self.sources.iter().map(Source::id).collect()
    }

    /// Category names in report order.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|c| c.name.as_str())
    }

    /// Default decision threshold per category.
    pub fn thresholds(&self) -> BTreeMap<String, f32> {
        self.categories.iter().map(|c| (c.name.clone(), c.threshold)).collect()
    }

    /// How token probabilities become spans; `None` when no model marks spans.
    pub fn span_decoding(&self) -> Option<SpanDecoding> {
        self.spans.as_ref().map(|s| s.decoding)
    }

    /// Refuses thresholds for categories the model lacks, span thresholds where it marks no
    /// spans, and any outside 0..1.
    pub fn check_thresholds(&self, thresholds: &Thresholds) -> Result<(), InvalidRequest> {
        let categories: Vec<&str> = self.categories().collect();
        thresholds.check(&categories, self.spans.is_some())
    }

    /// Takes a place under every engine's admission control, or fails when one is full.
    pub fn admit(&self) -> Result<Vec<Admission>, EngineError> {
        self.sources.iter().map(|s| s.engine.admit()).collect()
    }

    /// Scores `texts`. `thresholds` overrides the calibrated thresholds it gives.
    pub async fn moderate(&self, texts: &[String], thresholds: &Thresholds) -> Result<Vec<Moderation>, EngineError> {
        let mut windows = Vec::new();
        let mut inputs = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            for range in segment::chunks(text, WINDOW_BYTES) {
                inputs.push(Input::Text(text[range.clone()].to_string()));
                windows.push((index, range));
            }
        }
        let want = Want { normalize: false, token_states: true };
        let encoded =
            futures::future::try_join_all(self.sources.iter().map(|s| s.engine.encode(inputs.clone(), want, true)))
                .await?;
        let mut scores = vec![vec![0f32; self.categories.len()]; texts.len()];
        let mut spans: Vec<Vec<ScoredSpan>> = vec![Vec::new(); texts.len()];
        for (window, (index, range)) in windows.into_iter().enumerate() {
            let outputs: Vec<Vec<f32>> = self
                .sources
                .iter()
                .zip(&encoded)
                .map(|(source, items)| {
                    let item = &items[window];
                    source.heads.scores(&item.pooled, item.token_states.as_deref().unwrap_or_default())
                })
                .collect();
            for (best, category) in scores[index].iter_mut().zip(&self.categories) {
                *best = best.max(outputs[category.source][category.output]);
            }
            if let Some(route) = &self.spans {
                let item = &encoded[route.source][window];
                let states = item.token_states.as_deref().unwrap_or_default();
                let probs = self.sources[route.source].heads.token_probabilities(states);
                spans[index].extend(spans_in_window(
                    &texts[index],
                    range,
                    &item.tokens.offsets,
                    &probs,
                    thresholds.span_decoding(route.decoding),
                ));
            }
        }
        Ok(scores
            .into_iter()
            .zip(spans)
            .map(|(scores, spans)| {
                let mut flags = BTreeMap::new();
                let mut category_scores = BTreeMap::new();
                for (category, score) in self.categories.iter().zip(scores) {
                    let threshold = thresholds.categories.get(&category.name).copied().unwrap_or(category.threshold);
                    flags.insert(category.name.clone(), score >= threshold);
                    category_scores.insert(category.name.clone(), score);
                }
                Moderation {
                    flagged: flags.values().any(|&f| f),
                    categories: flags,
                    category_scores,
                    spans: merge_touching(spans),
                }
            })
            .collect())
    }
}

/// Turns per-token probabilities into spans of `text`: runs of consecutive tokens at or above
/// the threshold (the gaps between them included), widened to whole words, since annotators
/// mark words and the tokenizer cuts them into pieces. The relative threshold then applies
/// word by word, each word scored by its strongest token: a weak word drops out of its run and
/// splits it. Special tokens (`(0, 0)` offsets) end a run.
pub fn spans_from_token_probs(
    text: &str,
    offsets: &[(usize, usize)],
    probs: &[f32],
    decoding: SpanDecoding,
) -> Vec<ScoredSpan> {
    // Per run, its words in order: widened tokens that overlap or touch are one word (pieces of
    // one word, or punctuation stuck to it).
    let mut runs: Vec<Vec<ScoredSpan>> = Vec::new();
    let mut run: Vec<ScoredSpan> = Vec::new();
    for (&(start, end), &p) in offsets.iter().zip(probs) {
        let special = end <= start;
        if special || p < decoding.threshold || end > text.len() {
            if !run.is_empty() {
                runs.push(merge_touching(std::mem::take(&mut run)));
            }
            continue;
        }
        run.push(ScoredSpan { range: widen_to_words(text, start..end), score: p });
    }
    if !run.is_empty() {
        runs.push(merge_touching(run));
    }
    let strongest = runs.iter().flatten().map(|w| w.score).fold(0.0, f32::max);
    let mut spans = Vec::new();
    for run in runs {
        let mut current: Option<ScoredSpan> = None;
        for word in run {
            if word.score < decoding.relative * strongest {
                spans.extend(current.take());
                continue;
            }
            match current.as_mut() {
                Some(span) => {
                    span.range.end = word.range.end;
                    span.score = span.score.max(word.score);
                }
                None => current = Some(word),
            }
        }
        spans.extend(current);
    }
    merge_touching(spans)
}

/// [`spans_from_token_probs`] for one window (`window`, a byte range of `text`, scored on its
/// own), as byte ranges of the whole `text`.
pub fn spans_in_window(
    text: &str,
    window: Range<usize>,
    offsets: &[(usize, usize)],
    probs: &[f32],
    decoding: SpanDecoding,
) -> Vec<ScoredSpan> {
    let shift = window.start;
    spans_from_token_probs(&text[window], offsets, probs, decoding)
        .into_iter()
        .map(|span| ScoredSpan { range: span.range.start + shift..span.range.end + shift, score: span.score })
        .collect()
}

fn widen_to_words(text: &str, range: Range<usize>) -> Range<usize> {
    let is_word = |c: char| c.is_alphanumeric() || c == '\'';
    let start = text[..range.start]
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_word(c))
        .last()
        .map_or(range.start, |(i, _)| i);
    let end = range.end
        + text[range.end..].char_indices().find(|&(_, c)| !is_word(c)).map_or(text.len() - range.end, |(i, _)| i);
    start..end
}

/// Sorts spans and joins those that overlap or touch.
fn merge_touching(mut spans: Vec<ScoredSpan>) -> Vec<ScoredSpan> {
    spans.sort_by_key(|s| s.range.start);
    let mut out: Vec<ScoredSpan> = Vec::new();
    for span in spans {
        match out.last_mut() {
            Some(last) if span.range.start <= last.range.end => {
                last.range.end = last.range.end.max(span.range.end);
                last.score = last.score.max(span.score);
            }
            _ => out.push(span),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_tokens_form_one_span_widened_to_words() {
        let text = "you are a complete idiot, friend";
        // Tokens: you, are, a, complete, id, ##iot, ",", friend; [CLS]/[SEP] as (0,0).
        let offsets = [(0, 0), (0, 3), (4, 7), (8, 9), (10, 18), (19, 21), (21, 24), (24, 25), (26, 32), (0, 0)];
        let probs = [0.9, 0.1, 0.1, 0.2, 0.7, 0.9, 0.3, 0.1, 0.1, 0.9];
        let spans = spans_from_token_probs(text, &offsets, &probs, SpanDecoding::absolute(0.5));
        assert_eq!(spans.len(), 1);
        assert_eq!(&text[spans[0].range.clone()], "complete idiot");
        assert_eq!(spans[0].score, 0.9);
    }

    #[test]
    fn separate_runs_stay_separate_and_nothing_above_threshold_gives_no_span() {
        let text = "bad words and bad words";
        let offsets = [(0, 3), (4, 9), (10, 13), (14, 17), (18, 23)];
        let spans = spans_from_token_probs(text, &offsets, &[0.8, 0.1, 0.1, 0.8, 0.1], SpanDecoding::absolute(0.5));
        assert_eq!(spans.iter().map(|s| &text[s.range.clone()]).collect::<Vec<_>>(), vec!["bad", "bad"]);
        assert!(spans_from_token_probs(text, &offsets, &[0.1; 5], SpanDecoding::absolute(0.5)).is_empty());
    }

    #[test]
    fn the_relative_threshold_drops_spans_far_weaker_than_the_strongest() {
        let text = "silly and stupid and dumb";
        let offsets = [(0, 5), (6, 9), (10, 16), (17, 20), (21, 25)];
        let probs = [0.5, 0.1, 0.95, 0.1, 0.7];
        let kept = |relative| -> Vec<&str> {
            spans_from_token_probs(text, &offsets, &probs, SpanDecoding { threshold: 0.4, relative })
                .iter()
                .map(|s| &text[s.range.clone()])
                .collect()
        };
        assert_eq!(kept(0.0), vec!["silly", "stupid", "dumb"]);
        assert_eq!(kept(0.6), vec!["stupid", "dumb"], "0.5 < 0.6 × 0.95 <= 0.7");
        assert_eq!(kept(1.0), vec!["stupid"]);
    }

    #[test]
    fn the_relative_threshold_drops_weak_words_inside_a_run() {
        let text = "Fuck those fucking trolls, friend";
        // Tokens: fuck, those, fuck, ##ing, troll, ##s, ",", friend.
        let offsets = [(0, 4), (5, 10), (11, 15), (15, 18), (19, 24), (24, 25), (25, 26), (27, 33)];
        let probs = [0.9, 0.4, 0.5, 0.8, 0.7, 0.3, 0.45, 0.1];
        let kept = |relative| -> Vec<&str> {
            spans_from_token_probs(text, &offsets, &probs, SpanDecoding { threshold: 0.35, relative })
                .iter()
                .map(|s| &text[s.range.clone()])
                .collect()
        };
        assert_eq!(kept(0.0), vec!["Fuck those fucking trolls,"]);
        assert_eq!(kept(0.5), vec!["Fuck", "fucking trolls,"], "0.4 < 0.5 × 0.9; a word scores its strongest piece");
        assert_eq!(kept(0.95), vec!["Fuck"]);
    }

    #[test]
    fn widening_respects_multibyte_text() {
        let text = "só idiotas 😀 aqui";
        let start = text.find("idi").unwrap_or(0);
        let range = widen_to_words(text, start + 1..start + 3);
        assert_eq!(&text[range], "idiotas");
    }
}
