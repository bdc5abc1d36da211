//! `concord eval TASK --data FILE`: task metrics on labelled JSONL.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    print_out, runtime, EncoderArgs, EngineArgs, IntentModelArgs, ModelArgs, ModerationModelArgs, NliModelArgs,
};
use concord::eval;
use concord::tasks::merge::Scorer;
use concord::tasks::nli::Purpose;

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

#[derive(Args)]
pub struct EvalModerationArgs {
    /// Labelled JSONL file (`moderation` schema of ../shared/data/README.md).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    #[command(flatten)]
    moderation: ModerationModelArgs,
    #[command(flatten)]
    device: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
pub struct EvalNliArgs {
    /// Labelled JSONL file (`nli` schema, or `factcheck` with claim and evidence).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    #[command(flatten)]
    nli: NliModelArgs,
    #[command(flatten)]
    device: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
pub struct EvalIntentArgs {
    /// Labelled JSONL: the `intent` schema, or IteraTeR document revisions (`doc_*.jsonl`, rows
    /// with `edits`), which measure how many annotated edit regions the alignment finds.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    #[command(flatten)]
    intent: IntentModelArgs,
    #[command(flatten)]
    device: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Merge suggestions against committed resolutions (`merge` schema).
    Merge(EvalArgs),
    /// Moderation: span F1 (SemEval-2021 Task 5) and flag accuracy / macro-F1 / AUC.
    Moderation(EvalModerationArgs),
    /// NLI pairs: accuracy, macro-F1, per-label F1 (2-way files such as RTE scored 2-way).
    Nli(EvalNliArgs),
    /// Edit intent: accuracy, macro-F1 over the five IteraTeR intents, per-class scores, confusion.
    Intent(EvalIntentArgs),
    /// Fact-check claim–evidence pairs (`factcheck` schema): the same metrics, pair level.
    Factcheck(EvalNliArgs),
}

pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len}  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn run(command: EvalCommand) -> Result<ExitCode> {
    // Fact-check pairs mix the NLI model's parts at their own weight.
    let purpose = if matches!(command, EvalCommand::Factcheck(_)) { Purpose::FactCheck } else { Purpose::Nli };
    match command {
        EvalCommand::Merge(args) => {
            let engine = args.encoder.start()?;
            let bar = progress_bar();
            let scorer = Scorer::default_model();
            let report = runtime()?.block_on(eval::merge::evaluate(&engine, &scorer, &args.data, &bar))?;
            bar.finish_and_clear();
            match args.format {
                ReportFormat::Json => print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?,
                ReportFormat::Table => print_out(&eval::merge::table(&report))?,
            }
        }
        EvalCommand::Nli(args) | EvalCommand::Factcheck(args) => {
            let rows: Vec<eval::nli::NliRow> = eval::read_jsonl(&args.data)?;
            anyhow::ensure!(!rows.is_empty(), "{} has no rows", args.data.display());
            let Some(model) = args.nli.load(&[], &args.device, &args.engine)? else {
                anyhow::bail!("no NLI model: pass --nli-model DIR");
            };
            let bar = progress_bar();
            let report = runtime()?.block_on(eval::nli::evaluate(&model, &rows, purpose, &bar))?;
            bar.finish_and_clear();
            match args.format {
                ReportFormat::Json => print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?,
                ReportFormat::Table => print_out(&eval::nli::table(&report))?,
            }
        }
        EvalCommand::Intent(args) => {
            let raw = std::fs::read_to_string(&args.data)?;
            let is_documents = raw.lines().next().is_some_and(|l| l.contains("\"edits\""));
            if is_documents {
                let rows: Vec<eval::intent::DocumentRow> = eval::read_jsonl(&args.data)?;
                let report = eval::intent::document_regions(&rows);
                match args.format {
                    ReportFormat::Json => print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?,
                    ReportFormat::Table => print_out(&eval::intent::document_table(&report))?,
                }
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<eval::intent::IntentRow> = eval::read_jsonl(&args.data)?;
            anyhow::ensure!(!rows.is_empty(), "{} has no rows", args.data.display());
            let Some(model) = args.intent.load(&[], &args.device, &args.engine)? else {
                anyhow::bail!("no intent model: pass --intent-model DIR");
            };
            let bar = progress_bar();
            let report = runtime()?.block_on(eval::intent::evaluate(&model, &rows, &bar))?;
            bar.finish_and_clear();
            match args.format {
                ReportFormat::Json => print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?,
                ReportFormat::Table => print_out(&eval::intent::table(&report))?,
            }
        }
        EvalCommand::Moderation(args) => {
            let rows: Vec<eval::moderation::ModerationRow> = eval::read_jsonl(&args.data)?;
            anyhow::ensure!(!rows.is_empty(), "{} has no rows", args.data.display());
            let Some(moderator) = args.moderation.load(&args.device, &args.engine)? else {
                anyhow::bail!("no moderation model: pass --moderation-model DIR");
            };
            let bar = progress_bar();
            let report = runtime()?.block_on(eval::moderation::evaluate(&moderator, &rows, &bar))?;
            bar.finish_and_clear();
            match args.format {
                ReportFormat::Json => print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?,
                ReportFormat::Table => print_out(&eval::moderation::table(&report))?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
