//! The keys and shapes each full-size model requests equal the real checkpoints' manifests
//! (tests/fixtures/keys/*.json, listed from the original code with the real configs), minus the
//! tensors documented as unused at inference (`weights::not_a_module_weight`: schedule buffers,
//! posterior buffers, CLIP text_projection/logit_scale, the text tower left in the i2v image
//! embedder, the visual ln_post/proj) and the text tower's last block, which "penultimate" skips.

use candle_core::DType;
use floor33::engine::loader::unused_key;
use floor33::engine::pipeline::Networks;
use floor33::models::config::ModelConfig;
use floor33::weights::{check, record_requests, Manifest};

fn manifest_file(name: &str) -> Manifest {
    let path = format!(
        "{}/tests/fixtures/keys/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    Manifest::from_json_file(std::path::Path::new(&path)).expect("manifest")
}

fn assert_model_matches_checkpoint(config: ModelConfig, checkpoint: &str) {
    let requested = record_requests(DType::F32, |vb| Networks::new(&config, vb)).unwrap();
    let available = manifest_file(checkpoint);
    if let Err(err) = check(&requested, &available, &|k| unused_key(&config, k)) {
        panic!("{checkpoint}: {err}");
    }
    // Everything not requested is in the documented unused set, and nothing else is skipped.
    let skipped = available.keys().filter(|k| !requested.contains(k)).count();
    let unused = available.keys().filter(|k| unused_key(&config, k)).count();
    assert_eq!(skipped, unused, "{checkpoint}");
    println!(
        "{checkpoint}: {} tensors used, {skipped} documented unused",
        requested.len()
    );
}

#[test]
fn t2v_1024_requests_exactly_the_checkpoint_keys() {
    assert_model_matches_checkpoint(ModelConfig::t2v_1024(), "t2v_1024_v1");
}

#[test]
fn t2v_512_requests_exactly_the_checkpoint_keys() {
    assert_model_matches_checkpoint(ModelConfig::t2v_512(), "t2v_512_v1");
}

#[test]
fn vc2_requests_exactly_the_checkpoint_keys() {
    assert_model_matches_checkpoint(ModelConfig::vc2(), "t2v_512_v2");
}

#[test]
fn i2v_requests_exactly_the_checkpoint_keys() {
    assert_model_matches_checkpoint(ModelConfig::i2v(), "i2v_512_v1");
}

#[test]
fn a_wrong_variant_is_reported_with_all_differences() {
    // VC2's checkpoint against the 1024 model: relative-position tables missing, temporal
    // convolutions unexpected — both lists in one error.
    let requested =
        record_requests(DType::F32, |vb| Networks::new(&ModelConfig::t2v_1024(), vb)).unwrap();
    let config = ModelConfig::t2v_1024();
    let err = check(&requested, &manifest_file("t2v_512_v2"), &|k| {
        unused_key(&config, k)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("relative_position_k"), "{err}");
    assert!(err.contains("temopral_conv"), "{err}");
}
