//! NLI: Hugging Face cross-encoders of every supported architecture (small random checkpoints
//! built here, labels in a deliberately unusual `id2label` order), Concord's own model on real
//! rows of ../shared/data, and the HTTP route's errors.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{linear, VarBuilder, VarMap};
use candle_transformers::models::{debertav2, distilbert};
use concord::model::bert;
use concord::runtime::EngineConfig;
use concord::server::Limits;
use concord::tasks::nli::{NliModel, NliPair, Purpose};
use serde_json::{json, Value};

/// Writes a checkpoint whose classifier output `favoured` has a large bias and zero weights,
/// so every pair must come out as `id2label[favoured]`.
fn write_classifier(
    dir: &Path,
    mut config: Value,
    out_name: &str,
    favoured: usize,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) {
    std::fs::create_dir_all(dir).expect("create dir");
    config["id2label"] = json!({"0": "CONTRADICTION", "1": "entailment", "2": "neutral"});
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    std::fs::copy(common::default_model_dir().join("tokenizer.json"), dir.join("tokenizer.json")).expect("tokenizer");
    let mut varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("random weights");
    let mut bias = [0f32; 3];
    bias[favoured] = 10.0;
    varmap.set_one(format!("{out_name}.bias"), Tensor::new(&bias, &Device::Cpu).expect("bias")).expect("set bias");
    varmap
        .set_one(format!("{out_name}.weight"), Tensor::zeros((3, 32), DType::F32, &Device::Cpu).expect("zeros"))
        .expect("set weight");
    varmap.save(dir.join("model.safetensors")).expect("save weights");
}

async fn assert_labels(dir: &Path, expected: &str) {
    let model = NliModel::load(dir.to_str().expect("utf-8"), &[], &Device::Cpu, DType::F32, EngineConfig::default())
        .expect("classification checkpoint loads");
    let pairs = vec![
        NliPair::new("A man is playing a guitar.".to_string(), "A person plays music.".to_string()),
        NliPair::new("Nobody is here.".to_string(), "The room is full of people.".to_string()),
    ];
    for result in model.classify(pairs, Purpose::Nli).await.expect("classifies") {
        assert_eq!(result.label, expected, "{}", dir.display());
        let total: f32 = result.scores.values().sum();
        assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
        assert!(result.scores[expected] > 0.99);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_cross_encoders_of_every_architecture_map_labels_by_id2label() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| tmp.path().join(name);
    let h = 32;

    // BERT: pooler inside the encoder, `classifier` on top. Output 0 is CONTRADICTION.
    let config = common::tiny::bert("bert", 0, 2, 128);
    let parsed: bert::Config = serde_json::from_value(config.clone()).expect("config");
    write_classifier(&d("bert"), config, "classifier", 0, |vb| {
        bert::BertModel::load(vb.pp("bert"), &parsed)?;
        linear(h, h, vb.pp("bert.pooler.dense"))?;
        linear(h, 3, vb.pp("classifier")).map(|_| ())
    });
    assert_labels(&d("bert"), "contradiction").await;

    // RoBERTa: `classifier.dense` then `classifier.out_proj`. Output 2 is neutral.
    let config = common::tiny::bert("roberta", 1, 2, 130);
    let parsed: bert::Config = serde_json::from_value(config.clone()).expect("config");
    write_classifier(&d("roberta"), config, "classifier.out_proj", 2, |vb| {
        bert::BertModel::load(vb.pp("roberta"), &parsed)?;
        linear(h, h, vb.pp("classifier.dense"))?;
        linear(h, 3, vb.pp("classifier.out_proj")).map(|_| ())
    });
    assert_labels(&d("roberta"), "neutral").await;

    // DistilBERT: `pre_classifier` then `classifier`. Output 1 is entailment.
    let config = common::tiny::distilbert();
    let parsed: distilbert::Config = serde_json::from_value(config.clone()).expect("config");
    write_classifier(&d("distilbert"), config, "classifier", 1, |vb| {
        distilbert::DistilBertModel::load(vb.pp("distilbert"), &parsed)?;
        linear(h, h, vb.pp("pre_classifier"))?;
        linear(h, 3, vb.pp("classifier")).map(|_| ())
    });
    assert_labels(&d("distilbert"), "entailment").await;

    // DeBERTa-v2: `pooler.dense` then `classifier`. Output 2 is neutral.
    let config = common::tiny::deberta_v2();
    let parsed: debertav2::Config = serde_json::from_value(config.clone()).expect("config");
    write_classifier(&d("deberta"), config, "classifier", 2, |vb| {
        debertav2::DebertaV2Model::load(vb.pp("deberta"), &parsed)?;
        linear(h, h, vb.pp("pooler.dense"))?;
        linear(h, 3, vb.pp("classifier")).map(|_| ())
    });
    assert_labels(&d("deberta"), "neutral").await;
}

#[test]
fn a_checkpoint_without_nli_labels_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = common::tiny::bert("bert", 0, 2, 128);
    let parsed: bert::Config = serde_json::from_value(config.clone()).expect("config");
    config["id2label"] = json!({"0": "toxic", "1": "clean"});
    std::fs::write(tmp.path().join("config.json"), config.to_string()).expect("config");
    std::fs::copy(common::default_model_dir().join("tokenizer.json"), tmp.path().join("tokenizer.json"))
        .expect("tokenizer");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    bert::BertModel::load(vb.pp("bert"), &parsed).expect("encoder");
    linear(32, 32, vb.pp("bert.pooler.dense")).expect("pooler");
    linear(32, 2, vb.pp("classifier")).expect("classifier");
    varmap.save(tmp.path().join("model.safetensors")).expect("save");
    let err =
        NliModel::load(tmp.path().to_str().expect("utf-8"), &[], &Device::Cpu, DType::F32, EngineConfig::default())
            .err()
            .expect("refused");
    assert!(format!("{err:#}").contains("label 'toxic'"), "{err:#}");
}

