//! Helpers shared by the integration tests: the default model, an in-process server on a free
//! loopback port, and the reference data in `../shared`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use concord::model::source::{self, DEFAULT_MODEL};
use concord::model::EmbeddingModel;
use concord::runtime::{Engine, EngineConfig, Models};
use concord::server::{self, AppState, Limits};
use concord::tasks::moderate::{Moderator, DEFAULT_MODEL_DIR as DEFAULT_MODERATION_DIR};
use concord::tasks::nli::NliModel;

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

/// The committed default moderation model.
pub fn load_moderator(config: EngineConfig) -> Moderator {
    Moderator::load(DEFAULT_MODERATION_DIR, &candle_core::Device::Cpu, candle_core::DType::F32, config)
        .expect("the committed moderation model loads")
}

impl TestServer {
    pub async fn start(config: EngineConfig, limits: Limits) -> Self {
        Self::start_with(config, limits, None).await
    }

    /// A server that also serves `/v1/nli` with `model`.
    pub async fn start_with_nli(config: EngineConfig, limits: Limits, model: NliModel) -> Self {
        Self::start_state(config, limits, |state| state.with_nli(std::sync::Arc::new(model))).await
    }

    /// A server that also serves `/v1/moderate` with `moderator`.
    pub async fn start_with(config: EngineConfig, limits: Limits, moderator: Option<Moderator>) -> Self {
        Self::start_state(config, limits, |state| match moderator {
            Some(moderator) => state.with_moderator(std::sync::Arc::new(moderator)),
            None => state,
        })
        .await
    }

    pub async fn start_state(config: EngineConfig, limits: Limits, extend: impl FnOnce(AppState) -> AppState) -> Self {
        let engine = start_engine(config);
        let models = Models::new(vec![engine.clone()]).expect("one model");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let app = server::router(extend(AppState::new(models, limits)));
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

/// Configs of tiny (hidden 32, 2 layers) checkpoints of each architecture, for random-weight tests.
pub mod tiny {
    use serde_json::{json, Value};

    pub fn bert(model_type: &str, pad: u32, type_vocab: usize, positions: usize) -> Value {
        json!({
            "model_type": model_type, "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "max_position_embeddings": positions, "type_vocab_size": type_vocab,
            "layer_norm_eps": 1e-12, "pad_token_id": pad
        })
    }

    pub fn distilbert() -> Value {
        json!({
            "model_type": "distilbert", "vocab_size": 30522, "dim": 32, "n_layers": 2, "n_heads": 4,
            "hidden_dim": 64, "activation": "gelu", "max_position_embeddings": 128,
            "initializer_range": 0.02, "pad_token_id": 0
        })
    }

    pub fn deberta_v2() -> Value {
        json!({
            "model_type": "deberta-v2", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 128, "type_vocab_size": 0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-7, "relative_attention": true, "max_relative_positions": -1,
            "pad_token_id": 0, "position_biased_input": false, "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 16, "share_att_key": true, "norm_rel_ebd": "layer_norm"
        })
    }

    /// Writes a tiny random BERT checkpoint with a classification head whose weights are zero, so
    /// every input gets exactly `bias` as logits: `token` picks `*ForTokenClassification` (no pooler).
    pub fn classifier(dir: &std::path::Path, labels: &[&str], bias: &[f32], multi_label: bool, token: bool) {
        use candle_core::{DType, Device, Tensor};
        use candle_nn::{linear, VarBuilder, VarMap};
        let mut config = bert("bert", 0, 2, 128);
        let parsed: concord::model::bert::Config = serde_json::from_value(config.clone()).expect("config");
        let id2label: serde_json::Map<String, Value> =
            labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
        config["id2label"] = Value::Object(id2label);
        if multi_label {
            config["problem_type"] = json!("multi_label_classification");
        }
        let architecture = if token { "BertForTokenClassification" } else { "BertForSequenceClassification" };
        config["architectures"] = json!([architecture]);
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
        std::fs::copy(super::default_model_dir().join("tokenizer.json"), dir.join("tokenizer.json"))
            .expect("tokenizer");
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        concord::model::bert::BertModel::load(vb.pp("bert"), &parsed).expect("encoder");
        if !token {
            linear(32, 32, vb.pp("bert.pooler.dense")).expect("pooler");
        }
        linear(32, labels.len(), vb.pp("classifier")).expect("classifier");
        let zeros = Tensor::zeros((labels.len(), 32), DType::F32, &Device::Cpu).expect("zeros");
        varmap.set_one("classifier.weight", zeros).expect("set");
        varmap.set_one("classifier.bias", Tensor::new(bias, &Device::Cpu).expect("bias")).expect("set");
        varmap.save(dir.join("model.safetensors")).expect("save");
    }
}
