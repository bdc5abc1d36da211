//! `/v1/factcheck` end to end with the committed NLI model: one supported, one refuted and one
//! unverifiable claim over two titled sources, as JSON and as SSE, and the request errors.

mod common;

use candle_core::{DType, Device};
use concord::runtime::EngineConfig;
use concord::server::Limits;
use concord::tasks::nli::{NliModel, DEFAULT_MODEL_DIR};
use serde_json::{json, Value};

async fn server() -> common::TestServer {
    let nli = NliModel::load(DEFAULT_MODEL_DIR, &[], &Device::Cpu, DType::F32, EngineConfig::default())
        .expect("the committed NLI model loads");
    common::TestServer::start_with_nli(EngineConfig::default(), Limits::default(), nli).await
}

const TEXT: &str = "Hi all! The Eiffel Tower was completed in 1889. The Great Wall of China is visible from the Moon \
with the naked eye. The Louvre owns the largest collection of Roman coins in Europe. Can someone check this?";

fn request() -> Value {
    json!({
        "text": TEXT,
        "sources": [
            {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. \
    It was completed in 1889 as the entrance arch to the World's Fair. It is 330 metres tall."},
            {"id": "wall", "title": "Great Wall of China", "text": "The Great Wall of China is a series of fortifications built across northern China. \
    Contrary to a popular myth, the wall is not visible from the Moon with the naked eye. Its construction began in the 7th century BC."}
        ]
    })
}

fn verdicts(claims: &[Value]) -> Vec<(String, String)> {
    claims
        .iter()
        .map(|c| (c["text"].as_str().unwrap_or("").to_string(), c["verdict"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The three claims were found and each got a valid verdict.
fn assert_claims(found: &[(String, String)]) {
    let mut texts: Vec<&str> = found.iter().map(|(t, _)| t.as_str()).collect();
    texts.sort_unstable();
    assert_eq!(
        texts,
        vec![
            "The Eiffel Tower was completed in 1889.",
            "The Great Wall of China is visible from the Moon with the naked eye.",
            "The Louvre owns the largest collection of Roman coins in Europe.",
        ]
    );
    for (_, verdict) in found {
        assert!(["supported", "refuted", "not_enough_info"].contains(&verdict.as_str()), "{verdict}");
    }
}

fn assert_expected(mut found: Vec<(String, String)>) {
    found.sort();
    let expected = [
        ("The Eiffel Tower was completed in 1889.", "supported"),
        ("The Great Wall of China is visible from the Moon with the naked eye.", "refuted"),
        ("The Louvre owns the largest collection of Roman coins in Europe.", "not_enough_info"),
    ];
    let mut expected: Vec<(String, String)> = expected.iter().map(|(t, v)| (t.to_string(), v.to_string())).collect();
    expected.sort();
    assert_eq!(found, expected);
}

/// The request with the wall source's title left out: nothing in the premise the cross-encoder
/// reads then says which wall "the wall" is.
fn untitled_wall_request() -> Value {
    let mut request = request();
    request["sources"][1].as_object_mut().expect("the wall source").remove("title");
    request
}

async fn check_paragraph(request: &Value) -> Value {
    let server = server().await;
    let response =
        reqwest::Client::new().post(server.url("/v1/factcheck")).json(request).send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn verdicts_match_the_sources() {
    let body = check_paragraph(&request()).await;
    assert_expected(verdicts(body["claims"].as_array().expect("claims")));
    assert_eq!(body["totals"], json!({"claims": 3, "supported": 1, "refuted": 1, "not_enough_info": 1}));
}

/// Known failure, kept visible: without the source's title the default NLI model reads
/// "Contrary to a popular myth, the wall is not visible from the Moon ..." as neutral (0.46) over
/// contradiction (0.29), so the Great Wall claim ends not-enough-info instead of refuted.
/// Run with `--ignored`.
#[tokio::test]
#[ignore = "the default NLI model misses a refutation that refers to its subject as \"the wall\" (models/nli/README.md)"]
async fn refutes_through_a_reference_in_an_untitled_source() {
    let body = check_paragraph(&untitled_wall_request()).await;
    assert_expected(verdicts(body["claims"].as_array().expect("claims")));
}

#[tokio::test]
async fn checks_claims_against_sources_with_citations() {
    let body = check_paragraph(&request()).await;
    let claims = body["claims"].as_array().expect("claims").clone();
    assert_claims(&verdicts(&claims));
    let totals = &body["totals"];
    assert_eq!(totals["claims"], 3);
    let sum: u64 = ["supported", "refuted", "not_enough_info"].iter().map(|k| totals[*k].as_u64().unwrap_or(0)).sum();
    assert_eq!(sum, 3);
    let sources = request()["sources"].clone();
    for claim in &claims {
        // Claim offsets (UTF-16 by default; this text is ASCII) point at the claim text.
        let (start, end) = (claim["start"].as_u64().unwrap_or(0) as usize, claim["end"].as_u64().unwrap_or(0) as usize);
        assert_eq!(&TEXT[start..end], claim["text"].as_str().unwrap_or(""));
        for evidence in claim["evidence"].as_array().expect("evidence") {
            let source = sources
                .as_array()
                .and_then(|s| s.iter().find(|s| s["id"] == evidence["source_id"]))
                .expect("cited source exists");
            let text = source["text"].as_str().unwrap_or("");
            let (start, end) =
                (evidence["start"].as_u64().unwrap_or(0) as usize, evidence["end"].as_u64().unwrap_or(0) as usize);
            assert_eq!(
                &text[start..end],
                evidence["text"].as_str().unwrap_or(""),
                "evidence offsets point into the source"
            );
        }
    }
    // Retrieval: each claim's best evidence comes from the source about its subject.
    for (subject, source) in [("Eiffel", "eiffel"), ("Great Wall", "wall")] {
        let claim = claims.iter().find(|c| c["text"].as_str().unwrap_or("").contains(subject)).expect("claim");
        assert_eq!(claim["evidence"][0]["source_id"], source, "{claim}");
    }
    let eiffel = claims.iter().find(|c| c["text"].as_str().unwrap_or("").contains("Eiffel")).expect("claim");
    assert_eq!(eiffel["evidence"][0]["title"], "Eiffel Tower");
}

#[tokio::test]
async fn streams_one_event_per_claim_then_done() {
    let server = server().await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/factcheck"))
        .header("accept", "text/event-stream")
        .json(&request())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"));
    let body = response.text().await.expect("stream ends after done");
    let mut events: Vec<(String, Value)> = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
        let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
        events.push((event, serde_json::from_str(data).expect("event data is JSON")));
    }
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, vec!["claim", "claim", "claim", "done"], "{body}");
    assert_claims(&verdicts(&events[..3].iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()));
    assert_eq!(events[3].1["claims"], 3);
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let server = server().await;
    let client = reqwest::Client::new();
    let many: Vec<Value> = (0..5000).map(|i| json!({"id": i.to_string(), "text": "A short source."})).collect();
    let source = json!([{"id": "a", "text": "Water boils at 100 degrees Celsius at sea level."}]);
    let cases = [
        (json!({"text": "Water boils at 100 degrees.", "sources": []}), 422, "no_sources"),
        (json!({"text": "Water boils at 100 degrees.", "sources": many}), 422, "too_many_sources"),
        (json!({"text": "Water boils.", "sources": source, "spans": [{"start": 3, "end": 400}]}), 422, "invalid_span"),
        (json!({"text": "Water boils.", "sources": source, "spans": [{"start": 5, "end": 2}]}), 422, "invalid_span"),
        (json!({"text": "😀 Water boils.", "sources": source, "spans": [{"start": 1, "end": 5}]}), 422, "invalid_span"),
        (json!({"text": "  ", "sources": source}), 422, "empty_input"),
        (json!({"text": "Water boils.", "sources": source, "top_k": 0}), 422, "invalid_top_k"),
        (
            json!({"text": "Water boils.", "sources": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}),
            422,
            "duplicate_source_id",
        ),
        (json!({"text": "Water boils."}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let response = client.post(server.url("/v1/factcheck")).json(&body).send().await.expect("request");
        assert_eq!(response.status(), status, "{code}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["code"], code);
    }
    // Given spans are checked exactly, even a question.
    let response = client
        .post(server.url("/v1/factcheck"))
        .json(
            &json!({"text": "Does water boil at 100 degrees?", "sources": source, "spans": [{"start": 0, "end": 31}]}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["claims"].as_array().map(Vec::len), Some(1));
}
