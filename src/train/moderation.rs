//! Trains the default moderation model: the top layers of the shared encoder fine-tuned with a
//! sentence head (one sigmoid per category) and a token head (offending spans), thresholds
//! calibrated on dev. Writes a model folder [`crate::tasks::moderate::Moderator`] loads.
//!
//! Labels come from the `moderation` schema: `offensive` and `targeted` from OLID subtasks A
//! and B, `hate` from Davidson et al.'s hate-speech class, spans from Toxic Spans. A row
//! trains only the outputs it has labels for (the others are masked out of the loss). A text
//! labelled clean (OLID `NOT`, Davidson "neither") also teaches the token head that it has no
//! offending token: Toxic Spans has only toxic posts, and a head trained on those alone marked
//! words in most clean tweets.
//! Davidson's own `offensive` flag is not used: it marks 83% of its tweets, a much looser
//! notion than OLID's. Beside cross-entropy, windows with marked tokens can add a soft span-F1
//! term ([`soft_span_f1_loss`]), the metric Toxic Spans scores made differentiable.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module};
use indicatif::ProgressBar;
use serde::Serialize;

use super::finetune::{
    linear_head, masked_bce, read_rows, train_epochs, Batch, Cached, DataFile, FinetuneOptions, Params, Rng, Session,
    TopLayers, TrainReport,
};
use crate::eval::moderation::{
    best_threshold, binary_scores, chars_of_byte_ranges, share_of_true, span_f1, ModerationRow,
};
use crate::model::TextTokenizer;
use crate::tasks::moderate::{spans_in_window, ModerationConfig, SpanDecoding, CONFIG_FILE, WINDOW_BYTES};
use crate::text::segment;

pub const CATEGORIES: [&str; 3] = ["offensive", "hate", "targeted"];

/// The category held to a target (OLID), which with span F1 chooses the epoch.
const OFFENSIVE: &str = CATEGORIES[0];

/// Relative span thresholds tried in calibration (see [`SpanDecoding::relative`]).
const RELATIVE_GRID: [f32; 10] = [0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9];

/// What one window of a text teaches. Texts are cut into the windows the served model scores
/// ([`segment::chunks`] of [`WINDOW_BYTES`]), so spans past the first window are learnt too
/// and dev is scored the way `concord eval moderation` scores it.
struct Labels {
    /// The text's row among the data set's rows; the windows of one text share it.
    row: usize,
    /// The window's byte range in the row's text.
    window: Range<usize>,
    /// Per category: `Some(1.0 | 0.0)` when labelled. A text's positive label says that some
    /// window is offensive, not which, so it is kept only on a text of one window; a clean
    /// text's windows are all clean.
    sentence: [Option<f32>; 3],
    /// Per token: 1.0 inside a gold span, all 0.0 for a text labelled clean; `None` for other
    /// rows without span annotation.
    token_labels: Option<Vec<f32>>,
}

type Example = Cached<Labels>;

/// A row's category labels, in [`CATEGORIES`] order.
fn sentence_labels(row: &ModerationRow) -> [Option<bool>; 3] {
    [row.olid_offensive(), row.hate_speech(), row.olid_targeted()]
}

