//! `concord train TASK`: fits Concord's own small models from labelled data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::eval::progress_bar;
use super::{print_out, runtime, EncoderArgs};
use concord::eval::intent::IntentRow;
use concord::eval::nli::NliRow;
use concord::eval::{merge::MergeRow, read_jsonl};
use concord::model::device;
use concord::model::source::DEFAULT_MODEL;
use concord::tasks::nli::NliModel;
use concord::train;
use concord::train::finetune::{read_rows, DataFile, DataSummary, FinetuneOptions, Rng};

#[derive(Args)]
pub struct TrainMergeArgs {
    /// Conflicts with committed resolutions (`merge` schema).
    #[arg(long)]
    data: PathBuf,
    /// Output folder for scorer.json and metrics.json.
    #[arg(long)]
    out: PathBuf,
    /// Cross-validation folds, grouped by merge commit.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// L2 penalty of the logistic models.
    #[arg(long, default_value_t = 0.01)]
    l2: f32,
    #[command(flatten)]
    encoder: EncoderArgs,
}

/// Training and dev files and the output folder of a model trained from labelled rows.
#[derive(Args)]
pub struct DataArgs {
    /// Training file; repeat for several. `FILE@ROWS` draws a seeded sample of ROWS rows.
    #[arg(long = "data", required = true)]
    data: Vec<DataFile>,
    /// Dev file, repeat for several: scored after training; fine-tuning also calibrates
    /// thresholds and picks the best epoch on it.
    #[arg(long = "dev", required = true)]
    dev: Vec<DataFile>,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
}

/// A head fitted over a frozen sentence encoder's embeddings (intent, the NLI pair head).
#[derive(Args)]
pub struct TrainHeadArgs {
    #[command(flatten)]
    files: DataArgs,
    /// Cross-validation folds for choosing the L2 penalty and class weighting.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Seed of the row sampling and of the folds.
    #[arg(long, default_value_t = 13)]
    seed: u64,
    /// The sentence encoder the head reads, with device and engine settings.
    #[command(flatten)]
    encoder: EncoderArgs,
}

/// Data and output of a fine-tuning run.
#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    files: DataArgs,
    /// Base encoder whose top layers are fine-tuned.
    #[arg(long, default_value = DEFAULT_MODEL)]
    base_model: String,
    /// Encoder layers to fine-tune, from the top.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Train a rank-R update of each weight matrix of those layers instead of the matrix
    /// itself (LoRA): the base weights stay frozen and the saved weights stay small.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=256))]
    lora_rank: Option<u32>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    #[arg(long, default_value_t = 2e-3)]
    head_learning_rate: f64,
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    #[arg(long, default_value_t = 13)]
    seed: u64,
    /// Tokens per training text (pair); longer ones are cut.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
}

impl FinetuneArgs {
    fn options(&self) -> FinetuneOptions {
        FinetuneOptions {
            base_model: self.base_model.clone(),
            layers: self.layers,
            lora_rank: self.lora_rank.map(|r| r as usize),
            epochs: self.epochs.max(1),
            batch_size: self.batch_size.max(1),
            learning_rate: self.learning_rate,
            head_learning_rate: self.head_learning_rate,
            dropout: self.dropout.clamp(0.0, 0.9),
            seed: self.seed,
            max_tokens: self.max_tokens.max(8),
        }
    }

    /// Writes `report` as `metrics.json` in the output folder and prints it.
    fn finish(&self, report: &impl serde::Serialize) -> Result<()> {
        let metrics = serde_json::to_string_pretty(report)? + "\n";
        std::fs::write(self.files.out.join("metrics.json"), &metrics)?;
        print_out(&metrics)?;
        Ok(())
    }
}

/// The NLI cross-encoder's fine-tuning run.
#[derive(Args)]
pub struct TrainNliArgs {
    #[command(flatten)]
    finetune: FinetuneArgs,
    /// Data set (folder name of a --data file, e.g. climate_fever) whose rows weigh more the
    /// rarer their label is in it; repeat for several.
    #[arg(long = "balance", value_name = "NAME")]
    balance: Vec<String>,
}

/// The moderation model's fine-tuning run.
#[derive(Args)]
pub struct TrainModerationArgs {
    #[command(flatten)]
    finetune: FinetuneArgs,
    /// Weight of the soft span-F1 (Dice) loss added to the token head's cross-entropy on texts
    /// with marked spans; 0 turns it off.
    #[arg(long, default_value_t = 0.5)]
    span_dice: f64,
}

#[derive(Subcommand)]
pub enum TrainCommand {
    /// The merge resolution scorer (models/merge-scorer).
    Merge(TrainMergeArgs),
    /// The moderation model (models/moderation): fine-tuned top layers, category and span heads.
    #[command(args_override_self = true)]
    Moderation(TrainModerationArgs),
    /// The NLI cross-encoder (models/nli): fine-tuned top layers and a 3-way head.
    #[command(args_override_self = true)]
    Nli(TrainNliArgs),
    /// The NLI pair head over sentence embeddings of premise and hypothesis and word overlap,
    /// mixed with the cross-encoder: `--out` is the NLI folder (models/nli) it is added to. The
    /// mix weight is chosen on the NLI dev files, and a second one for fact-check pairs on the
    /// fact-check dev files (rows with `claim_id`).
    #[command(args_override_self = true)]
    NliPair(TrainHeadArgs),
    /// The edit-intent model (models/intent): a head over embeddings of the changed text and diff features.
    #[command(args_override_self = true)]
    Intent(TrainHeadArgs),
}

