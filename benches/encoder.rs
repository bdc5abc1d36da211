//! Engine throughput at batch 1, 8 and 32 on the default model: tokenisation, batching, the
//! forward pass and pooling, as one request of N workload sentences.
//!
//! `cargo bench --bench encoder` (run `scripts/fetch-models.sh` first).

use std::path::PathBuf;

use candle_core::{DType, Device};
use concord::model::source::DEFAULT_MODEL;
use concord::model::EmbeddingModel;
use concord::runtime::{Engine, EngineConfig};
use concord::tasks::embed;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn sentences() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/peers/workload/sentences.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn encoder_throughput(c: &mut Criterion) {
    concord::runtime::pin_cpu_threads();
    let model = EmbeddingModel::load(DEFAULT_MODEL, &Device::Cpu, DType::F32)
        .expect("default model loads (run scripts/fetch-models.sh first)");
    let engine = Engine::start(model, EngineConfig::default()).expect("engine starts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sentences = sentences();
    let mut group = c.benchmark_group("embed");
    group.sample_size(20);
    for batch in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut start = 0;
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let texts = sentences[start..start + batch].to_vec();
                start = (start + batch) % (sentences.len() - batch);
                runtime.block_on(embed::embed(&engine, texts, true)).expect("embed")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encoder_throughput);
criterion_main!(benches);
