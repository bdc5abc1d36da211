//! `/v1/live` end to end with the committed moderation and NLI models: a WebSocket session that
//! takes edits from two participants and pushes annotations back, and the messages it refuses.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use concord::runtime::EngineConfig;
use concord::server::Limits;
use concord::tasks::intent::{IntentModel, DEFAULT_MODEL_DIR as INTENT_MODEL_DIR};
use concord::tasks::nli::{NliModel, DEFAULT_MODEL_DIR};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> common::TestServer {
    let config = EngineConfig::default();
    let nli = NliModel::load(DEFAULT_MODEL_DIR, &[], &Device::Cpu, DType::F32, config.clone())
        .expect("the committed NLI model loads");
    let moderator = common::load_moderator(config.clone());
    let intent = IntentModel::load(INTENT_MODEL_DIR, &[], &Device::Cpu, DType::F32, config.clone())
        .expect("the committed intent model loads");
    common::TestServer::start_state(config, Limits::default(), |state| {
        state.with_nli(Arc::new(nli)).with_moderator(Arc::new(moderator)).with_intent(Arc::new(intent))
    })
    .await
}

async fn connect(server: &common::TestServer) -> Socket {
    let url = format!("ws://{}/v1/live", server.addr);
    connect_async(url).await.expect("WebSocket handshake").0
}

async fn send(socket: &mut Socket, message: Value) {
    socket.send(Message::text(message.to_string())).await.expect("send");
}

/// The next JSON message from the server.
async fn receive(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a message within a minute")
            .expect("the session is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON message");
        }
    }
}

/// Reads until the message of `kind`, skipping annotations of versions other than `version`.
async fn receive_kind(socket: &mut Socket, kind: &str, version: u64) -> Value {
    loop {
        let message = receive(socket).await;
        let stale = message["type"] == "annotations" && message["version"] != version;
        if message["type"] == "error" && kind != "error" {
            panic!("unexpected error: {message}");
        }
        if message["type"] == kind && !stale {
            return message;
        }
    }
}

/// The text of UTF-16 offsets `start..end` of `text`.
fn utf16_slice(text: &str, annotation: &Value) -> String {
    let units: Vec<u16> = text.encode_utf16().collect();
    let (start, end) =
        (annotation["start"].as_u64().unwrap_or(0) as usize, annotation["end"].as_u64().unwrap_or(0) as usize);
    String::from_utf16(&units[start..end]).expect("offsets on UTF-16 boundaries")
}

const OPENING: &str = "The Eiffel Tower was completed in 1889. We meet at noon 😀 on Friday.";
const SOURCE: &str = "The Eiffel Tower is a wrought-iron lattice tower in Paris. \
It was completed in 1889 as the centerpiece of the World Fair.";

