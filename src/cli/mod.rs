//! Command-line arguments and their dispatch.

mod embed;
mod eval;
mod factcheck;
mod intent;
mod live;
mod merge;
mod models;
mod moderate;
mod train;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use concord::model::source::{self, DEFAULT_MODEL};
use concord::model::{device, EmbeddingModel};
use concord::runtime::{BatchLimits, Engine, EngineConfig, Models};
use concord::server::{self, AppState, Limits};
use concord::tasks::intent::{IntentModel, CONFIG_FILE as INTENT_CONFIG, DEFAULT_MODEL_DIR as DEFAULT_INTENT_DIR};
use concord::tasks::moderate::{
    Moderator, CONFIG_FILE as MODERATION_CONFIG, DEFAULT_MODEL_DIR as DEFAULT_MODERATION_DIR,
};
use concord::tasks::nli::{self, NliModel};

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "Local transformer models for collaborative editors: embeddings, edit intent, merges, fact-checks, moderation",
    long_about = "Concord runs next to a collaboration backend and answers over HTTP, or works on files \
from the command line. Models are local folders or Hugging Face hub ids; offline hosts fetch the \
default encoder with scripts/fetch-models.sh. Set RUST_LOG=concord=debug for more detail."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Embed texts from a file or stdin; writes JSONL with one vector per input to stdout.
    Embed(embed::EmbedArgs),
    /// Three-way merge of BASE, OURS and THEIRS; exit 0 when clean, 1 when conflicts were resolved by suggestion.
    Merge(merge::MergeArgs),
    /// Fact-check a text against sources (a /v1/factcheck request as JSON); one JSON line per claim.
    Factcheck(factcheck::FactcheckArgs),
    /// Classify edits (JSONL with `before` and `after`): intent, scores, semantic change, diff.
    Intent(intent::IntentArgs),
    /// A /v1/live session over JSON lines: client messages in, acks and annotations out.
    Live(live::LiveArgs),
    /// Moderate texts from a file or stdin: category scores and offending spans, one JSON line per text.
    Moderate(moderate::ModerateArgs),
    /// Evaluate a task on labelled data and print its metrics.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Train one of Concord's own models from labelled data.
    Train {
        #[command(subcommand)]
        command: train::TrainCommand,
    },
    /// List cached models or download one from the Hugging Face Hub.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
}

/// Where and how models run.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Device: cpu, cuda, cuda:N or metal (GPU devices need a build with that feature).
    #[arg(long, default_value = "cpu", env = "CONCORD_DEVICE")]
    device: String,
    /// Weights precision: f32; q8 on the CPU (int8 linear layers of BERT-family encoders, needs
    /// AVX-512 VNNI or AVX2); f16 / bf16 on a GPU.
    #[arg(long, default_value = "f32", env = "CONCORD_DTYPE")]
    dtype: String,
}

/// How the engine batches and admits work.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Padded tokens per forward pass (items × longest item).
    #[arg(long, default_value_t = 16_384, env = "CONCORD_MAX_BATCH_TOKENS")]
    max_batch_tokens: usize,
    /// Items per forward pass; 1 turns batching off.
    #[arg(long, default_value_t = 64, env = "CONCORD_MAX_BATCH_SIZE")]
    max_batch_size: usize,
    /// How long a batch may wait for more work, in milliseconds (0: run what is queued now).
    #[arg(long, default_value_t = 2, env = "CONCORD_MAX_BATCH_WAIT_MS")]
    max_batch_wait_ms: u64,
    /// Requests in flight per model before new ones get HTTP 429.
    #[arg(long, default_value_t = 512, env = "CONCORD_MAX_CONCURRENT_REQUESTS")]
    max_concurrent_requests: usize,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            batch: BatchLimits { max_tokens: self.max_batch_tokens.max(1), max_items: self.max_batch_size.max(1) },
            max_batch_wait: Duration::from_millis(self.max_batch_wait_ms),
            max_concurrent_requests: self.max_concurrent_requests.max(1),
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "CONCORD_HOST")]
    host: IpAddr,
    #[arg(long, default_value_t = 8080, env = "CONCORD_PORT")]
    port: u16,
    /// Model folder or hub id; repeat to serve several (the first is the default).
    #[arg(long = "model", default_value = DEFAULT_MODEL, env = "CONCORD_MODEL", value_delimiter = ',')]
    models: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Largest request body, in bytes (larger ones get HTTP 413).
    #[arg(long, default_value_t = Limits::default().max_body_bytes, env = "CONCORD_MAX_BODY_BYTES")]
    max_body_bytes: usize,
    /// Most inputs in one request.
    #[arg(long, default_value_t = Limits::default().max_inputs, env = "CONCORD_MAX_INPUTS")]
    max_inputs: usize,
    /// Most characters in one input.
    #[arg(long, default_value_t = Limits::default().max_input_chars, env = "CONCORD_MAX_INPUT_CHARS")]
    max_input_chars: usize,
    #[command(flatten)]
    tasks: TaskModelArgs,
    /// Require this key as a bearer token (`Authorization: Bearer KEY`) on every route but
    /// /health. Prefer the environment variable: command lines are visible to other users.
    #[arg(long, env = "CONCORD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// The task models a server or a live session uses; each defaults to the committed one.
