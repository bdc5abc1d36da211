//! `concord train TASK`: fits Concord's own small models from labelled data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::eval::progress_bar;
use super::{runtime, EncoderArgs};
use concord::eval::{merge::MergeRow, read_jsonl};
use concord::model::source::DEFAULT_MODEL;
use concord::train;
use concord::train::finetune::{DataFile, FinetuneOptions};

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

/// Data and output of a fine-tuning run.
#[derive(Args)]
pub struct FinetuneArgs {
    /// Training file; repeat for several. `FILE@ROWS` draws a seeded sample of ROWS rows.
    #[arg(long = "data", required = true)]
    data: Vec<DataFile>,
    /// Dev file for thresholds, metrics and choosing the best epoch; repeat for several.
    #[arg(long = "dev", required = true)]
    dev: Vec<DataFile>,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
    /// Base encoder whose top layers are fine-tuned.
    #[arg(long, default_value = DEFAULT_MODEL)]
    base_model: String,
    /// Encoder layers to fine-tune, from the top.
    #[arg(long, default_value_t = 2)]
    layers: usize,
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
        std::fs::write(self.out.join("metrics.json"), &metrics)?;
        print!("{metrics}");
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum TrainCommand {
    /// The merge resolution scorer (models/merge-scorer).
    Merge(TrainMergeArgs),
    /// The moderation model (models/moderation): fine-tuned top layers, category and span heads.
    #[command(args_override_self = true)]
    Moderation(FinetuneArgs),
    /// The NLI cross-encoder (models/nli): fine-tuned top layers and a 3-way head.
    #[command(args_override_self = true)]
    Nli(FinetuneArgs),
    /// The edit-intent model (models/intent): fine-tuned top layers, a head over states and diff features.
    #[command(args_override_self = true)]
    Intent(FinetuneArgs),
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
            print!("{metrics}");
        }
        TrainCommand::Moderation(args) => {
            let bar = progress_bar();
            let report = train::moderation::train(&args.data, &args.dev, &args.out, &args.options(), &bar)?;
            bar.finish_and_clear();
            args.finish(&report)?;
        }
        TrainCommand::Intent(args) => {
            let bar = progress_bar();
            let report = train::intent::train(&args.data, &args.dev, &args.out, &args.options(), &bar)?;
            bar.finish_and_clear();
            args.finish(&report)?;
        }
        TrainCommand::Nli(args) => {
            let bar = progress_bar();
            let report = train::nli::train(&args.data, &args.dev, &args.out, &args.options(), &bar)?;
            bar.finish_and_clear();
            args.finish(&report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
