//! The trainable top layers (differentiable ops) must compute what the inference encoder
//! (fused kernels) computes, or a fine-tuned model would behave differently once served.

mod common;

use candle_core::{DType, Device};
use concord::model::EmbeddingModel;
use concord::train::finetune::{Batch, Params, Rng, TopLayers};

#[test]
fn trainable_top_layers_reproduce_the_inference_encoder() -> anyhow::Result<()> {
    let dir = common::default_model_dir();
    let device = Device::Cpu;
    let model = EmbeddingModel::load(dir.to_str().expect("utf-8 path"), &device, DType::F32)?;
    let texts = ["A short one.", "A somewhat longer sentence, with a clause or two in it.", "Mid length text here."];
    let tokens = texts.iter().map(|t| model.tokenizer.encode(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<_> = tokens.iter().collect();
    let expected = model.encoder.forward(&refs)?;

    let mut params = Params::default();
    let top = TopLayers::load(&dir, &model.encoder, 2, &mut params, &device)?;
    assert_eq!(top.first, model.encoder.num_layers() - 2);
    let cached = top.cache_lower(&model.encoder, &refs)?;
    let slices: Vec<&[f32]> = cached.iter().map(Vec::as_slice).collect();
    let batch = Batch::assemble(&slices, top.hidden, &device)?;
    let out = top.forward(&batch, 0.0, &mut Rng::new(0))?;
    for (row, want) in expected.iter().enumerate() {
        let got = out.get(row)?.narrow(0, 0, tokens[row].ids.len())?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-3, "sequence {row}: max difference {diff}");
    }
    Ok(())
}

/// What training saves (int8 deltas of the tuned matrices, f16 for the rest) loads back as
/// overrides of the base weights and serves what the trained layers computed.
#[test]
fn saved_layers_load_back_as_overrides_of_the_base() -> anyhow::Result<()> {
    let dir = common::default_model_dir();
    let spec = dir.to_str().expect("utf-8 path");
    let device = Device::Cpu;
    let model = EmbeddingModel::load(spec, &device, DType::F32)?;
    let texts = ["A short one.", "Another sentence, somewhat longer than the first one."];
    let tokens = texts.iter().map(|t| model.tokenizer.encode(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<_> = tokens.iter().collect();

    let mut params = Params::default();
    let top = TopLayers::load(&dir, &model.encoder, 2, &mut params, &device)?;
    for var in params.vars_where(|_| true) {
        let nudge = candle_core::Tensor::randn(0f32, 0.01, var.shape(), &device)?;
        var.set(&(var.as_tensor() + nudge)?)?;
    }
    let cached = top.cache_lower(&model.encoder, &refs)?;
    let slices: Vec<&[f32]> = cached.iter().map(Vec::as_slice).collect();
    let trained = top.forward(&Batch::assemble(&slices, top.hidden, &device)?, 0.0, &mut Rng::new(0))?;

    let out = tempfile::tempdir()?;
    let path = out.path().join("weights.safetensors");
    params.save(&path)?;
    let saved = candle_core::safetensors::load(&path, &device)?;
    let matrices = saved.keys().filter(|n| n.ends_with(concord::model::delta::CODES)).count();
    assert_eq!(matrices, 2 * 6, "six matrices per layer stored as deltas: {:?}", saved.keys());
    assert!(std::fs::metadata(&path)?.len() < (params.count() as u64) * 2 * 6 / 10, "int8, not f16");

    let served = EmbeddingModel::load_with_overrides(spec, &[path], &device, DType::F32)?;
    let untouched = model.encoder.forward(&refs)?;
    for (row, want) in served.encoder.forward(&refs)?.iter().enumerate() {
        let got = trained.get(row)?.narrow(0, 0, tokens[row].ids.len())?;
        let diff = (&got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // f16 biases and norms and int8 steps: well under 0.2% of the largest state.
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 2e-3 * scale, "sequence {row}: max difference {diff} at scale {scale}");
        let moved = (&got - &untouched[row])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 20.0 * diff, "the nudge must show: moved {moved}, error {diff}");
    }
    Ok(())
}
