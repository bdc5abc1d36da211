//! Merge latency: a 20 KB document with 10 conflicts and edits elsewhere on both sides, merged
//! with ranked suggestions (diff3, encoder signals, scoring).
//!
//! `cargo bench --bench merge` (run `scripts/fetch-models.sh` first).

use std::path::PathBuf;

use candle_core::{DType, Device};
use concord::model::source::DEFAULT_MODEL;
use concord::model::EmbeddingModel;
use concord::runtime::{Engine, EngineConfig};
use concord::tasks::merge::{self, MergeOptions, Scorer};
use criterion::{criterion_group, criterion_main, Criterion};

/// Base: workload sentences up to 20 KB. Ours and theirs each reword 10 shared sentences
/// differently (conflicts) and 10 sentences of their own (clean changes).
fn documents() -> (String, String, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/peers/workload/sentences.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut sentences: Vec<String> = Vec::new();
    let mut size = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if size + line.len() + 1 > 20_000 {
            break;
        }
        size += line.len() + 1;
        sentences.push(line.to_string());
    }
    let n = sentences.len();
    let (mut ours, mut theirs) = (sentences.clone(), sentences.clone());
    for k in 0..10 {
        let shared = k * n / 10;
        // Both sides replace the same first word differently: one conflict each.
        let rest = sentences[shared].split_once(' ').map_or("", |(_, rest)| rest);
        ours[shared] = format!("Ourversion{k} {rest}");
        theirs[shared] = format!("Theirversion{k} {rest}");
        ours[shared + 2] = format!("{} (ours)", ours[shared + 2]);
        theirs[shared + 4] = format!("{} (theirs)", theirs[shared + 4]);
    }
    (sentences.join("\n") + "\n", ours.join("\n") + "\n", theirs.join("\n") + "\n")
}

fn merge_latency(c: &mut Criterion) {
    concord::runtime::pin_cpu_threads();
    let model = EmbeddingModel::load(DEFAULT_MODEL, &Device::Cpu, DType::F32)
        .expect("default model loads (run scripts/fetch-models.sh first)");
    let engine = Engine::start(model, EngineConfig::default()).expect("engine starts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let scorer = Scorer::default_model();
    let (base, ours, theirs) = documents();
    let outcome = runtime
        .block_on(merge::merge(&engine, &scorer, &base, &ours, &theirs, MergeOptions::default()))
        .expect("merge");
    assert_eq!(outcome.conflicts.len(), 10, "the workload must have 10 conflicts");
    let mut group = c.benchmark_group("merge");
    group.sample_size(20);
    group.bench_function("20KB_10_conflicts", |b| {
        b.iter(|| {
            runtime
                .block_on(merge::merge(&engine, &scorer, &base, &ours, &theirs, MergeOptions::default()))
                .expect("merge")
        })
    });
    group.finish();
}

criterion_group!(benches, merge_latency);
criterion_main!(benches);