/// Per token: 1.0 when any of its bytes is toxic (`toxic`, one flag per byte of the text the
/// `offsets` index), else 0.0; special tokens are 0.0.
fn token_targets(toxic: &[bool], offsets: &[(usize, usize)]) -> Vec<f32> {
    offsets
        .iter()
        .map(|&(start, end)| {
            let inside = end > start && toxic[start.min(toxic.len())..end.min(toxic.len())].contains(&true);
            if inside {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// The examples of `rows`: one per window of each text.
fn examples(rows: &[ModerationRow], tokenizer: &TextTokenizer) -> Result<Vec<Example>> {
    let mut out = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let toxic_bytes: Option<Vec<bool>> = row.gold_chars().map(|gold| {
            let mut bytes = vec![false; row.text.len()];
            for (char_index, (byte, c)) in row.text.char_indices().enumerate() {
                if gold.contains(&char_index) {
                    bytes[byte..byte + c.len_utf8()].fill(true);
                }
            }
            bytes
        });
        let windows = segment::chunks(&row.text, WINDOW_BYTES);
        let single = windows.len() == 1;
        let sentence = sentence_labels(row).map(|flag| match flag {
            Some(false) => Some(0.0),
            Some(true) if single => Some(1.0),
            _ => None,
        });
        for window in windows {
            let tokens = tokenizer.encode(&row.text[window.clone()])?;
            let token_labels = match &toxic_bytes {
                Some(toxic) => Some(token_targets(&toxic[window.clone()], &tokens.offsets)),
                None => row.labelled_clean().then(|| vec![0.0; tokens.offsets.len()]),
            };
            out.push(Cached::new(tokens, Labels { row: index, window, sentence, token_labels }));
        }
    }
    Ok(out)
}

/// One minus the soft span F1 (Dice) of the token probabilities against the targets, averaged
/// over the texts with at least one target token (`[n, len]` logits, targets and mask). Toxic
/// Spans scores the F1 of each post, where a character marked beside the annotators' word
/// costs about as much as one of theirs missed; per-token cross-entropy does not weigh that.
fn soft_span_f1_loss(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let probs = (candle_nn::ops::sigmoid(logits)? * mask)?;
    let gold = (targets * mask)?;
    let overlap = (&probs * &gold)?.sum(1)?;
    let sizes = ((probs.sum(1)? + gold.sum(1)?)? + 1e-6)?;
    let f1 = ((overlap * 2.0)? / sizes)?;
    let marked = gold.sum(1)?.gt(0.0)?.to_dtype(DType::F32)?;
    let count = marked.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok((((1.0 - f1)? * marked)?.sum_all()? / count as f64)?)
}

/// What `concord train moderation` reports (and writes as `metrics.json`).
#[derive(Debug, Serialize)]
pub struct ModerationTrainReport {
    #[serde(flatten)]
    pub report: TrainReport<DevReport>,
    /// Weight of [`soft_span_f1_loss`] beside the cross-entropy.
    pub span_dice: f64,
}

/// Dev metrics of one epoch, with the thresholds calibrated on the same dev data.
#[derive(Debug, Clone, Serialize)]
pub struct DevReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub span_f1: Option<f64>,
    pub span_threshold: f32,
    pub span_relative_threshold: f32,
    /// Share of the dev texts labelled clean that get a span at `span_threshold` (lower is
    /// better; not part of the epoch choice).
    pub clean_with_spans: Option<f64>,
    /// Per category: macro-F1 at the calibrated threshold.
    pub category_macro_f1: BTreeMap<String, f64>,
    pub thresholds: BTreeMap<String, f32>,
    pub seconds: f64,
}

impl DevReport {
    /// What selects the best epoch: the mean of span F1 and `offensive` macro-F1, the two
    /// scores the model is held to (Toxic Spans and OLID); `hate` and `targeted` are reported
    /// but do not choose. When dev lacks either, the mean of every available dev metric.
    fn score(&self) -> f64 {
        let targets: Vec<f64> =
            self.span_f1.into_iter().chain(self.category_macro_f1.get(OFFENSIVE).copied()).collect();
        let values: Vec<f64> = if targets.len() == 2 {
            targets
        } else {
            self.category_macro_f1.values().copied().chain(self.span_f1).collect()
        };
        values.iter().sum::<f64>() / values.len().max(1) as f64
    }
}

/// The heads being trained.
struct Heads {
    sentence: Linear,
    token: Linear,
}

impl Heads {
    fn new(hidden: usize, params: &mut Params, rng: &mut Rng, device: &Device) -> Result<Self> {
        Ok(Self {
            sentence: linear_head("heads.sentence", CATEGORIES.len(), hidden, params, rng, device)?,
            token: linear_head("heads.token", 1, hidden, params, rng, device)?,
        })
    }
}

/// `[n, len, hidden]` through a linear layer as one `[n·len, hidden]` matmul.
fn token_logits(head: &Linear, xs: &Tensor) -> Result<Tensor> {
    let (n, len, hidden) = xs.dims3()?;
    Ok(head.forward(&xs.reshape((n * len, hidden))?)?.reshape((n, len))?)
}

struct Model {
    top: TopLayers,
    heads: Heads,
}

impl Model {
    /// Sentence logits `[n, categories]` and token logits `[n, len]`.
    fn forward(&self, batch: &Batch, rate: f32, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let xs = self.top.forward(batch, rate, rng)?;
        let pooled = batch.mean_pool(&xs)?;
        Ok((self.heads.sentence.forward(&pooled)?, token_logits(&self.heads.token, &xs)?))
    }
}

fn targets(examples: &[&Example], longest: usize, device: &Device) -> Result<[Tensor; 4]> {
    let n = examples.len();
    let mut sentence: Vec<f32> = Vec::with_capacity(n * 3);
    let mut sentence_mask: Vec<f32> = Vec::with_capacity(n * 3);
    let (mut tokens, mut token_mask) = (vec![0f32; n * longest], vec![0f32; n * longest]);
    for (row, example) in examples.iter().enumerate() {
        for label in example.label.sentence {
            sentence.push(label.unwrap_or(0.0));
            sentence_mask.push(if label.is_some() { 1.0 } else { 0.0 });
        }
        if let Some(labels) = &example.label.token_labels {
            for (i, (&label, &(start, end))) in labels.iter().zip(&example.tokens.offsets).enumerate() {
                tokens[row * longest + i] = label;
                token_mask[row * longest + i] = if end > start { 1.0 } else { 0.0 };
            }
        }
    }
    Ok([
        Tensor::from_vec(sentence, (n, 3), device)?,
        Tensor::from_vec(sentence_mask, (n, 3), device)?,
        Tensor::from_vec(tokens, (n, longest), device)?,
        Tensor::from_vec(token_mask, (n, longest), device)?,
    ])
}

/// Per dev example: category probabilities and token probabilities.
fn predict(model: &Model, examples: &[Example], device: &Device) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let mut out = vec![(Vec::new(), Vec::new()); examples.len()];
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].tokens.ids.len());
    let mut rng = Rng::new(0);
    for chunk in order.chunks(64) {
        let cached: Vec<&[f32]> = chunk.iter().map(|&i| examples[i].states.as_slice()).collect();
        let batch = Batch::assemble(&cached, model.top.hidden, device)?;
        let (sentence, tokens) = model.forward(&batch, 0.0, &mut rng)?;
        let sentence = candle_nn::ops::sigmoid(&sentence)?.to_vec2::<f32>()?;
        let tokens = candle_nn::ops::sigmoid(&tokens)?.to_vec2::<f32>()?;
        for (((&i, s), mut t), &len) in chunk.iter().zip(sentence).zip(tokens).zip(&batch.lengths) {
            t.truncate(len);
            out[i] = (s, t);
        }
    }
    Ok(out)
}