#[derive(Args, Clone)]
pub struct TaskModelArgs {
    #[command(flatten)]
    moderation: ModerationModelArgs,
    #[command(flatten)]
    nli: NliModelArgs,
    #[command(flatten)]
    intent: IntentModelArgs,
}

/// The task models loaded; a model turned off (`none`) is absent.
pub struct TaskModels {
    pub moderator: Option<Moderator>,
    pub nli: Option<NliModel>,
    pub intent: Option<IntentModel>,
}

impl TaskModelArgs {
    /// Loads every task model; the NLI and intent models share an encoder among `running`.
    pub fn load(&self, running: &[Engine], model: &ModelArgs, engine: &EngineArgs) -> Result<TaskModels> {
        Ok(TaskModels {
            moderator: self.moderation.load(model, engine)?,
            nli: self.nli.load(running, model, engine)?,
            intent: self.intent.load(running, model, engine)?,
        })
    }
}

/// Which moderation model to load.
#[derive(Args, Clone)]
pub struct ModerationModelArgs {
    /// Moderation model: a Concord folder (moderation.json + weights), a Hugging Face
    /// sequence-classification (scores) or token-classification (spans) checkpoint (folder or
    /// hub id), or a setup file (.json) choosing a model per category and one for the spans;
    /// `none` turns /v1/moderate off. Default: the model committed under models/moderation.
    #[arg(long = "moderation-model", env = "CONCORD_MODERATION_MODEL")]
    moderation_model: Option<String>,
}

impl ModerationModelArgs {
    /// Loads the chosen model; `None` when turned off, or when the default folder is missing.
    pub fn load(&self, model: &ModelArgs, engine: &EngineArgs) -> Result<Option<Moderator>> {
        let Some(dir) = task_model_dir(self.moderation_model.as_deref(), DEFAULT_MODERATION_DIR, MODERATION_CONFIG)
        else {
            return Ok(None);
        };
        let device = device::parse_device(&model.device)?;
        let dtype = device::parse_dtype(&model.dtype, &device)?;
        let spec = dir.to_string_lossy();
        let moderator = Moderator::load(&spec, &device, dtype, engine.config())
            .with_context(|| format!("loading the moderation model {spec}"))?;
        tracing::info!(model = moderator.id(), "moderation model loaded");
        Ok(Some(moderator))
    }
}

/// Which NLI model to load.
#[derive(Args, Clone)]
pub struct NliModelArgs {
    /// NLI model: a Concord folder (nli.json + weights), or a Hugging Face NLI cross-encoder
    /// (folder or hub id); `none` turns /v1/nli off. Default: the model under models/nli.
    #[arg(long = "nli-model", env = "CONCORD_NLI_MODEL")]
    nli_model: Option<String>,
}

impl NliModelArgs {
    /// Loads the chosen model; `None` when turned off, or when the default folder is missing.
    /// Its pair head's sentence encoder runs on one of the `running` engines when one is that
    /// model.
    pub fn load(&self, running: &[Engine], model: &ModelArgs, engine: &EngineArgs) -> Result<Option<NliModel>> {
        let Some(dir) = task_model_dir(self.nli_model.as_deref(), nli::DEFAULT_MODEL_DIR, nli::CONFIG_FILE) else {
            return Ok(None);
        };
        let device = device::parse_device(&model.device)?;
        let dtype = device::parse_dtype(&model.dtype, &device)?;
        let spec = dir.to_string_lossy();
        let loaded = NliModel::load(&spec, running, &device, dtype, engine.config())
            .with_context(|| format!("loading the NLI model {spec}"))?;
        tracing::info!(model = loaded.id(), "NLI model loaded");
        Ok(Some(loaded))
    }
}

/// Which edit-intent model to load.
#[derive(Args, Clone)]
pub struct IntentModelArgs {
    /// Intent model: a Concord folder (intent.json + weights) or a Hugging Face
    /// sequence-classification checkpoint over (before, after) pairs (folder or hub id);
    /// `none` turns /v1/intent off. Default: the model committed under models/intent.
    #[arg(long = "intent-model", env = "CONCORD_INTENT_MODEL")]
    intent_model: Option<String>,
}

