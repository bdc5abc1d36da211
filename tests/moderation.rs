//! Moderation end to end: the committed model on real rows of ../shared/data, the HTTP route's
//! offsets in every unit, bad input, and concurrent clients.

mod common;

use std::collections::BTreeMap;

use concord::eval::moderation::{auc, chars_of_byte_ranges, span_f1, ModerationRow};
use concord::runtime::EngineConfig;
use concord::server::Limits;
use concord::text::offsets::{to_byte, OffsetUnit};
use serde_json::{json, Value};

fn rows(relative: &str, count: usize) -> Vec<ModerationRow> {
    let path = common::shared_dir().join("data").join(relative);
    let mut rows: Vec<ModerationRow> = concord::eval::read_jsonl(&path).expect("data file reads");
    rows.truncate(count);
    rows
}

async fn moderation_server(limits: Limits) -> common::TestServer {
    let moderator = common::load_moderator(EngineConfig::default());
    common::TestServer::start_with(EngineConfig::default(), limits, Some(moderator)).await
}

fn texts(rows: &[ModerationRow]) -> Vec<String> {
    rows.iter().map(|r| r.text.clone()).collect()
}

#[tokio::test]
async fn finds_toxic_spans_on_real_posts() {
    let moderator = common::load_moderator(EngineConfig::default());
    let rows = rows("toxic_spans/dev.jsonl", 60);
    let results = moderator.moderate(&texts(&rows), &BTreeMap::new()).await.expect("moderates");
    let mean = rows
        .iter()
        .zip(&results)
        .map(|(row, result)| {
            let ranges: Vec<_> = result.spans.iter().map(|s| s.range.clone()).collect();
            span_f1(&row.gold_chars().expect("span rows"), &chars_of_byte_ranges(&row.text, &ranges))
        })
        .sum::<f64>()
        / rows.len() as f64;
    // Dev span F1 is about 0.6 (README); a model that marks nothing or everything is far lower.
    assert!(mean > 0.45, "span F1 on 60 dev posts: {mean:.3}");
}

#[tokio::test]
async fn ranks_offensive_tweets_above_inoffensive_ones() {
    let moderator = common::load_moderator(EngineConfig::default());
    let rows = rows("olid/dev.jsonl", 120);
    let results = moderator.moderate(&texts(&rows), &BTreeMap::new()).await.expect("moderates");
    let scores: Vec<f32> = results.iter().map(|r| r.category_scores["offensive"]).collect();
    let gold: Vec<bool> = rows.iter().map(|r| r.olid_offensive().expect("OLID label")).collect();
    let area = auc(&scores, &gold).expect("both classes in 120 rows");
    assert!(area > 0.8, "offensive AUC on 120 OLID dev tweets: {area:.3}");
    for result in &results {
        assert!(result.category_scores.values().all(|s| (0.0..=1.0).contains(s)));
        assert_eq!(result.flagged, result.categories.values().any(|&f| f));
    }
}

