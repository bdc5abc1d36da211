//! Moderation end to end: the committed model on real rows of ../shared/data, the HTTP route's
//! offsets in every unit, bad input, and concurrent clients.

mod common;

use concord::eval::moderation::{auc, chars_of_byte_ranges, span_f1, ModerationRow};
use concord::runtime::EngineConfig;
use concord::server::Limits;
use concord::tasks::moderate::{SpanDecoding, Thresholds};
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
    let results = moderator.moderate(&texts(&rows), &Thresholds::default()).await.expect("moderates");
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
    let results = moderator.moderate(&texts(&rows), &Thresholds::default()).await.expect("moderates");
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
async fn marks_no_spans_in_most_inoffensive_tweets() {
    let moderator = common::load_moderator(EngineConfig::default());
    let clean: Vec<ModerationRow> = rows("olid/dev.jsonl", 400).into_iter().filter(|r| r.labelled_clean()).collect();
    let results = moderator.moderate(&texts(&clean), &Thresholds::default()).await.expect("moderates");
    let spanned = results.iter().filter(|r| !r.spans.is_empty()).count() as f64 / clean.len() as f64;
    // Under 1% of OLID's clean dev tweets get a span (model card); a token head trained on
    // toxic posts alone marked words in 88% of them.
    assert!(spanned < 0.2, "{:.0}% of {} clean OLID dev tweets got spans", spanned * 100.0, clean.len());
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
        (json!({"input": "x", "span_threshold": -0.1}), 422, "invalid_threshold"),
        (json!({"input": "x", "span_relative_threshold": 2}), 422, "invalid_threshold"),
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
    // Span thresholds of 0 mark every word: one span over the whole text.
    let everything = client
        .post(server.url("/v1/moderate"))
        .json(&json!({"input": "Thanks for the fix", "span_threshold": 0, "span_relative_threshold": 0}))
        .send()
        .await
        .expect("request");
    assert_eq!(everything.status(), 200);
    let body: Value = everything.json().await.expect("json");
    assert_eq!(
        body["results"][0]["spans"],
        json!([{"start": 0, "end": 18, "score": body["results"][0]["spans"][0]["score"], "text": "Thanks for the fix"}])
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
    let clean_with_spans = olid["clean_with_spans"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&clean_with_spans), "clean_with_spans = {clean_with_spans}");

    let spans = eval_json(&write_rows(dir.path(), "spans.jsonl", "toxic_spans/dev.jsonl", 20));
    assert_eq!(spans["n"], 20);
    let span_f1 = spans["span_f1"].as_f64().unwrap_or(-1.0);
    assert!(span_f1 > 0.0);
    let shapes = spans["span_f1_by_shape"].as_object().expect("span_f1_by_shape");
    let posts: Vec<(f64, f64)> =
        shapes.values().map(|s| (s["posts"].as_f64().unwrap_or(0.0), s["span_f1"].as_f64().unwrap_or(-1.0))).collect();
    assert_eq!(posts.iter().map(|(n, _)| n).sum::<f64>(), 20.0, "{shapes:?}");
    let weighted = posts.iter().map(|(n, f1)| n * f1).sum::<f64>() / 20.0;
    assert!((weighted - span_f1).abs() < 1e-9, "{weighted} vs {span_f1}");
    assert!(spans.get("flag_auc").is_none(), "every Toxic Spans post is toxic: no AUC");
    assert!(spans.get("clean_with_spans").is_none(), "no Toxic Spans post is labelled clean");
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

fn load(spec: &std::path::Path) -> anyhow::Result<concord::tasks::moderate::Moderator> {
    use candle_core::{DType, Device};
    let spec = spec.to_str().expect("utf-8");
    concord::tasks::moderate::Moderator::load(spec, &Device::Cpu, DType::F32, EngineConfig::default())
}

/// A Hugging Face multi-label sequence classifier (toxic-bert style) works as the moderation
/// model: its labels become the categories, each with its own sigmoid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_multi_label_classifier_can_replace_the_default_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::tiny::classifier(dir.path(), &["toxic", "insult"], &[2.0, -2.0], true, false);
    let moderator = load(dir.path()).expect("hub classifier loads");
    assert_eq!(moderator.categories().collect::<Vec<_>>(), vec!["toxic", "insult"]);
    assert_eq!(moderator.span_decoding(), None);
    let results = moderator.moderate(&["some text".to_string()], &Thresholds::default()).await.expect("moderates");
    let scores = &results[0].category_scores;
    // One sigmoid per label: sigmoid(2) and sigmoid(-2). A softmax over the two would give
    // 0.982 and 0.018.
    assert!((scores["toxic"] - 0.8808).abs() < 1e-3, "{scores:?}");
    assert!((scores["insult"] - 0.1192).abs() < 1e-3, "{scores:?}");
    assert!(results[0].categories["toxic"]);
    assert!(!results[0].categories["insult"]);
    assert!(results[0].flagged);
    assert!(results[0].spans.is_empty());
    let span_threshold = Thresholds { span: Some(0.5), ..Thresholds::default() };
    let refused = moderator.check_thresholds(&span_threshold).expect_err("no span model to apply it to");
    assert_eq!(refused.code, "invalid_threshold");
}

