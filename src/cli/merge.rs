//! `concord merge BASE OURS THEIRS`: a three-way merge of files, usable as a git merge driver.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{runtime, EncoderArgs};
use concord::tasks::merge::{self, MergeOptions, Scorer};
use concord::text::offsets::OffsetUnit;
use concord::text::segment::Granularity;

#[derive(Args)]
pub struct MergeArgs {
    /// The common ancestor.
    base: PathBuf,
    /// Our version (git's %A).
    ours: PathBuf,
    /// Their version (git's %B).
    theirs: PathBuf,
    /// Write the merged text here instead of stdout (`-o %A` as a git merge driver).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the full response (conflicts, ranked suggestions, alternatives) as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "word")]
    granularity: GranularityArg,
    /// Never take one side wholesale: resolve conflicts only, keeping both sides' other edits.
    #[arg(long)]
    keep_clean_changes: bool,
    #[command(flatten)]
    encoder: EncoderArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GranularityArg {
    Word,
    Sentence,
    Line,
}

impl From<GranularityArg> for Granularity {
    fn from(g: GranularityArg) -> Self {
        match g {
            GranularityArg::Word => Granularity::Word,
            GranularityArg::Sentence => Granularity::Sentence,
            GranularityArg::Line => Granularity::Line,
        }
    }
}

fn read(path: &PathBuf) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not valid UTF-8 text", path.display()))
}

/// Exit status 0 when the merge was clean, 1 when conflicts were resolved by suggestion.
pub fn run(args: MergeArgs) -> Result<ExitCode> {
    let (base, ours, theirs) = (read(&args.base)?, read(&args.ours)?, read(&args.theirs)?);
    let engine = args.encoder.start()?;
    let options = MergeOptions {
        granularity: args.granularity.into(),
        offsets: OffsetUnit::Utf8,
        keep_clean_changes: args.keep_clean_changes,
    };
    let scorer = Scorer::default_model();
    let outcome = runtime()?.block_on(merge::merge(&engine, &scorer, &base, &ours, &theirs, options))?;
    let text = if args.json { serde_json::to_string_pretty(&outcome)? + "\n" } else { outcome.merged.clone() };
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => super::print_out(&text)?,
    }
    if !outcome.clean {
        eprintln!(
            "{} conflict(s) resolved by suggestion ({:?}); review the result",
            outcome.conflicts.len(),
            outcome.resolution
        );
    }
    Ok(if outcome.clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