#[tokio::test]
async fn span_offsets_round_trip_in_every_unit() {
    let server = moderation_server(Limits::default()).await;
    let client = reqwest::Client::new();
    // Emoji (surrogate pairs in UTF-16), CJK and a combining accent before the insult.
    let text = "😀👍🏽 漢字テスト cafe\u{301} — you are a stupid fucking idiot and everyone knows it 🙄";
    for unit in ["utf16", "utf8", "char"] {
        let response = client
            .post(server.url("/v1/moderate"))
            .json(&json!({"input": text, "offsets": unit}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{unit}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["offsets"], unit);
        let spans = body["results"][0]["spans"].as_array().expect("spans").clone();
        assert!(!spans.is_empty(), "{unit}: no span found in {body}");
        let offset_unit: OffsetUnit = serde_json::from_value(json!(unit)).expect("unit");
        for span in spans {
            let start = to_byte(text, span["start"].as_u64().expect("start") as usize, offset_unit)
                .expect("start on a boundary");
            let end =
                to_byte(text, span["end"].as_u64().expect("end") as usize, offset_unit).expect("end on a boundary");
            assert_eq!(&text[start..end], span["text"].as_str().expect("text"), "{unit}");
        }
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let limits = Limits { max_body_bytes: 4 * 1024 * 1024, ..Limits::default() };
    let server = moderation_server(limits).await;
    let client = reqwest::Client::new();
    let megabyte = "a".repeat(1 << 20);
    let cases = [
        (json!({"input": ""}), 422, "empty_input"),
        (json!({"input": []}), 422, "empty_input"),
        (json!({"input": ["fine", "  "]}), 422, "empty_input"),
        (json!({"input": megabyte}), 422, "input_too_large"),
        (json!({"input": "x", "offsets": "bytes"}), 400, "invalid_request"),
        (json!({"input": "x", "thresholds": {"spam": 0.5}}), 422, "unknown_category"),
        (json!({"input": "x", "thresholds": {"offensive": 1.5}}), 422, "invalid_threshold"),
        (json!({"input": 42}), 400, "invalid_request"),
        (json!({"text": "x"}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let response = client.post(server.url("/v1/moderate")).json(&body).send().await.expect("request");
        assert_eq!(response.status(), status, "{code}");
        let error: Value = response.json().await.expect("json error");
        assert_eq!(error["error"]["code"], code);
        assert!(!error["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    let ok = client
        .post(server.url("/v1/moderate"))
        .json(&json!({"input": ["Thanks for the fix!", "What a moron."], "thresholds": {"offensive": 0.99}}))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        body["results"][1]["categories"]["offensive"],
        json!(body["results"][1]["category_scores"]["offensive"].as_f64().unwrap_or(0.0) >= 0.99)
    );
}

#[tokio::test]
async fn holds_32_concurrent_clients() {
    let server = moderation_server(Limits::default()).await;
    let client = reqwest::Client::new();
    let rows = rows("olid/dev.jsonl", 32);
    let requests = rows.iter().map(|row| {
        let client = client.clone();
        let url = server.url("/v1/moderate");
        let text = row.text.clone();
        async move { client.post(url).json(&json!({"input": text})).send().await }
    });
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.expect("request").status(), 200);
    }
}

#[tokio::test]
async fn without_a_moderation_model_the_route_says_so() {
    let server = common::TestServer::start(EngineConfig::default(), Limits::default()).await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/moderate"))
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "model_unavailable");
}

fn write_rows(dir: &std::path::Path, name: &str, relative: &str, count: usize) -> std::path::PathBuf {
    let path = common::shared_dir().join("data").join(relative);
    let lines: Vec<String> =
        std::fs::read_to_string(path).expect("data").lines().take(count).map(String::from).collect();
    let out = dir.join(name);
    std::fs::write(&out, lines.join("\n") + "\n").expect("write rows");
    out
}

fn eval_json(data: &std::path::Path) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["eval", "moderation", "--format", "json", "--data"])
        .arg(data)
        .output()
        .expect("concord runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

#[test]
fn eval_reports_the_metrics_each_file_supports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let olid = eval_json(&write_rows(dir.path(), "olid.jsonl", "olid/dev.jsonl", 40));
    assert_eq!(olid["n"], 40);
    assert_eq!(olid["flag_label"], "offensive");
    for key in ["flag_macro_f1", "flag_accuracy", "flag_auc", "texts_per_s"] {
        let value = olid[key].as_f64().unwrap_or(-1.0);
        assert!(value > 0.0, "{key} = {value}");
    }
    assert!(olid.get("span_f1").is_none(), "OLID has no spans");

    let spans = eval_json(&write_rows(dir.path(), "spans.jsonl", "toxic_spans/dev.jsonl", 20));
    assert_eq!(spans["n"], 20);
    assert!(spans["span_f1"].as_f64().unwrap_or(-1.0) > 0.0);
    assert!(spans.get("flag_auc").is_none(), "every Toxic Spans post is toxic: no AUC");
}

#[test]
fn moderate_cli_writes_one_line_per_text_with_offsets_in_the_asked_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"text\": \"😀 you absolute idiot\"}\n\n{\"id\": \"b\", \"text\": \"Lovely work, thanks.\"}\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["moderate", "--offsets", "utf16"])
        .arg(&input)
        .output()
        .expect("concord runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["id"].clone(), lines[0]["line"].clone()), (json!("a"), json!(1)));
    assert_eq!((lines[1]["id"].clone(), lines[1]["line"].clone()), (json!("b"), json!(3)));
    let text = "😀 you absolute idiot";
    let spans = lines[0]["spans"].as_array().expect("spans");
    assert!(!spans.is_empty(), "the insult is marked: {}", lines[0]);
    for span in spans {
        let start = to_byte(text, span["start"].as_u64().unwrap_or(0) as usize, OffsetUnit::Utf16).expect("boundary");
        let end = to_byte(text, span["end"].as_u64().unwrap_or(0) as usize, OffsetUnit::Utf16).expect("boundary");
        assert_eq!(&text[start..end], span["text"].as_str().unwrap_or(""));
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["moderate", "--moderation-model"])
        .arg(dir.path().join("missing"))
        .arg(&input)
        .output()
        .expect("concord runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing"), "error names the folder");
}

/// A Hugging Face multi-label sequence classifier (toxic-bert style) works as the moderation
/// model: its labels become the categories, each with its own sigmoid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_multi_label_classifier_can_replace_the_default_model() {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{linear, VarBuilder, VarMap};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::tiny::bert("bert", 0, 2, 128);
    let parsed: concord::model::bert::Config = serde_json::from_value(config.clone()).expect("config");
    config["id2label"] = json!({"0": "toxic", "1": "insult"});
    config["problem_type"] = json!("multi_label_classification");
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    std::fs::copy(common::default_model_dir().join("tokenizer.json"), dir.path().join("tokenizer.json"))
        .expect("tokenizer");
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    concord::model::bert::BertModel::load(vb.pp("bert"), &parsed).expect("encoder");
    linear(32, 32, vb.pp("bert.pooler.dense")).expect("pooler");
    linear(32, 2, vb.pp("classifier")).expect("classifier");
    varmap.set_one("classifier.weight", Tensor::zeros((2, 32), DType::F32, &Device::Cpu).expect("zeros")).expect("set");
    varmap.set_one("classifier.bias", Tensor::new(&[2f32, -2.0], &Device::Cpu).expect("bias")).expect("set");
    varmap.save(dir.path().join("model.safetensors")).expect("save");

    let spec = dir.path().to_str().expect("utf-8");
    let moderator = concord::tasks::moderate::Moderator::load(spec, &Device::Cpu, DType::F32, EngineConfig::default())
        .expect("hub classifier loads");
    assert_eq!(moderator.config().categories, vec!["toxic", "insult"]);
    let results = moderator.moderate(&["some text".to_string()], &BTreeMap::new()).await.expect("moderates");
    let scores = &results[0].category_scores;
    // One sigmoid per label: sigmoid(2) and sigmoid(-2). A softmax over the two would give
    // 0.982 and 0.018.
    assert!((scores["toxic"] - 0.8808).abs() < 1e-3, "{scores:?}");
    assert!((scores["insult"] - 0.1192).abs() < 1e-3, "{scores:?}");
    assert_eq!(results[0].categories["toxic"], true);
    assert_eq!(results[0].categories["insult"], false);
    assert!(results[0].flagged);
    assert!(results[0].spans.is_empty());
}
