//! One UNet forward of every variant against the original implementation (tiny random-weight
//! configs): embeddings, the per-block trace and the predicted noise.
//! Tolerance: relative L2 error ≤ 1e-4 in f32 for every compared tensor.

use std::collections::HashMap;

use super::support::golden::*;
use candle_core::{Device, Tensor};
use floor33::models::embeddings::timestep_embedding;
use floor33::models::unet::UNetModel;

const TOL: f64 = 1e-4;

fn check_variant(variant: &str) {
    let cfg = config(variant);
    let unet = UNetModel::new(weights(variant).pp("model.diffusion_model"), &cfg.unet).unwrap();
    let io = tensors(&format!("unet_{variant}_io.safetensors"));
    let t = values_f64(&get(&io, "t"));
    let fps = values_f64(&get(&io, "fps"));

    let t_emb = timestep_embedding(&t, cfg.unet.model_channels, &Device::Cpu).unwrap();
    assert_close_rel(&format!("{variant} t_emb"), &t_emb, &get(&io, "t_emb"), TOL);
    let emb = unet
        .embed(&t, &fps, candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    assert_close_rel(&format!("{variant} emb"), &emb, &get(&io, "emb"), TOL);

    let mut traces: HashMap<String, Tensor> = HashMap::new();
    let mut record = |name: &str, h: &Tensor| {
        traces.insert(name.to_string(), h.mean(3)?.mean(2)?);
        Ok(())
    };
    let eps = unet
        .forward_traced(
            &get(&io, "x"),
            &t,
            &get(&io, "context"),
            &fps,
            Some(&mut record),
        )
        .unwrap();
    let expected_traces: Vec<&String> = io.keys().filter(|k| k.starts_with("trace.")).collect();
    assert!(!expected_traces.is_empty());
    for key in expected_traces {
        let name = key.trim_start_matches("trace.");
        let got = traces
            .get(name)
            .unwrap_or_else(|| panic!("{variant}: no trace for {name}"));
        assert_close_rel(&format!("{variant} trace {name}"), got, &io[key], TOL);
    }
    assert_close_rel(&format!("{variant} eps"), &eps, &get(&io, "eps"), TOL);
}

#[test]
fn unet_vc1_512_matches_original() {
    check_variant("vc1_512");
}

#[test]
fn unet_vc1_1024_matches_original() {
    check_variant("vc1_1024");
}

#[test]
fn unet_vc2_matches_original() {
    check_variant("vc2");
}

#[test]
fn unet_i2v_matches_original() {
    check_variant("i2v");
}
