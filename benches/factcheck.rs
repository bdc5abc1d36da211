//! Fact-check latency: a 1,000-word document (Climate-FEVER claims, real text) checked against 20
//! one-page sources (Climate-FEVER evidence sentences, about 500 words each), top_k 3. Reports
//! the time to the first streamed claim and to the last, with the source embeddings cold (first
//! request) and cached (the same sources again, as while someone types).
//!
//! Then the same document as a live session (`/v1/live` with the moderation, NLI and intent
//! models): the first pass annotates every sentence and claim; after an edit to one sentence, a
//! pass scores only that one (and classifies the edits made since the session opened).
//!
//! `cargo bench --bench factcheck` (run `scripts/fetch-models.sh` first; reads ../shared/data);
//! `CONCORD_DTYPE=q8` runs the models with int8 linear layers, as `concord serve --dtype q8`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use concord::model::source::DEFAULT_MODEL;
use concord::model::EmbeddingModel;
use concord::runtime::{Engine, EngineConfig};
use concord::tasks::factcheck::{check, claim_ranges, EmbeddingCache, FactcheckOptions, Source};
use concord::tasks::intent::{IntentModel, DEFAULT_MODEL_DIR as INTENT_DIR};
use concord::tasks::live::{annotate, AnnotationCache, Change, LiveDocument, LiveModels, LiveSettings};
use concord::tasks::moderate::{Moderator, Thresholds, DEFAULT_MODEL_DIR as MODERATION_DIR};
use concord::tasks::nli::{NliModel, DEFAULT_MODEL_DIR};
use concord::text::offsets::OffsetUnit;
use futures::StreamExt;

fn workload() -> (String, Vec<Source>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/climate_fever/dev.jsonl");
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let rows: Vec<serde_json::Value> = raw.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").trim().to_string();
    let mut claims: Vec<String> = rows.iter().map(|r| field(r, "claim")).collect();
    claims.dedup();
    let mut text = String::new();
    for claim in claims {
        if text.split_whitespace().count() >= 1000 {
            break;
        }
        let claim = if claim.ends_with('.') { claim } else { format!("{claim}.") };
        text.push_str(&claim);
        text.push(' ');
    }
    let mut evidence: Vec<String> = rows.iter().map(|r| field(r, "evidence")).collect();
    evidence.dedup();
    let mut sources = Vec::new();
    let mut page = String::new();
    for sentence in evidence {
        page.push_str(&sentence);
        page.push(' ');
        if page.split_whitespace().count() >= 500 {
            sources.push(Source {
                id: format!("page-{}", sources.len()),
                text: std::mem::take(&mut page),
                title: None,
                url: None,
            });
            if sources.len() == 20 {
                break;
            }
        }
    }
    (text, sources)
}

fn main() {
    concord::runtime::pin_cpu_threads();
    let dtype = std::env::var("CONCORD_DTYPE").unwrap_or_else(|_| "f32".to_string());
    let dtype = concord::model::device::parse_dtype(&dtype, &Device::Cpu).expect("CONCORD_DTYPE is f32 or q8");
    let embedder = EmbeddingModel::load(DEFAULT_MODEL, &Device::Cpu, dtype)
        .and_then(|m| Engine::start(m, EngineConfig::default()))
        .expect("default model loads (run scripts/fetch-models.sh first)");
    let nli = NliModel::load(
        DEFAULT_MODEL_DIR,
        std::slice::from_ref(&embedder),
        &Device::Cpu,
        dtype,
        EngineConfig::default(),
    )
    .expect("NLI model loads");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (text, sources) = workload();
    let claims = claim_ranges(&text);
    println!(
        "document: {} words, {} claims; sources: {} pages, {} words",
        text.split_whitespace().count(),
        claims.len(),
        sources.len(),
        sources.iter().map(|s| s.text.split_whitespace().count()).sum::<usize>()
    );
    // One cache for every run: the first finds it empty, the later ones find the sources cached.
    let cache = EmbeddingCache::new(100_000);
    for run in 0..4 {
        let started = Instant::now();
        let (first, total, decided) = runtime.block_on(async {
            let mut stream =
                check(&embedder, &nli, &cache, &text, claims.clone(), &sources, FactcheckOptions { top_k: 3 })
                    .await
                    .expect("check starts");
            let mut first = None;
            let mut decided = 0;
            while let Some(result) = stream.next().await {
                result.expect("claim checked");
                first.get_or_insert_with(|| started.elapsed());
                decided += 1;
            }
            (first.unwrap_or_default(), started.elapsed(), decided)
        });
        println!(
            "{}: first claim {:.0} ms, all {decided} claims {:.0} ms",
            if run == 0 { "cold source cache" } else { "warm source cache" },
            first.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }

    live_session(&runtime, &embedder, &nli, &cache, dtype, &text, sources);
}

/// Times a live session's passes: the whole document, then one pass after each of three edits.
fn live_session(
    runtime: &tokio::runtime::Runtime,
    embedder: &Engine,
    nli: &NliModel,
    cache: &EmbeddingCache,
    dtype: candle_core::DType,
    text: &str,
    sources: Vec<Source>,
) {
    let moderator =
        Moderator::load(MODERATION_DIR, &Device::Cpu, dtype, EngineConfig::default()).expect("moderation model loads");
    let intent =
        IntentModel::load(INTENT_DIR, std::slice::from_ref(embedder), &Device::Cpu, dtype, EngineConfig::default())
            .expect("intent model loads");
    let models = LiveModels {
        embedder,
        moderator: Some(&moderator),
        nli: Some(nli),
        intent: Some(&intent),
        source_cache: cache,
    };
    let settings = LiveSettings {
        thresholds: Thresholds::default(),
        sources: Arc::new(sources),
        factcheck: FactcheckOptions { top_k: 3 },
    };
    let mut document = LiveDocument::open(text.to_string(), OffsetUnit::Utf16, usize::MAX).expect("the document opens");
    let mut annotations = AnnotationCache::default();
    let mut pass = |document: &LiveDocument, label: &str| {
        let started = Instant::now();
        let result = runtime.block_on(annotate(document, &settings, models, &mut annotations)).expect("annotated");
        println!(
            "live, {label}: {} annotations in {:.0} ms",
            result.annotations.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    };
    pass(&document, "first pass");
    for edit in 0..3 {
        // Before the last character (the full stop) of the (edit + 2)-th claim, as a participant
        // types a word there.
        let claim = &claim_ranges(document.text())[edit + 2];
        let sentence = &document.text()[claim.clone()];
        let last = sentence.chars().last().map_or(0, char::len_utf8);
        let at = document.text()[..claim.end - last].encode_utf16().count();
        let change = Change { start: at, end: at, text: " today".to_string() };
        document.apply("bench", None, &[change]).expect("the edit applies");
        pass(&document, "after a one-sentence edit");
    }
}
