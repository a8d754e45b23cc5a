//! Prompts (and, for i2v, images) to the cross-attention contexts that the original's
//! `batch_ddim_sampling` received: tokenizer → text encoder (→ ViT → Resampler), through the
//! same pipeline code that serves requests. Tolerance: relative L2 ≤ 1e-4 (f32).

use super::support::golden::*;
use candle_core::{Device, Tensor};
use floor33::engine::Pipeline;
use floor33::models::image_encoder::ImageConditioner;
use floor33::sampler::schedule::NoiseSchedule;

const TOL: f64 = 1e-4;

fn ddim_prompts() -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("tokens.json")).unwrap())
            .unwrap();
    json["ddim_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn pipeline(variant: &str) -> Pipeline {
    let cfg = config(variant);
    let schedule = NoiseSchedule::from_config(&cfg.diffusion);
    Pipeline::from_var_builder(cfg, weights(variant), schedule).unwrap()
}

#[test]
fn text_prompts_give_the_original_contexts() {
    let prompts = ddim_prompts();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    for variant in ["vc1_512", "vc1_1024", "vc2"] {
        let pipeline = pipeline(variant);
        let io = tensors(&format!("ddim_{variant}.safetensors"));
        let (context, truncated) = pipeline.encode_prompts(&refs).unwrap();
        assert!(!truncated);
        assert_close_rel(
            &format!("{variant} context"),
            &context,
            &get(&io, "context"),
            TOL,
        );
        let (uncond, _) = pipeline.encode_prompts(&["", ""]).unwrap();
        assert_close_rel(
            &format!("{variant} uc_context"),
            &uncond,
            &get(&io, "cfg.uc_context"),
            TOL,
        );
    }
}

#[test]
fn images_and_prompts_give_the_original_i2v_contexts() {
    let prompts = ddim_prompts();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let pipeline = pipeline("i2v");
    let cfg = config("i2v");
    let conditioner = ImageConditioner::new(weights("i2v"), cfg.image.as_ref().unwrap()).unwrap();
    let io = tensors("ddim_i2v.safetensors");
    let images = tensors("image_cond_io.safetensors");
    let (text, _) = pipeline.encode_prompts(&refs).unwrap();
    let image_tokens = Tensor::cat(
        &[
            conditioner.embed(&get(&images, "image_a")).unwrap(),
            conditioner.embed(&get(&images, "image_b")).unwrap(),
        ],
        0,
    )
    .unwrap();
    let context = Tensor::cat(&[&text, &image_tokens], 1).unwrap();
    assert_close_rel("i2v context", &context, &get(&io, "context"), TOL);
    let (empty, _) = pipeline.encode_prompts(&["", ""]).unwrap();
    let grey = conditioner
        .uncond_embed(2, &Device::Cpu, candle_core::DType::F32)
        .unwrap();
    let uncond = Tensor::cat(&[&empty, &grey], 1).unwrap();
    assert_close_rel("i2v uc_context", &uncond, &get(&io, "cfg.uc_context"), TOL);
}