/// A Hugging Face token classifier marks spans: a token's probability is one minus that of the
/// label named `O`, wherever it sits in `id2label`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_token_classifier_marks_spans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (marking, quiet) = (dir.path().join("marking"), dir.path().join("quiet"));
    // softmax([3, 0]) = [0.9526, 0.0474]: every token is B-TOX with 0.9526.
    common::tiny::classifier(&marking, &["B-TOX", "O"], &[3.0, 0.0], false, true);
    common::tiny::classifier(&quiet, &["B-TOX", "O"], &[0.0, 3.0], false, true);
    let text = "you absolute clown".to_string();

    let moderator = load(&marking).expect("token classifier loads");
    assert_eq!(moderator.categories().count(), 0);
    assert_eq!(moderator.span_decoding(), Some(SpanDecoding::absolute(0.5)));
    let results = moderator.moderate(std::slice::from_ref(&text), &Thresholds::default()).await.expect("moderates");
    assert_eq!(results[0].spans.len(), 1, "{:?}", results[0].spans);
    assert_eq!(&text[results[0].spans[0].range.clone()], text);
    assert!((results[0].spans[0].score - 0.9526).abs() < 1e-3);
    assert!(!results[0].flagged, "no categories, nothing flagged");
    // A request's span threshold replaces the model's 0.5: above 0.9526, nothing is marked.
    let stricter = Thresholds { span: Some(0.96), ..Thresholds::default() };
    moderator.check_thresholds(&stricter).expect("a span model takes span thresholds");
    let results = moderator.moderate(std::slice::from_ref(&text), &stricter).await.expect("moderates");
    assert!(results[0].spans.is_empty(), "{:?}", results[0].spans);

    let moderator = load(&quiet).expect("token classifier loads");
    let results = moderator.moderate(&[text], &Thresholds::default()).await.expect("moderates");
    assert!(results[0].spans.is_empty(), "{:?}", results[0].spans);
}

