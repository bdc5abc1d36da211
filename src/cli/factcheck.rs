//! `concord factcheck`: a `/v1/factcheck` request as JSON in; one JSON line per claim out, as
//! soon as it is decided, then a `{"done": totals}` line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;

use super::{runtime, EncoderArgs, NliModelArgs};
use concord::server::Limits;
use concord::tasks::factcheck::{EmbeddingCache, FactcheckRequest, Totals};

#[derive(Args)]
pub struct FactcheckArgs {
    /// JSON file with `text`, `sources` and optionally `spans`, `offsets`, `top_k` (the body of
    /// `POST /v1/factcheck`); `-` or nothing reads stdin.
    input: Option<PathBuf>,
    #[command(flatten)]
    nli: NliModelArgs,
    /// The encoder that retrieves evidence, with device and engine settings.
    #[command(flatten)]
    encoder: EncoderArgs,
}

pub fn run(args: FactcheckArgs) -> Result<ExitCode> {
    let raw = match args.input.as_ref().filter(|p| p.as_os_str() != "-") {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let mut raw = String::new();
            std::io::stdin().read_to_string(&mut raw).context("reading stdin")?;
            raw
        }
    };
    let request: FactcheckRequest =
        serde_json::from_str(&raw).context("the input is not a valid fact-check request")?;
    let job = request.validate(Limits::default().max_input_chars)?;
    let embedder = args.encoder.start()?;
    let Some(nli) = args.nli.load(std::slice::from_ref(&embedder), &args.encoder.device, &args.encoder.engine)? else {
        anyhow::bail!("fact-checking needs an NLI model: pass --nli-model");
    };
    let cache = EmbeddingCache::new(100_000);
    let stdout = std::io::stdout();
    runtime()?.block_on(async {
        let mut stream = job.check(&embedder, &nli, &cache).await?;
        let mut totals = Totals::default();
        while let Some(result) = stream.next().await {
            let result = result?;
            totals.add(result.verdict);
            let mut out = stdout.lock();
            serde_json::to_writer(&mut out, &job.view(result))?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        let mut out = stdout.lock();
        serde_json::to_writer(&mut out, &serde_json::json!({ "done": totals }))?;
        out.write_all(b"\n")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
