//! Concord's embeddings agree with sentence-transformers (PyTorch) on the reference sentences,
//! over HTTP and from the CLI, with padding exercised by mixed-length batches.

mod common;

use std::io::Write;
use std::process::Command;

use common::{cosine, reference_embeddings, TestServer};
use concord::runtime::EngineConfig;
use concord::server::Limits;

const MIN_COSINE: f32 = 0.999;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_embeddings_match_sentence_transformers() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let reference = reference_embeddings();
    assert!(reference.len() >= 100, "reference set unexpectedly small");
    let client = reqwest::Client::new();
    for chunk in reference.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
        let response = client
            .post(server.url("/v1/embeddings"))
            .json(&serde_json::json!({ "input": texts }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json body");
        assert_eq!(body["object"], "list");
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0);
        let data = body["data"].as_array().expect("data array");
        assert_eq!(data.len(), chunk.len());
        for (i, (item, (text, expected))) in data.iter().zip(chunk).enumerate() {
            assert_eq!(item["index"], i);
            let got: Vec<f32> = item["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect();
            let cos = cosine(&got, expected);
            assert!(cos >= MIN_COSINE, "cosine {cos} for {text:?}");
        }
    }
}

/// Each reference sentence with the cosine between `concord embed ARGS` and the reference.
fn cli_cosines(args: &[&str]) -> Vec<(String, f32)> {
    let reference = reference_embeddings();
    let mut input = tempfile::NamedTempFile::new().expect("temp file");
    for (i, (text, _)) in reference.iter().enumerate() {
        writeln!(input, "{}", serde_json::json!({ "id": format!("s{i}"), "text": text })).expect("write");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["embed", "--format", "jsonl"])
        .args(args)
        .arg(input.path())
        .output()
        .expect("concord runs");
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("JSONL output")).collect();
    assert_eq!(lines.len(), reference.len());
    lines
        .iter()
        .zip(reference)
        .enumerate()
        .map(|(i, (line, (text, expected)))| {
            assert_eq!(line["id"], format!("s{i}"));
            let got: Vec<f32> = line["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect();
            (text, cosine(&got, &expected))
        })
        .collect()
}

#[test]
fn cli_embed_matches_sentence_transformers() {
    for (text, cos) in cli_cosines(&[]) {
        assert!(cos >= MIN_COSINE, "cosine {cos} for {text:?}");
    }
}

/// `--dtype q8` (int8 linear layers) stays within the bound of the reference.
#[test]
fn cli_embed_in_int8_stays_close_to_sentence_transformers() {
    if !concord::model::int8::supported() {
        eprintln!("skipped: this CPU has neither AVX-512 VNNI nor AVX2, so --dtype q8 is refused");
        return;
    }
    let cosines = cli_cosines(&["--dtype", "q8"]);
    let mean = cosines.iter().map(|(_, c)| c).sum::<f32>() / cosines.len() as f32;
    let min = cosines.iter().map(|(_, c)| *c).fold(1.0f32, f32::min);
    eprintln!("q8 cosine to the reference: min {min:.6}, mean {mean:.6}");
    for (text, cos) in &cosines {
        assert!(*cos >= 0.995, "q8 cosine {cos} for {text:?}");
    }
    assert!(mean < 0.99999, "q8 must actually quantize: mean cosine {mean} is exactly f32's");
}

#[test]
fn cli_rejects_invalid_utf8_naming_the_line() {
    let mut input = tempfile::NamedTempFile::new().expect("temp file");
    input.write_all(b"a fine sentence\nbroken \xff\xfe bytes\n").expect("write");
    let output =
        Command::new(env!("CARGO_BIN_EXE_concord")).arg("embed").arg(input.path()).output().expect("concord runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":2: not valid UTF-8"), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "nothing is embedded from a bad file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_single_embeddings_agree() {
    let engine = common::start_engine(EngineConfig::default());
    let texts: Vec<String> = reference_embeddings().into_iter().take(12).map(|(t, _)| t).collect();
    let together = concord::tasks::embed::embed(&engine, texts.clone(), true).await.expect("batch");
    for (text, batched) in texts.into_iter().zip(&together.vectors) {
        let alone = concord::tasks::embed::embed(&engine, vec![text.clone()], true).await.expect("single");
        let cos = cosine(&alone.vectors[0], batched);
        assert!(cos > 0.99999, "padding changed {text:?}: cosine {cos}");
    }
}
