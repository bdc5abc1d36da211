//! `concord embed`: texts in (plain lines or JSONL), one JSON line per text out.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use super::{runtime, EncoderArgs};
use concord::tasks::embed;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum InputFormat {
    /// JSONL when the first non-blank line starts with `{`, else plain lines.
    Auto,
    /// One text per line; blank lines are skipped (output keeps each text's line number).
    Lines,
    /// One JSON object per line with the text in `--field`; `id` is copied to the output.
    Jsonl,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Input file; `-` or nothing reads stdin.
    input: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    field: String,
    #[command(flatten)]
    encoder: EncoderArgs,
    /// Texts per request to the engine.
    #[arg(long, default_value_t = 32)]
    chunk_size: usize,
}

/// One output line. A struct, not a `Value`, so vectors print as f32 rather than widened f64.
#[derive(Serialize)]
struct OutputLine<'a> {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    embedding: Vec<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// One text to embed and what identifies it in the output.
#[derive(Debug)]
pub(super) struct Record {
    pub line: usize,
    pub id: Option<Value>,
    pub text: String,
}

pub(super) fn read_input(path: Option<&PathBuf>) -> Result<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    match path {
        Some(p) if p.as_os_str() != "-" => {
            bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.display().to_string(), bytes))
        }
        _ => {
            std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
            Ok(("<stdin>".to_string(), bytes))
        }
    }
}

/// Splits `bytes` into records, failing on the first line that is not UTF-8 or not valid JSONL,
/// so a bad file is reported before any work is spent on it.
pub(super) fn parse_records(name: &str, bytes: &[u8], format: InputFormat, field: &str) -> Result<Vec<Record>> {
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).with_context(|| format!("{name}:{}: not valid UTF-8", i + 1))?;
        lines.push((i + 1, text));
    }
    let format = match format {
        InputFormat::Auto => {
            let first = lines.iter().map(|(_, l)| l.trim()).find(|l| !l.is_empty());
            if first.is_some_and(|l| l.starts_with('{')) {
                InputFormat::Jsonl
            } else {
                InputFormat::Lines
            }
        }
        other => other,
    };
    let mut records = Vec::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        match format {
            InputFormat::Jsonl => {
                let value: Value =
                    serde_json::from_str(text).with_context(|| format!("{name}:{line}: not a JSON object"))?;
                let Some(text) = value.get(field).and_then(Value::as_str) else {
                    bail!("{name}:{line}: no string field '{field}'");
                };
                if text.trim().is_empty() {
                    bail!("{name}:{line}: field '{field}' is empty");
                }
                records.push(Record { line, id: value.get("id").cloned(), text: text.to_string() });
            }
            _ => records.push(Record { line, id: None, text: text.to_string() }),
        }
    }
    Ok(records)
}

pub fn run(args: EmbedArgs) -> Result<ExitCode> {
    let (name, bytes) = read_input(args.input.as_ref())?;
    let records = parse_records(&name, &bytes, args.format, &args.field)?;
    if records.is_empty() {
        bail!("{name}: no texts to embed");
    }
    let engine = args.encoder.start()?;
    let progress = ProgressBar::new(records.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} texts  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let chunk_size = args.chunk_size.max(1);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    runtime()?.block_on(async {
        let chunks = records.chunks(chunk_size).map(|chunk| {
            let engine = engine.clone();
            let texts: Vec<String> = chunk.iter().map(|r| r.text.clone()).collect();
            async move { embed::embed(&engine, texts, true).await }
        });
        // Several chunks in flight keep the engine's queue fed; `buffered` keeps input order.
        let mut results = futures::stream::iter(chunks).buffered(4);
        let mut offset = 0;
        while let Some(result) = results.next().await {
            let embeddings = result?;
            for (i, vector) in embeddings.vectors.into_iter().enumerate() {
                let record = &records[offset + i];
                let truncated = embeddings.truncated.contains(&i);
                if truncated {
                    tracing::warn!(line = record.line, "input truncated to the model's maximum length");
                }
                let line = OutputLine { line: record.line, id: record.id.as_ref(), embedding: vector, truncated };
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            offset += chunk_size.min(records.len() - offset);
            progress.set_position(offset as u64);
        }
        anyhow::Ok(())
    })?;
    out.flush()?;
    progress.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = parse_records("f.txt", b"ok\n\xff\xfe\n", InputFormat::Lines, "text").unwrap_err();
        assert_eq!(err.to_string(), "f.txt:2: not valid UTF-8");
    }

    #[test]
    fn auto_detects_jsonl_and_keeps_ids() {
        let records = parse_records("f", b"\n{\"id\": 7, \"text\": \"hi\"}\n", InputFormat::Auto, "text").unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].line, 2);
        assert_eq!(records[0].id, Some(json!(7)));
    }

    #[test]
    fn blank_lines_are_skipped_but_numbered() {
        let records = parse_records("f", b"a\n\n  \nb\r\n", InputFormat::Lines, "text").unwrap();
        let lines: Vec<usize> = records.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![1, 4]);
        assert_eq!(records[1].text, "b");
    }

    #[test]
    fn jsonl_without_the_field_is_an_error() {
        let err = parse_records("f", b"{\"body\": \"x\"}\n", InputFormat::Jsonl, "text").unwrap_err();
        assert!(err.to_string().contains("no string field 'text'"));
    }
}
