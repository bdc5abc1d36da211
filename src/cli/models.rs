//! `concord models list|pull`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::print_out;
use concord::model::source;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Models found in Concord's cache and the Hugging Face cache.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a model from the Hugging Face Hub into the Hugging Face cache.
    Pull {
        /// Hub id, e.g. sentence-transformers/all-MiniLM-L6-v2.
        id: String,
    },
}

pub fn run(command: ModelsCommand) -> Result<ExitCode> {
    match command {
        ModelsCommand::List { json } => {
            let models = source::list_cached();
            let text = if json {
                serde_json::to_string_pretty(&models)? + "\n"
            } else if models.is_empty() {
                "no models cached; run scripts/fetch-models.sh (offline) or `concord models pull ID`\n".to_string()
            } else {
                models.iter().map(|m| format!("{:<50} {:<12} {}\n", m.id, m.cache, m.path.display())).collect()
            };
            print_out(&text)?;
        }
        ModelsCommand::Pull { id } => {
            let path = source::download(&id)?;
            print_out(&format!("{id} -> {}\n", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