/// Calibrates thresholds on dev and reports the metrics they give, per text: a category's
/// score is its highest window's, the spans are those of every window.
fn evaluate(
    model: &Model,
    rows: &[ModerationRow],
    dev: &[Example],
    device: &Device,
    epoch: usize,
    train_loss: f64,
) -> Result<DevReport> {
    let started = Instant::now();
    let predictions = predict(model, dev, device)?;
    let mut windows_of: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
    for (i, example) in dev.iter().enumerate() {
        windows_of[example.label.row].push(i);
    }
    let sentence: Vec<Vec<f32>> = windows_of
        .iter()
        .map(|windows| {
            (0..CATEGORIES.len()).map(|c| windows.iter().map(|&i| predictions[i].0[c]).fold(0.0, f32::max)).collect()
        })
        .collect();
    let spans_of = |row: usize, decoding: SpanDecoding| -> Vec<Range<usize>> {
        windows_of[row]
            .iter()
            .flat_map(|&i| {
                let (window, offsets) = (dev[i].label.window.clone(), &dev[i].tokens.offsets);
                spans_in_window(&rows[row].text, window, offsets, &predictions[i].1, decoding)
            })
            .map(|span| span.range)
            .collect()
    };
    let mut category_macro_f1 = BTreeMap::new();
    let mut thresholds = BTreeMap::new();
    for (c, name) in CATEGORIES.iter().enumerate() {
        let labelled: Vec<(f32, bool)> =
            rows.iter().zip(&sentence).filter_map(|(row, s)| sentence_labels(row)[c].map(|g| (s[c], g))).collect();
        if labelled.is_empty() {
            thresholds.insert(name.to_string(), 0.5);
            continue;
        }
        let gold: Vec<bool> = labelled.iter().map(|&(_, g)| g).collect();
        let (threshold, f1) = best_threshold(|t| {
            let predicted: Vec<bool> = labelled.iter().map(|&(s, _)| s >= t).collect();
            binary_scores(&predicted, &gold).macro_f1()
        });
        thresholds.insert(name.to_string(), threshold);
        category_macro_f1.insert(name.to_string(), f1);
    }
    let spanned: Vec<(usize, HashSet<usize>)> =
        rows.iter().enumerate().filter_map(|(i, row)| row.gold_chars().map(|gold| (i, gold))).collect();
    let (span_decoding, span_score) = if spanned.is_empty() {
        (SpanDecoding::absolute(0.5), None)
    } else {
        let (decoding, f1) = best_span_decoding(|decoding| {
            spanned
                .iter()
                .map(|(row, gold)| span_f1(gold, &chars_of_byte_ranges(&rows[*row].text, &spans_of(*row, decoding))))
                .sum::<f64>()
                / spanned.len() as f64
        });
        (decoding, Some(f1))
    };
    let clean_with_spans = share_of_true(
        (0..rows.len()).filter(|&row| rows[row].labelled_clean()).map(|row| !spans_of(row, span_decoding).is_empty()),
    );
    Ok(DevReport {
        epoch,
        train_loss,
        span_f1: span_score,
        span_threshold: span_decoding.threshold,
        span_relative_threshold: span_decoding.relative,
        clean_with_spans,
        category_macro_f1,
        thresholds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The span decoding that maximises `objective`: the best threshold for each relative
/// threshold of [`RELATIVE_GRID`]; a relative threshold is taken only where it does better
/// than keeping every span.
fn best_span_decoding(objective: impl Fn(SpanDecoding) -> f64) -> (SpanDecoding, f64) {
    let mut best = (SpanDecoding::absolute(0.5), f64::MIN);
    for relative in RELATIVE_GRID {
        let (threshold, value) = best_threshold(|threshold| objective(SpanDecoding { threshold, relative }));
        if value > best.1 + 1e-12 {
            best = (SpanDecoding { threshold, relative }, value);
        }
    }
    best
}

/// Trains on `train_files`, calibrates on `dev_files`, writes the model folder `out`;
/// `span_dice` weighs [`soft_span_f1_loss`] (0 leaves cross-entropy alone).
pub fn train(
    train_files: &[DataFile],
    dev_files: &[DataFile],
    span_dice: f64,
    out: &Path,
    options: &FinetuneOptions,
    bar: &ProgressBar,
) -> Result<ModerationTrainReport> {
    let session = Session::start(options)?;
    let device = session.device.clone();
    let mut rng = Rng::new(options.seed);
    let train_rows: Vec<ModerationRow> = read_rows(train_files, &mut rng)?;
    let dev_rows: Vec<ModerationRow> = read_rows(dev_files, &mut rng)?;
    ensure!(!train_rows.is_empty() && !dev_rows.is_empty(), "no training or no dev rows");
    let mut train = examples(&train_rows, &session.tokenizer)?;
    let mut dev = examples(&dev_rows, &session.tokenizer)?;

    let mut params = Params::default();
    let top = session.top_layers(options, &mut params, &mut rng)?;
    let heads = Heads::new(top.hidden, &mut params, &mut rng, &device)?;
    let model = Model { top, heads };

    bar.set_length((train.len() + dev.len()) as u64);
    bar.set_message("caching frozen layers");
    session.cache(&model.top, &mut train, bar)?;
    session.cache(&model.top, &mut dev, bar)?;

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let loss = |batch: &Batch, examples: &[&Example], rng: &mut Rng| -> Result<Tensor> {
        let [sentence_y, sentence_mask, token_y, token_mask] = targets(examples, batch.longest(), &device)?;
        let (sentence, tokens) = model.forward(batch, options.dropout, rng)?;
        let bce = (masked_bce(&sentence, &sentence_y, &sentence_mask)? + masked_bce(&tokens, &token_y, &token_mask)?)?;
        if span_dice == 0.0 {
            return Ok(bce);
        }
        Ok((bce + (soft_span_f1_loss(&tokens, &token_y, &token_mask)? * span_dice)?)?)
    };
    let evaluate = |epoch: usize, train_loss: f64| {
        let report = evaluate(&model, &dev_rows, &dev, &device, epoch, train_loss)?;
        bar.suspend(|| {
            eprintln!(
                "epoch {epoch}: loss {:.4}, dev span F1 {}, clean texts with spans {}, category macro-F1 {:?}",
                report.train_loss,
                report.span_f1.map_or("-".into(), |f| format!("{f:.4}")),
                report.clean_with_spans.map_or("-".into(), |f| format!("{f:.3}")),
                report.category_macro_f1
            )
        });
        let score = report.score();
        Ok((report, score))
    };
    let outcome = train_epochs(
        options,
        &params,
        &train,
        model.top.hidden,
        &mut rng,
        bar,
        loss,
        evaluate,
        |report: &DevReport| save(out, options, &params, report),
    )?;
    let report =
        TrainReport::new(options, (train_files, dev_files), (train_rows.len(), dev_rows.len()), &params, outcome);
    Ok(ModerationTrainReport { report, span_dice })
}

fn save(out: &Path, options: &FinetuneOptions, params: &Params, report: &DevReport) -> Result<()> {
    let weights = "weights.safetensors";
    params.save(&out.join(weights))?;
    let config = ModerationConfig {
        base_model: options.base_model.clone(),
        weights: weights.to_string(),
        categories: CATEGORIES.iter().map(|c| c.to_string()).collect(),
        thresholds: report.thresholds.clone(),
        span_threshold: report.span_threshold,
        span_relative_threshold: report.span_relative_threshold,
    };
    std::fs::write(out.join(CONFIG_FILE), serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", out.join(CONFIG_FILE).display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::finetune::DataSummary;

    /// The report's JSON keeps the layout of the committed `metrics.json`.
    #[test]
    fn reports_keep_the_committed_metrics_layout() -> Result<()> {
        let options = FinetuneOptions {
            base_model: String::new(),
            layers: 2,
            lora_rank: None,
            epochs: 1,
            batch_size: 1,
            learning_rate: 0.0,
            head_learning_rate: 0.0,
            dropout: 0.0,
            seed: 0,
            max_tokens: 1,
        };
        let report = TrainReport {
            options,
            data: DataSummary::new((&[], &[]), (0, 0)),
            trainable_parameters: 0,
            epochs: Vec::<DevReport>::new(),
            best_epoch: 0,
        };
        let report = ModerationTrainReport { report, span_dice: 0.5 };
        let top_level_keys = |json: &str| -> Vec<String> {
            json.lines().filter_map(|l| l.strip_prefix("  \"")?.split('"').next().map(str::to_string)).collect()
        };
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/moderation/metrics.json"))?;
        assert_eq!(top_level_keys(&serde_json::to_string_pretty(&report)?), top_level_keys(&committed));
        Ok(())
    }

    #[test]
    fn the_soft_span_loss_is_one_minus_dice_over_marked_texts_and_has_a_gradient() -> Result<()> {
        let device = Device::Cpu;
        // Text 1: probabilities 0.5 / 0.5 / 0.5 (third token masked), gold 1 / 0 / 1.
        // Text 2 has no gold token, so it does not count.
        let logits = candle_core::Var::from_vec(vec![0f32, 0.0, 0.0, 3.0, 3.0, 3.0], (2, 3), &device)?;
        let targets = Tensor::from_vec(vec![1f32, 0.0, 1.0, 0.0, 0.0, 0.0], (2, 3), &device)?;
        let mask = Tensor::from_vec(vec![1f32, 1.0, 0.0, 1.0, 1.0, 1.0], (2, 3), &device)?;
        let loss = soft_span_f1_loss(logits.as_tensor(), &targets, &mask)?;
        let dice = 2.0 * 0.5 / (1.0 + 1.0);
        assert!((loss.to_scalar::<f32>()? - (1.0 - dice)).abs() < 1e-4);
        let gradients = loss.backward()?;
        let gradient = gradients.get(logits.as_tensor()).map(|g| g.to_vec2::<f32>()).transpose()?;
        let gradient = gradient.ok_or_else(|| anyhow::anyhow!("no gradient reached the logits"))?;
        assert!(gradient[0][0] < 0.0, "raising the gold token's logit lowers the loss: {gradient:?}");
        assert!(gradient[0][1] > 0.0, "raising a non-gold token's logit raises it: {gradient:?}");
        assert_eq!(gradient[0][2], 0.0, "masked tokens do not count");
        assert_eq!(gradient[1], vec![0.0; 3], "texts without gold do not count");
        Ok(())
    }

    fn report(span_f1: Option<f64>, offensive: f64, hate: f64) -> DevReport {
        DevReport {
            epoch: 1,
            train_loss: 0.0,
            span_f1,
            span_threshold: 0.4,
            span_relative_threshold: 0.0,
            clean_with_spans: None,
            category_macro_f1: [("offensive".to_string(), offensive), ("hate".to_string(), hate)].into(),
            thresholds: BTreeMap::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn the_epoch_is_chosen_on_spans_and_offensive_alone() {
        let better_targets = report(Some(0.664), 0.781, 0.60);
        let better_hate = report(Some(0.661), 0.779, 0.90);
        assert!((better_targets.score() - (0.664 + 0.781) / 2.0).abs() < 1e-12);
        assert!(better_targets.score() > better_hate.score());
    }

    #[test]
    fn a_relative_threshold_is_calibrated_only_where_it_helps() {
        let (flat, _) = best_span_decoding(|d| if d.threshold == 0.35 { 0.6 } else { 0.5 });
        assert_eq!(flat, SpanDecoding::absolute(0.35));
        let (peaked, value) = best_span_decoding(|d| if d.threshold == 0.35 && d.relative == 0.6 { 0.7 } else { 0.5 });
        assert_eq!(peaked, SpanDecoding { threshold: 0.35, relative: 0.6 });
        assert_eq!(value, 0.7);
    }

    #[test]
    fn without_span_dev_data_every_category_counts() {
        assert!((report(None, 0.8, 0.6).score() - 0.7).abs() < 1e-12);
    }

    fn row(text: &str, labels: serde_json::Value, spans: Option<Vec<[usize; 2]>>) -> ModerationRow {
        let labels = labels.as_object().cloned().unwrap_or_default();
        ModerationRow { id: String::new(), text: text.to_string(), labels, spans }
    }

    /// A long text is learnt window by window, as it is served: a span past the first window
    /// is a target, and a positive text label, which does not say which window earned it, is
    /// dropped from a text of several windows while a clean label holds for each window.
    #[test]
    fn long_texts_become_windows_with_their_own_labels() -> Result<()> {
        let dir = crate::model::source::resolve(crate::model::source::DEFAULT_MODEL)?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), 128)?;
        let filler = "The meeting ran long and nobody minded at all. ".repeat(20);
        let long = format!("{filler}You are a moron.");
        let moron = long.find("moron").context("moron")?;
        let chars = long[..moron].chars().count();
        let rows = [
            row(&long, serde_json::json!({"toxic": 1}), Some(vec![[chars, chars + 5]])),
            row(&filler, serde_json::json!({"offensive": 1, "subtask_a": "OFF", "subtask_b": "TIN"}), None),
            row(&filler, serde_json::json!({"offensive": 0, "subtask_a": "NOT"}), None),
            row("you moron", serde_json::json!({"offensive": 1, "subtask_a": "OFF", "subtask_b": "UNT"}), None),
        ];
        let examples = examples(&rows, &tokenizer)?;
        let of_row = |r: usize| examples.iter().filter(move |e| e.label.row == r);
        assert!(of_row(0).count() > 1, "a 960-byte text spans several windows");
        let last = of_row(0).next_back().context("windows")?;
        assert_eq!(last.label.window.end, long.len());
        let marked: Vec<&str> = last
            .tokens
            .offsets
            .iter()
            .zip(last.label.token_labels.as_deref().unwrap_or_default())
            .filter(|(_, &label)| label > 0.5)
            .map(|(&(start, end), _)| &long[last.label.window.start + start..last.label.window.start + end])
            .collect();
        assert_eq!(marked.concat(), "moron", "word pieces of the gold span: {marked:?}");
        let first = of_row(0).next().context("windows")?;
        assert!(first.label.token_labels.as_deref().is_some_and(|t| t.iter().all(|&l| l == 0.0)));
        assert!(of_row(0).all(|e| e.label.sentence == [None, None, None]), "Toxic Spans has no category labels");
        assert!(of_row(1).all(|e| e.label.sentence == [None, None, None] && e.label.token_labels.is_none()));
        assert!(of_row(2).all(|e| e.label.sentence == [Some(0.0), None, Some(0.0)]));
        assert!(of_row(2).all(|e| e.label.token_labels.as_deref().is_some_and(|t| t.iter().all(|&l| l == 0.0))));
        let short: Vec<_> = of_row(3).collect();
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].label.sentence, [Some(1.0), None, Some(0.0)]);
        Ok(())
    }
}
