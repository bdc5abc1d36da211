//! The HTTP contract: health, info, and every documented error, with the server still serving
//! after each bad request.

mod common;

use common::TestServer;
use concord::runtime::EngineConfig;
use concord::server::Limits;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn post_raw(server: &TestServer, body: Vec<u8>, content_type: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().post(server.url("/v1/embeddings")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn post_json(server: &TestServer, body: Value) -> (StatusCode, Value) {
    post_raw(server, serde_json::to_vec(&body).expect("serialise"), Some("application/json")).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn assert_still_serving(server: &TestServer) {
    let (status, body) = post_json(server, json!({ "input": "still here" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().map(Vec::len), Some(384));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_info_describe_the_loaded_model() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let health = reqwest::get(server.url("/health")).await.expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    let info: Value = reqwest::get(server.url("/info")).await.expect("info").json().await.expect("json");
    assert_eq!(info["models"][0]["dimensions"], 384);
    assert_eq!(info["models"][0]["model_type"], "bert");
    assert_eq!(info["models"][0]["pooling"], "mean");
    assert_eq!(info["models"][0]["max_input_tokens"], 256);
    assert_eq!(info["models"][0]["device"], "cpu");
    assert_eq!(info["models"][0]["dtype"], "f32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_string_input_is_accepted() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let (status, body) = post_json(&server, json!({ "input": "Hello, collaborators." })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["usage"]["total_tokens"], body["usage"]["prompt_tokens"]);
    assert!(body.get("truncated").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_or_415() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let (status, body) = post_raw(&server, b"{not json".to_vec(), Some("application/json")).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_json"));
    let (status, body) = post_json(&server, json!({ "input": 42 })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (status, body) = post_json(&server, json!({ "input": ["ok", 3] })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"));
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("input[1]"));
    let (status, body) = post_json(&server, json!({ "text": "no input field" })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (status, body) = post_raw(&server, b"{\"input\":\"x\"}".to_vec(), None).await;
    assert_eq!((status, code(&body)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    assert_still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_get_422() {
    let limits = Limits { max_input_chars: 1000, ..Limits::default() };
    let server = TestServer::start(EngineConfig::default(), limits).await;
    let cases = [
        (json!({ "input": "" }), "empty_input"),
        (json!({ "input": ["fine", "   "] }), "empty_input"),
        (json!({ "input": [] }), "empty_input"),
        (json!({ "input": "x".repeat(1001) }), "input_too_large"),
        (json!({ "input": vec!["word"; 10_000] }), "too_many_inputs"),
        (json!({ "input": "x", "encoding_format": "base64" }), "unsupported_encoding_format"),
        (json!({ "input": "a ".repeat(400), "truncate": false }), "input_too_long"),
    ];
    for (request, expected) in cases {
        let (status, body) = post_json(&server, request).await;
        assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, expected), "{body}");
    }
    assert_still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_inputs_are_truncated_and_reported() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let (status, body) = post_json(&server, json!({ "input": ["short", "word ".repeat(400)] })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["truncated"], json!([1]));
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_body_gets_413() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let huge = serde_json::to_vec(&json!({ "input": "a".repeat(10 * 1024 * 1024) })).expect("body");
    // The server answers before reading the whole body and closes the connection, so the
    // upload runs beside the read instead of before it.
    let stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        server.addr,
        huge.len()
    );
    let upload = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&huge).await;
    });
    let mut response = Vec::new();
    {
        use tokio::io::AsyncReadExt;
        let _ = reader.read_to_end(&mut response).await;
    }
    upload.abort();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"payload_too_large\""), "{response}");
    assert_still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_and_route_get_404() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let (status, body) = post_json(&server, json!({ "input": "x", "model": "nope/nothing" })).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "model_not_found"));
    let (status, _) = post_json(&server, json!({ "input": "x", "model": "all-MiniLM-L6-v2" })).await;
    assert_eq!(status, StatusCode::OK, "a model is also found by its short name");
    let response = reqwest::get(server.url("/v2/nothing")).await.expect("request");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.expect("json");
    assert_eq!(code(&body), "not_found");
    let response = reqwest::get(server.url("/v1/embeddings")).await.expect("request");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_engine_answers_429_with_retry_after() {
    let config = EngineConfig { max_concurrent_requests: 1, ..EngineConfig::default() };
    let server = TestServer::start(config, Limits::default()).await;
    let held = server.engine.admit().expect("first admission");
    let response = reqwest::Client::new()
        .post(server.url("/v1/embeddings"))
        .json(&json!({ "input": "x" }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(code(&body), "overloaded");
    drop(held);
    assert_still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_batches() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    assert_still_serving(&server).await;
    let response = reqwest::get(server.url("/metrics")).await.expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    assert!(
        text.lines().any(|l| l.starts_with("concord_http_requests_total")
            && l.contains("route=\"/v1/embeddings\"")
            && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(text.contains("concord_batch_items_bucket"), "{text}");
    assert!(text.contains("concord_forward_duration_seconds_bucket"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_route() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let doc: Value = reqwest::get(server.url("/openapi.json")).await.expect("openapi").json().await.expect("json");
    for path in ["/health", "/info", "/v1/embeddings", "/v1/merge"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    for schema in ["EmbeddingsRequest", "MergeOutcome", "ErrorBody"] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "{schema} missing");
    }
    assert_eq!(
        doc["paths"]["/v1/embeddings"]["post"]["responses"]["429"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

#[tokio::test]
async fn an_api_key_guards_every_route_but_health() {
    let server = TestServer::start_state(EngineConfig::default(), Limits::default(), |state| {
        state.with_api_key("s3cret".to_string())
    })
    .await;
    let client = reqwest::Client::new();
    let body = json!({"input": "hello"});
    let embed = |key: Option<&str>| {
        let request = client.post(server.url("/v1/embeddings")).json(&body);
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    };
    for (key, message) in [(None, "needs an API key"), (Some("guess"), "wrong")] {
        let response = embed(key).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let error: Value = response.json().await.expect("JSON error");
        assert_eq!(code(&error), "unauthorized");
        assert!(error["error"]["message"].as_str().unwrap_or("").contains(message), "{error}");
    }
    let response = embed(Some("s3cret")).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let info = client.get(server.url("/info")).send().await.expect("request");
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED, "/info is guarded too");
    let health = client.get(server.url("/health")).send().await.expect("request");
    assert_eq!(health.status(), StatusCode::OK, "/health stays open for probes");
}