impl IntentModelArgs {
    /// Loads the chosen model; `None` when turned off, or when the default folder is missing.
    /// Its base encoder runs on one of the `running` engines when one is that model.
    pub fn load(&self, running: &[Engine], model: &ModelArgs, engine: &EngineArgs) -> Result<Option<IntentModel>> {
        let Some(dir) = task_model_dir(self.intent_model.as_deref(), DEFAULT_INTENT_DIR, INTENT_CONFIG) else {
            return Ok(None);
        };
        let device = device::parse_device(&model.device)?;
        let dtype = device::parse_dtype(&model.dtype, &device)?;
        let spec = dir.to_string_lossy();
        let loaded = IntentModel::load(&spec, running, &device, dtype, engine.config())
            .with_context(|| format!("loading the intent model {spec}"))?;
        tracing::info!(model = loaded.id(), "intent model loaded");
        Ok(Some(loaded))
    }
}

/// The folder a task model flag names: `none` → no model; unset → the committed default
/// (moved by `CONCORD_MODELS_DIR`), when it is there (a warning otherwise).
fn task_model_dir(flag: Option<&str>, default_dir: &str, config_file: &str) -> Option<PathBuf> {
    match flag {
        Some("none") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            let dir = source::shipped_model_dir(default_dir);
            if dir.join(config_file).is_file() {
                Some(dir)
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    "no default {config_file} model (set CONCORD_MODELS_DIR to the models/ folder of Concord's \
                     source); its route is off"
                );
                None
            }
        }
    }
}

/// One model with its device and engine settings, for commands that run a single model.
#[derive(Args)]
pub struct EncoderArgs {
    /// Model folder or hub id.
    #[arg(long, default_value = DEFAULT_MODEL, env = "CONCORD_MODEL")]
    model: String,
    #[command(flatten)]
    device: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

impl EncoderArgs {
    pub fn start(&self) -> Result<Engine> {
        start_engine(&self.model, &self.device, &self.engine)
    }
}

/// Loads `spec` and starts its engine.
pub fn start_engine(spec: &str, model: &ModelArgs, engine: &EngineArgs) -> Result<Engine> {
    let device = device::parse_device(&model.device)?;
    let dtype = device::parse_dtype(&model.dtype, &device)?;
    let loaded = EmbeddingModel::load(spec, &device, dtype).with_context(|| format!("loading model '{spec}'"))?;
    tracing::info!(
        model = spec,
        path = %loaded.info.path.display(),
        kind = %loaded.info.model_type,
        dims = loaded.info.dimensions,
        "model loaded"
    );
    Engine::start(loaded, engine.config())
}

/// Writes `text` to stdout. Unlike `print!`, which panics, a failed write (a closed pipe, as in
/// `concord merge … | head`) comes back as an error; see [`is_broken_pipe`].
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Whether `err` comes from writing to a pipe whose reader has gone, which a command line tool
/// treats as the reader being done, not as a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let kind = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| cause.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind));
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            // An empty key would be a server its operator believes protected, and is not:
            // refused before the models load.
            let api_key = args.api_key.as_deref().map(str::trim).map(String::from);
            anyhow::ensure!(api_key.as_deref() != Some(""), "--api-key (CONCORD_API_KEY) is set but empty");
            let engines = args
                .models
                .iter()
                .map(|spec| start_engine(spec, &args.model, &args.engine))
                .collect::<Result<Vec<_>>>()?;
            let models = Models::new(engines).context("no --model given")?;
            let limits = Limits {
                max_body_bytes: args.max_body_bytes,
                max_inputs: args.max_inputs,
                max_input_chars: args.max_input_chars,
            };
            let mut state = AppState::new(models, limits);
            let tasks = args.tasks.load(state.models.all(), &args.model, &args.engine)?;
            if let Some(moderator) = tasks.moderator {
                state = state.with_moderator(Arc::new(moderator));
            }
            if let Some(nli) = tasks.nli {
                state = state.with_nli(Arc::new(nli));
            }
            if let Some(intent) = tasks.intent {
                state = state.with_intent(Arc::new(intent));
            }
            if let Some(key) = api_key {
                state = state.with_api_key(key);
            }
            let addr = SocketAddr::new(args.host, args.port);
            runtime()?.block_on(server::serve(state, addr))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed(args) => embed::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Moderate(args) => moderate::run(args),
        Command::Factcheck(args) => factcheck::run(args),
        Command::Intent(args) => intent::run(args),
        Command::Live(args) => live::run(args),
        Command::Eval { command } => eval::run(command),
        Command::Train { command } => train::run(command),
        Command::Models { command } => models::run(command),
    }
}
