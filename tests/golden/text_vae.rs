//! Text encoder and VAE against the original implementation (tiny random-weight configs).
//! Tolerance: relative L2 error ≤ 1e-4 in f32.

use super::support::golden::*;
use floor33::models::text_encoder::TextEncoder;
use floor33::models::vae::AutoencoderKL;

const TOL: f64 = 1e-4;

#[test]
fn text_encoder_matches_original() {
    let cfg = config("vc2");
    let encoder = TextEncoder::new(weights("vc2").pp("cond_stage_model.model"), &cfg.text).unwrap();
    let io = tensors("text_encoder_io.safetensors");
    let ids = ids_u32(&get(&io, "ids"));
    let out = encoder.encode_ids(&ids, &candle_core::Device::Cpu).unwrap();
    assert_close_rel("text encoder", &out, &get(&io, "out"), TOL);
}

#[test]
fn vae_decode_matches_original() {
    let cfg = config("vc2");
    let vae = AutoencoderKL::new(weights("vc2").pp("first_stage_model"), &cfg.vae).unwrap();
    let io = tensors("vae_io.safetensors");
    let video = vae.decode_video(&get(&io, "decode.z")).unwrap();
    assert_close_rel("vae decode", &video, &get(&io, "decode.out_2dae"), TOL);
}

#[test]
fn vae_encode_matches_original() {
    let cfg = config("vc2");
    let vae = AutoencoderKL::new(weights("vc2").pp("first_stage_model"), &cfg.vae).unwrap();
    let io = tensors("vae_io.safetensors");
    let posterior = vae.encode(&get(&io, "encode.x")).unwrap();
    assert_close_rel(
        "vae encode mean",
        &posterior.mean,
        &get(&io, "encode.mean"),
        TOL,
    );
    assert_close_rel(
        "vae encode logvar",
        &posterior.logvar,
        &get(&io, "encode.logvar"),
        TOL,
    );
}
