//! One linear layer of the default model's shapes: f32 with candle's matmul, f32 with weights
//! packed at load (used for short inputs), and int8 (`--dtype q8`), for a 32-sentence batch
//! (1,184 tokens) and short inputs (12 to 96 tokens, where the two f32 paths cross).
//!
//! `cargo bench --bench linear` (the packed and int8 sides need AVX-512 or AVX2).

use candle_core::{Device, Module, Tensor};
use concord::model::int8::{self, Int8Linear};
use concord::model::packed::{self, PackedLinear};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn linear_layers(c: &mut Criterion) {
    concord::runtime::pin_cpu_threads();
    let mut group = c.benchmark_group("linear");
    group.sample_size(20);
    let shapes =
        [(1184, 384, 1152), (1184, 384, 1536), (1184, 1536, 384), (12, 384, 1536), (48, 384, 1536), (96, 384, 1536)];
    for (tokens, inputs, outputs) in shapes {
        let weight = Tensor::randn(0f32, 0.05, (outputs, inputs), &Device::Cpu).expect("weight");
        let xs = Tensor::randn(0f32, 1.0, (tokens, inputs), &Device::Cpu).expect("input");
        group.throughput(Throughput::Elements((2 * tokens * inputs * outputs) as u64));
        let shape = format!("{tokens}x{inputs}x{outputs}");
        let float = candle_nn::Linear::new(weight.clone(), None);
        group.bench_function(BenchmarkId::new("f32", &shape), |b| b.iter(|| float.forward(&xs).expect("f32")));
        if packed::supported() {
            let layer = PackedLinear::new(&weight, None).expect("packed");
            group
                .bench_function(BenchmarkId::new("packed", &shape), |b| b.iter(|| layer.forward(&xs).expect("packed")));
        }
        if int8::supported() {
            let quantized = Int8Linear::new(&weight, None).expect("int8");
            group.bench_function(BenchmarkId::new("q8", &shape), |b| b.iter(|| quantized.forward(&xs).expect("q8")));
        }
    }
    group.finish();
}

criterion_group!(benches, linear_layers);
criterion_main!(benches);
