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
