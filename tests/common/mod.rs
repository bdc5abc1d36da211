//! Helpers shared by the integration tests: the default model, an in-process server on a free
//! loopback port, and the reference data in `../shared`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use concord::model::source::{self, DEFAULT_MODEL};
use concord::model::EmbeddingModel;
use concord::runtime::{Engine, EngineConfig, Models};
use concord::server::{self, AppState, Limits};

/// The default encoder's folder; `scripts/test.sh` fetches it before the tests run.
pub fn default_model_dir() -> PathBuf {
    source::resolve(DEFAULT_MODEL).unwrap_or_else(|err| {
        panic!("the default model is needed for this test: run scripts/fetch-models.sh ({err:#})")
    })
}

pub fn start_engine(config: EngineConfig) -> Engine {
    let dir = default_model_dir();
    let model =
        EmbeddingModel::load(dir.to_str().expect("utf-8 path"), &candle_core::Device::Cpu, candle_core::DType::F32)
            .expect("default model loads");
    Engine::start(model, config).expect("engine starts")
}

/// A server on 127.0.0.1 with a free port; it stops when the returned guard is dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Engine,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(config: EngineConfig, limits: Limits) -> Self {
        let engine = start_engine(config);
        let models = Models::new(vec![engine.clone()]).expect("one model");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let app = server::router(AppState::new(models, limits));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("server runs");
        });
        Self { addr, engine, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared data folder: `$CONCORD_SHARED_DIR`, else `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("CONCORD_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared"));
    assert!(
        dir.is_dir(),
        "{} is missing: the tests read reference data from it (set CONCORD_SHARED_DIR to move it)",
        dir.display()
    );
    dir
}

/// Sentences with sentence-transformers (PyTorch) embeddings of the default model.
pub fn reference_embeddings() -> Vec<(String, Vec<f32>)> {
    let path = shared_dir().join("reference/minilm/reference.jsonl");
    let raw = std::fs::read_to_string(&path).expect("reference.jsonl readable");
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("reference line is JSON");
            let text = value["text"].as_str().expect("text").to_string();
            let embedding = value["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            (text, embedding)
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}
