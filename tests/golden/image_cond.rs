//! i2v image conditioning against the original implementation (tiny random-weight ViT and
//! Resampler): kornia's antialias blur, the CLIP preprocess, the ViT tokens, the Resampler output
//! and the unconditional (grey image) tokens. Image A (64×96) is only upscaled (no blur); image B
//! (320×32) shrinks along H, so the Gaussian antialias runs.
//! Tolerance: relative L2 error ≤ 1e-4 in f32 for every compared tensor.

use super::support::golden::*;
use candle_core::{DType, Device, Tensor};
use floor33::models::image_encoder::ImageConditioner;
use floor33::models::image_preprocess::{antialias_blur, clip_preprocess, CLIP_MEAN, CLIP_STD};

const TOL: f64 = 1e-4;

fn conditioner() -> ImageConditioner {
    let cfg = config("i2v");
    ImageConditioner::new(
        weights("i2v"),
        cfg.image.as_ref().expect("i2v image config"),
    )
    .unwrap()
}

#[test]
fn clip_preprocess_matches_original() {
    let io = tensors("image_cond_io.safetensors");
    let (a, b) = (get(&io, "image_a"), get(&io, "image_b"));
    let blurred = antialias_blur(&b, (224, 224)).unwrap();
    assert_close_rel("blurred_b", &blurred, &get(&io, "blurred_b"), TOL);
    // Upscaling leaves the picture untouched.
    assert_eq!(
        max_abs_diff(&antialias_blur(&a, (224, 224)).unwrap(), &a),
        0.0
    );

    let pre = Tensor::cat(
        &[
            clip_preprocess(&a, 224).unwrap(),
            clip_preprocess(&b, 224).unwrap(),
        ],
        0,
    )
    .unwrap();
    assert_close_rel("preprocessed", &pre, &get(&io, "preprocessed"), TOL);

    // The unconditional zero image is one constant grey value per channel.
    let pixel: Vec<f32> = (0..3)
        .map(|c| ((0.0f32 + 1.0) / 2.0 - CLIP_MEAN[c]) / CLIP_STD[c])
        .collect();
    let pixel = Tensor::new(pixel.as_slice(), &Device::Cpu).unwrap();
    let want = get(&io, "uncond.preprocessed_pixel");
    assert_close_rel("uncond.preprocessed_pixel", &pixel, &want, TOL);
    let zeros = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    let grey = clip_preprocess(&zeros, 224).unwrap();
    let want_grey = want
        .reshape((1, 3, 1, 1))
        .unwrap()
        .broadcast_as(grey.shape())
        .unwrap();
    assert_close_abs("uncond preprocess (grey image)", &grey, &want_grey, 0.0);
}

#[test]
fn vit_and_resampler_match_original() {
    let io = tensors("image_cond_io.safetensors");
    let cond = conditioner();
    // The reference runs each image on its own (they differ in size).
    let tokens = Tensor::cat(
        &[
            cond.vit_tokens(&get(&io, "image_a")).unwrap(),
            cond.vit_tokens(&get(&io, "image_b")).unwrap(),
        ],
        0,
    )
    .unwrap();
    assert_close_rel("vit_tokens", &tokens, &get(&io, "vit_tokens"), TOL);

    // Resampler alone, from the reference tokens.
    let emb = cond.resampler.forward(&get(&io, "vit_tokens")).unwrap();
    assert_close_rel("img_emb (resampler)", &emb, &get(&io, "img_emb"), TOL);

    let emb = Tensor::cat(
        &[
            cond.embed(&get(&io, "image_a")).unwrap(),
            cond.embed(&get(&io, "image_b")).unwrap(),
        ],
        0,
    )
    .unwrap();
    assert_close_rel("img_emb (end to end)", &emb, &get(&io, "img_emb"), TOL);
}

#[test]
fn unconditional_image_tokens_match_original() {
    let io = tensors("image_cond_io.safetensors");
    let cond = conditioner();
    let zeros = Tensor::zeros((2, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    let tokens = cond.vit_tokens(&zeros).unwrap();
    assert_close_rel(
        "uncond.vit_tokens",
        &tokens,
        &get(&io, "uncond.vit_tokens"),
        TOL,
    );
    let emb = cond.uncond_embed(2, &Device::Cpu, DType::F32).unwrap();
    assert_close_rel("uncond.img_emb", &emb, &get(&io, "uncond.img_emb"), TOL);
}
