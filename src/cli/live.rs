//! `concord live`: a `/v1/live` session over JSON lines, for replaying a recorded edit log or
//! trying the protocol without a WebSocket client. Client messages in, one per line; the
//! session's messages out, one per line. With no debounce to wait for, the annotations follow
//! every accepted message (or, with `--last-only`, only the last one).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{print_out, runtime, EncoderArgs, TaskModelArgs, TaskModels};
use concord::server::Limits;
use concord::tasks::factcheck::EmbeddingCache;
use concord::tasks::live::{self, annotate, parse_message, Capabilities, LiveModels, LiveSession, ServerMessage};

#[derive(Args)]
pub struct LiveArgs {
    /// JSONL file of client messages (`open`, `edit`, `sources`); `-` or nothing reads stdin,
    /// answering each line as it arrives.
    input: Option<PathBuf>,
    /// Annotate once, after the last message, instead of after every accepted one.
    #[arg(long)]
    last_only: bool,
    #[command(flatten)]
    tasks: TaskModelArgs,
    /// The encoder that embeds claims and source sentences, with device and engine settings.
    #[command(flatten)]
    encoder: EncoderArgs,
}

pub fn run(args: LiveArgs) -> Result<ExitCode> {
    let reader: Box<dyn BufRead> = match args.input.as_ref().filter(|p| p.as_os_str() != "-") {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let embedder = args.encoder.start()?;
    let running = std::slice::from_ref(&embedder);
    let (device, engine) = (&args.encoder.device, &args.encoder.engine);
    let TaskModels { moderator, nli, intent } = args.tasks.load(running, device, engine)?;
    anyhow::ensure!(
        moderator.is_some() || nli.is_some() || intent.is_some(),
        "a live session needs a moderation, NLI or intent model"
    );
    let capabilities =
        Capabilities::new(moderator.as_ref(), nli.is_some(), intent.is_some(), Limits::default().max_input_chars);
    let source_cache = EmbeddingCache::new(100_000);
    let models = LiveModels {
        embedder: &embedder,
        moderator: moderator.as_ref(),
        nli: nli.as_ref(),
        intent: intent.as_ref(),
        source_cache: &source_cache,
    };
    let runtime = runtime()?;
    let mut session: Option<LiveSession> = None;
    let write = |message: &ServerMessage| print_out(&(serde_json::to_string(message)? + "\n"));
    for line in reader.lines() {
        let line = line.context("reading the messages")?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = parse_message(&line).and_then(|message| live::handle(&mut session, message, &capabilities));
        match reply {
            Ok(reply) => {
                write(&reply)?;
                if !args.last_only {
                    annotate_session(&runtime, &mut session, models, &write)?;
                }
            }
            Err(err) => write(&ServerMessage::error(err.code, err.message))?,
        }
    }
    if args.last_only {
        annotate_session(&runtime, &mut session, models, &write)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Annotates the session's current version, if it is open, and writes the annotations.
fn annotate_session(
    runtime: &tokio::runtime::Runtime,
    session: &mut Option<LiveSession>,
    models: LiveModels<'_>,
    write: &impl Fn(&ServerMessage) -> Result<()>,
) -> Result<()> {
    let Some(session) = session.as_mut() else {
        return Ok(());
    };
    let cache = session.cache.get_or_insert_with(Default::default);
    let annotations = runtime.block_on(annotate(&session.document, &session.settings, models, cache))?;
    write(&ServerMessage::Annotations(annotations))
}
