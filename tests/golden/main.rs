//! Fidelity against the original implementation: every model piece, the schedule, the DDIM
//! loop and `Pipeline::generate` against the golden fixtures (tests/fixtures/golden), and the
//! full-size models' keys against the real checkpoints' manifests (tests/fixtures/keys). One
//! test binary, one link.

#[path = "../support/mod.rs"]
mod support;

mod conditioning;
mod ddim;
mod half;
mod image_cond;
mod manifest;
mod pipeline;
mod pipeline_i2v;
mod schedule;
mod text_vae;
mod tokenizer;
mod unet;