#[tokio::test]
async fn annotates_each_participants_edits() {
    let server = server().await;
    let mut socket = connect(&server).await;
    send(
        &mut socket,
        json!({"type": "open", "text": OPENING, "debounce_ms": 0,
               "sources": [{"id": "s1", "title": "Eiffel Tower", "text": SOURCE}]}),
    )
    .await;
    let ready = receive_kind(&mut socket, "ready", 0).await;
    assert_eq!(ready["offsets"], "utf16");
    assert_eq!(ready["tasks"], json!(["moderation", "factcheck", "intent"]));
    let first = receive_kind(&mut socket, "annotations", 0).await;
    let eiffel = |a: &&Value| a["kind"] == "claim" && a["text"].as_str().unwrap_or("").contains("Eiffel");
    let claim = first["annotations"].as_array().and_then(|a| a.iter().find(eiffel)).expect("the claim is checked");
    assert_eq!(claim["text"], "The Eiffel Tower was completed in 1889.");
    assert_eq!(claim["evidence"][0]["source_id"], "s1");
    assert_eq!(claim["participants"], json!([]), "nobody has edited yet");
    assert!(first["annotations"].as_array().is_some_and(|a| a.iter().all(|a| a["kind"] != "edit")), "no edits yet");

    // Alice appends an insult after the emoji (two UTF-16 units); Bob edits the first sentence.
    let end = OPENING.encode_utf16().count();
    send(
        &mut socket,
        json!({"type": "edit", "participant": "alice", "version": 0,
        "changes": [{"start": end, "end": end, "text": " You are an absolute idiot."}]}),
    )
    .await;
    assert_eq!(receive_kind(&mut socket, "ack", 1).await["version"], 1);
    send(
        &mut socket,
        json!({"type": "edit", "participant": "bob", "version": 1,
        "changes": [{"start": 34, "end": 38, "text": "1890"}]}),
    )
    .await;
    assert_eq!(receive_kind(&mut socket, "ack", 2).await["version"], 2);
    let text = format!("{}{}", OPENING.replace("1889", "1890"), " You are an absolute idiot.");

    let latest = receive_kind(&mut socket, "annotations", 2).await;
    let annotations = latest["annotations"].as_array().expect("annotations");
    let insult = annotations.iter().find(|a| a["kind"] == "moderation").expect("the insult is flagged");
    assert_eq!(insult["severity"], "problem");
    assert_eq!(insult["participants"], json!(["alice"]));
    assert_eq!(utf16_slice(&text, insult), "You are an absolute idiot.");
    let span = insult["spans"].as_array().and_then(|s| s.first()).expect("a span");
    assert_eq!(utf16_slice(&text, span), span["text"].as_str().unwrap_or(""));
    assert!(span["text"].as_str().unwrap_or("").contains("idiot"), "{span}");
    let claim = annotations.iter().find(eiffel).expect("the claim is checked again");
    assert_eq!(claim["text"], "The Eiffel Tower was completed in 1890.");
    assert_eq!(claim["participants"], json!(["bob"]));
    assert_eq!(utf16_slice(&text, claim), "The Eiffel Tower was completed in 1890.");
    // Each participant's list holds the annotations on text they edited, in the ranked order.
    let index_of = |wanted: &Value| annotations.iter().position(|a| a == wanted).expect("listed") as u64;
    // The two edits since the session opened, each with its intent and its author.
    let edit_by = |who: &str| {
        annotations.iter().find(|a| a["kind"] == "edit" && a["participants"] == json!([who])).expect("an edit")
    };
    let (bobs, alices) = (edit_by("bob"), edit_by("alice"));
    assert_eq!(
        (bobs["op"].as_str(), bobs["before"].as_str()),
        (Some("replace"), Some("The Eiffel Tower was completed in 1889."))
    );
    assert_eq!(utf16_slice(&text, bobs), "The Eiffel Tower was completed in 1890.");
    assert_eq!((alices["op"].as_str(), alices["before"].as_str()), (Some("insert"), Some("")));
    assert_eq!(utf16_slice(&text, alices), "You are an absolute idiot.");
    for edit in [bobs, alices] {
        let intent = edit["intent"].as_str().unwrap_or("");
        assert!(edit["scores"].get(intent).is_some(), "{edit}");
        assert_eq!(edit["severity"], "info");
    }
    let by_participant = &latest["by_participant"];
    let bobs_list: Vec<u64> =
        by_participant["bob"].as_array().expect("bob's list").iter().filter_map(Value::as_u64).collect();
    let mut expected = vec![index_of(claim), index_of(bobs)];
    expected.sort_unstable();
    assert_eq!(bobs_list, expected, "{latest:#}");
    // Alice's sentence is also a claim the sources say nothing about; the flagged text ranks first.
    assert_eq!(by_participant["alice"][0], index_of(insult));
    for i in by_participant["alice"].as_array().expect("alice's list") {
        let annotation = &annotations[i.as_u64().unwrap_or(0) as usize];
        assert_eq!(annotation["participants"], json!(["alice"]), "{annotation}");
    }
    let severities: Vec<&str> = annotations.iter().map(|a| a["severity"].as_str().unwrap_or("")).collect();
    let rank = |s: &str| ["problem", "warning", "info"].iter().position(|x| *x == s).unwrap_or(3);
    assert!(severities.windows(2).all(|w| rank(w[0]) <= rank(w[1])), "ranked by severity: {severities:?}");

    // New sources: the claims are checked again, against them.
    send(&mut socket, json!({"type": "sources", "sources": [{"id": "s2", "text": SOURCE}]})).await;
    assert_eq!(receive_kind(&mut socket, "ack", 2).await["version"], 2);
    let rechecked = receive_kind(&mut socket, "annotations", 2).await;
    let claim = rechecked["annotations"].as_array().and_then(|a| a.iter().find(eiffel)).expect("the claim");
    assert_eq!(claim["evidence"][0]["source_id"], "s2");

    let metrics = reqwest::get(server.url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("concord_live_sessions"), "{metrics}");
    assert!(metrics.contains("concord_live_pass_duration_seconds_count"), "{metrics}");
}

/// Sends `message` and expects an error with `code` back.
async fn expect_error(socket: &mut Socket, message: Message, code: &str) {
    socket.send(message).await.expect("send");
    let reply = receive_kind(socket, "error", 0).await;
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(!reply["error"]["message"].as_str().unwrap_or("").is_empty());
}

