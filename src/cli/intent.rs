//! `concord intent`: edits in (JSONL with `before` and `after`), one JSON line per edit out.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::embed::read_input;
use super::eval::progress_bar;
use super::{runtime, EngineArgs, IntentModelArgs, ModelArgs};
use concord::tasks::intent::IntentResult;
use concord::text::offsets::OffsetUnit;

#[derive(Args)]
pub struct IntentArgs {
    /// JSONL input, one `{"before", "after", "id"?}` per line; `-` or nothing reads stdin.
    input: Option<PathBuf>,
    #[command(flatten)]
    intent: IntentModelArgs,
    #[command(flatten)]
    device: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    #[serde(flatten)]
    result: IntentResult,
}

pub fn run(args: IntentArgs) -> Result<ExitCode> {
    let (name, bytes) = read_input(args.input.as_ref())?;
    let text = std::str::from_utf8(&bytes).with_context(|| format!("{name}: not valid UTF-8"))?;
    let mut edits = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{name}:{}: not a JSON object", i + 1))?;
        let field = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let (Some(before), Some(after)) = (field("before"), field("after")) else {
            bail!("{name}:{}: needs string fields `before` and `after`", i + 1);
        };
        edits.push((i + 1, value.get("id").cloned(), before, after));
    }
    if edits.is_empty() {
        bail!("{name}: no edits");
    }
    let Some(model) = args.intent.load(&[], &args.device, &args.engine)? else {
        bail!("no intent model: pass --intent-model DIR");
    };
    let bar = progress_bar();
    bar.set_length(edits.len() as u64);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    runtime()?.block_on(async {
        for chunk in edits.chunks(64) {
            let pairs: Vec<(String, String)> = chunk.iter().map(|(_, _, b, a)| (b.clone(), a.clone())).collect();
            let results = model.classify(&pairs).await?;
            for ((line, id, before, after), mut result) in chunk.iter().zip(results) {
                result.diff = result.diff.in_unit(before, after, OffsetUnit::Char);
                serde_json::to_writer(&mut out, &OutputLine { line: *line, id: id.as_ref(), result })?;
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
