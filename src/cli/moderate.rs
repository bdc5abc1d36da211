//! `concord moderate`: texts in (plain lines or JSONL), one JSON line per text out.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::embed::{parse_records, read_input, InputFormat};
use super::eval::progress_bar;
use super::{runtime, EngineArgs, ModelArgs, ModerationModelArgs};
use concord::tasks::moderate::{ModerationResult, Thresholds};
use concord::text::offsets::OffsetUnit;

#[derive(Args)]
pub struct ModerateArgs {
    /// Input file; `-` or nothing reads stdin.
    input: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Unit of the span offsets: utf16 (browser editors), utf8 (bytes) or char (code points).
    #[arg(long, value_enum, default_value = "char")]
    offsets: OffsetUnitArg,
    /// Token probability (0..1) from which a token belongs to a span, instead of the model's.
    #[arg(long, value_parser = probability)]
    span_threshold: Option<f32>,
    /// Share (0..1) of a window's strongest word that a word must reach to stay in a span,
    /// instead of the model's; 0 keeps every word.
    #[arg(long, value_parser = probability)]
    span_relative_threshold: Option<f32>,
    #[command(flatten)]
    moderation: ModerationModelArgs,
    #[command(flatten)]
    device: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

fn probability(value: &str) -> Result<f32, String> {
    match value.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Ok(_) => Err("must be within 0..1".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OffsetUnitArg {
    Utf16,
    Utf8,
    Char,
}

impl From<OffsetUnitArg> for OffsetUnit {
    fn from(arg: OffsetUnitArg) -> Self {
        match arg {
            OffsetUnitArg::Utf16 => OffsetUnit::Utf16,
            OffsetUnitArg::Utf8 => OffsetUnit::Utf8,
            OffsetUnitArg::Char => OffsetUnit::Char,
        }
    }
}

#[derive(Serialize)]
struct OutputLine<'a> {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    #[serde(flatten)]
    result: ModerationResult,
}

pub fn run(args: ModerateArgs) -> Result<ExitCode> {
    let (name, bytes) = read_input(args.input.as_ref())?;
    let records = parse_records(&name, &bytes, args.format, &args.field)?;
    if records.is_empty() {
        bail!("{name}: no texts to moderate");
    }
    let Some(moderator) = args.moderation.load(&args.device, &args.engine)? else {
        bail!("no moderation model: pass --moderation-model DIR");
    };
    let thresholds = Thresholds {
        categories: Default::default(),
        span: args.span_threshold,
        span_relative: args.span_relative_threshold,
    };
    moderator.check_thresholds(&thresholds).map_err(|e| anyhow::anyhow!(e.message))?;
    let unit = OffsetUnit::from(args.offsets);
    let bar = progress_bar();
    bar.set_length(records.len() as u64);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    runtime()?.block_on(async {
        let calls = records.chunks(32).map(|chunk| {
            let texts: Vec<String> = chunk.iter().map(|r| r.text.clone()).collect();
            let (moderator, thresholds) = (&moderator, &thresholds);
            async move { moderator.moderate(&texts, thresholds).await.map(|m| (chunk, m)) }
        });
        let mut results = futures::stream::iter(calls).buffered(4);
        while let Some(result) = results.next().await {
            let (chunk, moderations) = result?;
            for (record, moderation) in chunk.iter().zip(moderations) {
                let result = moderation.report(&record.text, unit);
                serde_json::to_writer(&mut out, &OutputLine { line: record.line, id: record.id.as_ref(), result })?;
                out.write_all(b"\n")?;
            }
            bar.inc(chunk.len() as u64);
        }
        anyhow::Ok(())
    })?;
    out.flush()?;
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}
