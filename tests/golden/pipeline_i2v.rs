//! Image-to-video `Pipeline::generate` against the original's `inference.py --mode i2v` path
//! (ddim_i2v_generate.safetensors, written by make_i2v_generate.py): the committed 56×40
//! i2v_input.png decoded as an upload is, fitted to the 16×12 frame, embedded by the ViT and
//! Resampler, joined to the prompt's context, sampled by DDIM (5 steps, cfg 12 with the empty
//! prompt and grey image as the unconditional branch, eta 0 and eta 1) with the recorded x_T
//! and per-step noise replayed, decoded and turned into 8-bit frames.
//!
//! `stretch` is the original exactly (its loader resizes the picture to the frame); `crop`, the
//! default fit, is the original fed with the centred window the default fit cuts first.
//!
//! Tolerances (f32): the fitted frame within 1e-5 absolute (the original's float bilinear
//! resize summed in another order moves values by an ulp of 255, i.e. ~1e-7 after scaling;
//! any other filter, antialias or 8-bit rounding moves them by ≥ 4e-3); image tokens and
//! contexts relative L2 ≤ 1e-4 (as image_cond.rs); every step's pred_x0 within
//! max(2e-3, 5e-5·absmax) (as pipeline.rs); the 8-bit frames within one level (as pipeline.rs:
//! a decode error of 1e-3 can cross one truncation boundary, never two).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use floor33::engine::frame_fit::frame_tensor;
use floor33::engine::image_input::{decode_image, ImageFit, ImageLimits};
use floor33::engine::{GenerationRequest, Limits, Pipeline};
use floor33::sampler::ddim::Flow;
use floor33::sampler::noise::ReplayNoise;
use floor33::sampler::schedule::NoiseSchedule;
use floor33::video::frames_from_tensor;

use super::support::golden::*;

const STEPS: usize = 5;
const PROMPT: &str = "a lighthouse on a rocky coast at dusk, waves crashing";
const TEXT_LEN: usize = 77;

fn latent_tol(want: &Tensor) -> f64 {
    let absmax = values_f64(want).iter().fold(0f64, |m, v| m.max(v.abs()));
    (5e-5 * absmax).max(2e-3)
}

struct Fixture {
    pipeline: Pipeline,
    io: HashMap<String, Tensor>,
    request: GenerationRequest,
}

fn fixture(fit: ImageFit) -> Fixture {
    let cfg = config("i2v");
    let schedule = NoiseSchedule::from_config(&cfg.diffusion);
    let pipeline = Pipeline::from_var_builder(cfg.clone(), weights("i2v"), schedule).unwrap();
    let io = tensors("ddim_i2v_generate.safetensors");
    let bytes = std::fs::read(golden_dir().join("i2v_input.png")).unwrap();
    let image = decode_image(&bytes, &ImageLimits::default()).unwrap();
    assert_eq!(image.dimensions(), (56, 40));
    let video = get(&io, "stretch.eta0.video");
    let request = GenerationRequest {
        variant: cfg.variant,
        prompt: PROMPT.into(),
        negative: None,
        seed: 0,
        steps: STEPS,
        cfg: 12.0,
        eta: 0.0,
        fps: values_f64(&get(&io, "fps"))[0] as u32,
        height: video.dim(3).unwrap(),
        width: video.dim(4).unwrap(),
        frames: video.dim(2).unwrap(),
        image: Some(Arc::new(image)),
        image_fit: fit,
    };
    Fixture {
        pipeline,
        io,
        request,
    }
}

fn fit_name(fit: ImageFit) -> &'static str {
    match fit {
        ImageFit::Stretch => "stretch",
        ImageFit::CentreCrop => "crop",
    }
}

