//! Access to the golden fixtures produced by the original implementation.
//!
//! The folder is `FLOOR33_GOLDEN_DIR` when set, else `tests/fixtures/golden`, so another fixture
//! set of the same layout can be checked with the same command.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use floor33::models::config::ModelConfig;

pub fn golden_dir() -> PathBuf {
    match std::env::var_os("FLOOR33_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"),
    }
}

/// Fixture variant names: `vc1_512`, `vc1_1024`, `vc2`, `i2v`.
pub const VARIANTS: [&str; 4] = ["vc1_512", "vc1_1024", "vc2", "i2v"];

pub fn tensors(file: &str) -> HashMap<String, Tensor> {
    let path = golden_dir().join(file);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

pub fn get(map: &HashMap<String, Tensor>, name: &str) -> Tensor {
    map.get(name)
        .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
        .clone()
}

pub fn config(variant: &str) -> ModelConfig {
    ModelConfig::from_fixture_json(&golden_dir().join(format!("config_{variant}.json")))
        .expect("fixture config")
}

/// The variant's weights (`config.json:weights`), memory-mapped, f32 on the CPU.
pub fn weights(variant: &str) -> VarBuilder<'static> {
    let dir = golden_dir();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("config_{variant}.json"))).unwrap(),
    )
    .unwrap();
    let mut files: Vec<PathBuf> = json["weights"]
        .as_array()
        .expect("weights list")
        .iter()
        .map(|f| dir.join(f.as_str().unwrap()))
        .collect();
    if variant == "i2v"
        && !files
            .iter()
            .any(|f| f.ends_with("image_encoder.safetensors"))
    {
        files.push(dir.join("image_encoder.safetensors"));
    }
    // SAFETY: fixture files are not modified while the test runs.
    unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap() }
}

pub fn ids_u32(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|v| v as u32).collect())
        .collect()
}

pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = values_f64(a);
    let b = values_f64(b);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// ‖a − b‖₂ / ‖b‖₂
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = values_f64(a);
    let b = values_f64(b);
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Asserts a relative L2 error bound and prints the figures (visible with --nocapture).
pub fn assert_close_rel(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let rel = rel_l2(got, want);
    let abs = max_abs_diff(got, want);
    println!("{what}: rel_l2 {rel:.3e}, max_abs {abs:.3e}");
    assert!(
        rel <= tol,
        "{what}: relative L2 error {rel:.3e} > {tol:.0e} (max abs {abs:.3e})"
    );
}

pub fn assert_close_abs(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let abs = max_abs_diff(got, want);
    println!("{what}: max_abs {abs:.3e}");
    assert!(abs <= tol, "{what}: max abs error {abs:.3e} > {tol:.0e}");
}

/// The video as floor33 delivers it must be the original's within one 8-bit level per channel:
/// the tolerance of every end-to-end golden test (f32 differences of ~1e-4 can flip a rounding).
pub fn assert_frames_within_one_level(
    what: &str,
    got: &floor33::video::VideoFrames,
    want: &floor33::video::VideoFrames,
) {
    assert_eq!(got.frames.len(), want.frames.len(), "{what}: frame count");
    for (i, (got, want)) in got.frames.iter().zip(&want.frames).enumerate() {
        assert_eq!(
            got.dimensions(),
            want.dimensions(),
            "{what} frame {i}: size"
        );
        let worst = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "{what} frame {i}: off by {worst} levels");
    }
}
