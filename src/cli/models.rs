//! `concord models list|pull`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

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
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else if models.is_empty() {
                println!("no models cached; run scripts/fetch-models.sh (offline) or `concord models pull ID`");
            } else {
                for model in models {
                    println!("{:<50} {:<12} {}", model.id, model.cache, model.path.display());
                }
            }
        }
        ModelsCommand::Pull { id } => {
            let path = source::download(&id)?;
            println!("{id} -> {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