pub fn run(command: TrainCommand) -> Result<ExitCode> {
    match command {
        TrainCommand::Merge(args) => {
            let rows: Vec<MergeRow> = read_jsonl(&args.data)?;
            anyhow::ensure!(!rows.is_empty(), "{} has no rows", args.data.display());
            let engine = args.encoder.start()?;
            let bar = progress_bar();
            let examples = runtime()?.block_on(train::merge::examples(&engine, &rows, &bar))?;
            bar.finish_and_clear();
            let (scorer, report) = train::merge::train(&examples, args.folds.max(2), args.l2);
            std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            std::fs::write(args.out.join("scorer.json"), serde_json::to_string_pretty(&scorer)? + "\n")?;
            let metrics = serde_json::to_string_pretty(&report)? + "\n";
            std::fs::write(args.out.join("metrics.json"), &metrics)?;
            print_out(&metrics)?;
        }
        TrainCommand::Moderation(TrainModerationArgs { finetune: args, span_dice }) => {
            anyhow::ensure!(span_dice.is_finite() && span_dice >= 0.0, "--span-dice must be a number >= 0");
            let bar = progress_bar();
            let files = &args.files;
            let report =
                train::moderation::train(&files.data, &files.dev, span_dice, &files.out, &args.options(), &bar)?;
            bar.finish_and_clear();
            args.finish(&report)?;
        }
        TrainCommand::Intent(args) => {
            let mut rng = Rng::new(args.seed);
            let files = &args.files;
            let train_rows: Vec<IntentRow> = read_rows(&files.data, &mut rng)?;
            let dev_rows: Vec<IntentRow> = read_rows(&files.dev, &mut rng)?;
            anyhow::ensure!(!train_rows.is_empty() && !dev_rows.is_empty(), "no training or no dev rows");
            let engine = args.encoder.start()?;
            let bar = progress_bar();
            bar.set_message("encoding edits");
            let (train_set, dev_set) = runtime()?.block_on(async {
                let train_set = train::intent::examples(&engine, &train_rows, &bar).await?;
                bar.set_position(0);
                anyhow::Ok((train_set, train::intent::examples(&engine, &dev_rows, &bar).await?))
            })?;
            let (head, candidates, chosen, dev) =
                train::intent::train(&train_set, &dev_set, args.folds, args.seed, &bar)?;
            bar.finish_and_clear();
            let base_model = engine.info().id.clone();
            train::intent::save(&files.out, &base_model, &head)?;
            let report = train::intent::IntentTrainReport {
                base_model,
                data: DataSummary::new((&files.data, &files.dev), (train_set.len(), dev_set.len())),
                folds: args.folds,
                seed: args.seed,
                candidates,
                chosen,
                dev,
            };
            let metrics = serde_json::to_string_pretty(&report)? + "\n";
            std::fs::write(files.out.join("metrics.json"), &metrics)?;
            print_out(&metrics)?;
        }
        TrainCommand::NliPair(args) => {
            let files = &args.files;
            let mut rng = Rng::new(args.seed);
            let read = |list: &[DataFile], rng: &mut Rng| -> Result<Vec<(String, Vec<NliRow>)>> {
                list.iter().map(|f| Ok((f.name(), read_rows(std::slice::from_ref(f), rng)?))).collect()
            };
            let (train_sets, dev_sets) = (read(&files.data, &mut rng)?, read(&files.dev, &mut rng)?);
            let engine = args.encoder.start()?;
            let spec = files.out.to_string_lossy();
            let config = args.encoder.engine.config();
            let device = device::parse_device(&args.encoder.device.device)?;
            let dtype = device::parse_dtype(&args.encoder.device.dtype, &device)?;
            let cross_encoder = NliModel::load(&spec, std::slice::from_ref(&engine), &device, dtype, config)
                .with_context(|| format!("loading the NLI model in {spec} (train its cross-encoder first)"))?;
            let bar = progress_bar();
            let report = runtime()?.block_on(async {
                let rows: u64 = train_sets.iter().chain(&dev_sets).map(|(_, r)| r.len() as u64).sum();
                bar.set_length(rows);
                bar.set_message("encoding pairs");
                let mut train_encoded = Vec::new();
                for (name, rows) in train_sets.into_iter().chain(dev_sets) {
                    train_encoded.push(train::nli_pair::DataSet::encode(name, rows, &engine, &bar).await?);
                }
                let dev = train_encoded.split_off(files.data.len());
                train::nli_pair::train(
                    &engine,
                    &cross_encoder,
                    (&files.data, train_encoded),
                    (&files.dev, dev),
                    args.folds,
                    args.seed,
                    &files.out,
                    &bar,
                )
                .await
            })?;
            bar.finish_and_clear();
            let metrics = serde_json::to_string_pretty(&report)? + "\n";
            std::fs::write(files.out.join("pair-metrics.json"), &metrics)?;
            print_out(&metrics)?;
        }
        TrainCommand::Nli(TrainNliArgs { finetune: args, balance }) => {
            let bar = progress_bar();
            let files = &args.files;
            let report = train::nli::train(&files.data, &files.dev, &balance, &files.out, &args.options(), &bar)?;
            bar.finish_and_clear();
            args.finish(&report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