#[tokio::test]
async fn bad_messages_get_errors_and_change_nothing() {
    let server = server().await;
    let mut socket = connect(&server).await;
    let edit = json!({"type": "edit", "participant": "alice", "changes": [{"start": 0, "end": 0, "text": "x"}]});
    expect_error(&mut socket, Message::text(edit.to_string()), "not_open").await;
    expect_error(&mut socket, Message::text("{not json"), "invalid_message").await;
    expect_error(&mut socket, Message::text(r#"{"type": "shout"}"#), "invalid_message").await;
    expect_error(&mut socket, Message::binary(vec![1u8, 2, 3]), "unsupported_message").await;
    let open = |extra: Value| {
        let mut message = json!({"type": "open", "text": "Hi 😀 there.", "debounce_ms": 10_000});
        message.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        Message::text(message.to_string())
    };
    expect_error(&mut socket, open(json!({"top_k": 0})), "invalid_top_k").await;
    expect_error(&mut socket, open(json!({"thresholds": {"nonsense": 0.5}})), "unknown_category").await;
    expect_error(&mut socket, open(json!({"span_threshold": 1.5})), "invalid_threshold").await;
    expect_error(&mut socket, open(json!({"offsets": "bytes"})), "invalid_message").await;
    expect_error(&mut socket, open(json!({"text": "x".repeat(100_001)})), "document_too_large").await;
    socket.send(open(json!({}))).await.expect("send");
    assert_eq!(receive_kind(&mut socket, "ready", 0).await["version"], 0);

    let change = |start: usize, end: usize, version: u64| {
        let edit = json!({"type": "edit", "participant": "alice", "version": version,
            "changes": [{"start": start, "end": end, "text": "x"}]});
        Message::text(edit.to_string())
    };
    // Inside the emoji's surrogate pair, past the end, reversed, a stale version.
    expect_error(&mut socket, change(4, 4, 0), "invalid_change").await;
    expect_error(&mut socket, change(0, 99, 0), "invalid_change").await;
    expect_error(&mut socket, change(3, 1, 0), "invalid_change").await;
    expect_error(&mut socket, change(0, 0, 5), "version_conflict").await;
    // None of them was applied: the next edit makes version 1.
    socket.send(change(0, 0, 0)).await.expect("send");
    assert_eq!(receive_kind(&mut socket, "ack", 1).await["version"], 1);
    let sources = json!({"type": "sources", "sources": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]});
    expect_error(&mut socket, Message::text(sources.to_string()), "duplicate_source_id").await;
}

#[tokio::test]
async fn plain_http_and_model_less_servers_are_refused_with_json() {
    let with_models = server().await;
    let response = reqwest::get(with_models.url("/v1/live")).await.expect("request");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "websocket_required");

    let bare = common::TestServer::start(EngineConfig::default(), Limits::default()).await;
    let refused = connect_async(format!("ws://{}/v1/live", bare.addr)).await.expect_err("no models, no session");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 503),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn thirty_two_sessions_at_once_each_get_their_own_annotations() {
    let server = server().await;
    let sessions = (0..32).map(|i| {
        let server = &server;
        async move {
            let mut socket = connect(server).await;
            let text = format!("Session {i} opened with this sentence.");
            send(&mut socket, json!({"type": "open", "text": text, "debounce_ms": 0})).await;
            receive_kind(&mut socket, "ready", 0).await;
            let end = text.encode_utf16().count();
            let line = format!(" Participant {i} is an absolute idiot.");
            send(
                &mut socket,
                json!({"type": "edit", "participant": format!("p{i}"), "version": 0,
                "changes": [{"start": end, "end": end, "text": line}]}),
            )
            .await;
            let annotations = receive_kind(&mut socket, "annotations", 1).await;
            (i, annotations)
        }
    });
    for (i, annotations) in futures::future::join_all(sessions).await {
        let flagged = annotations["annotations"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["kind"] == "moderation"))
            .unwrap_or_else(|| panic!("session {i}: {annotations}"));
        assert_eq!(flagged["text"], format!("Participant {i} is an absolute idiot."));
        assert_eq!(flagged["participants"], json!([format!("p{i}")]));
    }
}

/// `concord live` with `messages` on stdin: the JSON lines it writes.
fn cli_session(messages: &[Value], extra: &[&str]) -> Vec<Value> {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("live")
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("concord runs");
    let mut stdin = child.stdin.take().expect("stdin");
    for message in messages {
        writeln!(stdin, "{message}").expect("write a message");
    }
    writeln!(stdin, "not json").expect("write a bad line");
    drop(stdin);
    let output = child.wait_with_output().expect("concord ends");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[test]
fn the_cli_runs_the_same_session_over_json_lines() {
    let messages = [
        json!({"type": "open", "text": OPENING, "sources": [{"id": "s1", "title": "Eiffel Tower", "text": SOURCE}]}),
        json!({"type": "edit", "participant": "alice", "version": 0,
               "changes": [{"start": OPENING.encode_utf16().count(), "end": OPENING.encode_utf16().count(),
                            "text": " You are an absolute idiot."}]}),
    ];
    let lines = cli_session(&messages, &[]);
    let kinds: Vec<(&str, Option<u64>)> =
        lines.iter().map(|l| (l["type"].as_str().unwrap_or(""), l["version"].as_u64())).collect();
    assert_eq!(
        kinds,
        vec![("ready", Some(0)), ("annotations", Some(0)), ("ack", Some(1)), ("annotations", Some(1)), ("error", None)]
    );
    let flagged = lines[3]["annotations"].as_array().and_then(|a| a.iter().find(|a| a["kind"] == "moderation"));
    assert_eq!(flagged.expect("the insult is flagged")["participants"], json!(["alice"]));
    assert_eq!(lines[4]["error"]["code"], "invalid_message");

    let last_only = cli_session(&messages, &["--last-only"]);
    let kinds: Vec<&str> = last_only.iter().map(|l| l["type"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, vec!["ready", "ack", "error", "annotations"]);
    assert_eq!(last_only[3]["version"], 1);
}
