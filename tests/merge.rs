//! Three-way merge: properties of the diff3, Markdown safety, real conflicts from
//! `../shared/data/merge`, and the HTTP contract of `/v1/merge`.

mod common;

use common::{shared_dir, TestServer};
use concord::eval::{merge::MergeRow, read_jsonl};
use concord::runtime::EngineConfig;
use concord::server::Limits;
use concord::tasks::merge::{candidates, normalize_ws, Strategy as Resolution};
use concord::text::diff3::{diff3, RegionKind};
use concord::text::segment::Granularity;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The clean merge of a triple, or None when something conflicts.
fn clean_merge(base: &str, ours: &str, theirs: &str) -> Option<String> {
    let regions = diff3(base, ours, theirs, Granularity::Word);
    if regions.iter().any(|r| r.kind == RegionKind::Conflict) {
        return None;
    }
    let (_, text) = candidates(&regions, base, ours, theirs).into_iter().next()?;
    Some(text)
}

fn prose() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec![
        "the", "draft", "Alice", "edits", "review", "intro", ",", ".", "and", "we", "ship", "\n", "😀", "漢字",
    ]);
    prop::collection::vec(word, 0..24).prop_map(|words| words.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn unchanged_ours_returns_theirs_exactly(base in prose(), theirs in prose()) {
        prop_assert_eq!(clean_merge(&base, &base, &theirs), Some(theirs));
    }

    #[test]
    fn unchanged_theirs_returns_ours_exactly(base in prose(), ours in prose()) {
        prop_assert_eq!(clean_merge(&base, &ours, &base), Some(ours));
    }

    #[test]
    fn identical_sides_return_that_side(base in prose(), both in prose()) {
        prop_assert_eq!(clean_merge(&base, &both, &both), Some(both));
    }

    #[test]
    fn merge_is_symmetric_up_to_the_labels(base in prose(), ours in prose(), theirs in prose()) {
        let forward = candidates(&diff3(&base, &ours, &theirs, Granularity::Word), &base, &ours, &theirs);
        let swapped = candidates(&diff3(&base, &theirs, &ours, Granularity::Word), &base, &theirs, &ours);
        let text = |c: &[(Resolution, String)], s: Resolution| c.iter().find(|(k, _)| *k == s).map(|(_, t)| t.clone());
        prop_assert_eq!(text(&forward, Resolution::MergeOurs), text(&swapped, Resolution::MergeTheirs));
        prop_assert_eq!(text(&forward, Resolution::MergeTheirs), text(&swapped, Resolution::MergeOurs));
    }
}

#[test]
fn two_edits_to_one_sentence_merge_cleanly() {
    let merged = clean_merge(
        "The quick fox jumps over the dog.\n",
        "The quick brown fox jumps over the dog.\n",
        "The quick fox jumps over the lazy dog.\n",
    );
    assert_eq!(merged.as_deref(), Some("The quick brown fox jumps over the lazy dog.\n"));
}

#[test]
fn code_blocks_merge_by_lines() {
    let base = "Run:\n```sh\nmake build target\n```\n";
    let ours = "Run:\n```sh\nmake fast-build target\n```\n";
    let theirs = "Run:\n```sh\nmake build other-target\n```\n";
    assert_eq!(clean_merge(base, ours, theirs), None, "two edits to one code line must conflict");
    let regions = diff3(base, ours, theirs, Granularity::Word);
    let conflict = regions.iter().find(|r| r.kind == RegionKind::Conflict).expect("conflict");
    assert_eq!(&ours[conflict.ours.clone()], "make fast-build target\n");
}

#[test]
fn links_are_never_spliced() {
    let base = "See [docs](https://a.org/v1/guide).\n";
    let ours = "See [docs](https://a.org/v2/guide).\n";
    let theirs = "See [docs](https://a.org/v1/howto).\n";
    assert_eq!(clean_merge(base, ours, theirs), None);
}

#[test]
fn headings_and_list_items_keep_their_markers() {
    let base = "# Setup\n\n- install the tool\n- run it\n";
    let ours = "# Setup guide\n\n- install the tool\n- run it\n";
    let theirs = "# Setup\n\n- install the tool\n- run it twice\n";
    assert_eq!(
        clean_merge(base, ours, theirs).as_deref(),
        Some("# Setup guide\n\n- install the tool\n- run it twice\n")
    );
}