/// The fitted frame, the image tokens and both contexts, each against the original's.
fn check_conditioning(fit: ImageFit) {
    let Fixture {
        pipeline,
        io,
        request,
    } = fixture(fit);
    let name = fit_name(fit);
    let framed = frame_tensor(
        request.image.as_ref().unwrap(),
        request.width,
        request.height,
        fit,
    );
    assert_close_abs(
        &format!("{name}.image"),
        &framed,
        &get(&io, &format!("{name}.image")),
        1e-5,
    );
    let (tokens, grey) = pipeline.image_contexts(&request).unwrap().unwrap();
    let want_tokens = get(&io, &format!("{name}.img_emb"));
    assert_close_rel(&format!("{name}.img_emb"), &tokens, &want_tokens, 1e-4);
    let want_uncond = get(&io, "uc_context");
    let want_grey = want_uncond
        .narrow(1, TEXT_LEN, grey.dim(1).unwrap())
        .unwrap();
    assert_close_rel("uc_context image part", &grey, &want_grey, 1e-4);

    let (text, _) = pipeline.encode_prompts(&[PROMPT, ""]).unwrap();
    let context = Tensor::cat(&[&text.narrow(0, 0, 1).unwrap(), &tokens], 1).unwrap();
    let uncond = Tensor::cat(&[&text.narrow(0, 1, 1).unwrap(), &grey], 1).unwrap();
    let want_context = get(&io, &format!("{name}.context"));
    assert_close_rel(&format!("{name}.context"), &context, &want_context, 1e-4);
    assert_close_rel("uc_context", &uncond, &want_uncond, 1e-4);
}

/// `generate` with the recorded noise: every step's pred_x0 and the 8-bit frames.
fn check_generate(fit: ImageFit) {
    let Fixture {
        pipeline,
        io,
        request,
    } = fixture(fit);
    let name = fit_name(fit);
    for (case, eta) in [("eta0", 0.0), ("eta1", 1.0)] {
        let key = |t: &str| format!("{name}.{case}.{t}");
        let want_x0 = get(&io, &key("pred_x0"));
        let noise = get(&io, "noise");
        let mut draws = vec![get(&io, "x_T")];
        draws.extend((0..STEPS).map(|step| noise.get(step).unwrap()));
        let req = GenerationRequest {
            eta,
            ..request.clone()
        };
        let mut failures = Vec::new();
        let mut steps_seen = 0;
        let generated = pipeline
            .generate_with_noise(
                &req,
                &Limits::default(),
                &mut ReplayNoise::new(draws),
                &mut |p| {
                    let want = want_x0.get(p.step - 1).unwrap();
                    let err = max_abs_diff(p.pred_x0, &want);
                    if err > latent_tol(&want) {
                        failures.push(format!("step {} pred_x0 err {err:.3e}", p.step));
                    }
                    steps_seen += 1;
                    Flow::Continue
                },
            )
            .unwrap();
        assert!(failures.is_empty(), "{name} {case}: {failures:?}");
        assert_eq!(steps_seen, STEPS, "{name} {case}");
        assert_eq!(generated.steps_run, STEPS);
        assert_eq!(generated.image_fit, Some(fit));
        let want = frames_from_tensor(&get(&io, &key("video")).get(0).unwrap(), 8).unwrap();
        assert_frames_within_one_level(&format!("{name} {case}"), &generated.video, &want);
    }
}

#[test]
fn i2v_stretch_conditioning_matches_original() {
    check_conditioning(ImageFit::Stretch);
}

#[test]
fn i2v_default_crop_conditioning_matches_original() {
    assert_eq!(ImageFit::default(), ImageFit::CentreCrop);
    check_conditioning(ImageFit::default());
}

#[test]
fn generate_i2v_stretch_matches_original() {
    check_generate(ImageFit::Stretch);
}

#[test]
fn generate_i2v_default_crop_matches_original() {
    check_generate(ImageFit::default());
}

/// The two fits must give different contexts here, or the crop case proves nothing.
#[test]
fn i2v_fixture_fits_differ() {
    let io = tensors("ddim_i2v_generate.safetensors");
    let (a, b) = (get(&io, "stretch.image"), get(&io, "crop.image"));
    assert!(max_abs_diff(&a, &b) > 0.05);
    let window: Vec<f64> = values_f64(&get(&io, "crop_window"));
    assert_eq!(window, vec![1.0, 0.0, 53.0, 40.0]);
}
