//! `concord train TASK`: fits Concord's own small models from labelled data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::eval::progress_bar;
use super::{runtime, EncoderArgs};
use concord::eval::{merge::MergeRow, read_jsonl};
use concord::train;

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

#[derive(Subcommand)]
pub enum TrainCommand {
    /// The merge resolution scorer (models/merge-scorer).
    Merge(TrainMergeArgs),
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
    }
    Ok(ExitCode::SUCCESS)
}
