//! Where model folders come from.
//!
//! A `--model` value is either a local directory or a Hugging Face hub id. Hub ids are looked up,
//! in order, in Concord's own model cache (filled by `scripts/fetch-models.sh` for offline hosts),
//! in the Hugging Face cache (`HF_HOME`), and finally downloaded with hf-hub unless
//! `HF_HUB_OFFLINE=1`. Every step is cheap to check, so resolution never guesses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The encoder Concord uses when no `--model` is given.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Files a model folder needs; the optional ones refine pooling and truncation.
const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
const OPTIONAL_FILES: &[&str] = &["1_Pooling/config.json", "modules.json", "sentence_bert_config.json"];

/// Concord's data directory: `$CONCORD_HOME`, else `~/.cache/concord`.
pub fn concord_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONCORD_HOME") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("concord")
}

/// The folder of a model Concord ships, `built_in` being where it was in the source tree at
/// build time: `$CONCORD_MODELS_DIR/<its folder name>` when that variable is set (a binary
/// installed away from its source tree), else `built_in`.
pub fn shipped_model_dir(built_in: &str) -> PathBuf {
    let built_in = PathBuf::from(built_in);
    match (std::env::var_os("CONCORD_MODELS_DIR"), built_in.file_name()) {
        (Some(root), Some(name)) => PathBuf::from(root).join(name),
        _ => built_in,
    }
}

/// Where Concord's own cache keeps a hub id's folder.
pub fn concord_cache_dir(model_id: &str) -> PathBuf {
    concord_home().join("models").join(model_id)
}

fn hf_offline() -> bool {
    matches!(std::env::var("HF_HUB_OFFLINE").as_deref(), Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes"))
}

fn is_complete(dir: &Path) -> bool {
    REQUIRED_FILES.iter().all(|f| dir.join(f).is_file())
}

/// Resolves `spec` (a directory or a hub id) to a local folder holding the model files.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !is_complete(path) {
            bail!("model folder {} lacks one of {:?}", path.display(), REQUIRED_FILES);
        }
        return Ok(path.to_path_buf());
    }
    if !looks_like_hub_id(spec) {
        bail!("model '{spec}' is neither an existing directory nor a hub id like 'org/name'");
    }
    let cached = concord_cache_dir(spec);
    if is_complete(&cached) {
        return Ok(cached);
    }
    if let Some(dir) = hf_cache_snapshot(spec) {
        return Ok(dir);
    }
    if hf_offline() {
        bail!("{}", missing_offline_message(spec));
    }
    download(spec)
        .with_context(|| format!("model '{spec}' is not cached and could not be downloaded; {}", fetch_hint(spec)))
}

fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(org) && ok(name)
}

fn fetch_hint(spec: &str) -> String {
    if spec == DEFAULT_MODEL {
        "run scripts/fetch-models.sh to install it for offline use".to_string()
    } else {
        format!("run `concord models pull {spec}` on a host that reaches the Hugging Face Hub, or pass a local folder")
    }
}

fn missing_offline_message(spec: &str) -> String {
    format!(
        "model '{spec}' is not in {} nor in the Hugging Face cache, and HF_HUB_OFFLINE is set; {}",
        concord_cache_dir(spec).display(),
        fetch_hint(spec)
    )
}

/// `$HF_HOME/hub` (default `~/.cache/huggingface/hub`), as the Python tools use it.
fn hf_hub_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache")
            .join("huggingface")
    });
    home.join("hub")
}

/// The snapshot folder `refs/main` points to, when it holds a complete model.
fn hf_cache_snapshot(model_id: &str) -> Option<PathBuf> {
    let repo = hf_hub_cache().join(format!("models--{}", model_id.replace('/', "--")));
    let revision = std::fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let dir = repo.join("snapshots").join(revision.trim());
    is_complete(&dir).then_some(dir)
}

/// Downloads the model's files with hf-hub into the Hugging Face cache and returns the snapshot.
pub fn download(model_id: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .with_cache_dir(hf_hub_cache())
        .build()
        .context("creating the Hugging Face Hub client")?;
    let repo = api.model(model_id.to_string());
    let mut dir = None;
    for file in REQUIRED_FILES {
        let local = repo.get(file).with_context(|| format!("downloading {file} of {model_id}"))?;
        dir = local.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL_FILES {
        if let Err(err) = repo.get(file) {
            tracing::debug!(model_id, file, %err, "optional file not downloaded");
        }
    }
    dir.context("hf-hub returned no path")
}

/// A model found in one of the caches.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedModel {
    pub id: String,
    pub path: PathBuf,
    pub cache: &'static str,
}

/// Lists complete models in Concord's cache and the Hugging Face cache.
pub fn list_cached() -> Vec<CachedModel> {
    let mut found = Vec::new();
    let root = concord_home().join("models");
    if let Ok(orgs) = std::fs::read_dir(&root) {
        for org in orgs.flatten() {
            let Ok(names) = std::fs::read_dir(org.path()) else { continue };
            for name in names.flatten() {
                if is_complete(&name.path()) {
                    found.push(CachedModel {
                        id: format!("{}/{}", org.file_name().to_string_lossy(), name.file_name().to_string_lossy()),
                        path: name.path(),
                        cache: "concord",
                    });
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(hf_hub_cache()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix("models--") else { continue };
            let id = rest.replacen("--", "/", 1);
            if let Some(path) = hf_cache_snapshot(&id) {
                found.push(CachedModel { id, path, cache: "huggingface" });
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_org_slash_name() {
        assert!(looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(looks_like_hub_id("cross-encoder/nli-deberta-v3-xsmall"));
        assert!(!looks_like_hub_id("all-MiniLM-L6-v2"));
        assert!(!looks_like_hub_id("../etc/passwd"));
        assert!(!looks_like_hub_id("a/b/c"));
    }

    #[test]
    fn missing_directory_that_is_not_an_id_is_rejected() {
        let err = resolve("/definitely/not/here").unwrap_err().to_string();
        assert!(err.contains("neither an existing directory"), "{err}");
    }
}
