//! `concord eval TASK --data FILE`: task metrics on labelled JSONL.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::{runtime, EncoderArgs};
use concord::eval;
use concord::tasks::merge::Scorer;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Table,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Labelled JSONL file (schemas in ../shared/data/README.md).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    #[command(flatten)]
    encoder: EncoderArgs,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Merge suggestions against committed resolutions (`merge` schema).
    Merge(EvalArgs),
}

pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len}  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn run(command: EvalCommand) -> Result<ExitCode> {
    match command {
        EvalCommand::Merge(args) => {
            let engine = args.encoder.start()?;
            let bar = progress_bar();
            let scorer = Scorer::default_model();
            let report = runtime()?.block_on(eval::merge::evaluate(&engine, &scorer, &args.data, &bar))?;
            bar.finish_and_clear();
            match args.format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                ReportFormat::Table => print!("{}", eval::merge::table(&report)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