/// A setup file takes each category from the model it names (under its own label or another),
/// with its own threshold, and the spans from a third model; each model is loaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_file_chooses_a_model_per_category_and_for_spans() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::tiny::classifier(&dir.path().join("toxicity"), &["toxic", "insult"], &[2.0, -2.0], true, false);
    common::tiny::classifier(&dir.path().join("spans"), &["O", "TOXIC"], &[0.0, 3.0], false, true);
    let setup = json!({
        "categories": {
            "toxic": {"model": "toxicity"},
            "rude": {"model": "toxicity", "label": "insult", "threshold": 0.1},
            "offensive": {"model": concord::tasks::moderate::DEFAULT_MODEL_DIR}
        },
        "spans": {"model": "spans", "threshold": 0.9, "relative_threshold": 0.5}
    });
    let path = dir.path().join("setup.json");
    std::fs::write(&path, setup.to_string()).expect("setup");
    let moderator = load(&path).expect("setup loads");
    assert_eq!(moderator.id(), "setup/setup");
    assert_eq!(moderator.models().len(), 3, "{:?}", moderator.models());
    assert_eq!(moderator.categories().collect::<Vec<_>>(), vec!["offensive", "rude", "toxic"]);
    let thresholds = moderator.thresholds();
    assert_eq!(thresholds["rude"], 0.1);
    assert_eq!(thresholds["toxic"], 0.5);
    let own = concord::tasks::moderate::ModerationConfig::read(std::path::Path::new(
        concord::tasks::moderate::DEFAULT_MODEL_DIR,
    ))
    .expect("default config");
    assert_eq!(thresholds["offensive"], own.thresholds["offensive"]);
    assert_eq!(moderator.span_decoding(), Some(SpanDecoding { threshold: 0.9, relative: 0.5 }));

    let texts = vec!["Thanks, that reads much better now.".to_string()];
    let results = moderator.moderate(&texts, &Thresholds::default()).await.expect("moderates");
    let result = &results[0];
    assert!((result.category_scores["toxic"] - 0.8808).abs() < 1e-3, "{result:?}");
    assert!((result.category_scores["rude"] - 0.1192).abs() < 1e-3, "{result:?}");
    assert!(result.categories["rude"], "0.119 clears the setup's own threshold 0.1");
    assert!(result.category_scores["offensive"] < own.thresholds["offensive"], "{result:?}");
    assert_eq!(result.spans.len(), 1);
    assert_eq!(&texts[0][result.spans[0].range.clone()], texts[0]);
}

#[test]
fn a_setup_file_that_does_not_fit_its_models_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::tiny::classifier(&dir.path().join("toxicity"), &["toxic", "insult"], &[0.0, 0.0], true, false);
    common::tiny::classifier(&dir.path().join("spans"), &["O", "TOXIC"], &[0.0, 3.0], false, true);
    let cases = [
        (json!({"categories": {"hate": {"model": "toxicity"}}}), "no label 'hate' (it has: toxic, insult)"),
        (json!({"categories": {}, "spans": {"model": "toxicity"}}), "marks no spans"),
        (json!({"categories": {"toxic": {"model": "toxicity", "threshold": 1.5}}}), "within 0..1"),
        (json!({"categories": {}, "spans": {"model": "spans", "relative_threshold": -0.1}}), "within 0..1"),
        (json!({"categories": {"toxic": {"model": "toxicity", "labels": "x"}}}), "unknown field"),
        (json!({"categories": {}}), "names no categories and no span model"),
    ];
    for (setup, reason) in cases {
        let path = dir.path().join("setup.json");
        std::fs::write(&path, setup.to_string()).expect("setup");
        let error = format!("{:#}", load(&path).err().expect("refused"));
        assert!(error.contains(reason), "{setup}: {error}");
    }
}

/// A binary used away from its source tree finds the shipped models under `CONCORD_MODELS_DIR`.
#[test]
fn shipped_models_are_found_under_concord_models_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "you absolute idiot\n").expect("write");
    let moderate = |models: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .env("CONCORD_MODELS_DIR", models)
            .arg("moderate")
            .arg(&input)
            .output()
            .expect("concord runs")
    };
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let missing = moderate(&empty);
    assert!(!missing.status.success(), "no moderation model under an empty CONCORD_MODELS_DIR");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("CONCORD_MODELS_DIR"));

    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).expect("mkdir");
    let shipped = std::path::Path::new(concord::tasks::moderate::DEFAULT_MODEL_DIR);
    std::fs::create_dir_all(moved.join("moderation")).expect("mkdir");
    for entry in std::fs::read_dir(shipped).expect("models/moderation") {
        let entry = entry.expect("entry");
        std::os::unix::fs::symlink(entry.path(), moved.join("moderation").join(entry.file_name())).expect("link");
    }
    let found = moderate(&moved);
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    let line: Value = serde_json::from_slice(&found.stdout).expect("JSON line");
    assert_eq!(line["categories"]["offensive"], true, "{line}");
}
