//! `Pipeline::generate` itself against the original's `batch_ddim_sampling`: each fixture
//! prompt in, a video out, with the recorded x_T and per-step noise replayed through the
//! pipeline's noise seam (`generate_with_noise`). Everything else is the serving path:
//! tokenizer, text encoder, the empty-prompt unconditional branch, DDIM, VAE decode and the
//! conversion to 8-bit frames. The fixture ran a batch of two prompts; each row is generated
//! alone here. Tolerances (f32): every step's pred_x0 within max(2e-3, 5e-5·absmax)
//! absolute (as in ddim.rs); the 8-bit frames within 1 level of the original's video saved
//! the way the original saves it (clamp, (x+1)/2·255, truncate): a decode error of 1e-3 can
//! move a value across one truncation boundary, never more.
//!
//! i2v is in pipeline_i2v.rs: ddim_i2v's contexts come from images of 64×96 and 320×32 handed to
//! CLIP as they are, while `generate` first fits the image to the 12×16 frame (as the original
//! script does), so it has its own reference made from a picture file.

use candle_core::Tensor;
use floor33::engine::image_input::ImageFit;
use floor33::engine::{GenerationRequest, Limits, Pipeline};
use floor33::sampler::ddim::Flow;
use floor33::sampler::noise::ReplayNoise;
use floor33::sampler::schedule::NoiseSchedule;
use floor33::video::frames_from_tensor;

use super::support::golden::*;

const STEPS: usize = 5;

fn latent_tol(want: &Tensor) -> f64 {
    let absmax = values_f64(want).iter().fold(0f64, |m, v| m.max(v.abs()));
    (5e-5 * absmax).max(2e-3)
}

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

fn check_variant(variant: &str) {
    let cfg = config(variant);
    let schedule = NoiseSchedule::from_config(&cfg.diffusion);
    let pipeline = Pipeline::from_var_builder(cfg.clone(), weights(variant), schedule).unwrap();
    let io = tensors(&format!("ddim_{variant}.safetensors"));
    let fps = values_f64(&get(&io, "fps"));
    let prompts = ddim_prompts();
    let (frames, h, w) = {
        let v = get(&io, "eta0.video");
        (v.dim(2).unwrap(), v.dim(3).unwrap(), v.dim(4).unwrap())
    };
    let mut checked = 0;
    for (case, eta, guidance) in [("eta0", 0.0, 1.0), ("eta1", 1.0, 1.0), ("cfg", 1.0, 12.0)] {
        let key = |name: &str| format!("{case}.{name}");
        let x_t = get(&io, &key("x_T"));
        let want_x0 = get(&io, &key("pred_x0"));
        let want_video = get(&io, &key("video"));
        for (row, prompt) in prompts.iter().enumerate() {
            let row_of = |t: &Tensor| t.narrow(0, row, 1).unwrap();
            // x_T first, then one draw per step; eta 0 draws are multiplied by sigma = 0.
            let mut draws = vec![row_of(&x_t)];
            for step in 0..STEPS {
                draws.push(match io.get(&key("noise")) {
                    Some(noise) => row_of(&noise.get(step).unwrap()),
                    None => row_of(&x_t).zeros_like().unwrap(),
                });
            }
            let req = GenerationRequest {
                variant: cfg.variant,
                prompt: prompt.clone(),
                negative: None,
                seed: 0,
                steps: STEPS,
                cfg: guidance,
                eta,
                fps: fps[row] as u32,
                height: h,
                width: w,
                frames,
                image: None,
                image_fit: ImageFit::default(),
            };
            let mut failures = Vec::new();
            let mut steps_seen = 0;
            let generated = pipeline
                .generate_with_noise(
                    &req,
                    &Limits::default(),
                    &mut ReplayNoise::new(draws),
                    &mut |p| {
                        let want = row_of(&want_x0.get(p.step - 1).unwrap());
                        let err = max_abs_diff(p.pred_x0, &want);
                        if err > latent_tol(&want) {
                            failures.push(format!("step {} pred_x0 err {err:.3e}", p.step));
                        }
                        steps_seen += 1;
                        Flow::Continue
                    },
                )
                .unwrap();
            assert!(
                failures.is_empty(),
                "{variant} {case} row {row}: {failures:?}"
            );
            assert_eq!(steps_seen, STEPS, "{variant} {case} row {row}");
            assert_eq!(generated.steps_run, STEPS);
            assert!(!generated.prompt_truncated);
            let want = frames_from_tensor(&row_of(&want_video), 8).unwrap();
            assert_frames_within_one_level(
                &format!("{variant} {case} row {row}"),
                &generated.video,
                &want,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * prompts.len());
}

#[test]
fn generate_vc1_512_matches_original() {
    check_variant("vc1_512");
}

#[test]
fn generate_vc1_1024_matches_original() {
    check_variant("vc1_1024");
}

#[test]
fn generate_vc2_matches_original() {
    check_variant("vc2");
}
