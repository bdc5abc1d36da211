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

    // A LoRA update starts at zero, so untrained LoRA layers are the base layers too.
    for (layers, lora_rank) in [(2, None), (6, Some(8))] {
        let mut params = Params::default();
        let top = TopLayers::load(&dir, &model.encoder, (layers, lora_rank), &mut params, &mut Rng::new(0), &device)?;
        assert_eq!(top.first, model.encoder.num_layers() - layers);
        let cached = top.cache_lower(&model.encoder, &refs)?;
        let slices: Vec<&[f32]> = cached.iter().map(Vec::as_slice).collect();
        let batch = Batch::assemble(&slices, top.hidden, &device)?;
        let out = top.forward(&batch, 0.0, &mut Rng::new(0))?;
        for (row, want) in expected.iter().enumerate() {
            let got = out.get(row)?.narrow(0, 0, tokens[row].ids.len())?;
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-3, "{layers} layers, LoRA {lora_rank:?}, sequence {row}: max difference {diff}");
        }
    }
    Ok(())
}

/// What training saves loads back as overrides of the base weights and serves what the
/// trained layers computed: full fine-tuning as int8 deltas of the tuned matrices, LoRA as its
/// two factors per matrix, f16 for the rest.
#[test]
fn saved_layers_load_back_as_overrides_of_the_base() -> anyhow::Result<()> {
    let saved = save_nudged_layers(None)?;
    assert_eq!(saved.count(concord::model::delta::CODES), 2 * 6, "six matrices per layer stored as deltas");
    assert!(saved.bytes < (saved.parameters as u64) * 2 * 6 / 10, "int8, not f16");
    Ok(())
}

#[test]
fn saved_lora_layers_load_back_as_overrides_of_the_base() -> anyhow::Result<()> {
    let saved = save_nudged_layers(Some(4))?;
    assert_eq!(saved.count(concord::model::delta::LORA_DOWN), 2 * 6, "two factors for each matrix");
    assert_eq!(saved.count(concord::model::delta::LORA_UP), 2 * 6);
    assert_eq!(saved.count(concord::model::delta::CODES), 0, "the frozen matrices are not saved");
    // Two layers of six 384-wide matrices at rank 4, plus biases and norms, in f16.
    assert!(saved.parameters < 2 * 40_000, "{} trainable parameters", saved.parameters);
    Ok(())
}

struct SavedLayers {
    names: Vec<String>,
    bytes: u64,
    parameters: usize,
}

impl SavedLayers {
    fn count(&self, suffix: &str) -> usize {
        self.names.iter().filter(|n| n.ends_with(suffix)).count()
    }
}

/// Nudges every trainable tensor of the top two layers, saves them, serves the saved file and
/// checks that the served encoder computes what the trained layers do.
fn save_nudged_layers(lora_rank: Option<usize>) -> anyhow::Result<SavedLayers> {
    let dir = common::default_model_dir();
    let spec = dir.to_str().expect("utf-8 path");
    let device = Device::Cpu;
    let model = EmbeddingModel::load(spec, &device, DType::F32)?;
    let texts = ["A short one.", "Another sentence, somewhat longer than the first one."];
    let tokens = texts.iter().map(|t| model.tokenizer.encode(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<_> = tokens.iter().collect();

    let mut params = Params::default();
    let top = TopLayers::load(&dir, &model.encoder, (2, lora_rank), &mut params, &mut Rng::new(0), &device)?;
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
    let names = candle_core::safetensors::load(&path, &device)?.into_keys().collect();
    let bytes = std::fs::metadata(&path)?.len();

    let served = EmbeddingModel::load_with_overrides(spec, &[path], &device, DType::F32)?;
    let untouched = model.encoder.forward(&refs)?;
    for (row, want) in served.encoder.forward(&refs)?.iter().enumerate() {
        let got = trained.get(row)?.narrow(0, 0, tokens[row].ids.len())?;
        let diff = (&got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // f16 factors, biases and norms and int8 steps: well under 0.2% of the largest state.
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 2e-3 * scale, "sequence {row}: max difference {diff} at scale {scale}");
        let moved = (&got - &untouched[row])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 20.0 * diff, "the nudge must show: moved {moved}, error {diff}");
    }
    Ok(SavedLayers { names, bytes, parameters: params.count() })
}