#[tokio::test]
async fn the_nli_route_validates_pairs() {
    let model =
        NliModel::load(concord::tasks::nli::DEFAULT_MODEL_DIR, &[], &Device::Cpu, DType::F32, EngineConfig::default())
            .expect("the committed NLI model loads");
    let server = common::TestServer::start_with_nli(EngineConfig::default(), Limits::default(), model).await;
    let client = reqwest::Client::new();
    let cases = [
        (json!({"pairs": []}), 422, "empty_input"),
        (json!({"pairs": [{"premise": "x"}]}), 400, "invalid_request"),
        (json!({"pairs": [{"premise": "x", "hypothesis": " "}]}), 422, "empty_input"),
        (json!({"pairs": [{"premise": "x".repeat(200_000), "hypothesis": "y"}]}), 422, "input_too_large"),
    ];
    for (body, status, code) in cases {
        let response = client.post(server.url("/v1/nli")).json(&body).send().await.expect("request");
        assert_eq!(response.status(), status, "{code}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["code"], code);
    }
    // Real pairs: the first 60 of SICK dev (the committed model scores 0.85 on all 495).
    let path = common::shared_dir().join("data/sick/dev.jsonl");
    let rows: Vec<concord::eval::nli::NliRow> = concord::eval::read_jsonl(&path).expect("SICK dev reads");
    let rows = &rows[..60];
    let pairs: Vec<Value> = rows.iter().map(|r| json!({"premise": r.premise, "hypothesis": r.hypothesis})).collect();
    let response = client.post(server.url("/v1/nli")).json(&json!({ "pairs": pairs })).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let results = body["results"].as_array().expect("results");
    let correct = rows.iter().zip(results).filter(|(r, res)| res["label"] == r.label.as_str()).count();
    assert!(correct >= 45, "{correct} of 60 SICK dev pairs right");
    for result in results {
        let total: f64 = result["scores"].as_object().map_or(0.0, |s| s.values().filter_map(Value::as_f64).sum());
        assert!((total - 1.0).abs() < 1e-3);
    }
}

/// RTE's long premises and world knowledge are the committed model's weakest file (its
/// cross-encoder alone scores 0.62 on dev, the mix with the pair head 0.70).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_model_beats_chance_on_rte_dev() {
    let model =
        NliModel::load(concord::tasks::nli::DEFAULT_MODEL_DIR, &[], &Device::Cpu, DType::F32, EngineConfig::default())
            .expect("the committed NLI model loads");
    assert!(model.pair_encoder().is_some(), "the committed model has a pair head");
    let path = common::shared_dir().join("data/rte/dev.jsonl");
    let rows: Vec<concord::eval::nli::NliRow> = concord::eval::read_jsonl(&path).expect("RTE dev reads");
    let report = concord::eval::nli::evaluate(&model, &rows, Purpose::Nli, &indicatif::ProgressBar::hidden())
        .await
        .expect("evaluates");
    assert_eq!(report.scores.n, 240);
    // 0.5 is chance on this balanced 2-way file; 0.6 is 3.1 standard errors above it.
    assert!(report.scores.accuracy > 0.6, "RTE dev accuracy {}", report.scores.accuracy);
}

/// A misspelt `--balance` name would otherwise train unbalanced without a word.
#[test]
fn train_nli_refuses_a_balance_name_that_matches_no_data_file() {
    let out = tempfile::tempdir().expect("tempdir");
    let rte = common::shared_dir().join("data/rte");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["train", "nli", "--base-model"])
        .arg(common::default_model_dir())
        .arg("--data")
        .arg(rte.join("train.jsonl"))
        .arg("--dev")
        .arg(rte.join("dev.jsonl"))
        .args(["--balance", "climate-fever", "--out"])
        .arg(out.path())
        .output()
        .expect("runs concord");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--balance climate-fever names no training file's data set (they are: rte)"), "{stderr}");
}
