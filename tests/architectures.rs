//! Every supported architecture loads from a plain HF folder and gives the same vector for a
//! text alone as inside a batch with longer texts (so attention masks and packing are right).
//! The checkpoints are small and randomly initialised, built here, so no download is needed.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::{debertav2, distilbert};
use common::cosine;
use concord::model::{bert, EmbeddingModel};
use concord::runtime::{Engine, EngineConfig};
use concord::tasks::embed;
use serde_json::Value;

fn write_checkpoint(dir: &Path, config: &Value, build: impl FnOnce(VarBuilder) -> candle_core::Result<()>) {
    std::fs::create_dir_all(dir).expect("create dir");
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    // The default model's WordPiece tokenizer fits every config here (vocab_size 30522).
    std::fs::copy(common::default_model_dir().join("tokenizer.json"), dir.join("tokenizer.json")).expect("tokenizer");
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("random weights");
    varmap.save(dir.join("model.safetensors")).expect("save weights");
}

async fn assert_batch_equals_single(dir: &Path, expected_type: &str) {
    let model = EmbeddingModel::load(dir.to_str().expect("utf-8"), &Device::Cpu, DType::F32).expect("loads");
    assert_eq!(model.info.model_type, expected_type);
    assert_eq!(model.info.dimensions, 32);
    let engine = Engine::start(model, EngineConfig::default()).expect("engine");
    let texts = vec![
        "Short one.".to_string(),
        "A considerably longer sentence, with many more words in it than the first one has.".to_string(),
        "Middle length text here.".to_string(),
    ];
    let batched = embed::embed(&engine, texts.clone(), true).await.expect("batch");
    for (text, vector) in texts.into_iter().zip(&batched.vectors) {
        let alone = embed::embed(&engine, vec![text.clone()], true).await.expect("single");
        let cos = cosine(&alone.vectors[0], vector);
        assert!(cos > 0.9999, "{expected_type}: {text:?} differs inside a batch (cosine {cos})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bert_and_roberta_checkpoints_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (model_type, pad, type_vocab, positions) in
        [("bert", 0, 2, 128), ("roberta", 1, 1, 130), ("xlm-roberta", 1, 1, 130)]
    {
        let dir = tmp.path().join(model_type);
        let config = common::tiny::bert(model_type, pad, type_vocab, positions);
        let parsed: bert::Config = serde_json::from_value(config.clone()).expect("bert config");
        write_checkpoint(&dir, &config, |vb| bert::BertModel::load(vb, &parsed).map(|_| ()));
        assert_batch_equals_single(&dir, model_type).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distilbert_checkpoint_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::tiny::distilbert();
    let parsed: distilbert::Config = serde_json::from_value(config.clone()).expect("config");
    write_checkpoint(tmp.path(), &config, |vb| distilbert::DistilBertModel::load(vb, &parsed).map(|_| ()));
    assert_batch_equals_single(tmp.path(), "distilbert").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deberta_v2_checkpoint_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::tiny::deberta_v2();
    let parsed: debertav2::Config = serde_json::from_value(config.clone()).expect("config");
    write_checkpoint(tmp.path(), &config, |vb| debertav2::DebertaV2Model::load(vb, &parsed).map(|_| ()));
    assert_batch_equals_single(tmp.path(), "deberta-v2").await;
}

#[test]
fn unsupported_model_type_is_named_in_the_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "gpt2"}"#).expect("config");
    std::fs::write(tmp.path().join("tokenizer.json"), "{}").expect("tokenizer");
    std::fs::write(tmp.path().join("model.safetensors"), b"").expect("weights");
    let err = EmbeddingModel::load(tmp.path().to_str().expect("utf-8"), &Device::Cpu, DType::F32)
        .err()
        .expect("gpt2 is refused");
    assert!(format!("{err:#}").contains("model_type 'gpt2' is not supported"), "{err:#}");
}

#[test]
fn missing_model_offline_names_the_fetch_command() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["embed", "--model", "someone/missing-model", "-"])
        .env("HF_HUB_OFFLINE", "1")
        .env("CONCORD_HOME", home.path())
        .env("HF_HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"hello\n")?;
            child.wait_with_output()
        })
        .expect("concord runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("someone/missing-model"), "{stderr}");
    assert!(stderr.contains("concord models pull someone/missing-model"), "{stderr}");
}