#[test]
fn real_clean_merges_match_what_git_and_people_committed() {
    let rows: Vec<MergeRow> = read_jsonl(&shared_dir().join("data/merge/dev_clean.jsonl")).expect("dev_clean");
    let sample: Vec<&MergeRow> = rows.iter().take(60).collect();
    let matched = sample
        .iter()
        .filter(|r| clean_merge(&r.base, &r.ours, &r.theirs).as_deref() == Some(r.resolved.as_str()))
        .count();
    assert!(matched * 100 >= sample.len() * 90, "{matched}/{} clean merges equal the committed file", sample.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_conflicts_get_the_human_resolution_among_the_top_three() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let rows: Vec<MergeRow> = read_jsonl(&shared_dir().join("data/merge/dev.jsonl")).expect("dev");
    let sample: Vec<&MergeRow> = rows.iter().filter(|r| r.base.len() < 1500).take(40).collect();
    let client = reqwest::Client::new();
    let mut in_top3 = 0;
    for row in &sample {
        let response = client
            .post(server.url("/v1/merge"))
            .json(&json!({ "base": row.base, "ours": row.ours, "theirs": row.theirs }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        let alternatives = body["alternatives"].as_array().expect("alternatives");
        assert_eq!(body["merged"], alternatives[0]["text"]);
        let target = normalize_ws(&row.resolved);
        if alternatives.iter().take(3).any(|a| normalize_ws(a["text"].as_str().unwrap_or("")) == target) {
            in_top3 += 1;
        }
        for conflict in body["conflicts"].as_array().expect("conflicts") {
            let suggestions = conflict["suggestions"].as_array().expect("suggestions");
            assert!(suggestions.len() >= 4, "ours, theirs, both orders and base are offered");
            assert!(suggestions.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
            assert!(!suggestions[0]["rationale"].as_str().unwrap_or("").is_empty());
        }
    }
    assert!(in_top3 * 100 >= sample.len() * 60, "{in_top3}/{} resolutions in the top 3", sample.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_reports_conflicts_with_utf16_ranges() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let body = json!({ "base": "😀 the red car", "ours": "😀 the blue car", "theirs": "😀 the green car" });
    let response = reqwest::Client::new().post(server.url("/v1/merge")).json(&body).send().await.expect("request");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["clean"], false);
    let conflict = &body["conflicts"][0];
    assert_eq!(conflict["base"], "red");
    // "😀 the " is 2 + 5 = 7 UTF-16 code units.
    assert_eq!(conflict["base_range"], json!([7, 10]));
    assert_eq!(conflict["ours_range"], json!([7, 11]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_merge_requests_get_clear_errors() {
    let limits = Limits { max_input_chars: 5000, ..Limits::default() };
    let server = TestServer::start(EngineConfig::default(), limits).await;
    let client = reqwest::Client::new();
    let post = |body: Value| client.post(server.url("/v1/merge")).json(&body).send();
    let response = post(json!({ "base": "a", "ours": "b" })).await.expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("theirs"), "{body}");
    let response =
        post(json!({ "base": "a", "ours": "b", "theirs": "c", "granularity": "paragraph" })).await.expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let big = "word ".repeat(2000);
    let response = post(json!({ "base": big, "ours": "b", "theirs": "c" })).await.expect("request");
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = post(json!({ "base": "a b", "ours": "a c", "theirs": "a b" })).await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!((body["clean"].clone(), body["merged"].clone()), (json!(true), json!("a c")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_clean_changes_never_drops_a_sides_other_edits() {
    let server = TestServer::start(EngineConfig::default(), Limits::default()).await;
    let base = "The red car is fast. The house is small. We ship on Monday.";
    let ours = "The blue car is fast. The house is tiny. We ship on Monday.";
    let theirs = "The green car is fast. The house is small. We ship on Friday.";
    let body = json!({ "base": base, "ours": ours, "theirs": theirs, "keep_clean_changes": true });
    let response = reqwest::Client::new().post(server.url("/v1/merge")).json(&body).send().await.expect("request");
    let body: Value = response.json().await.expect("json");
    let merged = body["merged"].as_str().expect("merged");
    assert!(merged.contains("tiny") && merged.contains("Friday"), "{merged}");
    assert!(["merge_ours", "merge_theirs"].contains(&body["resolution"].as_str().unwrap_or("")), "{body}");
}

/// `concord merge … | head` must end quietly when the reader closes the pipe, as Unix tools do,
/// not panic in `print!`.
#[test]
fn cli_merge_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write side");
        path
    };
    let base = write("base.md", "The cat sat on the mat.\n");
    let ours = write("ours.md", "The black cat sat on the mat.\n");
    let theirs = write("theirs.md", "The cat sat on the red mat.\n");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("merge")
        .args([&base, &ours, &theirs])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("concord runs");
    // Closed before the model has loaded, so the merge's only write meets a closed pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("concord exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{stderr}");
}
